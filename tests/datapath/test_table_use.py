"""Each family's session map against its own size (datapath/kernelstate.py
table_use "maps", read by `microseg status` and the metrics): a full IPv6
map refuses IPv6 sessions while the table's total, both families against
the session limit, is far from it. Entries are written into the loaded
build's maps directly (the census walks what is there)."""
from __future__ import annotations

import ctypes

from appliance.commands.observe import _format_sessions_status
from datapath import bpfsys, kernelstate


def fill(fastpath, name: str, n: int) -> int:
    """``n`` distinct entries into map ``name`` (distinct first key bytes)."""
    t = fastpath.table(name)
    for i in range(n):
        k = t.Key()
        ctypes.memmove(ctypes.addressof(k), i.to_bytes(4, "little"), 4)
        t[k] = t.Leaf()
    return bpfsys.map_info_by_fd(t.map_fd).max_entries


def test_each_familys_map_is_counted_against_its_own_size(fastpath):
    m = kernelstate.BuildMaps.of_fastpath(fastpath)
    cap = {name: fill(fastpath, name, n) for name, n in
           (("ms_flows4", 3), ("ms_flows6", 5), ("ms_halfopen4", 7), ("ms_halfopen6", 11))}
    use = kernelstate.table_use(m)
    assert {k: (v["table"], v["family"], v["entries"], v["capacity"]) for k, v in use["maps"].items()} == {
        "ms_flows4": ("ms_flows", "ipv4", 3, cap["ms_flows4"]),
        "ms_flows6": ("ms_flows", "ipv6", 5, cap["ms_flows6"]),
        "ms_halfopen4": ("ms_halfopen", "ipv4", 7, cap["ms_halfopen4"]),
        "ms_halfopen6": ("ms_halfopen", "ipv6", 11, cap["ms_halfopen6"])}
    assert use["ms_halfopen"]["present"] == 18          # the table rows are unchanged: both maps

    # The metrics' reading walks the half-open maps and ms_flows6; ms_flows4
    # is the kernel's count (nothing inserted through the program: 0) less
    # the IPv6 entries, floored.
    got = kernelstate.metrics_reading(m)["maps"]
    assert got["ms_flows6"] == ("ms_flows", "ipv6", 5, cap["ms_flows6"])
    assert got["ms_halfopen6"] == ("ms_halfopen", "ipv6", 11, cap["ms_halfopen6"])
    assert got["ms_flows4"][2] == 0

    text = _format_sessions_status(use)
    line6 = next(line for line in text.splitlines() if "ms_flows6 (IPv6)" in line)
    assert "5" in line6.split() and str(cap["ms_flows6"]) in line6.split()
