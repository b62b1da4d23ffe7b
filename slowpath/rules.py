"""The slow path's rule engine: WAF signatures, DLP detectors, domain policy.

Sans-IO like the parsers: a :class:`FlowInspector` takes the parser events of
one flow (protocols/http.py, tls.py, dns.py) and returns :class:`Hit` s. It
does no I/O and knows nothing of BPF or asyncio; the caller decides what a
``block`` hit does to the flow and writes the log.

Rule file
---------
YAML; every section is optional::

    waf:
      # Built-in signature sets (below) and what a hit does: block, alert or
      # off. A set not listed is off.
      sets: {sqli: block, xss: block, traversal: block, cmdi: alert}
      # Custom signatures: Hyperscan regular expressions (PCRE syntax without
      # backreferences or lookaround), always caseless, '.' matching newlines.
      signatures:
        - id: 900001                 # signature id in logs; unique, not 100000-399999
          name: admin path
          pattern: "^/admin"
          fields: [uri]              # uri, args, headers, body (default [uri])
          action: block              # block | alert (default block)
          severity: 2                # 1 (high) .. 3 (low), as Suricata (default 2)
          category: custom           # optional label for the log (default custom)
    dlp:
      - name: no-cards-out
        detectors: [credit_card, us_ssn, aws_access_key, pem_private_key]
        direction: response          # request | response | both (default both)
        action: block                # default block
        severity: 1                  # default 1
    domains:
      - name: blocked
        id: 900100                   # optional: default 300000 + position in the list
        match: [evil.example, "*.malware.test"]
        fields: [http_host, tls_sni, dns_query]   # default: all three
        action: block                # default block
        severity: 2                  # default 2

:func:`load_rules` validates the whole file, compiles every WAF pattern into
one Hyperscan database and raises :class:`RulesError` listing every problem
as ``FILE:LINE: what is wrong``; loading is the validation.

WAF
---
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
  :meth:`FlowInspector.close`: bytes past the cap are not WAF-scanned.

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

DLP
---
Detectors (:data:`DETECTORS`) scan request and/or response bodies chunk by
chunk, keeping the last :data:`DLP_TAIL_BYTES` of each direction so a value
split across two HttpBody events is found once. What they see is what the
HTTP parser emits: at most protocols.http.MAX_BODY_EMIT_BYTES per message,
after chunked decoding but *not* decompressed (a gzip body is not readable
here). One hit per rule and detector per message; a hit's rule_id is the
detector's (credit_card 200001, us_ssn 200002, aws_access_key 200003,
pem_private_key 200004), its rule_name the DLP rule's.

Domains
-------
Names are compared case-insensitively with one trailing dot ignored.
``evil.example`` matches that name only; ``*.malware.test`` matches every
name *under* malware.test (``a.malware.test``, ``a.b.malware.test``) but
not ``malware.test`` itself: list both to cover both. Fields: the HTTP
request's host (the authority of an absolute-form or CONNECT target, else
the Host field; port dropped), the TLS ClientHello's SNI, the question
names of DNS queries (responses are not checked).

A flow is inspected for what its policy rule asks (:meth:`RuleSet.flow`):
``waf`` runs the WAF, ``dlp`` the DLP rules, ``dpi`` the domain rules.

Severity follows Suricata: 1 is the most severe.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import hyperscan
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from appliance.configfile import (MAX_RULES_BYTES, FileErrors, duplicate_keys, node_line, parse_yaml, read_text,
                                  validation_errors)
from protocols.api import Direction, Event, Malformed
from protocols.dns import DnsMessage
from protocols.http import HttpAnomaly, HttpAnomalyEvent, HttpBody, HttpMessageEnd, HttpRequest, HttpResponse
from protocols.tls import TlsClientHello
from slowpath import normalize

# --- Limits and knobs ---------------------------------------------------------

# Characters of matched text a hit carries. Enough to recognise an attack
# ("' union select password from users") in a log line without copying
# whole bodies into it; the log is not the place for evidence collection.
MAX_MATCHED_CHARS = 64
# Request body bytes the WAF scans per message. ModSecurity's recommended
# configuration buffers 128 KiB of a body without files
# (SecRequestBodyNoFilesLimit 131072); form posts and API calls fit.
# Past it the rest of the body is not WAF-scanned (DLP still sees it).
MAX_WAF_BODY_BYTES = 128 * 1024
# Bytes of each direction's body kept between chunks for DLP, so a value
# cut by a chunk boundary is seen whole. Must exceed the longest thing a
# detector matches (checked below): a PEM header, at most 69 bytes.
DLP_TAIL_BYTES = 128
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

ACTIONS = ("block", "alert")
WAF_CATEGORIES = ("sqli", "xss", "traversal", "cmdi")
WAF_FIELDS = ("uri", "args", "headers", "body")
DOMAIN_FIELDS = {"http_host": "http.host", "tls_sni": "tls.sni", "dns_query": "dns.rrname"}
WHAT = frozenset({"waf", "dlp", "dpi"})
# Ids the built-ins use (WAF 1000xx-1003xx, DLP detectors 2000xx) and the
# default ids of domain rules (300000 + position): custom ids stay out.
RESERVED_IDS = range(100000, 400000)
# HTTP protocol anomalies (protocols/http.py HttpAnomaly) as WAF hits: id
# 100400 + the anomaly's position in HttpAnomaly, category "protocol".
ANOMALY_BASE_ID = 100400
ANOMALY_IDS = {a.value: ANOMALY_BASE_ID + i for i, a in enumerate(HttpAnomaly)}
ANOMALY_SEVERITY = 2
ANOMALY_ACTIONS = ("block", "alert", "pass")
DOMAIN_DEFAULT_ID = 300000


# --- Hits ----------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    """One rule that matched. ``matched`` is printable, at most MAX_MATCHED_CHARS
    characters; card numbers and SSNs show only their last 4 digits."""
    rule_id: int            # the signature id (SIEMs key on it)
    rule_name: str
    category: str           # "sqli", "xss", "traversal", "cmdi", "custom", a detector name, "domain"
    action: str             # "block" or "alert"
    severity: int           # 1 (high) .. 3
    field: str              # "http.uri", "http.header.cookie", "http.response_body", "tls.sni", ...
    matched: str
    direction: Direction

    def describe(self) -> str:
        """One log line's worth: rule, field and matched text."""
        return (f"{self.action} rule {self.rule_id} {self.rule_name!r} ({self.category}, severity "
                f"{self.severity}): {self.field} matched {self.matched!r}")

    def as_dict(self) -> dict:
        return {"signature_id": self.rule_id, "signature": self.rule_name, "category": self.category,
                "action": self.action, "severity": self.severity, "field": self.field,
                "matched": self.matched, "direction": "to_server" if self.direction == 0 else "to_client"}


def shown(data: bytes | str, limit: int = MAX_MATCHED_CHARS) -> str:
    """Text fit for a log line: control and non-UTF-8 bytes escaped, at most
    ``limit`` characters ("..." marks a cut)."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- WAF signatures ------------------------------------------------------------

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


# --- DLP detectors -------------------------------------------------------------

@dataclass(frozen=True)
class Detector:
    """A named DLP detector. ``check`` takes a regex match and returns the
    text to log (masked where the value is sensitive), or None when the
    candidate is not the real thing (a failed Luhn check)."""
    name: str
    id: int
    regex: re.Pattern
    check: Callable[[re.Match], str | None]
    max_len: int                  # longest match, for DLP_TAIL_BYTES
    description: str


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number carries (ISO/IEC 7812)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Issuer prefixes (IIN ranges) and lengths of the card networks whose
# numbers leak in practice, from the networks' published ranges: (low, high)
# prefixes of equal width, lengths allowed.
CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),                 # Visa
    (51, 55, frozenset({16})),                       # Mastercard
    (2221, 2720, frozenset({16})),                   # Mastercard 2-series
    (34, 34, frozenset({15})), (37, 37, frozenset({15})),   # American Express
    (6011, 6011, frozenset(range(16, 20))),          # Discover
    (644, 649, frozenset(range(16, 20))), (65, 65, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),          # JCB
    (300, 305, frozenset(range(14, 20))), (36, 36, frozenset(range(14, 20))),   # Diners Club
    (38, 39, frozenset(range(16, 20))),
    (62, 62, frozenset(range(16, 20))),              # UnionPay
)


def card_brand_ok(digits: str) -> bool:
    n = len(digits)
    for lo, hi, lengths in CARD_RANGES:
        width = len(str(lo))
        if n in lengths and lo <= int(digits[:width]) <= hi:
            return True
    return False


def _mask_digits(text: str, keep: int = 4) -> str:
    """Every digit but the last ``keep`` as '*', separators kept."""
    total = sum(c.isdigit() for c in text)
    out, seen = [], 0
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - keep else "*")
        else:
            out.append(c)
    return "".join(out)


def _card(m: re.Match) -> str | None:
    text = m.group().decode("ascii")
    digits = text.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not card_brand_ok(digits) or not luhn_ok(digits):
        return None
    return _mask_digits(text)


def _ssn(m: re.Match) -> str | None:
    area, group, serial = (int(m.group(i)) for i in (1, 2, 3))
    # Never issued (SSA, "Social Security Number Randomization", 2011): area
    # 000, 666 and 900-999; group 00; serial 0000.
    if area == 0 or area == 666 or area >= 900 or group == 0 or serial == 0:
        return None
    return "***-**-" + m.group(3).decode()


def _as_is(m: re.Match) -> str | None:
    return shown(m.group())


DETECTORS: dict[str, Detector] = {d.name: d for d in (
    Detector("credit_card", 200001,
             # 13-19 digits, a space or dash allowed between any two; not
             # part of a longer digit run.
             re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])"), _card, 37,
             "payment card numbers: known issuer prefix and length, Luhn-checked; logged with "
             "all but the last 4 digits masked"),
    Detector("us_ssn", 200002,
             re.compile(rb"(?<![0-9-])([0-9]{3})-([0-9]{2})-([0-9]{4})(?![0-9-])"), _ssn, 11,
             "US Social Security numbers written AAA-GG-SSSS, never-issued ranges excluded; "
             "logged as ***-**-SSSS"),
    Detector("aws_access_key", 200003,
             # AKIA: long-term IAM user keys; ASIA: temporary (STS) keys.
             re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"), _as_is, 20,
             "AWS access key ids (AKIA/ASIA + 16); the id is logged whole (it is not the secret, "
             "and it is what finds the key to revoke)"),
    Detector("pem_private_key", 200004,
             re.compile(rb"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY-----"), _as_is, 69,
             "PEM private keys (RSA, EC, DSA, OPENSSH, ENCRYPTED, PKCS#8); the header line is logged"),
)}
assert all(d.max_len < DLP_TAIL_BYTES for d in DETECTORS.values())


# --- Domains -------------------------------------------------------------------

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def domain_key(name: str) -> str:
    """A name as the domain rules compare it: lower case, one trailing dot dropped."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def check_domain_pattern(text: str) -> str | None:
    """Why ``text`` is not a usable name or ``*.suffix`` pattern (None: it is)."""
    name = domain_key(text)
    if not name:
        return "empty name"
    if not name.isascii():
        return f"{text!r}: not ASCII; write internationalised names in their xn-- (punycode) form"
    if "*" in name:
        if name == "*":
            return f"{text!r}: a bare '*' would match every name; write *.suffix"
        if not name.startswith("*.") or "*" in name[2:]:
            return (f"bad wildcard {text!r}: '*' is only allowed as the whole first label, "
                    f"as in *.example.com (it matches names under example.com, not example.com)")
        name = name[2:]
    if len(name) > 253:
        return f"{text!r}: longer than 253 characters"
    for label in name.split("."):
        if not _LABEL.match(label):
            return (f"{text!r}: bad label {label!r} (1-63 letters, digits, '-' or '_', "
                    f"not starting or ending with '-')")
    return None


class DomainIndex:
    """Exact names in one dict, wildcard suffixes in another: a lookup walks
    the name's parent domains (one dict probe per label), whatever the
    number of patterns."""

    def __init__(self) -> None:
        self.exact: dict[str, list[int]] = {}
        self.suffix: dict[str, list[int]] = {}

    def add(self, pattern: str, rule: int) -> None:
        key = domain_key(pattern)
        table, key = (self.suffix, key[2:]) if key.startswith("*.") else (self.exact, key)
        rules = table.setdefault(key, [])
        if rule not in rules:
            rules.append(rule)

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffix)

    def match(self, name: str) -> list[int]:
        """Rules (by index) that ``name`` matches, each once, in rule order."""
        key = domain_key(name)
        out = list(self.exact.get(key, ()))
        if self.suffix:
            dot = key.find(".")
            while dot != -1:
                out += self.suffix.get(key[dot + 1:], ())
                dot = key.find(".", dot + 1)
        return sorted(set(out)) if len(out) > 1 else out


_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def request_host(ev: HttpRequest) -> str | None:
    """The host an HTTP request is for: the authority of a CONNECT or an
    absolute-form target (RFC 9112 3.2.2: then the Host field is ignored),
    else the Host field. Port and userinfo dropped; IPv6 brackets kept off."""
    target = ev.uri
    auth = None
    if ev.method.upper() == "CONNECT":
        auth = target
    elif _ABSOLUTE_FORM.match(target):
        auth = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if auth is None:
        auth = ev.host
    if not auth:
        return None
    auth = auth.rsplit("@", 1)[-1].strip()
    if auth.startswith("["):
        return auth[1:].split("]", 1)[0]
    return auth.split(":", 1)[0] if auth.count(":") == 1 else auth


# --- The rule file's model -------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _none_is_default(cls, v, info):
    """An empty section (``dlp:`` with nothing under it) is YAML null: the default."""
    return v if v is not None else _DEFAULTS[info.field_name]()


class SignatureSpec(_Model):
    id: StrictInt = Field(ge=1, le=2**32 - 1)
    name: StrictStr = Field(min_length=1, max_length=100)
    pattern: StrictStr = Field(min_length=1, max_length=4096)
    fields: list[Literal["uri", "args", "headers", "body"]] = Field(default_factory=lambda: ["uri"],
                                                                    min_length=1)
    action: Literal["block", "alert"] = "block"
    severity: StrictInt = Field(2, ge=1, le=3)
    category: StrictStr = Field("custom", pattern=r"^[a-z][a-z0-9_-]{0,31}$")


class WafSpec(_Model):
    sets: dict[Literal["sqli", "xss", "traversal", "cmdi"], Literal["block", "alert", "off"]] = Field(
        default_factory=dict)
    signatures: list[SignatureSpec] = Field(default_factory=list)
    none_is_default = field_validator("sets", "signatures", mode="before")(_none_is_default)


class DlpSpec(_Model):
    name: StrictStr = Field(min_length=1, max_length=100)
    detectors: list[StrictStr] = Field(min_length=1)
    direction: Literal["request", "response", "both"] = "both"
    action: Literal["block", "alert"] = "block"
    severity: StrictInt = Field(1, ge=1, le=3)


class DomainSpec(_Model):
    name: StrictStr = Field(min_length=1, max_length=100)
    id: StrictInt | None = Field(None, ge=1, le=2**32 - 1)
    match: list[StrictStr] = Field(min_length=1)
    fields: list[Literal["http_host", "tls_sni", "dns_query"]] = Field(
        default_factory=lambda: list(DOMAIN_FIELDS), min_length=1)
    action: Literal["block", "alert"] = "block"
    severity: StrictInt = Field(2, ge=1, le=3)


class RulesSpec(_Model):
    waf: WafSpec = Field(default_factory=WafSpec)
    dlp: list[DlpSpec] = Field(default_factory=list)
    domains: list[DomainSpec] = Field(default_factory=list)
    none_is_default = field_validator("waf", "dlp", "domains", mode="before")(_none_is_default)


_DEFAULTS = {"sets": dict, "signatures": list, "waf": WafSpec, "dlp": list, "domains": list}


def where(loc: tuple) -> str:
    """A location in the file as an operator reads it: "dlp rule 2: detectors[1]"."""
    loc = tuple(p for p in loc if p != "[key]")
    heads = {("waf", "signatures"): "waf signature", ("dlp",): "dlp rule", ("domains",): "domain rule"}
    for prefix, label in heads.items():
        n = len(prefix)
        if loc[:n] == prefix and len(loc) > n and isinstance(loc[n], int):
            rest = "".join(f"[{p + 1}]" if isinstance(p, int) else f".{p}" for p in loc[n + 1:]).lstrip(".")
            head = f"{label} {loc[n] + 1}"
            return f"{head}: {rest}" if rest else head
    return ".".join(str(p) for p in loc) or "(top level)"


# --- Errors and loading ----------------------------------------------------------

class RulesError(FileErrors):
    """A rule file that does not load: every problem as ``FILE:LINE: message``
    (a UsageError: the CLI prints it and exits 2)."""

    @classmethod
    def unreadable(cls, path, why: str) -> "RulesError":
        err = cls(path, [])
        err.args = (f"{path}: cannot read: {why}",)
        return err


_HS_BASE_FLAGS = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_DOTALL


def _hs_flags(som: bool) -> int:
    # With start-of-match the hit shows exactly what matched; Hyperscan
    # refuses it for some patterns (large bounded repeats), which then
    # report once per scan and show the text that ends where they matched.
    return _HS_BASE_FLAGS | (hyperscan.HS_FLAG_SOM_LEFTMOST if som else hyperscan.HS_FLAG_SINGLEMATCH)


def _hs_error(e: Exception) -> str:
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
            db.compile(expressions=[data], ids=[0], flags=[_hs_flags(som)])
            return som, ""
        except hyperscan.error as e:
            why = _hs_error(e)        # the plain compile's reason is the one that matters
    return None, why


@functools.lru_cache(maxsize=4)
def _compile_db(patterns: tuple[bytes, ...], flags: tuple[int, ...]):
    """One block-mode database of ``patterns`` (id = position). Compiling the
    built-in sets takes a few hundred milliseconds; a reload that leaves the
    WAF section as it was reuses the database instead."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=list(patterns), ids=list(range(len(patterns))), flags=list(flags))
    return db


@dataclass(frozen=True)
class _ActiveSig:
    sig: WafSignature
    action: str
    som: bool                 # the hit shows exactly what matched (else: the text ending there)


@dataclass(frozen=True)
class DlpRule:
    name: str
    detectors: tuple[str, ...]
    directions: frozenset[Direction]
    action: str
    severity: int


@dataclass(frozen=True)
class DomainRule:
    id: int
    name: str
    patterns: tuple[str, ...]
    fields: frozenset[str]
    action: str
    severity: int


class RuleSet:
    """Loaded, validated and compiled rules. Build with :func:`load_rules`.

    Not thread-safe: the Hyperscan database has one scratch space (shared by
    rule sets with the same WAF patterns), and the slow path scans from one
    thread.
    """

    def __init__(self, sigs: list[_ActiveSig], dlp: list[DlpRule], domains: list[DomainRule],
                 source: str = "") -> None:
        self.source = source
        self.waf = tuple(sigs)
        self.dlp = tuple(dlp)
        self.domains = tuple(domains)
        self._db = None
        if sigs:
            self._db = _compile_db(tuple(a.sig.pattern.encode("utf-8") for a in sigs),
                                   tuple(_hs_flags(a.som) for a in sigs))
        # Per field, which signatures (by index) apply: a scan reports every
        # pattern, and the callback drops those for other fields.
        self._for_field = {f: frozenset(i for i, a in enumerate(sigs) if f in a.sig.fields) for f in WAF_FIELDS}
        # Detectors wanted per direction, each with the rules that asked.
        self._dlp_by_direction: dict[Direction, dict[str, list[DlpRule]]] = {d: {} for d in Direction}
        for r in dlp:
            for d in r.directions:
                for det in r.detectors:
                    self._dlp_by_direction[d].setdefault(det, []).append(r)
        self._no_dlp: dict[Direction, dict] = {d: {} for d in Direction}
        self._domain_index = {f: DomainIndex() for f in DOMAIN_FIELDS}
        for i, r in enumerate(domains):
            for f in r.fields:
                for p in r.patterns:
                    self._domain_index[f].add(p, i)

    def flow(self, what: frozenset[str] | set[str], http_anomaly: str = "block") -> "FlowInspector":
        """An inspector for one flow doing ``what`` ⊆ {"waf", "dlp", "dpi"} (the policy rule's
        inspect.what); ``http_anomaly`` (block, alert, pass) is what a request's protocol
        anomaly does on a flow with ``waf``."""
        bad = set(what) - WHAT
        if bad:
            raise ValueError(f"unknown inspection {sorted(bad)}: use {sorted(WHAT)}")
        if http_anomaly not in ANOMALY_ACTIONS:
            raise ValueError(f"http_anomaly {http_anomaly!r}: use one of {ANOMALY_ACTIONS}")
        return FlowInspector(self, frozenset(what), http_anomaly)

    def summary(self) -> dict:
        per = {c: sum(1 for a in self.waf if a.sig.category == c) for c in WAF_CATEGORIES}
        return {"waf_signatures": len(self.waf), "waf_by_category": per,
                "custom_signatures": sum(1 for a in self.waf if a.sig.id not in RESERVED_IDS),
                "dlp_rules": len(self.dlp), "domain_rules": len(self.domains),
                "domain_patterns": sum(len(r.patterns) for r in self.domains)}

    # -- scanning ----------------------------------------------------------------
    def scan_waf(self, wfield: str, data: bytes) -> list[tuple[_ActiveSig, bytes]]:
        """Signatures for ``wfield`` (uri, args, headers, body) that match
        ``data``, each once, with the text it matched."""
        if self._db is None or not data:
            return []
        wanted = self._for_field[wfield]
        found: dict[int, tuple[int, int]] = {}
        events = [0]

        def on_match(idx, start, end, flags, ctx):
            if idx in wanted and idx not in found:
                found[idx] = (start, end)
            events[0] += 1
            return events[0] >= MAX_MATCH_EVENTS       # True stops the scan

        try:
            self._db.scan(data, match_event_handler=on_match)
        except hyperscan.ScanTerminated:
            pass
        out = []
        for idx in sorted(found):
            a = self.waf[idx]
            start, end = found[idx]
            if not a.som:
                start = max(0, end - MAX_MATCHED_CHARS)
            out.append((a, data[start:end]))
        return out

    def match_domain(self, dfield: str, name: str) -> list[DomainRule]:
        return [self.domains[i] for i in self._domain_index[dfield].match(name)]


class _DlpStream:
    """One direction's body, as DLP sees it across chunks."""
    __slots__ = ("tail", "base", "done", "reported")

    def __init__(self) -> None:
        self.tail = b""        # the last DLP_TAIL_BYTES scanned
        self.base = 0          # body offset of tail[0]
        self.done = 0          # matches ending at or before this body offset were judged
        self.reported: set[tuple[str, str]] = set()   # (rule, detector) hit in this message


class FlowInspector:
    """Rules applied to one flow's parser events. ``feed`` returns the hits
    an event completes; ``close`` those still pending when the flow ends."""

    def __init__(self, rules: RuleSet, what: frozenset[str], http_anomaly: str = "block") -> None:
        self.rules = rules
        self.what = what
        self._waf = "waf" in what and rules._db is not None
        # Protocol anomalies of requests become hits on a WAF flow (as
        # ModSecurity CRS's protocol enforcement), unless let pass.
        self._anomaly_action = http_anomaly if "waf" in what and http_anomaly != "pass" else None
        self._dpi = "dpi" in what and bool(rules.domains)
        self._dlp = rules._dlp_by_direction if "dlp" in what else rules._no_dlp
        self._streams = {d: _DlpStream() for d in Direction}
        # The request whose body the WAF is collecting.
        self._body: bytearray | None = None
        self._body_type: str | None = None

    # -- input --------------------------------------------------------------------
    def feed(self, ev: Event) -> list[Hit]:
        if isinstance(ev, HttpBody):
            out = self._dlp_chunk(ev.direction, ev.data, final=False) if self._dlp[ev.direction] else []
            if ev.direction == Direction.TO_SERVER and self._body is not None:
                self._body += ev.data[:MAX_WAF_BODY_BYTES - len(self._body)]
                if len(self._body) >= MAX_WAF_BODY_BYTES:
                    out += self._waf_body()       # full: scan now; the rest goes unscanned
            return out
        if isinstance(ev, HttpRequest):
            out = self._end_message(Direction.TO_SERVER)     # a body cut short by a gap
            out += self._anomalies(ev.anomalies, ev.direction)
            if self._dpi:
                host = request_host(ev)
                if host:
                    out += self._domain("http_host", host, ev.direction)
            if self._waf:
                out += self._waf_request(ev)
            return out
        if isinstance(ev, HttpResponse):
            return self._end_message(Direction.TO_CLIENT)
        if isinstance(ev, HttpMessageEnd):
            return self._end_message(ev.direction)
        if isinstance(ev, HttpAnomalyEvent):
            return self._anomalies((ev.name,), ev.direction)
        if isinstance(ev, Malformed):
            # The parser gave up inside a message: the WAF still reads the
            # part of the body it got (the flow's parser_error action follows).
            return self._end_message(ev.direction)
        if isinstance(ev, TlsClientHello):
            if self._dpi and ev.sni:
                return self._domain("tls_sni", ev.sni, ev.direction)
            return []
        if isinstance(ev, DnsMessage):
            if self._dpi and not ev.response:
                out = []
                for q in ev.questions:
                    out += self._domain("dns_query", q.name, ev.direction)
                return out
            return []
        return []

    def close(self) -> list[Hit]:
        """The flow ended: scan what is still held (an unfinished body)."""
        return self._end_message(Direction.TO_SERVER) + self._end_message(Direction.TO_CLIENT)

    # -- WAF ----------------------------------------------------------------------
    def _anomalies(self, names, d: Direction) -> list[Hit]:
        """Hits for a request's protocol anomalies (responses' are only logged:
        a server's odd answer is not an attack on it)."""
        if self._anomaly_action is None or d != Direction.TO_SERVER:
            return []
        return [Hit(ANOMALY_IDS.get(n, ANOMALY_BASE_ID), f"HTTP protocol anomaly {n}", "protocol",
                    self._anomaly_action, ANOMALY_SEVERITY, "http.protocol", shown(str(n)), d)
                for n in dict.fromkeys(names)]

    def _waf_request(self, ev: HttpRequest) -> list[Hit]:
        rs, d = self.rules, ev.direction
        out: list[Hit] = []
        out += self._waf_hits("uri", "http.uri", normalize.uri(ev.uri), d)
        if rs._for_field["args"]:
            seen: set[int] = set()
            for v in normalize.args(ev.uri):
                out += self._waf_hits("args", "http.args", v, d, seen)
        if rs._for_field["headers"]:
            for name, val in ev.headers:
                low = name.lower()
                if low in SCANNED_HEADERS and val:
                    out += self._waf_hits("headers", f"http.header.{low}",
                                          normalize.value(val.encode("latin-1", "replace")), d)
        ctype = (ev.content_type or "").lower()
        if rs._for_field["body"] and not ctype.startswith(BINARY_BODY_TYPES):
            self._body, self._body_type = bytearray(), ev.content_type
        return out

    def _waf_body(self) -> list[Hit]:
        body, ctype = bytes(self._body or b""), self._body_type
        self._body = None
        if not body:
            return []
        d = Direction.TO_SERVER
        out = self._waf_hits("body", "http.request_body", normalize.body(body, ctype), d)
        if "x-www-form-urlencoded" in (ctype or "").lower() and self.rules._for_field["args"]:
            seen: set[int] = set()
            for v in normalize.form_values(body):
                out += self._waf_hits("args", "http.args", v, d, seen)
        return out

    def _waf_hits(self, wfield: str, label: str, data: bytes, d: Direction,
                  seen: set[int] | None = None) -> list[Hit]:
        out = []
        for a, text in self.rules.scan_waf(wfield, data):
            if seen is not None:              # args: one hit per signature over all values
                if a.sig.id in seen:
                    continue
                seen.add(a.sig.id)
            out.append(Hit(a.sig.id, a.sig.name, a.sig.category, a.action, a.sig.severity, label,
                           shown(text), d))
        return out

    # -- DLP ----------------------------------------------------------------------
    def _end_message(self, d: Direction) -> list[Hit]:
        out = []
        if d == Direction.TO_SERVER and self._body is not None:
            out += self._waf_body()
        if self._dlp[d]:
            st = self._streams[d]
            if st.tail:
                out += self._dlp_chunk(d, b"", final=True)
            self._streams[d] = _DlpStream()
        return out

    def _dlp_chunk(self, d: Direction, data: bytes, final: bool) -> list[Hit]:
        """Scan the kept tail plus ``data``. A match touching the end of what
        is known waits for the next chunk (more digits may follow) unless the
        message is over; one judged before is not judged again."""
        st = self._streams[d]
        buf = st.tail + data
        if not buf:
            return []
        # When the tail was cut from a longer body, its first byte only
        # serves as left context (a lookbehind sees it; no match starts there).
        pos = 1 if st.base > 0 else 0
        end_ok = len(buf) if final else len(buf) - 1
        label = "http.request_body" if d == Direction.TO_SERVER else "http.response_body"
        out = []
        for name, rules in self._dlp[d].items():
            det = DETECTORS[name]
            if all((r.name, name) in st.reported for r in rules):
                continue
            for m in det.regex.finditer(buf, pos):
                if st.base + m.end() <= st.done or m.end() > end_ok:
                    continue
                text = det.check(m)
                if text is None:
                    continue
                for r in rules:
                    if (r.name, name) not in st.reported:
                        st.reported.add((r.name, name))
                        out.append(Hit(det.id, r.name, name, r.action, r.severity, label,
                                       shown(text), d))
                break
        st.done = st.base + end_ok
        keep = min(len(buf), DLP_TAIL_BYTES)
        st.base += len(buf) - keep
        st.tail = buf[len(buf) - keep:]
        return out

    # -- domains ------------------------------------------------------------------
    def _domain(self, dfield: str, name: str, d: Direction) -> list[Hit]:
        return [Hit(r.id, r.name, "domain", r.action, r.severity, DOMAIN_FIELDS[dfield], shown(name), d)
                for r in self.rules.match_domain(dfield, name)]


# --- Loading ---------------------------------------------------------------------------

def load_rules(path: str | Path) -> RuleSet:
    """Load, validate and compile a rule file; RulesError lists every problem."""
    # size limit and encoding checked as for every file microseg reads
    return load_rules_text(read_text(path, MAX_RULES_BYTES, RulesError), path)


def load_rules_text(text: str, path: str | Path = "<rules>") -> RuleSet:
    """As :func:`load_rules`, from a text; ``path`` names it in errors."""
    try:
        root, data = parse_yaml(text, path)
    except FileErrors as e:
        # one line per error: some YAML messages span lines (a reader error
        # quotes the input on a second line)
        raise RulesError(path, [(line, " ".join(msg.split())) for line, msg in e.errors]) from None
    errors: list[tuple[int, str]] = []
    for loc, key, line, first in duplicate_keys(root):
        errors.append((line, f"{where((*loc, key))}: written twice (first on line {first}); "
                             f"YAML would keep only this one"))
    try:
        spec = RulesSpec.model_validate(data)
    except ValidationError as e:
        raise RulesError(path, errors + validation_errors(e, root, where)) from None

    def err(loc: tuple, msg: str) -> None:
        errors.append((node_line(root, loc), msg))

    sigs: list[_ActiveSig] = []
    for b in BUILTIN_SIGNATURES:
        act = spec.waf.sets.get(b.category, "off")
        if act != "off":
            sigs.append(_ActiveSig(b, act, True))

    ids: dict[int, int] = {}          # custom id -> line
    names: dict[str, int] = {}        # rule name -> line

    def unique(loc: tuple, label: str, rid: int | None, name: str) -> None:
        if rid is not None:
            if rid in RESERVED_IDS:
                err((*loc, "id"), f"{label}: id {rid}: {RESERVED_IDS.start}-{RESERVED_IDS.stop - 1} "
                                  f"are reserved for built-in signatures")
            elif rid in ids:
                err((*loc, "id"), f"{label}: duplicate id {rid} (first on line {ids[rid]})")
            else:
                ids[rid] = node_line(root, (*loc, "id"))
        if name in names:
            err((*loc, "name"), f"{label}: duplicate rule name {name!r} (first on line {names[name]})")
        else:
            names[name] = node_line(root, (*loc, "name"))

    for i, s in enumerate(spec.waf.signatures):
        loc = ("waf", "signatures", i)
        label = f"{where(loc)} ({s.name})"
        unique(loc, label, s.id, s.name)
        som, why = hs_check(s.pattern)
        if som is None:
            err((*loc, "pattern"), f"{label}: pattern: Hyperscan refuses {s.pattern!r}: {why}")
            continue
        sig = WafSignature(s.id, s.name, s.category, s.severity, s.pattern, frozenset(s.fields))
        sigs.append(_ActiveSig(sig, s.action, som))

    dlp: list[DlpRule] = []
    for i, r in enumerate(spec.dlp):
        loc = ("dlp", i)
        label = f"{where(loc)} ({r.name})"
        unique(loc, label, None, r.name)
        seen: list[str] = []
        for j, det in enumerate(r.detectors):
            if det not in DETECTORS:
                err((*loc, "detectors", j), f"{label}: detectors[{j + 1}]: unknown detector {det!r} "
                                            f"(known: {', '.join(DETECTORS)})")
            elif det in seen:
                err((*loc, "detectors", j), f"{label}: detectors[{j + 1}]: {det!r} is listed twice")
            else:
                seen.append(det)
        dirs = {"request": {Direction.TO_SERVER}, "response": {Direction.TO_CLIENT},
                "both": set(Direction)}[r.direction]
        dlp.append(DlpRule(r.name, tuple(seen), frozenset(dirs), r.action, r.severity))

    domains: list[DomainRule] = []
    for i, r in enumerate(spec.domains):
        loc = ("domains", i)
        label = f"{where(loc)} ({r.name})"
        unique(loc, label, r.id, r.name)
        for j, p in enumerate(r.match):
            why = check_domain_pattern(p)
            if why:
                err((*loc, "match", j), f"{label}: match[{j + 1}]: {why}")
        domains.append(DomainRule(r.id if r.id is not None else DOMAIN_DEFAULT_ID + i + 1, r.name,
                                  tuple(r.match), frozenset(r.fields), r.action, r.severity))

    if errors:
        raise RulesError(path, errors)
    try:
        return RuleSet(sigs, dlp, domains, source=str(path))
    except hyperscan.error as e:        # each pattern compiled alone; together they did not
        raise RulesError(path, [(node_line(root, ("waf",)),
                                 f"waf: Hyperscan cannot compile the signatures together: {_hs_error(e)}")]) from None


__all__ = ["BUILTIN_SIGNATURES", "DETECTORS", "FlowInspector", "Hit", "RuleSet", "RulesError",
           "load_rules", "load_rules_text"]
