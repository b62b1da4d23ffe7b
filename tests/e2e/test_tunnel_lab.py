"""A tunnel through the gateway: the session is the inner flow's.

The client and the server namespaces hold the two ends of a VXLAN tunnel
(UDP 4789 between their lab addresses) and talk over it on addresses of
their own; the gateway, where microseg is attached, forwards only the
encapsulated packets. A curl over the tunnel must show in `microseg
sessions` with the inner addresses and port (bpf/lib/tunnel.h
decapsulates it), tracked to its end like any other TCP flow.

VXLAN, not GRE or ip6tnl: the lab kernel is built without those drivers
(CONFIG_NET_IPGRE, CONFIG_NET_IPIP, CONFIG_IPV6_TUNNEL unset); the fast
path's GRE and IPIP decapsulation is covered packet by packet in
tests/datapath/test_tunnel_kernel.py.
"""
from __future__ import annotations

import json

import pytest

from appliance.lab import CLIENT_V4, SERVER_V4, HttpServer

pytestmark = pytest.mark.lab

VNI = 42
INNER_CLIENT, INNER_SERVER = "10.99.0.1", "10.99.0.2"


def vxlan_end(lab, ns: str, local: str, remote: str, inner: str) -> None:
    for argv in (["ip", "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "local", local,
                  "remote", remote, "dstport", "4789", "dev", "eth0"],
                 ["ip", "addr", "add", f"{inner}/24", "dev", "vx0"],
                 ["ip", "link", "set", "vx0", "up"]):
        lab.run(ns, argv)


def test_curl_through_vxlan_is_the_inner_session(lab, attached, microseg):
    # The devices live in the lab's namespaces: removed with them.
    vxlan_end(lab, lab.client, CLIENT_V4, SERVER_V4, INNER_CLIENT)
    vxlan_end(lab, lab.server, SERVER_V4, CLIENT_V4, INNER_SERVER)
    with attached():
        with HttpServer(lab):
            r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                     "--max-time", "10", f"http://{INNER_SERVER}:8080/"])
            assert r.stdout == "200"
        out = microseg("sessions", "--netns", lab.gateway, "--json", "--proto", "tcp", check=True).stdout
        tcp = json.loads(out)["sessions"]
        # One TCP session, the inner one: its addresses are the tunnel's
        # inside, not the lab addresses the gateway routed.
        assert len(tcp) == 1, tcp
        s = tcp[0]
        assert (s["src"], s["dst"], s["dport"]) == (INNER_CLIENT, INNER_SERVER, 8080)
        assert s["packets_orig"] >= 4 and s["packets_reply"] >= 4
        assert s["table"] == "ms_flows"          # the handshake completed through the tunnel
