"""A non-editable install works: the wheel carries the BPF C sources and every
data file the code reads, and an installed copy runs with no checkout around.

The wheel is built from a copy of the tree (the checkout stays untouched),
installed with ``pip install --target`` into a directory of its own, and run
from a working directory outside the repository by the venv's base
interpreter with PYTHONPATH = that directory + the venv's site-packages (for
the dependencies). Base interpreter, because the venv's own would process the
editable install's .pth and could fall back on the checkout; this way the
repository is not on the import path at all, and the test checks where every
module and data file came from.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = PYPROJECT["tool"]["setuptools"]["packages"]
SCRIPTS = PYPROJECT["project"]["scripts"]

# Run by the installed copy: where each module and data file came from, then
# the fast path compiled from the installed BPF sources (root only).
PROBE = r"""
import json, sys
import appliance.cli, appliance.commands.parser, bpf, datapath.loader, datapath.source as src, protocols.registry, slowpath.eve as eve
out = {
    "sys_path": sys.path,
    "modules": {m.__name__: m.__file__ for m in (appliance.cli, bpf, datapath.loader, src, protocols.registry, eve)},
    "bpf_dir": str(src.BPF_DIR), "main_source": str(src.MAIN_SOURCE),
    "lib_headers": sorted(p.name for p in src.LIB_DIR.glob("*.h")),
    "defines": len(src.header_defines("MS_")),
    "schema_path": str(eve.SCHEMA_PATH), "schema_keys": len(eve.load_schema()),
    "precedence": len(appliance.commands.parser.precedence()),
}
if sys.argv[1:] == ["compile"]:
    from datapath.loader import FastPath
    fp = FastPath()
    out["programs"] = sorted(f.name.decode() if isinstance(f.name, bytes) else f.name for f in fp.fns.values())
    fp.close()
print(json.dumps(out))
"""


def _venv_python() -> Path:
    venv = REPO / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    """What a fresh clone would not have: .git, .venv, caches, build output
    (a stale build/ would leak old files into the wheel)."""
    return {n for n in names
            if n.startswith(".") or n in ("__pycache__", "build", "dist") or n.endswith((".egg-info", ".pyc"))}


def _pip(python: Path, *argv: str, cwd: Path) -> None:
    r = subprocess.run([str(python), "-m", "pip", *argv, "-q"], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"pip {' '.join(argv)}: {r.stdout}{r.stderr}"


class Install:
    def __init__(self, root: Path):
        self.root = root
        vpy = _venv_python()
        info = json.loads(subprocess.check_output([str(vpy), "-c", (
            "import json, sys, sysconfig; p = sysconfig.get_paths(); "
            "print(json.dumps({'purelib': p['purelib'], 'platlib': p['platlib'], "
            "'base': getattr(sys, '_base_executable', sys.executable)}))")], text=True))
        self.python = info["base"]
        src = root / "src"
        shutil.copytree(REPO, src, ignore=_copy_ignore)
        dist = root / "dist"
        _pip(vpy, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), ".", cwd=src)
        (self.wheel,) = dist.glob("microseg-*.whl")
        self.target = root / "site"
        _pip(vpy, "install", "--no-deps", "--no-index", "--target", str(self.target), str(self.wheel), cwd=root)
        self.cwd = root / "elsewhere"
        self.cwd.mkdir()
        deps = [info["purelib"]] + ([info["platlib"]] if info["platlib"] != info["purelib"] else [])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
        self.env.update(PYTHONPATH=os.pathsep.join([str(self.target), *deps]), PYTHONNOUSERSITE="1",
                        PYTHONDONTWRITEBYTECODE="1")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, *argv], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Install:
    return Install(tmp_path_factory.mktemp("packaging"))


def _in_target(inst: Install, path: str) -> bool:
    p = Path(path).resolve()
    return p.is_relative_to(inst.target.resolve()) and not p.is_relative_to(REPO)


def test_the_wheel_carries_every_file_of_the_packages(installed):
    """Each file beside the code (the BPF sources, the EVE schema) is in the
    wheel: a data file the code reads but the wheel lacks breaks only an
    installed copy, never the checkout."""
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for pkg in PACKAGES:
        pkg_dir = REPO / pkg.replace(".", "/")
        for f in pkg_dir.rglob("*"):
            rel = f.relative_to(REPO)
            if f.is_dir() or "__pycache__" in rel.parts or f.suffix == ".pyc" or f.name.startswith("."):
                continue
            assert rel.as_posix() in names, f"{rel} is not in the wheel (package-data in pyproject.toml?)"
    assert {"bpf/fastpath.c", "bpf/xdp_blocklist.c", "bpf/lib/maps.h", "slowpath/eve_schema.json"} <= names
    dist_info = f"{PYPROJECT['project']['name']}-{PYPROJECT['project']['version']}.dist-info"
    ep = zipfile.ZipFile(installed.wheel).read(f"{dist_info}/entry_points.txt").decode()
    for name, target in SCRIPTS.items():
        assert f"{name} = {target}" in ep


def test_the_cli_and_its_console_script_run_from_the_install(installed):
    r = installed.run("-m", "appliance.cli", "--help")
    assert r.returncode == 0, r.stderr
    assert "preflight" in r.stdout and "run" in r.stdout
    # The console script pip wrote (its #! names the venv's interpreter; run
    # it with the base one so the checkout cannot serve an import).
    for name, target in SCRIPTS.items():
        script = installed.target / "bin" / name
        module, func = target.split(":")
        assert f"from {module} import {func}" in script.read_text()
        r = installed.run(str(script), "--help")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"usage: {name}")


def test_the_installed_copy_finds_its_data_not_the_checkouts(installed):
    r = installed.run("-c", PROBE)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # Nothing of the checkout on the path but the venv's site-packages (the
    # dependencies, which lives under the repository).
    venv = (REPO / ".venv").resolve()
    assert not [p for p in out["sys_path"] if p and Path(p).resolve().is_relative_to(REPO)
                and not Path(p).resolve().is_relative_to(venv)], out["sys_path"]
    for mod, path in out["modules"].items():
        assert _in_target(installed, path), f"{mod} imported from {path}"
    assert out["bpf_dir"] == str(installed.target / "bpf")
    assert _in_target(installed, out["main_source"]) and Path(out["main_source"]).is_file()
    assert out["lib_headers"] == sorted(p.name for p in (REPO / "bpf" / "lib").glob("*.h"))
    assert out["defines"] > 0
    assert _in_target(installed, out["schema_path"]) and out["schema_keys"] > 0
    assert out["precedence"] > 0    # `microseg policy --help` reads datapath/policy_compile.py


def test_the_installed_copy_compiles_the_fast_path_and_runs_preflight(installed):
    if os.geteuid() != 0:
        pytest.fail("the installed copy loads the fast path and runs preflight: run as root")
    r = installed.run("-c", PROBE, "compile", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["programs"] == ["tc_egress", "tc_ingress"], out
    # A real command through the console script: preflight probes the kernel
    # (throwaway namespaces of its own); exit 1 only means a missing feature.
    r = installed.run(str(installed.target / "bin" / "microseg"), "preflight", "--json", timeout=120)
    assert r.returncode in (0, 1), r.stderr
    report = json.loads(r.stdout)
    assert report["host"] and report["features"]


def test_bpf_sources_found_through_the_import_system_when_not_beside_datapath(tmp_path):
    """datapath/source.py looks beside the datapath package first (both
    layouts put bpf/ there); a bpf package installed elsewhere on the path is
    found through the import system."""
    (tmp_path / "a" / "datapath").mkdir(parents=True)
    (tmp_path / "a" / "datapath" / "__init__.py").write_text("")
    shutil.copy(REPO / "datapath" / "source.py", tmp_path / "a" / "datapath" / "source.py")
    shutil.copytree(REPO / "bpf", tmp_path / "b" / "bpf", ignore=_copy_ignore)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    # -S: no site, so no editable install of the checkout either.
    code = "import datapath.source as s; print(s.BPF_DIR, s.MAIN_SOURCE.is_file())"
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str((tmp_path / "b" / "bpf").resolve()), "True"]
