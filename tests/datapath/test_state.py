"""Pinned state across builds: reuse, migration of a changed layout,
refusal of a key that cannot be carried, resize. Each build here is a real
compile with the state maps pinned in bpffs (under a directory of this
test's own), so a session made by one build is read back from the next."""
from __future__ import annotations

import ctypes
import json
import os
import secrets

import pytest

from datapath import bpfsys, state
from datapath.config import DatapathConfig
from datapath.errors import MicrosegError
from datapath.sessions import key_of4, layouts
from datapath.source import program_text
from packets_ct import FLOWS, HALFOPEN, TcpConn, flow_key, session_map



@pytest.fixture
def where(tmp_path):
    ns = f"ms-test-state-{secrets.token_hex(3)}"
    yield ns, tmp_path / "layout.json"
    state.remove(ns)
    import shutil
    shutil.rmtree(state.pins.ns_dir(ns), ignore_errors=True)


def established(fp, sport=40000):
    c = TcpConn.make(fp, client=("10.0.0.1", sport), server=("10.0.0.2", 443)).handshake()
    return c


def test_a_new_build_reuses_sessions_and_counters(where):
    ns, rec = where
    fp, lines = state.load(DatapathConfig(), ns, rec)
    try:
        c = established(fp)
        counted = sum(pk for pk, _ in fp.counters().values())
    finally:
        fp.close()
    assert (state.state_dir(ns) / "ms_flows4").exists() and rec.exists()
    fp2, lines = state.load(DatapathConfig(), ns, rec)
    try:
        assert any("reused" in ln for ln in lines), lines
        c.fp = fp2
        e = c.assert_state(c.state(), FLOWS)
        assert e.leaf.packets[0] == 2 and e.leaf.packets[1] == 1
        # the connection goes on in the new build: not a new flow
        c.send("c", "PA", data=b"x" * 10)
        assert sum(pk for pk, _ in fp2.counters().values()) == counted + 1
    finally:
        fp2.close()


def test_a_changed_value_layout_is_migrated_field_by_field(where):
    ns, rec = where
    fp, _ = state.load(DatapathConfig(), ns, rec)
    try:
        c = established(fp)
        before = c.entry().leaf
        want = (before.state, before.packets[0], before.tcp[0].end, before.tcp[1].maxwin)
    finally:
        fp.close()
    # A later version adds a field in the middle of struct ms_flow.
    text = program_text().replace("    __u32 insp_sent[2];     /* payload bytes copied",
                                  "    __u64 added_later;\n    __u32 insp_sent[2];     /* payload bytes copied", 1)
    assert "added_later" in text
    fp2, lines = state.load(DatapathConfig(), ns, rec, text=text)
    try:
        assert any(ln.startswith("ms_flows4: value layout changed: 1 entries carried over") for ln in lines), lines
        c.fp = fp2
        after = c.entry().leaf
        assert (after.state, after.packets[0], after.tcp[0].end, after.tcp[1].maxwin) == want
        assert after.added_later == 0
        c.send("c", "PA", data=b"y" * 10)      # still the same connection to the new build
    finally:
        fp2.close()


def test_a_key_that_cannot_be_carried_is_refused(where):
    ns, rec = where
    fp, _ = state.load(DatapathConfig(), ns, rec)
    fp.close()
    # A later version widens the key's protocol field (same key size).
    key = "    __be16 port_lo;\n    __be16 port_hi;\n    __u8  proto;\n    __u8  pad[3];"
    assert key in program_text()
    text = program_text().replace(key, "    __be16 port_lo;\n    __be16 port_hi;\n    __u16 proto;\n    __u8  pad[2];", 1)
    with pytest.raises(MicrosegError, match="ms_flows6: the key layout changed .proto, pad.*--fresh-state"):
        state.load(DatapathConfig(), ns, rec, text=text)
    # nothing was touched: the old pins are still there and still usable
    assert (state.state_dir(ns) / "ms_flows6").exists()
    fp, lines = state.load(DatapathConfig(), ns, rec)
    fp.close()
    assert any("reused" in ln for ln in lines)


def test_resize_carries_sessions_into_the_new_table(where):
    ns, rec = where
    fp, _ = state.load(DatapathConfig(flow_table_size=4096), ns, rec)
    try:
        conns = [established(fp, 40000 + i) for i in range(3)]
    finally:
        fp.close()
    fp2, lines = state.load(DatapathConfig(flow_table_size=8192), ns, rec)
    try:
        assert any(ln.startswith("ms_flows4: resized 4096 -> 8192: 3 entries") for ln in lines), lines
        assert bpfsys.map_info_by_fd(fp2.table("ms_flows4").map_fd).max_entries == 8192
        for c in conns:
            c.fp = fp2
            assert c.entry() is not None
    finally:
        fp2.close()


def test_fresh_state_discards(where):
    ns, rec = where
    fp, _ = state.load(DatapathConfig(), ns, rec)
    try:
        c = established(fp)
    finally:
        fp.close()
    fp2, lines = state.load(DatapathConfig(), ns, rec, fresh=True)
    try:
        c.fp = fp2
        assert c.entry() is None and any("--fresh-state" in ln for ln in lines)
    finally:
        fp2.close()


def test_sessions_of_one_table_for_both_families_are_split_by_family(where):
    """A build from before the split pinned one ms_flows and one ms_halfopen
    (40-byte keys, IPv4 IPv4-mapped). The next build carries every session
    into the map of its family: IPv4 under its 16-byte key, IPv6 as it was;
    and the connections go on in it, as sessions, not new flows."""
    ns, rec = where
    fp = state.load(DatapathConfig(), ns, rec)[0]
    try:
        conns = [established(fp), TcpConn.make(fp, client=("fd00::1", 40001), server=("fd00::2", 443)).handshake(),
                 TcpConn.make(fp, client=("10.0.0.1", 40002), server=("10.0.0.2", 443))]
        conns[2].send("c", "S")   # half-open
        wide, leaf = layouts()["ms_flows6"]
        old = {}
        for c in conns:
            table = FLOWS if c is not conns[2] else HALFOPEN
            t = fp.table(session_map(table, c.c.addr, c.s.addr))
            k = bytes(flow_key(t, c.c.addr, c.c.port, c.s.addr, c.s.port, 6))
            old.setdefault(table, []).append((key_of4(k) if len(k) == 16 else k, bytes(t[t.Key.from_buffer_copy(k)])))
    finally:
        fp.close()
    # What the older build left: its two tables pinned, its layout record.
    d = state.state_dir(ns)
    record = json.loads(rec.read_text())
    for m in state.STATE_MAPS:
        (d / m).unlink(missing_ok=True)
        record["maps"].pop(m, None)
    lay = state.field_layout(wide, leaf)
    for table, entries in old.items():
        mtype = 1 if table == FLOWS else 9            # HASH, LRU_HASH
        fd = bpfsys.create_map(mtype, ctypes.sizeof(wide), ctypes.sizeof(leaf), 1024, name=table)
        try:
            for k, v in entries:
                bpfsys.map_update(fd, k, v)
            bpfsys.obj_pin(fd, str(d / table))
        finally:
            os.close(fd)
        record["maps"][table] = {**lay, "type": mtype, "max_entries": 1024, "flags": 0}
    rec.write_text(json.dumps(record))

    fp2, lines = state.load(DatapathConfig(), ns, rec)
    try:
        assert "ms_flows: one table for both families before: ms_flows4 1, ms_flows6 1 entries carried over" in lines
        assert "ms_halfopen: one table for both families before: ms_halfopen4 1, ms_halfopen6 0 entries carried over" \
            in lines, lines
        assert not (d / "ms_flows").exists() and not (d / "ms_halfopen").exists()
        for c, table in zip(conns, (FLOWS, FLOWS, HALFOPEN)):
            c.fp = fp2
            e = c.entry()          # in its family's map only (packets_ct.entry checks)
            assert e is not None and e.table == table
        before = sum(pk for pk, _ in fp2.counters().values())
        conns[0].send("c", "PA", data=b"x" * 10)    # the sessions go on in the new build
        conns[1].send("c", "PA", data=b"y" * 10)
        conns[2].send("s", "SA")
        assert sum(pk for pk, _ in fp2.counters().values()) == before + 3
    finally:
        fp2.close()
