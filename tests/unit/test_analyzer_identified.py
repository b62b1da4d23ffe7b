"""FlowAnalyzer.identified: the one rule for "protocol and naming fields
known" that offline identify_only and the engine's dpi-only flows share."""
from protocols.api import Direction
from slowpath.analyzer import FlowAnalyzer

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def test_http_identified_at_the_request_head_with_its_host():
    an = FlowAnalyzer("tcp")
    an.data(C, b"GET / HTTP/1.1\r\nHo")
    assert not an.identified
    an.data(C, b"st: example.org\r\n\r\n")
    assert an.identified and an.app == "http" and an.names == {"host": "example.org"}


def test_tls_identified_at_the_client_hello_with_its_sni():
    from tests.unit.test_tls_parser import client_hello, record, sni_ext
    rec = record(client_hello(exts=(sni_ext(b"example.org"),)))
    an = FlowAnalyzer("tcp")
    an.data(C, rec[:40])
    assert not an.identified
    an.data(C, rec[40:])
    assert an.identified and an.app == "tls" and an.names == {"sni": "example.org"}


def test_undecided_and_undecodable():
    an = FlowAnalyzer("tcp")
    assert not an.identified
    an.data(C, b"\x00" * 10)
    assert not an.identified                   # still buffering for detection
    an.data(C, b"\x00" * 4096)                 # a buffer's worth and nobody claims it
    assert an.decided and an.app is None and an.identified   # nothing to read: done


def test_dns_named_by_its_first_question():
    import struct
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    an = FlowAnalyzer("udp")
    an.datagram(C, q)
    assert an.identified and an.app == "dns" and an.names == {"dns_query": "example.com"}


def test_ssh_identified_at_the_first_banner():
    an = FlowAnalyzer("tcp")
    an.data(S, b"SSH-2.0-OpenSSH_9.6\r\n")
    assert an.identified and an.app == "ssh" and an.names == {"ssh_banner": "SSH-2.0-OpenSSH_9.6"}


def test_udp_flow_nobody_claims_is_settled_after_a_buffers_worth():
    """Datagrams count toward DETECT_BUFFER_BYTES as stream bytes do: the
    flow is settled (no protocol, nothing more to parse) instead of being
    probed, and its datagrams held, to the end (before: undecided forever)."""
    from slowpath.analyzer import DETECT_BUFFER_BYTES
    an = FlowAnalyzer("udp")
    junk = b"\xc3" + b"\x00" * 1199                  # a QUIC-like long header: nobody's
    for i in range(DETECT_BUFFER_BYTES // len(junk) + 1):
        an.datagram(C if i % 2 == 0 else S, junk)
    assert an.decided and an.app is None and an.identified
    assert sum(len(p.datagrams) for p in an._pending.values()) == 0
