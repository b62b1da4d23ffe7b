"""The inspection handoff in the real program: payload records in the ring
buffer, the modes (async, hold), verdicts merged from ms_verdicts, and every
failure path (ring buffer full, budget used up, slow path down) with its
configured or per-rule action and its own reason.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP

from appliance.policyfile import compile_text
from datapath.config import FailureActions
from datapath.enums import INSPECT, CtState, InspState, Reason, VerdictCode
from datapath.policy_maps import PolicyMaps
from datapath.sessions import WIDE_KEY_MAP, layouts_of
from packets_ct import FLOWS, IPPROTO_UDP, TcpConn, entry, ether, expect, flow_key, session_map
from slowpath.records import RecordDecoder, VerdictWriter, record_type, session_lookup
from slowpath.ringbuf import RingBuffer

R = Reason
POLICY = """
groups:
  clients: [10.0.0.0/24]
  servers: [10.0.1.0/24]
defaults: {ingress: deny, egress: deny}
rules:
  - {name: async, from: clients, to: servers, proto: tcp, ports: [80], action: inspect, inspect: {what: [waf]}}
  - {name: hold, from: clients, to: servers, proto: tcp, ports: [81], action: inspect,
     inspect: {what: [waf, dlp], mode: hold}}
  - {name: strict, from: clients, to: servers, proto: tcp, ports: [82], action: inspect,
     inspect: {what: [dpi], on_failure: drop}}
  - {name: dns, from: clients, to: servers, proto: udp, ports: [53], action: inspect,
     inspect: {what: [dpi], mode: hold}}
  - {name: plain, from: clients, to: servers, proto: tcp, ports: [8080], action: allow}
  - {name: l7hold, from: clients, to: servers, proto: tcp, ports: [83], action: allow,
     l7: {http: [{method: GET, path: "/public/.*"}]}}
"""
REQUEST = b"GET /?q=1 HTTP/1.1\r\nHost: shop.example\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Handoff:
    def __init__(self, fp):
        self.fp = fp
        types = layouts_of(fp)
        self.decoder = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                                     types[WIDE_KEY_MAP][0])
        self.ring = RingBuffer(fp.table("ms_insp_ring").map_fd)
        self.writer = VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                                    fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf)

    def records(self):
        return [self.decoder.decode(bytes(r)) for r in self.ring.drain()]


@pytest.fixture
def handoff(fastpath):
    _, pol = compile_text(POLICY, "inspect.yaml")
    PolicyMaps.for_fastpath(fastpath).apply(pol)
    h = Handoff(fastpath)
    h.records()                  # whatever an earlier test left
    h.writer.heartbeat(1)
    yield h
    h.records()
    h.ring.close()
    fastpath.apply_runtime(fastpath.config)


def conn(fp, port, sport=40000):
    c = TcpConn.make(fp, client=("10.0.0.5", sport), server=("10.0.1.5", port))
    c.send("c", "S", R.PASS_POLICY_INSPECT)
    c.send("s", "SA")
    c.send("c", "A")
    return c


def test_async_copies_both_directions_and_passes(handoff):
    c = conn(handoff.fp, 80)
    assert handoff.records() == []                     # the handshake carries no payload
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    c.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)
    c.send("c", "A")                                   # a pure ACK is not copied
    req, resp = handoff.records()
    assert (req.client, req.server, req.side, req.data) == (("10.0.0.5", 40000), ("10.0.1.5", 80), 0, REQUEST)
    assert req.seq == c.c.isn + 1 and req.l4 == 6 and req.rule_id == 1 and req.orig_len == len(REQUEST)
    assert req.app == handoff.fp.l7.ids["http"]
    assert (resp.side, resp.data, resp.seq) == (1, RESPONSE, c.s.isn + 1)
    assert resp.key == req.key and req.ts_ns <= resp.ts_ns


def test_allow_verdict_bypasses_the_flow(handoff):
    c = conn(handoff.fp, 80)
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    (rec,) = handoff.records()
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_ALLOW)
    c.send("s", "PA", R.PASS_INSPECT_ALLOWED, data=RESPONSE)
    c.send("c", "PA", R.PASS_FORWARD, data=REQUEST)     # kernel speed now: no copy, no stage
    assert handoff.records() == [] and c.entry().leaf.insp_state == InspState.INSP_DONE
    assert len(list(handoff.fp.table("ms_verdicts").keys())) == 0   # merged, then deleted


def test_block_verdict_drops_the_rest_of_the_flow(handoff):
    c = conn(handoff.fp, 80)
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    (rec,) = handoff.records()
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_BLOCK)
    c.send("s", "PA", R.DROP_INSPECT_BLOCKED, data=RESPONSE)
    # from now on every packet of the flow, with or without payload
    c.send("c", "A", R.DROP_INSPECT_BLOCKED)
    c.send("s", "FA", R.DROP_INSPECT_BLOCKED)


def test_hold_drops_payload_until_the_verdict_and_retransmissions_pass_after(handoff):
    c = conn(handoff.fp, 81)
    first = c.frame("c", "PA", data=REQUEST)
    expect(handoff.fp, first, R.DROP_INSPECT_HOLD)
    expect(handoff.fp, first, R.DROP_INSPECT_HOLD)      # the client's retransmission: still held
    recs = handoff.records()
    assert [r.data for r in recs] == [REQUEST, REQUEST] and recs[0].inspect & 0x80
    handoff.writer.verdict(recs[0].key, VerdictCode.VERDICT_RELEASE)
    expect(handoff.fp, first, R.PASS_INSPECT_COPIED)    # released: passes, still copied (async now)
    assert c.entry().leaf.insp_state == InspState.INSP_RELEASED
    handoff.writer.verdict(recs[0].key, VerdictCode.VERDICT_ALLOW)
    expect(handoff.fp, c.frame("s", "PA", data=RESPONSE), R.PASS_INSPECT_ALLOWED)


def test_budget_then_bypass(handoff):
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={
        "inspect_budget": 100, "failure_actions": FailureActions(budget_exhausted="bypass")}))
    c = conn(fp, 80)
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=b"a" * 60)
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=b"b" * 60)   # 40 of its 60 bytes fit
    c.send("c", "PA", R.PASS_INSPECT_BUDGET, data=b"c" * 60)
    c.send("c", "PA", R.PASS_FORWARD, data=b"d" * 60)
    a, b = handoff.records()
    assert (len(a.data), len(b.data), b.orig_len) == (60, 40, 60)
    assert c.entry().leaf.insp_state == InspState.INSP_DONE


def test_budget_by_default_passes_and_still_awaits_the_verdict(handoff):
    """Async: a fast sender can use up the budget before the slow path's
    first verdict; its packets pass uncopied, and a block still cuts."""
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={"inspect_budget": 50}))
    c = conn(fp, 80)
    c.send("s", "PA", R.PASS_INSPECT_COPIED, data=b"a" * 50)
    c.send("s", "PA", R.PASS_INSPECT_BUDGET, data=b"b" * 50)
    c.send("s", "PA", R.PASS_INSPECT_BUDGET, data=b"c" * 50)
    (rec,) = handoff.records()
    assert c.entry().leaf.insp_state == InspState.INSP_PENDING
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_BLOCK)
    c.send("s", "PA", R.DROP_INSPECT_BLOCKED, data=b"d" * 50)


def test_budget_after_release_passes_until_the_final_verdict(handoff):
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={"inspect_budget": 50}))
    c = conn(fp, 81)
    c.send("c", "PA", R.DROP_INSPECT_HOLD, data=b"a" * 50, seq=c.c.nxt)
    (rec,) = handoff.records()
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_RELEASE)
    c.send("c", "PA", R.PASS_FORWARD, data=b"a" * 50)          # merged; budget spent: passes uncopied
    c.send("c", "PA", R.PASS_FORWARD, data=b"b" * 50)
    assert handoff.records() == [] and c.entry().leaf.insp_state == InspState.INSP_RELEASED
    # a late block still cuts the flow ...
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_BLOCK)
    c.send("s", "PA", R.DROP_INSPECT_BLOCKED, data=b"late")


def test_allow_after_the_depth_ends_the_stage(handoff):
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={"inspect_budget": 10}))
    c = conn(fp, 80)
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=b"a" * 10)
    (rec,) = handoff.records()
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_RELEASE)
    c.send("c", "PA", R.PASS_FORWARD, data=b"a" * 10)
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_ALLOW)
    c.send("c", "PA", R.PASS_INSPECT_ALLOWED, data=b"a" * 10)
    assert c.entry().leaf.insp_state == InspState.INSP_DONE


@pytest.mark.parametrize("action, reason, state", [
    ("pass", R.PASS_INSPECT_SLOWPATH_DOWN, InspState.INSP_PENDING),
    ("drop", R.DROP_INSPECT_SLOWPATH_DOWN, InspState.INSP_PENDING),
    ("bypass", R.PASS_INSPECT_SLOWPATH_DOWN, InspState.INSP_DONE),
])
def test_slowpath_down_takes_the_configured_action(handoff, action, reason, state):
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={"failure_actions": FailureActions(slowpath_down=action)}))
    handoff.writer.stop()                                       # heartbeat 0: gone
    c = conn(fp, 80)
    c.send("c", "PA", reason, data=REQUEST)
    assert handoff.records() == [] and c.entry().leaf.insp_state == state


def test_stale_heartbeat_is_down_and_a_fresh_one_is_up(handoff):
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={"heartbeat_timeout_s": 0.5}))
    v = fp.table("ms_slowpath").Leaf()
    v.heartbeat_ns = VerdictWriter.now_ns() - 2_000_000_000
    fp.table("ms_slowpath")[0] = v
    c = conn(fp, 80)
    c.send("c", "PA", R.PASS_INSPECT_SLOWPATH_DOWN, data=REQUEST)
    handoff.writer.heartbeat(1)
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)


def test_rule_failure_action_overrides_the_configured_one(handoff):
    handoff.writer.stop()
    conn(handoff.fp, 82).send("c", "PA", R.DROP_INSPECT_SLOWPATH_DOWN, data=REQUEST)   # on_failure: drop
    conn(handoff.fp, 80, 40001).send("c", "PA", R.PASS_INSPECT_SLOWPATH_DOWN, data=REQUEST)


@pytest.mark.parametrize("kind, reason", [
    ("ringbuf_full", R.PASS_INSPECT_RINGBUF_FULL),
    ("budget_exhausted", R.PASS_INSPECT_BUDGET),   # configured default: pass
    ("slowpath_down", R.PASS_INSPECT_SLOWPATH_DOWN),
])
def test_simulate_each_failure(handoff, kind, reason):
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={"simulate": (kind,)}))
    conn(fp, 80).send("c", "PA", reason, data=REQUEST)
    conn(fp, 82, 40001).send("c", "PA", Reason[reason.name.replace("PASS_", "DROP_")], data=REQUEST)
    assert handoff.records() == []


def test_flows_the_rule_allows_are_never_copied(handoff):
    c = TcpConn.make(handoff.fp, client=("10.0.0.5", 40000), server=("10.0.1.5", 8080))
    c.send("c", "S", R.PASS_POLICY_ALLOW)
    c.send("s", "SA")
    c.send("c", "A")
    c.send("c", "PA", data=REQUEST)
    assert handoff.records() == []


def test_udp_query_held_until_allowed(handoff):
    q = bytes.fromhex("abcd01000001000000000000") + b"\x04shop\x07example\x00\x00\x01\x00\x01"
    f = ether() / IP(src="10.0.0.5", dst="10.0.1.5") / UDP(sport=5353, dport=53) / q
    expect(handoff.fp, f, R.DROP_INSPECT_HOLD)
    (rec,) = handoff.records()
    assert (rec.l4, rec.data, rec.transport, rec.app) == (IPPROTO_UDP, q, "udp", handoff.fp.l7.ids["dns"])
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_ALLOW)
    expect(handoff.fp, f, R.PASS_INSPECT_ALLOWED)        # the resolver's retry goes through
    assert entry(handoff.fp, "10.0.0.5", 5353, "10.0.1.5", 53, IPPROTO_UDP).leaf.insp_state == InspState.INSP_DONE


# --------------------------------------------------------------------------
# An L7 allow-list in hold mode holds every request (MS_INSPECT_HOLD_ALL):
# the client's payload stays held after RELEASE and ALLOW and past the
# budget; only the server's side is let go.
# --------------------------------------------------------------------------

def test_l7_hold_keeps_holding_the_clients_side_after_every_verdict(handoff):
    fp = handoff.fp
    c = conn(fp, 83)
    c.send("c", "PA", R.DROP_INSPECT_HOLD, data=REQUEST)
    (rec,) = handoff.records()
    assert rec.inspect & INSPECT["HOLD"] and rec.inspect & INSPECT["HOLD_ALL"]
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_RELEASE)
    c.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)      # the server's side goes on (copied)
    c.send("c", "PA", R.DROP_INSPECT_HOLD, data=REQUEST)        # the next request: held
    assert c.entry().leaf.insp_state == InspState.INSP_RELEASED
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_ALLOW)
    c.send("c", "PA", R.DROP_INSPECT_HOLD, data=REQUEST)        # ALLOW does not end it either
    c.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)
    assert c.entry().leaf.insp_state == InspState.INSP_RELEASED
    assert [(r.side, r.data) for r in handoff.records()] == [(1, RESPONSE), (0, REQUEST), (0, REQUEST),
                                                             (1, RESPONSE)]
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_BLOCK)   # a block still blocks
    c.send("c", "PA", R.DROP_INSPECT_BLOCKED, data=REQUEST)
    c.send("s", "A", R.DROP_INSPECT_BLOCKED)
    assert c.entry().leaf.insp_state == InspState.INSP_BLOCKED


def test_l7_hold_reads_the_clients_side_past_the_budget(handoff):
    fp = handoff.fp
    fp.apply_runtime(fp.config.model_copy(update={"inspect_budget": 50}))
    c = conn(fp, 83)
    for chunk in (b"a" * 50, b"b" * 50):
        c.send("c", "PA", R.DROP_INSPECT_HOLD, data=chunk)
    (rec, _) = handoff.records()
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_RELEASE)
    c.send("c", "PA", R.DROP_INSPECT_HOLD, data=b"c" * 60)      # merged: still held, copied whole
    c.send("s", "PA", R.PASS_INSPECT_COPIED, data=b"s" * 50)
    c.send("s", "PA", R.PASS_FORWARD, data=b"t" * 50)           # the server's side: budget spent, passes
    assert [(r.side, r.data) for r in handoff.records()] == [(0, b"c" * 60), (1, b"s" * 50)]
    # the simulated budget failure does not end it either; the other failures act
    fp.apply_runtime(fp.config.model_copy(update={"inspect_budget": 50, "simulate": ("budget_exhausted",)}))
    c.send("c", "PA", R.DROP_INSPECT_HOLD, data=b"d" * 10)
    fp.apply_runtime(fp.config.model_copy(update={"inspect_budget": 50, "simulate": ("ringbuf_full",)}))
    c.send("c", "PA", R.PASS_INSPECT_RINGBUF_FULL, data=b"e" * 10)
    handoff.writer.stop()
    fp.apply_runtime(fp.config.model_copy(update={"inspect_budget": 50}))
    c.send("c", "PA", R.PASS_INSPECT_SLOWPATH_DOWN, data=b"f" * 10)


SMALL_SLICE = 512   # a build whose records carry 512 bytes: a test frame can be several records long


@pytest.fixture(scope="module")
def small_slices():
    """The fast path built with MS_INSP_SLICE 512 (BPF_PROG_TEST_RUN takes
    frames up to a page: a packet larger than the default 4 KiB slice
    cannot be sent)."""
    from datapath.loader import MAIN_SOURCE, FastPath, program_text
    fp = FastPath(text=f"#define MS_INSP_SLICE {SMALL_SLICE}\n" + program_text(MAIN_SOURCE))
    try:
        yield fp
    finally:
        fp.close()


def test_l7_hold_copies_a_large_packet_whole_in_pieces(small_slices):
    """A held packet larger than a record goes to the slow path in
    several, each a segment of its own (the FIN on the last): the slow
    path sends on only what it read. Before: the first slice only, and the
    rest waited for the client's retransmission (uploads stalled)."""
    fp = small_slices
    fp.reset()
    _, pol = compile_text(POLICY, "inspect.yaml")
    PolicyMaps.for_fastpath(fp).apply(pol)
    h = Handoff(fp)
    try:
        h.writer.heartbeat(1)
        c = conn(fp, 83)
        body = bytes(range(256)) * 5 + b"end"                   # 1283 bytes: three records
        seq = c.c.nxt
        c.send("c", "FPA", R.DROP_INSPECT_HOLD, data=body)
        recs = h.records()
        assert [(r.seq - seq, r.orig_len, r.tcp_flags & 1) for r in recs] == [(0, 512, 0), (512, 512, 0),
                                                                              (1024, 259, 1)]
        assert b"".join(r.data for r in recs) == body
        c2 = conn(fp, 81, 40001)                                 # without the list: one record, cut
        c2.send("c", "PA", R.DROP_INSPECT_HOLD, data=body)
        (r,) = h.records()
        assert (len(r.data), r.orig_len) == (SMALL_SLICE, len(body))
    finally:
        h.ring.close()


def test_hold_without_an_l7_list_ends_at_its_verdict(handoff):
    c = conn(handoff.fp, 81)
    c.send("c", "PA", R.DROP_INSPECT_HOLD, data=REQUEST)
    (rec,) = handoff.records()
    assert not rec.inspect & INSPECT["HOLD_ALL"]
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_RELEASE)
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_ALLOW)
    c.send("c", "PA", R.PASS_INSPECT_ALLOWED, data=REQUEST)
    assert c.entry().leaf.insp_state == InspState.INSP_DONE


# --------------------------------------------------------------------------
# A blocked connection is over once reset: its 5-tuple is free for the next
# one, and a verdict applies only to the connection it was written for.
# --------------------------------------------------------------------------

NEW_ISN = (7_000_000, 9_000_000)   # the next connection's ISNs: far from the old ones


def again(fp, old, isn=NEW_ISN):
    """A new connection from the same client port to the same server port."""
    return TcpConn.make(fp, client=(old.c.addr, old.c.port), server=(old.s.addr, old.s.port), isn=isn)


def verdicts_left(fp) -> int:
    return sum(1 for _ in fp.table("ms_verdicts").keys())


def test_async_block_keeps_the_old_connection_dropped_and_frees_its_ports(handoff):
    fp = handoff.fp
    old = conn(fp, 80, 40100)
    old.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    (rec,) = handoff.records()
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_BLOCK)
    old.send("s", "PA", R.DROP_INSPECT_BLOCKED, data=RESPONSE)        # merged here
    # everything of the blocked connection stays dropped: the client's
    # retransmission of the request, ACKs, the server's SYN or FIN
    old.send("c", "PA", R.DROP_INSPECT_BLOCKED, data=REQUEST, seq=old.c.isn + 1)
    old.send("c", "A", R.DROP_INSPECT_BLOCKED)
    old.send("s", "S", R.DROP_INSPECT_BLOCKED, seq=old.s.nxt + 5000)  # not the initiator: no new connection
    old.send("s", "FA", R.DROP_INSPECT_BLOCKED)
    # the client opens a new connection from the same port: the policy
    # decides it again (inspect), and it is inspected afresh
    new = again(fp, old)
    new.send("c", "S", R.PASS_POLICY_INSPECT)
    new.send("s", "SA")
    new.send("c", "A")
    new.assert_state(CtState.CT_ESTABLISHED)
    assert new.entry().leaf.insp_state == InspState.INSP_PENDING
    new.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    new.send("s", "PA", R.PASS_INSPECT_COPIED, data=RESPONSE)
    req, resp = handoff.records()
    assert (req.seq, resp.seq) == (NEW_ISN[0] + 1, NEW_ISN[1] + 1)
    assert req.key != rec.key                      # another connection to the slow path
    # what the slow path reads back (its resets' sequence numbers, EVE's
    # counters) is each connection's own: the old one's session is gone
    look = session_lookup(fp)
    assert look(rec.key) is None and look(req.key).tcp[0].end == NEW_ISN[0] + 1 + len(REQUEST)
    # the new connection's own verdict still works
    handoff.writer.verdict(req.key, VerdictCode.VERDICT_ALLOW)
    new.send("c", "PA", R.PASS_INSPECT_ALLOWED, data=REQUEST)
    # the old connection's segments do not fit the new one
    expect(fp, old.frame("c", "PA", data=REQUEST, seq=old.c.isn + 1), R.DROP_TCP_OUT_OF_WINDOW)


@pytest.mark.parametrize("retransmit_first", [False, True], ids=["unmerged", "merged"])
def test_hold_block_frees_its_ports_merged_or_not(handoff, retransmit_first):
    """Hold mode: the block is written while the request is held and both
    ends are reset at once; the client may say nothing more on the old
    connection, so the verdict may still wait in ms_verdicts when the new
    SYN comes."""
    fp = handoff.fp
    old = conn(fp, 81, 40101)
    held = old.frame("c", "PA", data=REQUEST)
    expect(fp, held, R.DROP_INSPECT_HOLD)
    (rec,) = handoff.records()
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_BLOCK)
    if retransmit_first:
        expect(fp, held, R.DROP_INSPECT_BLOCKED)   # merged on the retransmission
        expect(fp, held, R.DROP_INSPECT_BLOCKED)
        assert verdicts_left(fp) == 0
    new = again(fp, old)
    new.send("c", "S", R.PASS_POLICY_INSPECT)
    assert verdicts_left(fp) == 0                  # the old block is gone with its connection
    new.send("s", "SA")
    new.send("c", "A")
    e = new.assert_state(CtState.CT_ESTABLISHED)
    assert e.leaf.insp_state == InspState.INSP_PENDING
    new.send("c", "PA", R.DROP_INSPECT_HOLD, data=REQUEST)   # held for its own verdict, not blocked
    (rec2,) = handoff.records()
    assert rec2.seq == NEW_ISN[0] + 1 and rec2.key != rec.key
    handoff.writer.verdict(rec2.key, VerdictCode.VERDICT_RELEASE)
    new.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)


@pytest.mark.parametrize("code, later", [
    (VerdictCode.VERDICT_BLOCK, R.PASS_INSPECT_COPIED),
    (VerdictCode.VERDICT_ALLOW, R.PASS_INSPECT_COPIED),   # no skipped inspection either
], ids=["block", "allow"])
@pytest.mark.parametrize("how", ["time_wait", "expired"])
def test_a_stale_verdict_is_not_merged_into_a_new_connection(handoff, code, later, how):
    """A verdict written for a connection that ended before it was merged
    (it closed, or its session expired) meets a new connection with the
    same 5-tuple: it is not that connection's verdict."""
    fp = handoff.fp
    old = conn(fp, 80, 40102)
    old.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    (rec,) = handoff.records()
    if how == "time_wait":
        old.send("c", "FA")                        # copied (the stream's end), no payload to count
        old.send("s", "FA")
        old.send("c", "A")
        old.assert_state(CtState.CT_TIME_WAIT)
    else:
        t = fp.table(session_map(FLOWS, old.c.addr, old.s.addr))   # what the sweeper does to an idle session
        del t[flow_key(t, old.c.addr, old.c.port, old.s.addr, old.s.port, 6)]
        assert old.entry() is None
    handoff.records()
    handoff.writer.verdict(rec.key, code)          # late: the slow path was behind
    new = again(fp, old)
    # TIME_WAIT starts over with the old session's policy decision; a new
    # session (none left, or the old one a blocked connection) asks policy
    renewed = how == "time_wait" and code != VerdictCode.VERDICT_BLOCK
    new.send("c", "S", R.PASS_FORWARD if renewed else R.PASS_POLICY_INSPECT)
    new.send("s", "SA")
    new.send("c", "A")
    new.send("c", "PA", later, data=REQUEST)
    assert new.entry().leaf.insp_state == InspState.INSP_PENDING
    assert verdicts_left(fp) == 0                  # the stale one is dropped, not kept for later
    (rec2,) = handoff.records()
    handoff.writer.verdict(rec2.key, VerdictCode.VERDICT_BLOCK)
    new.send("s", "PA", R.DROP_INSPECT_BLOCKED, data=RESPONSE)


def test_a_syn_on_an_inspected_connection_not_blocked_is_still_ignored(handoff):
    """RFC 5961 4: a SYN on a live connection leaves it alone, also while a
    verdict other than block waits to be merged."""
    fp = handoff.fp
    c = conn(fp, 81, 40103)
    expect(fp, c.frame("c", "PA", data=REQUEST), R.DROP_INSPECT_HOLD)
    (rec,) = handoff.records()
    expect(fp, c.frame("c", "S", seq=NEW_ISN[0]), R.PASS_TCP_IGNORED)
    handoff.writer.verdict(rec.key, VerdictCode.VERDICT_RELEASE)
    expect(fp, c.frame("c", "S", seq=NEW_ISN[0]), R.PASS_TCP_IGNORED)
    assert verdicts_left(fp) == 1                  # not this packet's business: merged with data
    c.send("c", "PA", R.PASS_INSPECT_COPIED, data=REQUEST)
    assert c.entry().leaf.insp_state == InspState.INSP_RELEASED
