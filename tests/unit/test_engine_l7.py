"""L7 allow-lists through the engine (slowpath/engine.py with
slowpath/l7allow.py): payload records as the kernel writes them, verdicts,
resets, held payload and alert records (valid against both EVE schemas)."""
from __future__ import annotations

from datapath.enums import INSPECT
from datapath.enums import VerdictCode as V
from slowpath.analyzer import DETECT_BUFFER_BYTES
from slowpath.l7allow import L7Policy
from tests.unit.test_engine import DPI, HOLD, WAF, Harness, client_hello, dns_query, rec

RULE = 7          # tests.unit.test_engine.rec() writes rule id 7
LISTS = {str(RULE): {"label": "web", "l7": {"http": [{"method": "GET", "path": "/public/.*"}],
                                             "dns": ["example.org", "*.example.org"]}}}
NO_RULES = "{}\n"
HOLD_ALL = INSPECT["HOLD_ALL"]   # what the policy compiler adds to a hold rule with an l7 list


def harness(spec=LISTS, **kw) -> Harness:
    return Harness(NO_RULES, l7=L7Policy.from_spec(spec), **kw)


def get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: shop.example\r\n\r\n"


def alerts(h):
    h.kinds()               # every record valid against Suricata's schema and the overlay
    return [r for r in h.eve if r["event_type"] == "alert"]


def test_allowed_request_released_disallowed_blocked_async():
    h = harness()
    h.engine.handle(rec(get(b"/public/a.css"), inspect=DPI))
    assert h.codes() == [V.VERDICT_RELEASE] and alerts(h) == []
    bad = harness()
    bad.engine.handle(rec(get(b"/admin"), inspect=DPI))
    assert bad.codes() == [V.VERDICT_BLOCK]
    (a,) = alerts(bad)
    assert a["alert"]["signature"] == "l7 allow-list of rule web: GET /admin not allowed"
    assert a["alert"]["category"] == "l7-policy" and a["alert"]["action"] == "blocked"
    assert a["alert"]["metadata"]["field"] == ["l7.http"] and a["alert"]["metadata"]["matched"] == ["GET /admin"]
    assert a["http"]["url"] == "/admin" and a["verdict"]["action"] == "drop"
    assert len(bad.resets.calls) == 1            # async: both ends reset


def test_hold_mode_disallowed_request_never_sent_on():
    h = harness()
    h.engine.handle(rec(get(b"/admin"), inspect=DPI | HOLD))
    assert h.codes() == [V.VERDICT_BLOCK]
    assert h.resets.injected == [] and len(h.resets.held) == 1     # held bytes dropped, reset at the first one
    ok = harness()
    ok.engine.handle(rec(get(b"/public/x"), inspect=DPI | HOLD))
    assert ok.codes() == [V.VERDICT_RELEASE] and [s for s, _, _ in ok.resets.injected] == [0]


def test_second_request_on_a_keep_alive_connection_is_checked_and_reset():
    """A hold rule without the kernel's hold of every request (HOLD_ALL
    absent): after the first request's RELEASE the kernel holds nothing
    more, so a later disallowed request is answered by a reset (it may have
    reached the server), never let through for the rest of the connection."""
    h = harness()
    first = get(b"/public/a")
    h.engine.handle(rec(first, inspect=DPI | HOLD))
    h.engine.handle(rec(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", side=1, inspect=DPI | HOLD,
                        ack=1001 + len(first)))
    h.engine.handle(rec(get(b"/admin"), seq=1001 + len(first), inspect=DPI | HOLD, ack=5001 + 40))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    assert len(h.resets.calls) == 1 and h.resets.held == []        # the async reset: nothing is held any more
    assert [a["alert"]["signature"] for a in alerts(h)] == ["l7 allow-list of rule web: GET /admin not allowed"]


def test_dns_queries():
    h = harness()
    ok, bad = b"a" * 40, b"b" * 40
    h.engine.handle(rec(dns_query(b"www.example.org"), inspect=DPI | HOLD, l4=17, key=ok, seq=0,
                        server=("10.0.1.53", 53)))
    h.engine.handle(rec(dns_query(b"www.evil.test"), inspect=DPI | HOLD, l4=17, key=bad, seq=0,
                        server=("10.0.1.53", 53)))
    assert h.codes(ok) == [V.VERDICT_RELEASE] and h.codes(bad) == [V.VERDICT_BLOCK]
    (a,) = alerts(h)
    assert a["alert"]["signature"] == "l7 allow-list of rule web: DNS query www.evil.test not allowed"
    assert a["dns"]["queries"][0]["rrname"] == "www.evil.test"


def test_protocols_the_list_does_not_name_are_blocked():
    h = harness()
    h.engine.handle(rec(client_hello(b"www.example.org"), inspect=DPI, server=("10.0.1.5", 443)))
    assert h.codes() == [V.VERDICT_BLOCK]
    assert alerts(h)[0]["alert"]["signature"] == "l7 allow-list of rule web: tls not allowed (the list names http, dns)"
    # Bytes no parser reads: without a list ALLOW (nothing to read), with one BLOCK.
    junk = bytes(range(256)) * (DETECT_BUFFER_BYTES // 256 + 1)      # a buffer's worth nobody claims
    plain = Harness(NO_RULES)
    plain.engine.handle(rec(junk, inspect=DPI, server=("10.0.1.5", 9999)))
    assert plain.codes() == [V.VERDICT_ALLOW]
    h = harness()
    h.engine.handle(rec(junk, inspect=DPI, server=("10.0.1.5", 9999)))
    assert h.codes() == [V.VERDICT_BLOCK]
    assert alerts(h)[0]["alert"]["metadata"]["field"] == ["l7.protocol"]


def test_an_allow_list_flow_is_read_on():
    """dpi only would let an identified HTTP flow go after its first
    request, and the budget after a side's depth: an allow-list flow is
    released, never allowed, so the next request is still checked."""
    h = harness(inspect_budget=100)
    first = get(b"/public/a")
    h.engine.handle(rec(first, inspect=DPI))
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n" + b"x" * 200
    h.engine.handle(rec(big, side=1, inspect=DPI, ack=1001 + len(first)))
    assert h.codes() == [V.VERDICT_RELEASE]
    h.engine.handle(rec(get(b"/secret"), seq=1001 + len(first), inspect=DPI))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    # Without a list, the same flow is let go (dpi only: identified).
    p = Harness(NO_RULES, inspect_budget=100)
    p.engine.handle(rec(first, inspect=DPI))
    assert p.codes() == [V.VERDICT_ALLOW]


def test_waf_still_runs_on_an_allowed_request():
    h = Harness("waf:\n  sets: {sqli: block}\n", l7=L7Policy.from_spec(LISTS))
    h.engine.handle(rec(get(b"/public/?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"), inspect=WAF))
    assert h.codes() == [V.VERDICT_BLOCK]
    assert [a["alert"]["category"] for a in alerts(h)] == ["sqli"]


def test_reload_changes_the_lists_of_open_flows():
    h = harness()
    first = get(b"/public/a")
    h.engine.handle(rec(first, inspect=DPI))
    h.engine.set_l7(L7Policy.from_spec({str(RULE): {"label": "web2", "l7": {"http": [{"path": "/v2/.*"}]}}}))
    h.engine.handle(rec(get(b"/public/b"), seq=1001 + len(first), inspect=DPI))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    assert alerts(h)[0]["alert"]["signature"] == "l7 allow-list of rule web2: GET /public/b not allowed"
    # A policy without lists: open flows lose theirs.
    h = harness()
    h.engine.handle(rec(first, inspect=DPI))
    h.engine.set_l7(L7Policy())
    h.engine.handle(rec(get(b"/admin"), seq=1001 + len(first), inspect=DPI))
    assert V.VERDICT_BLOCK not in h.codes()


def test_a_session_decided_again_by_another_rule_takes_that_rules_list():
    spec = {**LISTS, "8": {"label": "other", "l7": {"http": [{"path": "/admin"}]}}}
    h = harness(spec)
    first = get(b"/public/a")
    h.engine.handle(rec(first, inspect=DPI))
    h.engine.handle(rec(get(b"/admin"), seq=1001 + len(first), inspect=DPI)._replace(rule_id=8))
    assert h.codes() == [V.VERDICT_RELEASE]           # rule 8 allows /admin


def h2_grpc_client(*methods: str) -> bytes:
    """A gRPC client's bytes over h2c (prior knowledge): one unary call per method, streams 1, 3, ..."""
    import h2.config
    import h2.connection

    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    for n, m in enumerate(methods):
        sid = 1 + 2 * n
        c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", f"/lab.Shop/{m}"),
                             (":authority", "shop.lab"), ("content-type", "application/grpc"), ("te", "trailers")])
        c.send_data(sid, b"\x00\x00\x00\x00\x02\x08\x01", end_stream=True)
    return c.data_to_send()


def test_grpc_over_http2_allowed_and_denied_methods():
    """The gRPC list on real HTTP/2 framing (protocols/http2.py): service and
    method come from the stream's HttpRequest, as for HTTP/1."""
    import pytest
    pytest.importorskip("protocols.http2")
    spec = {str(RULE): {"label": "grpc-shop-read", "l7": {"grpc": [{"service": "lab.Shop", "method": "GetItem"}]}}}
    ok = harness(spec)
    ok.engine.handle(rec(h2_grpc_client("GetItem"), inspect=DPI | HOLD, server=("10.0.1.5", 50051)))
    assert ok.codes() == [V.VERDICT_RELEASE] and alerts(ok) == []
    bad = harness(spec)
    bad.engine.handle(rec(h2_grpc_client("GetItem", "DeleteItem"), inspect=DPI | HOLD, server=("10.0.1.5", 50051)))
    assert V.VERDICT_BLOCK in bad.codes()
    (a,) = alerts(bad)
    assert a["alert"]["signature"] == "l7 allow-list of rule grpc-shop-read: gRPC lab.Shop/DeleteItem not allowed"
    assert a["alert"]["metadata"]["field"] == ["l7.grpc"]


def test_pipelined_disallowed_request_in_the_held_packet_is_not_sent_on():
    """Two requests in one held segment: the allowed first one must not
    release the segment that carries the disallowed second one."""
    h = harness()
    h.engine.handle(rec(get(b"/public/a") + get(b"/admin"), inspect=DPI | HOLD))
    assert h.codes() == [V.VERDICT_BLOCK]
    assert h.resets.injected == [] and len(h.resets.held) == 1
    ok = harness()
    ok.engine.handle(rec(get(b"/public/a") + get(b"/public/b"), inspect=DPI | HOLD))
    assert ok.codes() == [V.VERDICT_RELEASE] and len(ok.resets.injected) == 1


def h2_grpc_exchange(method: str):
    """A gRPC client's bytes as grpc-core sends them: the preface with
    SETTINGS alone (it then waits for the server's SETTINGS), the server's
    SETTINGS, then the call; as (side, bytes) records."""
    import h2.config
    import h2.connection

    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    c.initiate_connection()
    preface = c.data_to_send()
    s.initiate_connection()
    s.receive_data(preface)
    server = s.data_to_send()
    c.receive_data(server)
    c.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", f"/lab.Shop/{method}"),
                       (":authority", "shop.lab"), ("content-type", "application/grpc"), ("te", "trailers")])
    c.send_data(1, b"\x00\x00\x00\x00\x02\x08\x01", end_stream=True)
    return [(0, preface), (1, server), (0, c.data_to_send())]


def test_grpc_in_hold_mode_the_connection_setup_is_sent_on_the_call_held():
    """grpc-core waits for the server's SETTINGS before its first HEADERS:
    the preface and the SETTINGS go on at once (the hold kept), the call is
    held until checked. Before: the preface was held until a request came,
    and none came (the lab's allowed gRPC call timed out)."""
    import pytest
    pytest.importorskip("protocols.http2")
    spec = {str(RULE): {"label": "grpc-shop-read", "l7": {"grpc": [{"service": "lab.Shop", "method": "GetItem"}]}}}
    for method, verdict in (("GetItem", V.VERDICT_RELEASE), ("DeleteItem", V.VERDICT_BLOCK)):
        h = harness(spec)
        seq = {0: 1001, 1: 5001}
        recs = h2_grpc_exchange(method)
        for n, (side, data) in enumerate(recs):
            h.engine.handle(rec(data, side=side, seq=seq[side], ack=seq[1 - side], inspect=DPI | HOLD,
                                server=("10.0.1.5", 50051)))
            seq[side] += len(data)
            if n < 2:      # connection setup: sent on, nothing decided, still held
                assert h.codes() == [] and [(s, q) for s, q, _ in h.resets.injected][-1] == (side, seq[side] - len(data))
        assert h.codes() == [verdict], method
        if verdict == V.VERDICT_BLOCK:
            assert [s for s, _, _ in h.resets.injected] == [0, 1]       # the call itself never sent on
            (_, _, held_from, _), = h.resets.held
            # the server's reset: at the first byte it has not got (after the preface), as its peer expects
            assert held_from == [1001 + len(recs[0][1]), 5001 + len(recs[1][1])]
        else:
            assert [s for s, _, _ in h.resets.injected] == [0, 1, 0]


def test_grpc_setup_is_sent_on_in_any_hold_rule_and_a_body_stays_held():
    """Without an allow-list too (a WAF hold rule): the setup goes on, the
    call is held to its end (the WAF reads its body first)."""
    import pytest
    pytest.importorskip("protocols.http2")
    h = Harness(NO_RULES)
    seq = {0: 1001, 1: 5001}
    recs = h2_grpc_exchange("GetItem")
    call = recs[2][1]
    recs[2:] = [(0, call[:-7]), (0, call[-7:])]         # the HEADERS, then the DATA frame with the body
    for n, (side, data) in enumerate(recs):
        h.engine.handle(rec(data, side=side, seq=seq[side], ack=seq[1 - side], inspect=WAF | HOLD,
                            server=("10.0.1.5", 50051)))
        seq[side] += len(data)
        if n == 1:      # the setup went on before any request
            assert h.codes() == [] and [s for s, _, _ in h.resets.injected] == [0, 1]
        if n == 2:      # the HEADERS: held (the body is still to come)
            assert h.codes() == [] and len(h.resets.injected) == 2
    assert h.codes() == [V.VERDICT_RELEASE]
    # preface and server SETTINGS sent on at once; the HEADERS segment and the body only at the release
    assert [s for s, _, _ in h.resets.injected] == [0, 1, 0, 0]


class Conn:
    """A keep-alive HTTP/1 connection of a rule with an l7 list in hold mode
    (the kernel holds every request: HOLD | HOLD_ALL), records as the kernel
    writes them."""

    def __init__(self, h):
        self.h, self.seq = h, {0: 1001, 1: 5001}

    def send(self, side, data, *, seq=None, advance=True):
        at = self.seq[side] if seq is None else seq
        self.h.engine.handle(rec(data, side=side, seq=at, ack=self.seq[1 - side], inspect=DPI | HOLD | HOLD_ALL))
        if advance:
            self.seq[side] = max(self.seq[side], at + len(data))
        return at


def response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_hold_all_every_request_is_checked_before_it_goes_on():
    """The kernel holds the client's side for the connection's life: each
    allowed request goes on once read, the disallowed second one never
    (reset at the server's next expected byte). Before: the engine sent
    nothing on after the first RELEASE (the kernel used to let the
    client's retransmissions through), so with the kernel holding every
    request the second, allowed one never reached the server."""
    h = harness()
    c = Conn(h)
    first = c.send(0, get(b"/public/a"))
    c.send(1, response(b"ok"))
    second = c.send(0, get(b"/public/b"))
    c.send(1, response(b"ok"))
    assert [(s, q) for s, q, _ in h.resets.injected] == [(0, first), (0, second)]   # the responses passed
    bad = c.send(0, get(b"/admin"))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    assert len(h.resets.injected) == 2 and h.resets.calls == []
    (_, _, held_from, _), = h.resets.held
    assert held_from == [bad, None]        # the server has everything before /admin; the client, the kernel's number


def test_hold_all_retransmissions_and_overlaps_go_on_once():
    h = harness()
    c = Conn(h)
    c.send(0, get(b"/public/a"))
    c.send(1, response(b"ok"))
    req = get(b"/public/b")
    at = c.send(0, req)
    c.send(0, req, seq=at)                                  # the client's retransmission: the server has it
    longer = req + get(b"/public/c")
    c.send(0, longer, seq=at)                               # retransmitted with more: only the new bytes
    assert [(q, d) for _, q, d in h.resets.injected[1:]] == [(at, req), (at + len(req), get(b"/public/c"))]
    assert h.codes() == [V.VERDICT_RELEASE]


def test_hold_all_a_segment_after_a_hole_waits_for_the_bytes_before_it():
    """The segment after a hole is not read yet (reassembly waits): it goes
    on only after the hole's bytes, both checked; a disallowed head split
    over the two never goes on."""
    for path, verdicts in ((b"/public/b", [V.VERDICT_RELEASE]), (b"/admin", [V.VERDICT_RELEASE, V.VERDICT_BLOCK])):
        h = harness()
        c = Conn(h)
        c.send(0, get(b"/public/a"))
        c.send(1, response(b"ok"))
        req = get(path)
        at = c.seq[0]
        c.send(0, req[10:], seq=at + 10)                    # arrives first
        assert len(h.resets.injected) == 1
        c.send(0, req[:10], seq=at)
        assert h.codes() == verdicts
        sent = [(q, d) for _, q, d in h.resets.injected[1:]]
        assert sent == ([(at, req[:10]), (at + 10, req[10:])] if path == b"/public/b" else [])


def test_hold_all_reads_every_request_past_the_budget_and_a_download_passes():
    """Past the inspection budget: the client's requests are still read and
    held (the kernel copies them all); the server's download is not held
    (nothing of it is sent on by the engine) and ends no hold."""
    h = harness(inspect_budget=64)
    c = Conn(h)
    c.send(0, get(b"/public/big"))
    body = b"x" * 5000
    c.send(1, response(body)[:1500])
    for n in range(1500, len(response(body)), 1500):
        c.send(1, response(body)[n:n + 1500])
    c.send(0, get(b"/public/a"))
    assert h.codes() == [V.VERDICT_RELEASE] and [s for s, _, _ in h.resets.injected] == [0, 0]
    c.send(0, get(b"/admin"))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK] and len(h.resets.injected) == 2


def test_hold_all_bypass_sends_everything_on():
    """A failure whose action is bypass (ALLOW) on such a flow: the kernel
    still holds the client's side, so the engine sends it on unread."""
    h = harness()
    c = Conn(h)
    c.send(0, get(b"/public/a"))
    h.engine._verdict(h.engine.flows[b"k" * 40], V.VERDICT_ALLOW)
    at = c.send(0, get(b"/admin"))
    assert h.resets.injected[-1][:2] == (0, at) and V.VERDICT_BLOCK not in h.codes()



def test_hold_all_a_grpc_channels_later_denied_call_never_goes_on():
    """One HTTP/2 connection, two calls: the allowed first goes on, the
    client's frames after it (a WINDOW_UPDATE) go on once read, the denied
    second call's HEADERS never. Before: nothing of the client's went on
    after the first call's RELEASE."""
    import pytest
    pytest.importorskip("protocols.http2")
    import h2.config
    import h2.connection

    spec = {str(RULE): {"label": "grpc-shop-read", "l7": {"grpc": [{"service": "lab.Shop", "method": "GetItem"}]}}}
    h = harness(spec)
    seq = {0: 1001, 1: 5001}

    def send(side, data):
        at = seq[side]
        h.engine.handle(rec(data, side=side, seq=at, ack=seq[1 - side], inspect=DPI | HOLD | HOLD_ALL,
                            server=("10.0.1.5", 50051)))
        seq[side] += len(data)
        return at

    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    send(0, c.data_to_send())                              # the preface: goes on before any request

    def call(sid, method):
        c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", f"/lab.Shop/{method}"),
                             (":authority", "shop.lab"), ("content-type", "application/grpc"), ("te", "trailers")])
        c.send_data(sid, b"\x00\x00\x00\x00\x02\x08\x01", end_stream=True)
        return c.data_to_send()

    first = send(0, call(1, "GetItem"))
    assert h.codes() == [V.VERDICT_RELEASE]
    c.increment_flow_control_window(65535)                 # the client's WINDOW_UPDATE: goes on once read
    window = send(0, c.data_to_send())
    denied = send(0, call(3, "DeleteItem"))
    assert h.codes() == [V.VERDICT_RELEASE, V.VERDICT_BLOCK]
    assert [(side, q) for side, q, _ in h.resets.injected][-2:] == [(0, first), (0, window)]
    assert all(q != denied for _, q, _ in h.resets.injected)
    (_, _, held_from, _), = h.resets.held
    assert held_from == [denied, None]


SITES = {str(RULE): {"label": "sites", "l7": {"tls": ["allowed.org", "*.example.org"]}}}


def test_tls_list_on_quic_held_allowed_name_goes_on_other_name_never_does():
    """A `tls` list checks QUIC's SNI (the ClientHello in its Initial
    packets): in hold mode the allowed hello's datagram goes on after it was
    read, then the ServerHello lets the flow go; another name is blocked with
    an alert naming the rule and the name, its datagram never sent on."""
    from protocols.quic import crypto_frame
    from tests.unit.test_quic import RFC_DCID, client_initial, hello_with_sni, server_initial
    from tests.unit.test_quic_engine import SERVER_HELLO, udp
    h = harness(SITES)
    ok, bad = b"a" * 40, b"b" * 40
    held = DPI | HOLD | HOLD_ALL
    h.engine.handle(udp(client_initial(RFC_DCID, crypto_frame(0, hello_with_sni("allowed.org"))), key=ok,
                        inspect=held))
    assert h.codes(ok) == [V.VERDICT_RELEASE] and len(h.resets.injected) == 1
    h.engine.handle(udp(server_initial(RFC_DCID, crypto_frame(0, SERVER_HELLO)), side=1, key=ok, inspect=held))
    assert h.codes(ok) == [V.VERDICT_RELEASE, V.VERDICT_ALLOW]
    h.engine.handle(udp(b"\x40" + bytes(40), key=ok, inspect=held))        # a short-header packet: on, unread
    assert len(h.resets.injected) == 2
    h.engine.handle(udp(client_initial(RFC_DCID, crypto_frame(0, hello_with_sni("evil12.test"))), key=bad,
                        inspect=held))
    assert h.codes(bad) == [V.VERDICT_BLOCK] and len(h.resets.injected) == 2
    (a,) = alerts(h)
    assert a["alert"]["signature"] == "l7 allow-list of rule sites: QUIC server name evil12.test not allowed"
    assert a["alert"]["metadata"]["field"] == ["l7.tls"] and a["quic"]["sni"] == "evil12.test"
    assert a["app_proto"] == "quic"


def test_tls_list_on_tls_over_tcp():
    h = harness(SITES)
    h.engine.handle(rec(client_hello(b"www.example.org"), inspect=DPI | HOLD, server=("10.0.1.5", 443)))
    assert h.codes() == [V.VERDICT_RELEASE]
    h2 = harness(SITES)
    h2.engine.handle(rec(client_hello(b"example.org"), inspect=DPI | HOLD, server=("10.0.1.5", 443)))
    assert h2.codes() == [V.VERDICT_BLOCK] and h2.resets.injected == []
    (a,) = alerts(h2)
    assert a["alert"]["signature"] == "l7 allow-list of rule sites: TLS server name example.org not allowed"
    assert a["tls"]["sni"] == "example.org"
    # HTTP on a rule whose list names only tls: blocked as another protocol.
    h3 = harness(SITES)
    h3.engine.handle(rec(get(b"/"), inspect=DPI | HOLD))
    assert h3.codes() == [V.VERDICT_BLOCK]
    assert alerts(h3)[0]["alert"]["metadata"]["field"] == ["l7.protocol"]
