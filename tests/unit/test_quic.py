"""protocols/quic.py: Initial keys and packet protection against the RFCs' test
vectors, and crafted flows (coalesced packets, CRYPTO frames out of order
and across datagrams, Retry, version negotiation, version 2, truncated and
tampered packets, the limits)."""
from __future__ import annotations

import random

import pytest

from protocols import quic
from protocols.api import CERTAIN, NO_MATCH, Direction, Malformed
from protocols.quic import (QUIC_V1, QUIC_V2, QuicClientHello, QuicConnectionClose, QuicParser,
                            QuicRetry, QuicServerHello, QuicVersionNegotiation, crypto_frame,
                            initial_keys, protect_initial)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT

# RFC 9001 appendix A: the client's DCID, the keys, and the client's and
# server's protected Initial packets (A.2, A.3).
RFC_DCID = bytes.fromhex("8394c8f03e515708")
RFC_CLIENT_PLAIN = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff") + bytes(917)
RFC_CLIENT_PROTECTED = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934")
RFC_SERVER_PROTECTED = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee")
# The CRYPTO stream of A.2 (its one frame's 241 bytes: the ClientHello with
# its handshake header): reused by the crafted tests.
RFC_STREAM = RFC_CLIENT_PLAIN[4:4 + 0xF1]


def events_of(parser, *datagrams):
    out = []
    for d, data in datagrams:
        out += parser.receive_data(data, d)
    return out


def client_initial(dcid: bytes, frames: bytes, *, pn: int = 0, version: int = QUIC_V1,
                   scid: bytes = b"\x01\x02\x03\x04", pad_to: int = 1200) -> bytes:
    """One client Initial, its frames padded (PADDING frames) so the datagram is pad_to bytes."""
    keys = initial_keys(dcid, version)[0]
    probe_len = len(protect_initial(keys, version=version, dcid=dcid, scid=scid, pn=pn, frames=frames))
    frames += bytes(max(0, pad_to - probe_len))         # (the length varint may grow by a byte)
    return protect_initial(keys, version=version, dcid=dcid, scid=scid, pn=pn, frames=frames)


def server_initial(client_dcid: bytes, frames: bytes, *, pn: int = 0, version: int = QUIC_V1) -> bytes:
    keys = initial_keys(client_dcid, version)[1]
    frames += bytes(max(0, 20 - len(frames)))          # room for the header-protection sample
    return protect_initial(keys, version=version, dcid=b"\x01\x02\x03\x04", scid=b"\xaa" * 8,
                           pn=pn, frames=frames)


def hello_with_sni(name: str) -> bytes:
    """RFC_STREAM with its server name (example.com, 11 bytes) swapped for another of 11 bytes."""
    assert len(name) == 11
    return RFC_STREAM.replace(b"example.com", name.encode())


# --- Keys and the RFC packets ---------------------------------------------------
def test_initial_keys_rfc9001_a1():
    client, server = initial_keys(RFC_DCID)
    assert (client.key.hex(), client.iv.hex(), client.hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2")
    assert (server.key.hex(), server.iv.hex(), server.hp.hex()) == (
        "cf3a5331653c364c88f0f379b6067e37", "0ac1493ca1905853b0bba03e", "c206b8d9b9f0f37644430b490eeaa314")


def test_initial_keys_rfc9369_version2():
    client, server = initial_keys(RFC_DCID, QUIC_V2)
    assert (client.key.hex(), client.iv.hex(), client.hp.hex()) == (
        "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9")
    assert (server.key.hex(), server.iv.hex(), server.hp.hex()) == (
        "82db637861d55e1d011f19ea71d5d2a7", "dd13c276499c0249d3310652", "edf6d05c83121201b436e16877593c3a")


def test_hkdf_expand_equals_cryptography_s():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
    rng = random.Random(3)
    for n in (1, 12, 16, 32, 33, 64, 100):
        secret, info = rng.randbytes(32), rng.randbytes(rng.randrange(0, 40))
        assert quic.hkdf_expand(secret, info, n) == HKDFExpand(hashes.SHA256(), n, info).derive(secret)


def test_protect_initial_reproduces_rfc9001_a2():
    keys = initial_keys(RFC_DCID)[0]
    assert protect_initial(keys, version=QUIC_V1, dcid=RFC_DCID, scid=b"", pn=2,
                           frames=RFC_CLIENT_PLAIN) == RFC_CLIENT_PROTECTED


def test_rfc_client_and_server_initials():
    p = QuicParser()
    ev = events_of(p, (C, RFC_CLIENT_PROTECTED))
    assert len(ev) == 1 and isinstance(ev[0], QuicClientHello)
    ch = ev[0]
    assert (ch.version, ch.dcid, ch.sni, ch.alpn) == (QUIC_V1, RFC_DCID, "example.com", ("alpn",))
    assert ch.hello.versions == (0x0304,) and ch.hello.cipher_suites == (0x1301, 0x1302)
    assert ch.hello.ja4.startswith("q13d0211an_")          # QUIC: JA4's "q", not "t"
    ev = events_of(p, (S, RFC_SERVER_PROTECTED))
    assert len(ev) == 1 and isinstance(ev[0], QuicServerHello)
    assert (ev[0].hello.cipher_suite, ev[0].hello.selected_version) == (0x1301, 0x0304)
    assert ev[0].scid == bytes.fromhex("f067a5502a4262b5")
    assert p.packets["initial"] == 2 and p.undecryptable == 0


def test_server_initial_without_the_client_is_counted_not_decrypted():
    p = QuicParser()
    assert events_of(p, (S, RFC_SERVER_PROTECTED)) == []
    assert p.undecryptable == 1 and p.packets["initial"] == 1


# --- Reassembly ---------------------------------------------------------------
def test_scrambled_crypto_frames_in_coalesced_packets():
    """The hello cut in 7 pieces, sent in reverse order over two Initial
    packets coalesced in one datagram (as Chrome scrambles them)."""
    cuts = [0, 9, 40, 41, 100, 170, 200, len(RFC_STREAM)]
    stream = RFC_STREAM   # handshake header + hello
    pieces = [crypto_frame(a, stream[a:b]) for a, b in zip(cuts, cuts[1:])][::-1]
    keys = initial_keys(RFC_DCID)[0]
    first = protect_initial(keys, version=QUIC_V1, dcid=RFC_DCID, scid=b"", pn=0, frames=b"".join(pieces[:4]))
    second = protect_initial(keys, version=QUIC_V1, dcid=RFC_DCID, scid=b"", pn=1,
                             frames=b"".join(pieces[4:]) + bytes(600))
    p = QuicParser()
    ev = events_of(p, (C, first + second))
    assert [e.sni for e in ev] == ["example.com"]
    assert p.packets["initial"] == 2


def test_crypto_across_datagrams_out_of_order_with_a_retransmission():
    stream = RFC_STREAM
    half = len(stream) // 2
    late = client_initial(RFC_DCID, crypto_frame(half, stream[half:]), pn=1)
    early = client_initial(RFC_DCID, crypto_frame(0, stream[:half]), pn=2)
    p = QuicParser()
    assert events_of(p, (C, late), (C, late)) == []        # the second half, twice
    ev = events_of(p, (C, early))
    assert [e.sni for e in ev] == ["example.com"]
    assert not p._sides[0].crypto.pieces                   # nothing held once the hello is read


def test_whole_and_split_hellos_give_the_same_event():
    stream = RFC_STREAM
    whole = events_of(QuicParser(), (C, client_initial(RFC_DCID, crypto_frame(0, stream))))
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 5))
        frames = [crypto_frame(a, stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        rng.shuffle(frames)
        got = events_of(QuicParser(), *[(C, client_initial(RFC_DCID, f, pn=i)) for i, f in enumerate(frames)])
        assert got == whole


# --- Retry, version negotiation, version 2 -------------------------------------
def test_retry_client_starts_over_with_new_dcid_and_its_new_hello_is_read():
    first_dcid, new_dcid = b"\x11" * 8, b"\x22" * 8
    stream_a = hello_with_sni("allowed.org")
    stream_b = hello_with_sni("blocked.org")
    retry = (bytes([0xF0]) + QUIC_V1.to_bytes(4, "big") + bytes([4]) + b"\x01\x02\x03\x04"
             + bytes([8]) + new_dcid + b"token-bytes" + bytes(16))
    p = QuicParser()
    ev = events_of(p, (C, client_initial(first_dcid, crypto_frame(0, stream_a))), (S, retry),
                   (C, client_initial(new_dcid, crypto_frame(0, stream_b), pn=1)))
    assert [type(e) for e in ev] == [QuicClientHello, QuicRetry, QuicClientHello]
    assert ev[1].scid == new_dcid and ev[1].token_len == len(b"token-bytes")
    assert (ev[0].sni, ev[2].sni) == ("allowed.org", "blocked.org")
    assert ev[2].dcid == new_dcid
    # The server answers with keys from the new DCID.
    sh = RFC_SERVER_PROTECTED
    ev = events_of(p, (S, server_initial(new_dcid, quic.crypto_frame(0, bytes.fromhex(
        "020000560303eefce7f7b37ba1d1632e96677825ddf73988cfc79825df566dc5430b9a045a1200130100002e00330024001d00209d3c94"
        "0d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00020304")))))
    assert [type(e) for e in ev] == [QuicServerHello] and sh
    assert p.packets["retry"] == 1


def test_client_initials_to_the_server_cid_keep_the_first_keys():
    """RFC 9000 7.2: after the server's first Initial the client sends to the
    server's SCID, still under the keys of its first DCID (RFC 9001 5.2).
    The hello's second half comes that way."""
    half = len(RFC_STREAM) // 2
    keys = initial_keys(RFC_DCID)[0]
    first = protect_initial(keys, version=QUIC_V1, dcid=RFC_DCID, scid=b"\x01", pn=0,
                            frames=crypto_frame(0, RFC_STREAM[:half]) + bytes(1100))
    second = protect_initial(keys, version=QUIC_V1, dcid=b"\xaa" * 8, scid=b"\x01", pn=1,
                             frames=crypto_frame(half, RFC_STREAM[half:]) + bytes(1000))
    p = QuicParser()
    events_of(p, (C, first), (S, server_initial(RFC_DCID, b"\x01")))     # the server's SCID is aa..aa
    ev = events_of(p, (C, second))
    assert [e.sni for e in ev] == ["example.com"] and ev[0].dcid == b"\xaa" * 8
    assert p.undecryptable == 0 and p.handshakes == 1


def test_a_new_connection_on_the_same_flow_is_read_too():
    """A client may open another connection on the 5-tuple (a new DCID, no
    Retry): its hello is read, whatever the first one named."""
    p = QuicParser()
    ev = events_of(p, (C, client_initial(b"\x11" * 8, crypto_frame(0, hello_with_sni("allowed.org")))),
                   (C, client_initial(b"\x22" * 8, crypto_frame(0, hello_with_sni("blocked.org")))))
    assert [(e.sni, e.dcid) for e in ev] == [("allowed.org", b"\x11" * 8), ("blocked.org", b"\x22" * 8)]
    # ... up to MAX_HANDSHAKES on one flow
    for i in range(3, quic.MAX_HANDSHAKES + 2):
        ev = events_of(p, (C, client_initial(bytes([i]) * 8, crypto_frame(0, RFC_STREAM))))
    assert len(ev) == 1 and isinstance(ev[0], Malformed) and "handshakes" in ev[0].reason
    assert p.handshakes == quic.MAX_HANDSHAKES


def test_version_negotiation():
    vn = (bytes([0x80]) + bytes(4) + bytes([4]) + b"\x01\x02\x03\x04" + bytes([8]) + RFC_DCID
          + QUIC_V1.to_bytes(4, "big") + QUIC_V2.to_bytes(4, "big"))
    p = QuicParser()
    events_of(p, (C, RFC_CLIENT_PROTECTED))
    ev = events_of(p, (S, vn))
    assert ev == [QuicVersionNegotiation(S, b"\x01\x02\x03\x04", RFC_DCID, (QUIC_V1, QUIC_V2))]
    assert quic.probe(vn, S) > NO_MATCH


def test_version_2_initial():
    stream = RFC_STREAM
    dgram = client_initial(RFC_DCID, crypto_frame(0, stream), version=QUIC_V2)
    assert dgram[0] & 0x30 == 0x10                         # v2's Initial type bits
    ev = events_of(QuicParser(), (C, dgram))
    assert [(e.version, e.sni) for e in ev] == [(QUIC_V2, "example.com")]
    assert quic.probe(dgram, C) == CERTAIN


def test_connection_close_in_an_initial():
    frame = bytes([0x1C]) + quic._encode_varint(0x0A) + quic._encode_varint(0x06) + bytes([4]) + b"nope"
    p = QuicParser()
    events_of(p, (C, RFC_CLIENT_PROTECTED))
    ev = events_of(p, (S, server_initial(RFC_DCID, frame)))
    assert ev == [QuicConnectionClose(S, QUIC_V1, 0x0A, 0x06, "nope")]


# --- Bad input -------------------------------------------------------------------
def test_bad_tag_is_dropped_and_the_next_packet_still_read():
    bad = bytearray(RFC_CLIENT_PROTECTED)
    bad[500] ^= 0x01
    p = QuicParser()
    assert events_of(p, (C, bytes(bad))) == []
    assert p.undecryptable == 1
    assert [e.sni for e in events_of(p, (C, RFC_CLIENT_PROTECTED))] == ["example.com"]


def test_truncated_datagrams_never_raise():
    for n in range(0, len(RFC_CLIENT_PROTECTED), 7):
        p = QuicParser()
        ev = events_of(p, (C, RFC_CLIENT_PROTECTED[:n]))
        assert all(isinstance(e, Malformed) for e in ev)   # cut short: the packet does not parse
        assert not any(isinstance(e, QuicClientHello) for e in ev)


def test_not_quic_first_datagram_is_malformed():
    ev = events_of(QuicParser(), (C, b"GET / HTTP/1.1\r\n\r\n"))
    assert len(ev) == 1 and isinstance(ev[0], Malformed) and "not a QUIC packet" in ev[0].reason


def test_short_header_packets_are_counted():
    p = QuicParser()
    events_of(p, (C, RFC_CLIENT_PROTECTED), (C, b"\x41" + bytes(40)), (S, b"\x5f" + bytes(30)))
    assert p.packets["short_header"] == 2


def test_initial_packet_limit():
    p = QuicParser()
    bad = bytearray(RFC_CLIENT_PROTECTED)
    bad[600] ^= 0xFF
    ev = events_of(p, *[(C, bytes(bad))] * quic.MAX_INITIAL_PACKETS)
    assert ev == []
    ev = events_of(p, (C, RFC_CLIENT_PROTECTED))            # one too many: the side gives up
    assert len(ev) == 1 and isinstance(ev[0], Malformed) and "Initial packets" in ev[0].reason
    assert events_of(p, (C, RFC_CLIENT_PROTECTED)) == []    # and stays given up


def test_crypto_past_the_cap_is_not_held_and_an_oversized_hello_gives_up():
    p = QuicParser()
    far = client_initial(RFC_DCID, crypto_frame(quic.MAX_CRYPTO_BYTES + 10, b"x" * 500))
    assert events_of(p, (C, far)) == []
    assert p._sides[0].crypto.held == 0
    huge = bytes([1]) + (quic.MAX_CRYPTO_BYTES).to_bytes(3, "big") + RFC_STREAM[4:]
    ev = events_of(QuicParser(), (C, client_initial(RFC_DCID, crypto_frame(0, huge))))
    assert len(ev) == 1 and isinstance(ev[0], Malformed) and "limit" in ev[0].reason


def test_out_of_order_pieces_are_bounded():
    frames = b"".join(crypto_frame(10 + 2 * i, b"x") for i in range(quic.MAX_CRYPTO_PIECES + 1))
    p = QuicParser()
    keys = initial_keys(RFC_DCID)[0]
    dgram = protect_initial(keys, version=QUIC_V1, dcid=RFC_DCID, scid=b"", pn=0, frames=frames)
    ev = events_of(p, (C, dgram))
    assert len(ev) == 1 and isinstance(ev[0], Malformed) and "pieces" in ev[0].reason


def test_server_sending_a_client_hello_is_malformed():
    p = QuicParser()
    events_of(p, (C, RFC_CLIENT_PROTECTED))
    ev = events_of(p, (S, server_initial(RFC_DCID, crypto_frame(0, RFC_STREAM))))
    assert len(ev) == 1 and isinstance(ev[0], Malformed) and "not a ServerHello" in ev[0].reason


# --- Detection and the kernel signature ---------------------------------------------
def test_probe_and_signature():
    assert quic.probe(RFC_CLIENT_PROTECTED, C) == CERTAIN
    assert quic.probe(b"\x00" * 40, C) == NO_MATCH
    assert quic.probe(RFC_SERVER_PROTECTED, S) > NO_MATCH
    sigs = quic.PLUGIN.signatures
    assert any(s.matches(RFC_CLIENT_PROTECTED) for s in sigs)
    v2 = client_initial(RFC_DCID, crypto_frame(0, RFC_STREAM[:40]), version=QUIC_V2)
    assert any(s.matches(v2) for s in sigs)
    # A Handshake packet and a short header are not a first Initial.
    hs = bytes([0xE0]) + RFC_CLIENT_PROTECTED[1:]
    assert not any(s.matches(hs) for s in sigs)
    assert not any(s.matches(b"\x41" + RFC_CLIENT_PROTECTED[1:]) for s in sigs)
    assert all(s.direction == C for s in sigs)


def test_udp_only():
    with pytest.raises(Exception):
        QuicParser("tcp")
