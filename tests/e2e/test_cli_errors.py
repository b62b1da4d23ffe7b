"""Bad input to the CLI ends in one clear line and a non-zero exit, never a
traceback. The CLI runs as root (the commands that read these files check
that first), some tests in a lab. (The build's own errors are in
tests/unit/test_build_errors.py; `policy check`'s warnings in
tests/unit/test_policy_cli.py.)"""
from __future__ import annotations

import os
import subprocess

import pytest


def assert_one_clear_line(r, *needles, code=None):
    assert r.returncode != 0
    if code is not None:
        assert r.returncode == code
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("microseg: error: ")
    for n in needles:
        assert n in first


def test_unknown_interface_named(microseg, lab):
    r = microseg("up", "--netns", lab.gateway, "--iface", "gw-c", "nope0")
    assert_one_clear_line(r, "'nope0'", lab.gateway, code=2)
    # nothing was attached on the interface that did exist
    assert "bpf" not in lab.run(lab.gateway, ["tc", "filter", "show", "dev", "gw-c", "ingress"]).stdout


def test_unknown_namespace_named(microseg):
    r = microseg("down", "--netns", "ms-no-such-ns", "--iface", "eth0")
    assert_one_clear_line(r, "ms-no-such-ns", code=2)


def test_not_root_is_told(microseg):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", *microseg.COMMAND, "status"],
                       capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert_one_clear_line(r, "needs root or CAP_BPF and CAP_NET_ADMIN", code=1)


@pytest.mark.parametrize("size, why", [("5", "greater than or equal to 1024"),
                                       ("1023", "greater than or equal to 1024"),
                                       (str((1 << 26) + 1), "less than or equal to 67108864")])
def test_bad_flow_table_size(microseg, size, why):
    """The size is refused for what it is, before the namespace is looked
    at (which does not exist: a refusal that came later would name it)."""
    r = microseg("up", "--netns", "ms-no-such-ns", "--iface", "x", "--flow-table-size", size)
    assert_one_clear_line(r, "--flow-table-size:", why, code=2)
    assert len(r.stderr.splitlines()) == 1 and "ms-no-such-ns" not in r.stderr


def test_good_flow_table_size_gets_as_far_as_the_namespace(microseg):
    """The bounds are the bounds: 1024 passes the size check (and stops at
    the namespace), so the refusals above are about the size."""
    r = microseg("up", "--netns", "ms-no-such-ns", "--iface", "x", "--flow-table-size", "1024")
    assert_one_clear_line(r, "ms-no-such-ns", code=2)
    assert "--flow-table-size" not in r.stderr


def test_bad_config_file_names_file_and_line(microseg, tmp_path):
    f = tmp_path / "microseg.yaml"
    f.write_text("loose: true\ntimeouts:\n  established: -3\n")
    r = microseg("up", "--netns", "ms-no-such-ns", "--iface", "x", "--config", str(f))
    assert_one_clear_line(r, f"{f}:3:", "timeouts.established", code=2)


# -- every file the CLI reads: one line, never a traceback or a crash ---------------
# (issue 12 item 7; datapath/configfile.py read_text / parse_yaml). Each kind
# of file through the command that reads it; `replay` and `run` stop at the
# bad file, before they compile or attach anything (the `run` configurations
# name an interface that does not exist, so a regression cannot attach either).

def _policy(cli, f):
    return cli("policy", "check", str(f))


def _rules(cli, f):
    return cli("replay", "/nonexistent/ms-test.pcap", "--eve", "-", "--rules", str(f))


def _run_config(cli, f):
    return cli("run", "--config", str(f))


def _datapath_config(cli, f):
    return cli("up", "--netns", "ms-no-such-ns", "--iface", "x", "--config", str(f))


KINDS = {"policy": _policy, "rules": _rules, "run-config": _run_config, "datapath-config": _datapath_config}

BAD = {
    # a Latin-1 byte on line 3: the line and the offset are named
    "not-utf8": (b"# microseg\nloose: true\n# caf\xe9\n", ["line 3", "not UTF-8", "0xe9", "offset 28"]),
    "utf16": ("loose: true\n".encode("utf-16"), ["not UTF-8", "offset 0"]),
    # segfaulted (libyaml's composer recursed through the C stack)
    "brackets": (b"[" * 50000 + b"]" * 50000, ["line 1", "nested deeper than 32"]),
    "braces": (b"{a: " * 50000 + b"1" + b"}" * 50000, ["nested deeper than 32"]),
    # a 3,000-line RecursionError
    "deep-mapping": (b"{a: " * 3000 + b"1" + b"}" * 3000, ["nested deeper than 32"]),
    "deep-block": (b"".join(b" " * i + b"k:\n" for i in range(60)) + b" " * 60 + b"x: 1\n",
                   ["nested deeper than 32"]),
    "deep-list-block": (b"x:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 60)) + b"  " * 60 + b"- 1\n",
                        ["nested deeper than 32"]),
    # billion laughs: every level doubles
    "alias-bomb": (b"a0: &a0 [x, x]\n" + b"".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n".encode()
                                                     for i in range(1, 30)), ["aliases expand"]),
    "nul-byte": (b"loose: true\nx: \x00\n", ["line 2", "not valid YAML", "#x0000"]),
    "pcap-as-yaml": (bytes.fromhex("d4c3b2a102000400") + bytes(16) + b"\xff\xff\x00\x00\x01\x00\x00\x00",
                     ["not"]),
    "multi-line-yaml-error": (b"timeouts: [1, 2\nloose: true\n", ["not valid YAML"]),
    "two-documents": (b"loose: true\n---\nloose: false\n", ["not valid YAML"]),
}


def assert_one_line_about(r, path, needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr.replace("error:", "")
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr[:2000]
    line = lines[0]
    assert str(path) in line, line
    for n in needles:
        if n.startswith("line "):
            assert f"{path}:{n[5:]}:" in line, line
        else:
            assert n in line, line


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_file_is_one_line(microseg, tmp_path, kind, bad):
    data, needles = BAD[bad]
    f = tmp_path / f"{kind}.yaml"
    f.write_bytes(data)
    assert_one_line_about(KINDS[kind](microseg, f), f, needles)


@pytest.mark.parametrize("kind, limit", [("policy", 32 << 20), ("rules", 16 << 20), ("run-config", 1 << 20),
                                         ("datapath-config", 1 << 20)])
def test_too_large_is_refused_before_reading(microseg, tmp_path, kind, limit):
    """A 200 MB policy grew `policy check` to 12 GB: the size is checked
    before the file is read (a sparse file: its size costs no disk)."""
    from datapath import configfile
    assert limit == {"policy": configfile.MAX_POLICY_BYTES, "rules": configfile.MAX_RULES_BYTES}.get(
        kind, configfile.MAX_SETTINGS_BYTES)
    f = tmp_path / f"{kind}.yaml"
    with open(f, "wb") as out:
        out.truncate(200 << 20)
    assert_one_line_about(KINDS[kind](microseg, f), f, [f"{200 << 20} bytes, larger than the {limit} bytes"])


def test_endless_file_is_read_only_to_the_limit(microseg):
    """A device or a pipe says no size: no more than the limit is read."""
    assert_one_line_about(_run_config(microseg, "/dev/zero"), "/dev/zero", ["larger than the 1048576 bytes"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_directory_is_one_line(microseg, tmp_path, kind):
    assert_one_line_about(KINDS[kind](microseg, tmp_path), tmp_path, ["cannot read"])


# -- an empty policy: refused by what puts it in force (check only warns:
# tests/unit/test_policy_cli.py) --------------------------------------------------

@pytest.mark.parametrize("text", ["", "# nothing yet\n"])
def test_empty_policy_refused_where_it_would_be_enforced(microseg, tmp_path, text):
    """`up --policy`, `policy apply` and `run` refuse it before anything
    (the namespace and interface do not exist: a refusal that came later
    would name them instead)."""
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    conf = tmp_path / "run.yaml"
    conf.write_text(f"interfaces: [ms-no-such0]\npolicy: {f}\n")
    for r in (microseg("up", "--netns", "ms-no-such-ns", "--iface", "x", "--policy", str(f)),
              microseg("policy", "apply", str(f), "--netns", "ms-no-such-ns"),
              microseg("run", "--config", str(conf))):
        assert_one_line_about(r, f, ["line 1", "denies every flow; refused", "--allow-empty"])
    # with the flag, apply gets past the check (and stops at the namespace)
    r = microseg("policy", "apply", str(f), "--netns", "ms-no-such-ns", "--allow-empty")
    assert r.returncode == 2 and "ms-no-such-ns" in r.stderr and "; refused" not in r.stderr


# -- run: a namespace that does not exist is refused, not made ---------------------

def test_run_refuses_a_missing_namespace_and_creates_none(microseg, tmp_path):
    from pyroute2 import netns as pr_netns

    ns = f"ms-nosuch-{os.getpid()}-{os.urandom(3).hex()}"
    conf = tmp_path / "run.yaml"
    conf.write_text(f"netns: {ns}\ninterfaces: [eth0]\n")
    try:
        r = microseg("run", "--config", str(conf))
        assert_one_clear_line(r, f"'{ns}' does not exist", code=2)
        assert len(r.stderr.splitlines()) == 1
        assert ns not in pr_netns.listnetns()
    finally:
        if ns in pr_netns.listnetns():       # what the old code did: undo it
            pr_netns.remove(ns)


# -- down / lab down say what they removed, and only that ---------------------------

def test_lab_down_of_no_such_lab_says_so(microseg):
    tag = f"nosuch{os.getpid()}{os.urandom(2).hex()}"
    r = microseg("lab", "down", "--tag", tag)
    assert_one_clear_line(r, f"no lab '{tag}'", "nothing removed", code=2)
    assert "removed" not in r.stdout


def test_lab_down_names_what_it_removed(microseg):
    from appliance.lab import Lab

    lab = Lab().up()
    try:
        r = microseg("lab", "down", "--tag", lab.tag)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"lab {lab.tag} removed: namespaces {', '.join(lab.namespaces)}"
    finally:
        lab.down()


def test_down_on_nothing_says_nothing_was_there(microseg, lab):
    """Nothing attached, no state: exit 0 (stopping what is stopped is not
    an error) and no claim of removals."""
    from appliance.lab import GW_IFACES

    r = microseg("down", "--netns", lab.gateway, "--iface", *GW_IFACES)
    assert r.returncode == 0, r.stderr
    assert "removed" not in r.stdout, r.stdout
    assert "nothing to detach" in r.stdout and "no pinned state" in r.stdout


@pytest.mark.lab
def test_apply_of_an_empty_policy_changes_nothing_without_the_flag(tmp_path, microseg, lab, attached):
    """In a lab: an applied policy lets :8080 through; `policy apply` of an
    empty file is refused and the policy in force, its stored copy and the
    traffic stay; with --allow-empty it is applied (generation 2) and the
    same request is denied."""
    from appliance.lab import SERVER_V4, HttpServer

    run = microseg.run_dir
    policy = tmp_path / "policy.yaml"
    policy.write_text("groups:\n  clients: [10.77.1.0/24]\n  servers: [10.77.2.0/24]\n"
                      "defaults: {ingress: deny, egress: allow}\n"
                      "rules:\n  - {from: clients, to: servers, proto: tcp, ports: [8080], action: allow}\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")

    def curl(lab):
        return lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                                    f"http://{SERVER_V4}:8080/"], check=False).stdout

    with attached():
        microseg("policy", "apply", policy, "--netns", lab.gateway, check=True)
        with HttpServer(lab, 8080):
            assert curl(lab) == "200"
            r = microseg("policy", "apply", str(empty), "--netns", lab.gateway)
            assert_one_line_about(r, empty, ["line 1", "denies every flow; refused"])
            assert r.stdout == ""
            assert (run / lab.gateway / "policy.yaml").read_text() == policy.read_text()
            assert curl(lab) == "200"

            r = microseg("policy", "apply", str(empty), "--netns", lab.gateway, "--allow-empty")
            assert r.returncode == 0 and "generation 2" in r.stdout, r.stdout + r.stderr
            assert r.stderr.splitlines() == [f"{empty}:1: warning: no rules, overrides or defaults: "
                                             f"this policy denies every flow"]
            assert curl(lab) == "000"
