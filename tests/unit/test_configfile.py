"""Configuration files: validated, errors name file, line and field."""
from __future__ import annotations

import pytest

from datapath.configfile import load_model
from datapath.config import DatapathConfig
from datapath.errors import UsageError


def write(tmp_path, text):
    f = tmp_path / "microseg.yaml"
    f.write_text(text)
    return f


def test_valid_file(tmp_path):
    cfg = load_model(write(tmp_path, "flow_table_size: 4096\ntimeouts:\n  established: 600\nloose: true\n"),
                     DatapathConfig)
    assert cfg.flow_table_size == 4096 and cfg.timeouts.established == 600 and cfg.loose


@pytest.mark.parametrize("text, line, needle", [
    ("flow_table_size: 4096\ntimeouts:\n  established: -1\n", 3, "timeouts.established"),
    ("loose: true\nno_such_setting: 1\n", 2, "no_such_setting"),
    ("invalid_action: maybe\n", 1, "invalid_action"),
    ("full_allowlist:\n  - 10.0.0.0/8\n  - 10.0.0.300/32\n", 3, "full_allowlist"),
    ("timeouts: [1, 2\n", 2, "not valid YAML"),
    ("- just\n- a list\n", 1, "mapping"),
])
def test_errors_name_file_line_field(tmp_path, text, line, needle):
    f = write(tmp_path, text)
    with pytest.raises(UsageError) as ei:
        load_model(f, DatapathConfig)
    msg = str(ei.value)
    assert msg.startswith(f"{f}:{line}:"), msg
    assert needle in msg


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        load_model(tmp_path / "nope.yaml", DatapathConfig)


def test_the_example_run_configuration_is_valid():
    """deploy/run.yaml.example is what an operator copies: it must load."""
    from pathlib import Path

    from appliance.runconfig import RunConfig
    example = Path(__file__).resolve().parents[2] / "deploy" / "run.yaml.example"
    cfg = load_model(example, RunConfig)
    assert cfg.interfaces and cfg.datapath.failure_actions.slowpath_down == "pass"


def test_node_line_is_the_one_walk_both_reporters_use(tmp_path):
    # load_model (first error) and validation_errors (every error) name the
    # line through node_line: the deepest node along the path, the last of a
    # key written twice, 1 for an empty file.
    import yaml

    from datapath.configfile import node_line
    root = yaml.compose("a: 1\nb:\n  - x\n  - y: 2\na: 3\n")
    assert node_line(root, ("a",)) == 5              # the repeat: what the data holds
    assert node_line(root, ("b", 1, "y")) == 4
    assert node_line(root, ("b", 1, "nope", 0)) == 4  # past the file: the deepest node there is
    assert node_line(root, ("b", 7)) == 3
    assert node_line(None, ("a",)) == 1
    f = write(tmp_path, "timeouts:\n  established: 1\ntimeouts:\n  established: -1\n")
    with pytest.raises(UsageError, match=r":4: timeouts.established"):
        load_model(f, DatapathConfig)
