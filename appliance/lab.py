"""A gateway lab in network namespaces: client -- gateway -- server.

    client (eth0 10.77.1.2/24, fd77:1::2/64)
      |  veth
    gateway (gw-c 10.77.1.1 | gw-s 10.77.2.1, forwarding on)
      |  veth
    server (eth0 10.77.2.2/24, fd77:2::2/64)

Everything lives in namespaces this module creates, named ms-<tag>-{cli,gw,srv}
with a per-run tag, so two runs cannot collide and nothing touches the
host's interfaces. Addresses are private and exist only inside the lab.
``Lab`` is a context manager: leaving it removes every namespace it made,
also on error (removing a namespace removes its veth ends and filters).
"""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field

from pyroute2 import NetNS, netns as pr_netns

from datapath import pins
from datapath.errors import MicrosegError

IFA_F_NODAD = 0x02  # skip IPv6 duplicate address detection: addresses usable at once

CLIENT_V4, GW_C_V4, GW_S_V4, SERVER_V4 = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"
CLIENT_V6, GW_C_V6, GW_S_V6, SERVER_V6 = "fd77:1::2", "fd77:1::1", "fd77:2::1", "fd77:2::2"
GW_IFACES = ("gw-c", "gw-s")
NS_PREFIX = "ms-"


def new_tag() -> str:
    return secrets.token_hex(3)


@dataclass
class Lab:
    tag: str = field(default_factory=new_tag)

    @property
    def client(self) -> str:
        return f"{NS_PREFIX}{self.tag}-cli"

    @property
    def gateway(self) -> str:
        return f"{NS_PREFIX}{self.tag}-gw"

    @property
    def server(self) -> str:
        return f"{NS_PREFIX}{self.tag}-srv"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client, self.gateway, self.server)

    # -- lifecycle ------------------------------------------------------
    def up(self) -> "Lab":
        existing = set(pr_netns.listnetns())
        clash = [n for n in self.namespaces if n in existing]
        if clash:
            raise MicrosegError(f"lab '{self.tag}' already exists (namespace {clash[0]}); run `microseg lab down --tag {self.tag}`")
        try:
            for n in self.namespaces:
                pr_netns.create(n)
                # No duplicate address detection on the lab's links (link-local
                # addresses included): IPv6 works the moment a link is up.
                self.sysctl(n, "net.ipv6.conf.default.accept_dad", "0")
                self.sysctl(n, "net.ipv6.conf.all.accept_dad", "0")
            self._wire()
        except Exception:
            self.down()
            raise
        return self

    def _wire(self) -> None:
        with NetNS(self.gateway) as gw:
            gw.link("add", ifname="gw-c", kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.client})
            gw.link("add", ifname="gw-s", kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.server})
            self._addr(gw, "gw-c", GW_C_V4, GW_C_V6)
            self._addr(gw, "gw-s", GW_S_V4, GW_S_V6)
        for ns, v4, v6, gw4, gw6 in ((self.client, CLIENT_V4, CLIENT_V6, GW_C_V4, GW_C_V6),
                                     (self.server, SERVER_V4, SERVER_V6, GW_S_V4, GW_S_V6)):
            with NetNS(ns) as h:
                self._addr(h, "eth0", v4, v6)
                h.route("add", dst="default", gateway=gw4)
                h.route("add", dst="default", gateway=gw6, family=10)
        self.sysctl(self.gateway, "net.ipv4.ip_forward", "1")
        self.sysctl(self.gateway, "net.ipv6.conf.all.forwarding", "1")

    @staticmethod
    def _addr(h, ifname: str, v4: str, v6: str) -> None:
        i = h.link_lookup(ifname=ifname)[0]
        h.addr("add", index=i, address=v4, prefixlen=24)
        h.addr("add", index=i, address=v6, prefixlen=64, flags=IFA_F_NODAD)
        h.link("set", index=i, state="up")
        lo = h.link_lookup(ifname="lo")[0]
        h.link("set", index=lo, state="up")

    def down(self) -> list[str]:
        """Remove the lab's namespaces (and microseg's pins and state for
        them); the namespaces that existed and were removed."""
        present = set(pr_netns.listnetns())
        found = [n for n in self.namespaces if n in present]
        remove_namespaces(found)
        for n in self.namespaces:
            pins.remove_namespace_pins(n)
            forget_namespace_state(n)
        left = set(pr_netns.listnetns())
        return [n for n in found if n not in left]

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- running things inside -----------------------------------------
    def argv(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: list[str], timeout: float = 30, check: bool = True,
            **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(ns, argv), capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(ns, argv), **kw)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])


def forget_namespace_state(ns: str) -> None:
    """Remove what microseg keeps about a namespace under its run directory
    (applied policy, clsact bookkeeping, the owner lock file a killed
    daemon left): the namespace is gone."""
    import shutil

    from appliance import policyfile
    from datapath import attach, owner

    shutil.rmtree(policyfile.state_dir(ns), ignore_errors=True)
    attach._state_file(ns).unlink(missing_ok=True)
    owner.lock_path(ns).unlink(missing_ok=True)


def remove_namespaces(names: list[str]) -> None:
    """Remove namespaces; every process still inside one is ours (the lab's)."""
    for n in names:
        _kill_inside(n)
        try:
            pr_netns.remove(n)
        except OSError:
            pass


def _kill_inside(ns: str) -> None:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


def labs_present() -> list[str]:
    """Tags of labs whose namespaces exist."""
    tags = set()
    for n in pr_netns.listnetns():
        if n.startswith(NS_PREFIX) and n.rsplit("-", 1)[-1] in ("cli", "gw", "srv"):
            tags.add(n[len(NS_PREFIX):].rsplit("-", 1)[0])
    return sorted(tags)


class HttpServer:
    """python3 -m http.server in the server namespace, logging requests to a file."""

    def __init__(self, lab: Lab, port: int = 8080, root: str | None = None):
        self.lab, self.port, self.root = lab, port, root
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "HttpServer":
        argv = ["/usr/bin/python3", "-m", "http.server", "--bind", "::", str(self.port)]
        if self.root:
            argv += ["--directory", self.root]
        self.proc = self.lab.popen(self.lab.server, argv)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.lab.run(self.lab.server, ["ss", "-Hltn", f"sport = :{self.port}"], check=False)
            if r.stdout.strip():
                return self
            time.sleep(0.05)
        self.__exit__()
        raise MicrosegError(f"HTTP server in {self.lab.server} did not start on port {self.port}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
