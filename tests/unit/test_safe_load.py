"""The one guarded way a YAML file comes in (datapath/configfile.py):
read_text (size, encoding) and parse_yaml (nesting and aliases checked on
the parser's events before anything recursive runs). The CLI-level cases,
one per kind of file, are in test_cli_errors.py."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from appliance import policyfile
from datapath import configfile
from datapath.configfile import (MAX_ALIAS_NODES, MAX_NESTING, FileErrors, check_structure, load_model,
                                  parse_yaml, read_text)
from datapath.config import DatapathConfig
from datapath.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def nested(depth: int) -> str:
    """A mapping ``depth`` collections deep (the top-level mapping counts)."""
    return "{a: " * depth + "1" + "}" * depth


def test_nesting_at_the_limit_loads_one_more_is_refused():
    root, data = parse_yaml(nested(MAX_NESTING), "f.yaml")
    for _ in range(MAX_NESTING - 1):
        data = data["a"]
    assert data == {"a": 1}
    with pytest.raises(FileErrors, match=rf"^f.yaml:1: nested deeper than {MAX_NESTING} levels"):
        parse_yaml(nested(MAX_NESTING + 1), "f.yaml")


def test_the_line_named_is_where_it_got_too_deep():
    text = "ok: 1\nlist:\n" + "".join("  " * i + "- \n" for i in range(1, MAX_NESTING + 5))
    with pytest.raises(FileErrors) as ei:
        check_structure(text, "f.yaml")
    # the top mapping, `list`'s sequence and its nested ones: the 32nd sequence is the one too many
    assert ei.value.errors == [(MAX_NESTING + 2, ei.value.errors[0][1])]


def test_nesting_is_checked_without_recursion():
    # far deeper than any recursion limit: the check is a loop over events
    with pytest.raises(FileErrors, match="nested deeper"):
        check_structure("[" * 200_000 + "]" * 200_000, "f.yaml")


def test_anchors_are_fine_a_bomb_is_not():
    ok = "base: &b {ingress: deny, egress: allow}\nother: *b\nlist: &l [1, 2, 3]\nmore: [*l, *l]\n"
    root, data = parse_yaml(ok, "f.yaml")
    assert data["other"] == data["base"] and data["more"] == [[1, 2, 3]] * 2
    bomb = "a0: &a0 [x, x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 25))
    with pytest.raises(FileErrors, match=rf"aliases expand to more than {MAX_ALIAS_NODES} nodes") as ei:
        parse_yaml(bomb, "f.yaml")
    # a<i> is 2^(i+2) - 1 nodes and its line (i + 1) aliases a<i-1> twice: the
    # expansions sum past 100,000 at the second alias of a14, line 15 of 25
    assert ei.value.errors[0][0] == 15


def test_yaml_errors_are_one_line_with_their_line():
    for text, line in (("a: 1\nb: [1, 2\n", 3), ("a: 1\nb: \x07\n", 2), ("a: 1\n\tb: 2\n", 2),
                       ("a: *nope\n", 1), ("a: 1\n---\nb: 2\n", 2)):
        with pytest.raises(FileErrors) as ei:
            parse_yaml(text, "f.yaml")
        assert len(ei.value.lines()) == 1, ei.value.lines()
        assert ei.value.errors[0][0] == line, (text, ei.value.errors)
        assert "not valid YAML" in str(ei.value)


def test_read_text_limit_is_exact(tmp_path):
    f = tmp_path / "f.yaml"
    f.write_bytes(b"a" * 100)
    assert read_text(f, 100) == "a" * 100
    with pytest.raises(FileErrors, match=r"100 bytes, larger than the 99 bytes"):
        read_text(f, 99)


def test_read_text_reads_a_pipe_only_to_the_limit(tmp_path):
    """A FIFO has no size: read stops one byte past the limit and refuses."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    written = []

    def writer():
        try:
            with open(fifo, "wb") as w:
                for _ in range(64):
                    w.write(b"x" * 4096)
                    written.append(4096)
        except BrokenPipeError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    with pytest.raises(FileErrors, match="larger than the 10000 bytes"):
        read_text(fifo, 10_000)
    t.join(timeout=30)
    assert not t.is_alive()
    assert sum(written) < 64 * 4096     # the reader stopped and closed: the writer could not finish


def test_not_utf8_names_byte_offset_line(tmp_path):
    f = tmp_path / "f.yaml"
    f.write_bytes("a: ü\nb: 1\nc: ".encode() + b"\xff\n")
    with pytest.raises(FileErrors) as ei:
        read_text(f, 1000)
    assert str(ei.value) == (f"{f}:3: not UTF-8 text: byte 0xff at offset 14 (invalid start byte); "
                             f"save the file as UTF-8")


def test_a_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "f.yaml"
    f.write_bytes(b"\xef\xbb\xbfloose: true\n")
    assert load_model(f, DatapathConfig).loose


def test_errors_keep_the_callers_class(tmp_path):
    """Rule files raise RulesError (the daemon's reload catches it): also for
    the size and encoding checks."""
    from slowpath.rulesfile import RulesError, load_rules
    f = tmp_path / "rules.yaml"
    f.write_bytes(b"\xff")
    with pytest.raises(RulesError, match="not UTF-8"):
        load_rules(f)
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path)
    f.write_text(nested(MAX_NESTING + 1))
    with pytest.raises(RulesError, match="nested deeper"):
        load_rules(f)


def test_settings_errors_stay_one_usage_error(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(nested(MAX_NESTING + 1))
    with pytest.raises(UsageError) as ei:
        load_model(f, DatapathConfig)
    assert not isinstance(ei.value, FileErrors)       # printed as "microseg: error: FILE:LINE: ..."
    assert str(ei.value).startswith(f"{f}:1: nested deeper")


def test_the_shipped_files_pass_the_guards():
    """What the project ships and documents loads through the same path."""
    from appliance.runconfig import RunConfig
    from slowpath.rulesfile import load_rules
    load_model(ROOT / "deploy" / "run.yaml.example", RunConfig)
    load_rules(ROOT / "examples" / "rules.yaml")


def test_a_large_real_policy_is_within_the_limits():
    """bench/policy_scale.py's policy shape, at a tenth of its default size:
    nowhere near a limit (and the limit leaves room for 3x the full one)."""
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import policy_scale
    finally:
        sys.path.remove(str(ROOT / "bench"))
    text, _ = policy_scale.generate(10_000, 500, 10)
    assert len(text.encode()) * 10 * 3 < configfile.MAX_POLICY_BYTES
    model, pol = policyfile.compile_text(text, "scale.yaml")
    assert len(model.rules) >= 10_000 and not pol.warnings[:1] == [(1, policyfile.EMPTY_POLICY)]


def test_empty_policy_refused_unless_allowed(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("# to do\n")
    with pytest.raises(FileErrors, match="denies every flow; refused"):
        policyfile.compile_file(f)
    model, pol, _ = policyfile.compile_file(f, allow_empty=True)
    assert pol.warnings[0] == (1, policyfile.EMPTY_POLICY)
    f.write_text("defaults: {ingress: deny, egress: deny}\n")
    policyfile.compile_file(f)        # written out: meant
