"""An out-of-tree protocol plugin, installed as a user would, is found by
the registry, identified by the kernel's L7 stage from its signatures (with
no C change: the running build's table is reloaded) and parsed by its own
parser through the flow analyzer.

The example package (examples/microseg-nats) is installed with pip into a
scratch directory put on sys.path, so the virtual environment is untouched.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datapath import l7
from packets_ct import TcpConn
from protocols import registry
from protocols.api import Direction
from slowpath.analyzer import FlowAnalyzer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "microseg-nats"

# A NATS server's greeting, the client's CONNECT (name "sensor-7", user
# "ops") and a PUB whose 2-byte payload is skipped, not read as a command.
INFO = b'INFO {"server_id":"NDX3","version":"2.10.7","max_payload":1048576}\r\n'
CONNECT = b'CONNECT {"verbose":false,"name":"sensor-7","user":"ops","pass":"pw"}\r\n'
PUBLISH = b"PUB plant.temp 2\r\n21\r\nPING\r\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("plugins")
    src = tmp_path_factory.mktemp("src") / EXAMPLE.name   # pip builds in place: keep the tree clean
    shutil.copytree(EXAMPLE, src)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    sys.path.insert(0, str(target))
    registry.default_plugins.cache_clear()
    try:
        yield registry.all_plugins()
    finally:
        sys.path.remove(str(target))
        for mod in [m for m in sys.modules if m.startswith("microseg_nats")]:
            del sys.modules[mod]
        registry.default_plugins.cache_clear()


def test_registry_finds_the_installed_plugin(installed):
    names = [p.name for p in installed]
    assert names[:6] == ["http", "tls", "dns", "ssh", "mysql", "redis"]   # built-ins first
    assert "nats" in names
    assert l7.app_ids(installed)["nats"] >= l7.PLUGIN_FIRST


def test_kernel_identifies_it_without_a_rebuild(fastpath, installed):
    own = fastpath.l7
    tab = l7.compile_signatures(installed)
    fastpath.l7 = tab
    try:
        l7.load(fastpath, tab)
        conn = TcpConn.make(fastpath, server=("10.0.0.2", 4222)).handshake()
        conn.send("s", "PA", data=INFO)
        assert conn.entry().leaf.app == tab.ids["nats"]
    finally:
        fastpath.l7 = own
        l7.load(fastpath, own)


def test_parser_and_probe_through_the_analyzer(installed):
    an = FlowAnalyzer("tcp", installed)
    events = an.data(Direction.TO_CLIENT, INFO[:5]) + an.data(Direction.TO_CLIENT, INFO[5:])
    events += an.data(Direction.TO_SERVER, CONNECT[:5]) + an.data(Direction.TO_SERVER, CONNECT[5:] + PUBLISH)
    assert an.app == "nats"
    kinds = [e.kind for e in events]
    assert kinds == ["nats_info", "nats_connect", "nats_message"]
    assert (events[0].server_id, events[0].version) == ("NDX3", "2.10.7")
    assert (events[1].name, events[1].user) == ("sensor-7", "ops")
    assert (events[2].op, events[2].subject, events[2].size) == ("PUB", "plant.temp", 2)
    # with the built-in MQTT beside it, names stay unique
    assert sorted(p.name for p in installed).count("mqtt") == 1


def test_a_broken_plugin_is_named_not_a_traceback(tmp_path):
    pkg = tmp_path / "broken"
    (pkg / "brk").mkdir(parents=True)
    (pkg / "brk" / "__init__.py").write_text("PLUGIN = 42\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "brk"\nversion = "0"\n'
        '[project.entry-points."microseg.protocols"]\nbrk = "brk:PLUGIN"\n'
        '[tool.setuptools]\npackages = ["brk"]\n')
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True, timeout=300)
    r = subprocess.run([sys.executable, "-c", "from protocols import registry; registry.all_plugins()"],
                       capture_output=True, text=True, env={"PYTHONPATH": f"{target}:{Path.cwd()}"},
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode != 0
    assert "plugin entry point 'brk' (brk:PLUGIN): is a int, not a ProtocolPlugin" in r.stderr
