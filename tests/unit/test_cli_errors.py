"""Bad input ends in one clear line and a non-zero exit, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from datapath import loader
from datapath.errors import MicrosegError
from datapath.loader import FastPath
from appliance.lab import Lab

MICROSEG = [sys.executable, "-m", "appliance.cli"]


def cli(*args, **kw):
    return subprocess.run([*MICROSEG, *args], capture_output=True, text=True, timeout=120, **kw)


def assert_one_clear_line(r, *needles, code=None):
    assert r.returncode != 0
    if code is not None:
        assert r.returncode == code
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("microseg: error: ")
    for n in needles:
        assert n in first


def test_unknown_interface_named():
    with Lab() as lab:
        r = cli("up", "--netns", lab.gateway, "--iface", "gw-c", "nope0")
        assert_one_clear_line(r, "'nope0'", lab.gateway, code=2)
        # nothing was attached on the interface that did exist
        assert "bpf" not in lab.run(lab.gateway, ["tc", "filter", "show", "dev", "gw-c", "ingress"]).stdout


def test_unknown_namespace_named():
    r = cli("down", "--netns", "ms-no-such-ns", "--iface", "eth0")
    assert_one_clear_line(r, "ms-no-such-ns", code=2)


def test_not_root_is_told():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", *MICROSEG, "status"],
                       capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert_one_clear_line(r, "needs root or CAP_BPF and CAP_NET_ADMIN", code=1)


def test_bad_flow_table_size():
    r = cli("up", "--netns", "ms-no-such-ns", "--iface", "x", "--flow-table-size", "5")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_missing_headers_says_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "headers_dir", lambda: tmp_path / "nothing")
    with pytest.raises(MicrosegError, match=r"kernel headers missing: .* run `make setup`"):
        FastPath()


def test_compile_error_carries_compiler_lines():
    with pytest.raises(MicrosegError) as ei:
        FastPath(text="int tc_ingress(struct __sk_buff *skb) { return undefined_symbol; }\n")
    msg = str(ei.value)
    assert msg.startswith("BPF compile failed")
    assert "undefined_symbol" in msg


def test_verifier_error_carries_verifier_lines():
    # Reads packet data without a bounds check: the verifier must refuse it.
    text = r"""
#include <uapi/linux/pkt_cls.h>
int tc_ingress(struct __sk_buff *skb) {
    unsigned char *p = (void *)(long)skb->data;
    return p[100];
}
"""
    from datapath.enums import Direction
    with pytest.raises(MicrosegError) as ei:
        FastPath(text=text, programs={Direction.DIR_INGRESS: "tc_ingress"})
    msg = str(ei.value)
    assert msg.startswith("BPF verifier rejected tc_ingress")
    assert "invalid access to packet" in msg


def test_bad_config_file_names_file_and_line(tmp_path):
    f = tmp_path / "microseg.yaml"
    f.write_text("loose: true\ntimeouts:\n  established: -3\n")
    r = cli("up", "--netns", "ms-no-such-ns", "--iface", "x", "--config", str(f))
    assert_one_clear_line(r, f"{f}:3:", "timeouts.established", code=2)
