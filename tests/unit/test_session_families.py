"""User space's copy of the kernel's choice of session map by family
(datapath/sessions.py key4_of, key_of4, map_key, widen_keys; the kernel's
is bpf/lib/conntrack.h ms_key4_of, checked against it in
tests/datapath/test_conntrack.py). Pure Python: no kernel."""
from __future__ import annotations

import ctypes
import ipaddress

import numpy as np

from datapath.sessions import key4_of, key_of4, map_key, widen_keys


def key(lo: str, hi: str, plo=40000, phi=443, proto=6) -> bytes:
    """struct ms_flow_key bytes: IPv4 IPv4-mapped, ports in network order."""
    def a(x):
        ip = ipaddress.ip_address(x)
        return (bytes(10) + b"\xff\xff" + ip.packed) if ip.version == 4 else ip.packed
    return a(lo) + a(hi) + plo.to_bytes(2, "big") + phi.to_bytes(2, "big") + bytes([proto, 0, 0, 0])


def test_an_ipv4_key_is_its_addresses_ports_and_protocol_in_16_bytes():
    k = key("10.0.0.1", "10.0.0.2")
    k4 = key4_of(k)
    assert k4 == bytes([10, 0, 0, 1, 10, 0, 0, 2]) + (40000).to_bytes(2, "big") + (443).to_bytes(2, "big") \
        + bytes([6, 0, 0, 0])
    assert key_of4(k4) == k
    assert map_key("ms_flows", k) == ("ms_flows4", k4)
    assert map_key("ms_halfopen", k) == ("ms_halfopen4", k4)


def test_ipv6_and_mixed_keys_stay_in_the_ipv6_maps():
    for lo, hi in (("2001:db8::1", "2001:db8::2"), ("::ffff:10.0.0.1", "2001:db8::2"),
                   ("2001:db8::1", "::ffff:10.0.0.2"), ("::10.0.0.1", "::10.0.0.2")):
        k = key(lo, hi)
        assert key4_of(k) is None, (lo, hi)
        assert map_key("ms_flows", k) == ("ms_flows6", k)


def test_widen_keys_gives_the_canonical_keys_of_a_batch():
    class Key4(ctypes.Structure):     # struct ms_flow_key4's layout, as BCC types it
        _fields_ = [("addr_lo", ctypes.c_uint32), ("addr_hi", ctypes.c_uint32), ("port_lo", ctypes.c_uint16),
                    ("port_hi", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]

    class Key(ctypes.Structure):
        _fields_ = [("addr_lo", ctypes.c_uint8 * 16), ("addr_hi", ctypes.c_uint8 * 16), ("port_lo", ctypes.c_uint16),
                    ("port_hi", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]

    wide = [key("10.0.0.1", "10.0.0.2"), key("192.168.1.9", "192.168.7.1", 53, 5353, 17)]
    keys4 = np.frombuffer(b"".join(key4_of(k) for k in wide), dtype=np.dtype(Key4))
    out = widen_keys(keys4, np.dtype(Key))
    assert [out.tobytes()[i * 40:(i + 1) * 40] for i in range(2)] == wide
