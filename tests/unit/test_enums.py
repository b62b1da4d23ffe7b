"""C and Python agree on every shared enum (one source: bpf/lib/*.h)."""
from __future__ import annotations

from datapath import enums


def test_python_reads_every_list():
    lists = enums.read_enum_lists()
    assert {"REASON", "DIR"} <= set(lists)
    values = [e.value for e in lists["REASON"]]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(e.kind in ("PASS", "DROP") for e in lists["REASON"])
    names = [e.name for e in lists["REASON"]]
    assert all(n.startswith(("PASS_", "DROP_")) or n == "REASON_UNSPEC" for n in names)
    # the name says the action: a DROP_ reason is a drop and nothing else is
    assert all((e.kind == "DROP") == e.name.startswith("DROP_") for e in lists["REASON"])


def test_parser_misses_nothing(tmp_path):
    # A list entry written in a form the reader does not understand must not
    # silently vanish: the count assert catches it.
    hdr = tmp_path / "x.h"
    hdr.write_text('#define MS_ENUM_T(X) \\\n    X(A, 0, PASS, "a") \\\n    X(B, 1, PASS, "b")\n')
    lists = enums.read_enum_lists(tmp_path)
    assert [e.name for e in lists["T"]] == ["A", "B"]


def test_bit_flags_are_the_headers():
    # The #define bit sets Python uses (maps.h, parse.h) are read, not
    # restated: every name the loader and the slow path use is there, and
    # the static asserts cover each value.
    from datapath.enums import CFG, FRAG, INSPECT
    assert {"LOOSE", "INVALID_PASS", "WINDOW_PASS", "TAILCALL_PASS", "SIM_RINGBUF_FULL", "SIM_BUDGET",
            "SIM_SLOWPATH_DOWN"} <= set(CFG)
    assert {"DPI", "WAF", "DLP", "HOLD", "FAIL_SHIFT"} <= set(INSPECT) and {"FIRST", "LATER", "MORE"} <= set(FRAG)
    asserts = enums.c_static_asserts()
    for prefix, values in enums.DEFINE_SETS.items():
        for name in values:
            assert f"_Static_assert(MS_{prefix}_{name} == " in asserts


