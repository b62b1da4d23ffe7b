"""A replay's records are its capture's only: drop and session-end events a
shared fast path wrote before the replay (earlier packets, earlier tests)
are read and thrown away, not logged with the capture's records."""
from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from datapath.enums import Reason
from packets_ct import TcpConn, apply_app_policy

STALE = "10.0.0.77"


def test_events_before_the_replay_are_not_its_records(fastpath, tmp_path):
    from appliance.daemon import empty_rules
    from appliance.replay import replay, replay_config

    fp = apply_app_policy(fastpath)     # port 443: tls only
    # A session removed for speaking the wrong protocol: a drop event and a
    # session end wait in the rings.
    conn = TcpConn.make(fp, client=(STALE, 40000), server=("10.0.1.5", 443))
    conn.send("c", "S", Reason.PASS_POLICY_ALLOW)
    conn.send("s", "SA")
    conn.send("c", "A")
    conn.send("c", "PA", Reason.DROP_L7_APP_MISMATCH, data=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # and a packet the default policy drops
    conn2 = TcpConn.make(fp, client=(STALE, 40001), server=("10.0.9.9", 22))
    conn2.send("c", "S", Reason.DROP_POLICY_DEFAULT)

    pcap = tmp_path / "one.pcap"
    q = bytes.fromhex("abcd01000001000000000000") + b"\x01a\x00\x00\x01\x00\x01"
    wrpcap(str(pcap), [Ether() / IP(src="10.2.0.1", dst="10.2.0.53") / UDP(sport=5000, dport=53) / q])
    records: list[dict] = []
    try:
        fp.reset()
        fp.apply_runtime(replay_config())
        result = replay(pcap, fp, empty_rules(), records.append)
    finally:
        fp.reset()
        fp.apply_runtime(fp.config)
    assert result.frames == 1 and records
    stale = [r for r in records if STALE in (r.get("src_ip"), r.get("dest_ip"))]
    assert not stale, stale
    assert result.drop_records == 0
