"""The deployment files agree with the code and with each other: the
DaemonSet (deploy/k8s/daemonset.yaml), the image recipe (deploy/Dockerfile)
and the systemd unit (deploy/microseg.service) cannot run here, so what they
promise is checked by reading them."""
from __future__ import annotations

import configparser
import json
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from appliance.runconfig import RunConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# What the appliance needs from the kernel, as Kubernetes names capabilities.
CAPS = {"BPF", "NET_ADMIN", "NET_RAW", "PERFMON", "SYS_RESOURCE", "SYS_ADMIN"}


def _docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "daemonset.yaml").read_text()) if d}


@pytest.fixture(scope="module")
def k8s():
    docs = _docs()
    ds, cm = docs["DaemonSet"], docs["ConfigMap"]
    pod = ds["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {"docs": docs, "ds": ds, "cm": cm, "pod": pod, "ctr": ctr, "mounts": mounts, "volumes": volumes}


def _dockerfile() -> dict[str, list[str]]:
    """Instruction -> its argument lines (continuations joined)."""
    out: dict[str, list[str]] = {}
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        instr, _, arg = text.partition(" ")
        out.setdefault(instr.upper(), []).append(arg.strip())
    return out


def _cmd_config_path() -> PurePosixPath:
    cmd = json.loads(_dockerfile()["CMD"][-1])
    return PurePosixPath(cmd[cmd.index("--config") + 1])


def _hostpath_of(k8s, mount_path: str) -> str | None:
    m = k8s["mounts"].get(mount_path)
    return m and k8s["volumes"][m["name"]].get("hostPath", {}).get("path")


def _mount_covering(k8s, path: str):
    """The volume mount a path of the container lies in (the deepest)."""
    best = None
    for mp, m in k8s["mounts"].items():
        if PurePosixPath(path).is_relative_to(mp) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    return best


def test_daemonset_runs_in_the_nodes_network_with_the_capabilities(k8s):
    pod, ctr = k8s["pod"], k8s["ctr"]
    assert pod["hostNetwork"] is True
    assert not pod.get("hostPID", False)
    sc = ctr["securityContext"]
    assert set(sc["capabilities"]["add"]) == CAPS
    assert sc["capabilities"].get("drop") == ["ALL"]
    assert not sc.get("privileged", False)


def test_daemonset_mounts_bpffs_and_the_kernel_headers(k8s):
    m = k8s["mounts"]
    assert _hostpath_of(k8s, "/sys/fs/bpf") == "/sys/fs/bpf"
    assert not m["/sys/fs/bpf"].get("readOnly", False)          # pins are written there
    for path in ("/lib/modules", "/usr/src"):                   # BCC, at the host's own paths
        assert _hostpath_of(k8s, path) == path
        assert m[path].get("readOnly") is True
    assert _hostpath_of(k8s, "/run/microseg") == "/run/microseg"
    assert _hostpath_of(k8s, "/var/log/microseg") == "/var/log/microseg"


def test_daemonset_rolls_one_node_at_a_time_and_waits_for_the_detach(k8s):
    ds, pod = k8s["ds"], k8s["pod"]
    upd = ds["spec"]["updateStrategy"]
    assert upd["type"] == "RollingUpdate"
    assert upd["rollingUpdate"]["maxUnavailable"] == 1
    assert upd["rollingUpdate"].get("maxSurge", 0) == 0
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_the_config_map_is_what_the_image_reads(k8s):
    """The image's --config, run.yaml's policy and rules: all keys of the
    ConfigMap, in the directory it is mounted on; and the files load."""
    from appliance import policyfile as pf
    from slowpath.rulesfile import load_rules_text

    cm, data = k8s["cm"], k8s["cm"]["data"]
    config = _cmd_config_path()
    mount = k8s["mounts"][str(config.parent)]
    assert k8s["volumes"][mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert mount.get("readOnly") is True
    assert config.name in data
    cfg = RunConfig.model_validate(yaml.safe_load(data[config.name]))
    for ref in (cfg.policy, cfg.rules):
        assert ref and PurePosixPath(ref).parent == config.parent, ref
        assert PurePosixPath(ref).name in data, f"run.yaml reads {ref}: not a key of the ConfigMap"
    pf.compile_text(data[PurePosixPath(cfg.policy).name], cfg.policy)
    load_rules_text(data[PurePosixPath(cfg.rules).name], cfg.rules)
    # EVE goes to a host directory, not into the container's (read-only) root.
    if cfg.eve.file:
        m = _mount_covering(k8s, cfg.eve.file.path)
        assert m and "hostPath" in k8s["volumes"][m["name"]]


def test_readiness_probe_asks_the_configured_metrics_endpoint(k8s):
    from slowpath.metrics import parse_listen

    cfg = RunConfig.model_validate(yaml.safe_load(k8s["cm"]["data"][_cmd_config_path().name]))
    assert cfg.metrics is not None
    host, port = parse_listen(cfg.metrics.listen)
    probe = k8s["ctr"]["readinessProbe"]["httpGet"]
    assert probe["path"] == "/metrics"
    assert probe["port"] == port
    # hostNetwork: the kubelet connects to the node's address unless told
    # otherwise, which a loopback listener does not answer.
    if host in ("127.0.0.1", "::1", "localhost"):
        assert probe.get("host") in (host, "localhost")


def test_the_image_tag_is_the_project_version(k8s):
    image = k8s["ctr"]["image"]
    assert image.rsplit(":", 1)[1] == PYPROJECT["project"]["version"]


def test_dockerfile_entrypoint_is_the_console_script():
    df = _dockerfile()
    entry = json.loads(df["ENTRYPOINT"][-1])
    scripts = PYPROJECT["project"]["scripts"]
    assert len(entry) == 1 and entry[0] in scripts
    assert scripts[entry[0]] == "appliance.cli:main"
    assert json.loads(df["CMD"][-1])[0] == "run"


def test_dockerfile_is_debian_12_with_bcc_and_a_system_site_venv():
    df = _dockerfile()
    assert df["FROM"][-1].split()[0] in ("debian:bookworm-slim", "debian:bookworm", "debian:12", "debian:12-slim")
    run = " ".join(df["RUN"])
    assert "python3-bpfcc" in run
    assert "--system-site-packages" in run
    assert "linux-headers" not in run     # the host's headers are mounted, never baked in


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string((DEPLOY / "microseg.service").read_text())
    return cp


def test_systemd_unit_allows_what_the_appliance_needs():
    svc = _unit()["Service"]
    caps = set(svc["CapabilityBoundingSet"].split())
    assert caps == {f"CAP_{c}" for c in CAPS}           # the same set as the DaemonSet
    assert "CAP_SYS_MODULE" not in caps
    # BCC reads the headers: nothing may hide /lib/modules (ProtectKernelModules
    # makes it inaccessible whatever ReadOnlyPaths says) or make bpffs read-only.
    assert svc.get("ProtectKernelModules", "no") == "no"
    assert svc.get("ProtectKernelTunables", "no") == "no"
    assert {"/lib/modules", "/usr/src"} <= set(svc["ReadOnlyPaths"].split())
    assert "/sys/fs/bpf" in svc["ReadWritePaths"].split()
    exe = svc["ExecStart"].split()[0]
    assert PurePosixPath(exe).name in PYPROJECT["project"]["scripts"]
