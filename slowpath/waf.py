"""WAF signatures: the built-in sets, and their Hyperscan compilation.

Fields (what a signature's ``fields`` selects; the hit's field in brackets):

* ``uri`` [http.uri]: path and query of the request target, normalised
  (slowpath/normalize.py: repeated URL-decoding, ``+`` as space in the
  query, ``%uXXXX``, overlong UTF-8, NUL dropped, NFKC, backslashes and
  ``/./`` ``//`` folded to ``/``). An absolute-form target loses its scheme
  and host, so ``^/admin`` works for proxied requests too.
* ``args`` [http.args]: each query parameter's value, normalised the same
  way, scanned one by one (so ``^`` and ``$`` anchor on a value); values of
  a form-encoded request body too, when the body is complete.
* ``headers`` [http.header.NAME]: the values of :data:`SCANNED_HEADERS`.
* ``body`` [http.request_body]: the request body, its first
  :data:`MAX_WAF_BODY_BYTES`, form posts URL-decoded and JSON ``\\uXXXX``
  escapes decoded; binary types (:data:`BINARY_BODY_TYPES`) are not scanned.
  A body is scanned when it is complete (its hits come with
  HttpMessageEnd), when the cap is reached, or at
  FlowInspector.close (slowpath/inspector.py): bytes past the cap are not
  WAF-scanned.

Built-in signatures scan uri, headers and body (each says which; ``args``
would double every uri hit). Their ids are stable: sqli 1000xx, xss 1001xx,
traversal 1002xx, cmdi 1003xx; :data:`BUILTIN_SIGNATURES` lists them.

Protocol anomalies. The HTTP parser reads leniently what servers accept
and names each deviation (protocols/http.py ``HttpAnomaly``); the WAF runs
on what it recovered, normalised as any request. On a ``waf`` flow each
anomaly of a request is also a hit of category ``protocol`` (id
100400 + its position in HttpAnomaly, field http.protocol) whose action is
the ``http_anomaly`` setting: block (default, as ModSecurity CRS's protocol
enforcement), alert, or pass (no hit). Response anomalies are only logged.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import hyperscan

from protocols.http import HttpAnomaly

# Request body bytes the WAF scans per message. ModSecurity's recommended
# configuration buffers 128 KiB of a body without files
# (SecRequestBodyNoFilesLimit 131072); form posts and API calls fit.
# Past it the rest of the body is not WAF-scanned (DLP still sees it).
MAX_WAF_BODY_BYTES = 128 * 1024
# Hyperscan callbacks per scan before the scan is stopped. A signature is
# reported once per field, but a body full of "<script" calls back for each
# one; this bounds the Python work of a hostile body. Signatures whose first
# match lies past that point in the same field are then not reported.
MAX_MATCH_EVENTS = 1024

# Request header fields the WAF scans. Those that applications commonly
# parse, store or reflect, and that attackers therefore use: User-Agent and
# X-Forwarded-For / X-Real-IP end up in logs and SQL statements, Referer is
# reflected in pages, Cookie carries application parameters. Others (Accept,
# Content-Type...) are parsed by the server itself and would mostly add
# false positives.
SCANNED_HEADERS = ("user-agent", "referer", "cookie", "x-forwarded-for", "x-real-ip")
# Request body types the WAF does not scan: their bytes are not text an
# application interprets as SQL, HTML or a shell line, and random binary
# would only produce false positives. Matched as prefixes of Content-Type.
BINARY_BODY_TYPES = ("image/", "audio/", "video/", "font/", "application/octet-stream",
                     "application/zip", "application/gzip", "application/x-gzip", "application/pdf")

WAF_CATEGORIES = ("sqli", "xss", "traversal", "cmdi")
WAF_FIELDS = ("uri", "args", "headers", "body")
# HTTP protocol anomalies (protocols/http.py HttpAnomaly) as WAF hits: id
# 100400 + the anomaly's position in HttpAnomaly, category "protocol".
ANOMALY_BASE_ID = 100400
ANOMALY_IDS = {a.value: ANOMALY_BASE_ID + i for i, a in enumerate(HttpAnomaly)}
ANOMALY_SEVERITY = 2


@dataclass(frozen=True)
class WafSignature:
    id: int
    name: str
    category: str
    severity: int
    pattern: str
    fields: frozenset[str]
    description: str = ""


_U, _H, _B = "uri", "headers", "body"
_UH = frozenset({_U, _H})
_UHB = frozenset({_U, _H, _B})
_BODY = frozenset({_B})

# Pieces the patterns share. SQL accepts an inline comment wherever it
# accepts a blank ("union/**/select"), and a parenthesis after a keyword.
_SP = r"(?:\s|/\*[^*]*\*/)"
_OP = r"(?:=|<>|!=|<=?|>=?|\blike\b|\bis\b|\bin\b|\bbetween\b)"
# Commands an injected shell line runs first: reconnaissance (id, uname...),
# fetching a payload (wget, curl, tftp), a shell or an interpreter, a
# connect-back (nc). Words that are also common English after a ";"
# ("more", "find", "head", "sleep") are left out on purpose.
_CMDS = (r"(?:cat|ls|id|whoami|uname|wget|curl|tftp|nc|ncat|netcat|telnet|bash|sh|zsh|ksh|"
         r"python[23]?|perl|php|ruby|chmod|rm|echo|ping|nslookup|ifconfig|ipconfig|pwd|busybox|"
         r"powershell|cmd|systeminfo|mkfifo|useradd|base64)")

BUILTIN_SIGNATURES: tuple[WafSignature, ...] = (
    # -- SQL injection ------------------------------------------------------
    WafSignature(100001, "sqli-union-select", "sqli", 1,
                 rf"\bunion(?:{_SP}|\()+(?:(?:all|distinct){_SP}+)?\(*select\b", _UHB,
                 "UNION SELECT appends the attacker's query to the application's"),
    WafSignature(100002, "sqli-quote-tautology", "sqli", 1,
                 rf"['\"`](?:{_SP}|\))*(?:(?:or|and|xor)\b|\|\||&&)(?:{_SP}|\()*"
                 rf"(?:['\"`]?[\w.]*['\"`]?{_SP}*{_OP}|(?:true|false)\b)", _UHB,
                 "closes a string literal and adds an always-true condition: ' or 1=1, ' or 'a'='a"),
    WafSignature(100003, "sqli-numeric-tautology", "sqli", 2,
                 rf"\b(?:or|and|xor){_SP}+\d+{_SP}*(?:=|<>|!=|<=?|>=?){_SP}*\d+\b", _UH,
                 "an always-true condition on a numeric parameter: id=1 or 1=1"),
    WafSignature(100004, "sqli-quote-comment", "sqli", 2,
                 r"'\)*\s*(?:--(?:[\s&;)]|$)|#|/\*)", _UHB,
                 "closes a string literal and comments out the rest of the query: admin'--"),
    WafSignature(100005, "sqli-dquote-comment", "sqli", 3,
                 r"[\"`]\)*\s*(?:--|/\*)", _UH,
                 "the same with a double quote or backtick (not in bodies: JSON is full of them)"),
    WafSignature(100006, "sqli-stacked-query", "sqli", 1,
                 rf";{_SP}*(?:(?:drop|alter|truncate|create){_SP}+(?:table|database|schema|user|view|"
                 rf"procedure|function)\b|shutdown\b|waitfor{_SP}+delay\b)", _UHB,
                 "a second, destructive statement after a semicolon: ;drop table"),
    WafSignature(100007, "sqli-time-delay", "sqli", 2,
                 r"\b(?:sleep|benchmark|pg_sleep|dbms_lock\.sleep)\s*\(\s*\d|\bwaitfor\s+delay\s+['\"]", _UHB,
                 "time-based blind injection: sleep(5), waitfor delay '0:0:5'"),
    WafSignature(100008, "sqli-schema-probe", "sqli", 2,
                 r"\b(?:information_schema|sqlite_master|pg_shadow|sysobjects|msysobjects)\b|\bmysql\.user\b",
                 _UHB, "reads the database's catalogue to find tables and columns"),
    WafSignature(100009, "sqli-file-and-error-functions", "sqli", 1,
                 r"\b(?:load_file|extractvalue|updatexml)\s*\(|\binto\s+(?:out|dump)file\b|"
                 r"@@(?:version|datadir|hostname|basedir)\b", _UHB,
                 "MySQL functions that read files, write files or leak data through errors"),
    WafSignature(100010, "sqli-mssql-procedures", "sqli", 1,
                 r"\b(?:xp_cmdshell|xp_dirtree|xp_regread|xp_fileexist|sp_oacreate|sp_makewebtask)\b", _UHB,
                 "SQL Server procedures that run commands or reach the file system"),
    WafSignature(100011, "sqli-column-count-probe", "sqli", 3,
                 r"['\")]\s*(?:order|group)\s+by\s+\d+\b", _UH,
                 "' order by 3: counting the query's columns for a UNION"),
    # -- cross-site scripting -----------------------------------------------
    WafSignature(100101, "xss-script-tag", "xss", 1, r"<\s*script\b", _UHB,
                 "a script element"),
    WafSignature(100102, "xss-javascript-url", "xss", 1,
                 r"\b(?:java|vb|live)[\t\n\r]*script\s*:\s*(?:[\w$.]+\s*[(.=`\[]|/[/*])", _UHB,
                 "a javascript: URL running code (javascript:alert(1)); prose such as "
                 "'javascript: the good parts' does not match"),
    WafSignature(100103, "xss-event-handler", "xss", 1,
                 r"[\s\"'/`]on(?:error|load|unload|abort|mouse[a-z]{2,5}|pointer[a-z]{2,6}|focus(?:in|out)?|"
                 r"blur|click|dblclick|auxclick|contextmenu|key(?:up|down|press)|input|change|submit|reset|"
                 r"select|toggle|begin|end|animation(?:start|end|iteration)|transition(?:start|end|run)|wheel|"
                 r"scroll|drag[a-z]{0,5}|drop|copy|cut|paste|play|pause|show|message|hashchange|popstate|"
                 r"pageshow|resize|beforeunload|search)\s*=", _UHB,
                 "an event-handler attribute (onerror=, onload=...) as written inside a tag"),
    WafSignature(100104, "xss-tag-with-handler", "xss", 1,
                 r"<[a-z][\w:-]*[\s/][^<>]*[\s/\"'`]on[a-z]{3,}\s*=", _UHB,
                 "any tag with an on* attribute, for handlers the list above does not name"),
    WafSignature(100105, "xss-embedding-tag", "xss", 2,
                 r"<\s*(?:i?frame(?:set)?|object|embed|applet|base)\b", _UHB,
                 "elements that load or re-base other content"),
    WafSignature(100106, "xss-dom-access", "xss", 2,
                 r"\bdocument\s*\.\s*(?:cookie|domain|write(?:ln)?)\b|\bstring\s*\.\s*fromcharcode\s*\(|"
                 r"\.\s*innerhtml\s*=", _UHB,
                 "script reading cookies or writing the page"),
    WafSignature(100107, "xss-dialog-call", "xss", 2,
                 r"\b(?:alert|prompt|confirm|eval)\s*(?:\(|`)", _UH,
                 "alert(1), the usual proof of an XSS (not in bodies, which carry real script)"),
    WafSignature(100108, "xss-data-url", "xss", 2,
                 r"\bdata\s*:\s*(?:text/html|image/svg[+ ]xml|(?:text|application)/(?:x-)?javascript)\b", _UH,
                 "a data: URL carrying a page or a script"),
    # -- path traversal and local files ---------------------------------------
    WafSignature(100201, "traversal-dot-dot", "traversal", 2,
                 r"(?:^|[/=\s\"':,])\.\.(?:[/&;]|$)", _UH,
                 "a '..' path segment (after decoding and with '\\' read as '/'); browsers resolve "
                 "these before sending, so only tools and attackers send them"),
    WafSignature(100202, "traversal-dot-dot-body", "traversal", 2, r"(?:\.\./){3}", _BODY,
                 "three levels up in a body (one or two are common in HTML documents)"),
    WafSignature(100203, "traversal-unix-files", "traversal", 1,
                 r"/etc/(?:passwd|shadow|group|gshadow|hosts|sudoers|crontab|issue|hostname|master\.passwd)\b|"
                 r"/proc/(?:self|\d+)/(?:environ|cmdline|maps|mem|fd|cwd|root|status)\b", _UHB,
                 "system files an attacker reads to confirm a traversal"),
    WafSignature(100204, "traversal-windows-files", "traversal", 1,
                 r"\b(?:boot|win|system)\.ini\b|/windows/(?:system32|repair)\b|/winnt/|/inetpub/|\bweb\.config\b",
                 _UHB, "the Windows equivalents"),
    WafSignature(100205, "traversal-secret-files", "traversal", 1,
                 r"/\.(?:ssh/(?:id_[a-z0-9]+|authorized_keys)|htpasswd|aws/credentials|bash_history|"
                 r"git/config|env\b)", _UHB,
                 "credentials and keys kept in dot-files"),
    WafSignature(100206, "traversal-file-wrapper", "traversal", 1,
                 r"\bfile:/|\b(?:php|phar|expect|glob)://?[a-z]", _UHB,
                 "file:// and PHP stream wrappers that turn an include into a file read"),
    # -- command injection ----------------------------------------------------
    WafSignature(100301, "cmdi-separator-command", "cmdi", 1,
                 rf"(?:;|\|\|?|&&|\n|\r|\$\(|`)\s*{_CMDS}\b(?:[\s;|&<>`)'\"]|$)", _UH,
                 "a shell separator or substitution followed by a command: ;cat /etc/passwd, | nc, `id`"),
    WafSignature(100302, "cmdi-separator-command-body", "cmdi", 1,
                 rf"(?:;|\|\|?|&&|\$\()\s*{_CMDS}(?:\s+(?:[-/$.~\d'\"]|https?:)|\s*[;|&)\n]|$)", _BODY,
                 "the same in a body, where the command must look like one (an option, a path, a URL "
                 "or the end): '; cat lovers' is prose, '; cat /etc/passwd' is not"),
    WafSignature(100303, "cmdi-subshell", "cmdi", 1, r"\$\(\s*[a-z_][\w./-]*[\s)]", _UH,
                 "$(command) substitution (not in bodies: jQuery's $(document) looks the same)"),
    WafSignature(100304, "cmdi-shellshock", "cmdi", 1, r"\(\s*\)\s*\{[^}]*;\s*\}", _UH,
                 "a bash function definition in a value: Shellshock (CVE-2014-6271), () { :; };"),
    WafSignature(100305, "cmdi-reverse-shell", "cmdi", 1,
                 r"/dev/(?:tcp|udp)/[\w.-]+/\d+|\b(?:nc|ncat|netcat)(?:\.exe)?\s+(?:-\w+\s+)*-[a-z]*e\s|"
                 r"\bbash\s+-i\b|\bmkfifo\s+/tmp/", _UHB,
                 "connect-back shells: bash's /dev/tcp, nc -e, bash -i, a fifo in /tmp"),
    WafSignature(100306, "cmdi-windows-shell", "cmdi", 1,
                 r"\bcmd(?:\.exe)?\s+/[ck]\b|\bpowershell(?:\.exe)?\s+(?:-\w+\s+)*-(?:e|enc|encodedcommand|c|"
                 r"command|nop|noprofile|w|windowstyle)\b", _UHB,
                 "cmd /c and powershell -enc"),
    WafSignature(100307, "cmdi-ifs-spacing", "cmdi", 1, r"\$\{ifs\}|\$ifs\b", _UHB,
                 "${IFS} in place of spaces, to get a command past filters that look for blanks"),
)


# --- Hyperscan ------------------------------------------------------------------

_HS_BASE_FLAGS = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_DOTALL


def hs_flags(som: bool) -> int:
    # With start-of-match the hit shows exactly what matched; Hyperscan
    # refuses it for some patterns (large bounded repeats), which then
    # report once per scan and show the text that ends where they matched.
    return _HS_BASE_FLAGS | (hyperscan.HS_FLAG_SOM_LEFTMOST if som else hyperscan.HS_FLAG_SINGLEMATCH)


def hs_error(e: Exception) -> str:
    return str(e.args[0] if e.args else e).strip().rstrip(".")


def hs_check(pattern: str) -> tuple[bool | None, str]:
    """Compile one pattern alone: (with start-of-match?, "") or (None, why Hyperscan refuses it)."""
    if "\x00" in pattern:
        # Hyperscan takes C strings: the pattern would silently end there.
        return None, "it contains a NUL character (write \\x00 for one)"
    data = pattern.encode("utf-8")
    why = ""
    for som in (True, False):
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        try:
            db.compile(expressions=[data], ids=[0], flags=[hs_flags(som)])
            return som, ""
        except hyperscan.error as e:
            why = hs_error(e)        # the plain compile's reason is the one that matters
    return None, why


@functools.lru_cache(maxsize=16)   # a rule set compiles one per WAF field (inspector.RuleSet): a reload's too
def compile_db(patterns: tuple[bytes, ...], flags: tuple[int, ...]):
    """One block-mode database of ``patterns`` (id = position). Compiling the
    built-in sets takes a few hundred milliseconds; a reload that leaves the
    WAF section as it was reuses the database instead."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=list(patterns), ids=list(range(len(patterns))), flags=list(flags))
    return db


# What a pattern may contain for it to go into the request prefilter
# (compile_prefilter): anchors to the buffer itself (\A, \z, \Z) and an
# inline flag group turning something off ("(?-m)" would undo multi-line
# mode; so would PCRE2's "(?^)" reset, were it accepted) behave differently
# in a field of a joined buffer than in the field alone. A pattern with one
# of them (or text that merely looks like one) leaves the rule set without
# a prefilter: every field scanned alone.
_PREFILTER_UNSAFE = re.compile(rb"\\[AzZ]|\(\?[A-Za-z]*[-^]")


def _stop(idx: int, start: int, end: int, flags: int, context) -> bool:
    return True              # the first match is the answer: stop (hyperscan.ScanTerminated)


@functools.lru_cache(maxsize=16)
def compile_prefilter(patterns: tuple[bytes, ...]):
    """A database telling whether ``patterns`` may match any of several
    fields at once, or None when it cannot be built soundly.

    The fields are scanned joined by ``\\n`` (prefilter_clean). Compiled in
    multi-line mode, ``^`` and ``$`` hold at each field's ends as they hold
    at the ends of the field scanned alone, and ``\\b``/``\\B`` see a
    newline there, which is no word character, as the buffer's edge is
    none. Everything else a pattern can say (Hyperscan has no look-around
    and no back-references) depends only on the bytes it matches. So a
    pattern matching a field alone matches the joined buffer: no match in
    the buffer means no hit in any field. A match may also come from a
    pattern crossing a newline or a field's pattern matching another field;
    then the caller scans each field alone, as without the prefilter.
    Without start of match and one report per pattern: the scan only has
    to find whether anything matches."""
    if not patterns or any(_PREFILTER_UNSAFE.search(p) for p in patterns):
        return None
    flags = _HS_BASE_FLAGS | hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_SINGLEMATCH
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        db.compile(expressions=list(patterns), ids=list(range(len(patterns))), flags=[flags] * len(patterns))
    except hyperscan.error:
        return None          # e.g. a pattern Hyperscan takes only with other flags: no prefilter
    return db


def prefilter_clean(db, data: bytes) -> bool:
    """True when no pattern of ``db`` (compile_prefilter) matches ``data``."""
    try:
        # The handler passed by position: python-hyperscan parses keyword
        # arguments through a dict built per call, ~0.1 us of this scan's
        # ~0.5 us on a request's target (timeit, 2026-12-07).
        db.scan(data, _stop)
    except hyperscan.ScanTerminated:
        return False
    return True


@dataclass(frozen=True)
class ActiveSignature:
    """A signature the rule file turned on, with what its hit does."""
    sig: WafSignature
    action: str
    som: bool                 # the hit shows exactly what matched (else: the text ending there)
