"""bench/policy_perf.py's reading of `perf script -F pid,ip,sym` (perf 6.1's
format: a line with the pid, then the call chain leaf first, one frame a
line) and its breakdown: only the lab's pids, hooks counted inclusively."""
from __future__ import annotations

import sys

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.policy_perf import breakdown, parse_script, samples  # noqa: E402

SCRIPT = (
    " 5030 \n"
    "\tffffffffc002a73f bpf_prog_795572683aa00dd3_tc_ingress\n"
    "\tffffffff81f46e7a cls_bpf_classify\n"
    "\tffffffff81ea1171 tc_run\n"
    "\tffffffff81eae725 __netif_receive_skb_core.constprop.0\n"
    "\n"
    " 5030 \n"
    "\tffffffff81e2a000 lookup_nulls_elem_raw+0x20\n"
    "\tffffffffc002fd9d bpf_prog_21e28a8aa4b7e5e2_ms_stage_tcp+0x229\n"
    "\tffffffff81ea1171 tc_run\n"
    "\n"
    " 5031 \n"
    "\tffffffff81f00000 nft_do_chain\n"
    "\tffffffff81f00100 nf_hook_slow\n"
    "\n"
    " 777 \n"                      # another process on the CPU: not the lab's
    "\tffffffff81ea1171 tc_run\n"
    "\n"
    " 5031 \n"
    "\tffffffff81000000 tcp_sendmsg\n"
    "\n"
)


def test_samples_keeps_the_given_pids_and_strips_offsets():
    chains = samples(SCRIPT, {5030, 5031})
    assert len(chains) == 4
    assert chains[1][:2] == ["lookup_nulls_elem_raw", "bpf_prog_21e28a8aa4b7e5e2_ms_stage_tcp"]


def test_breakdown_counts_hooks_programs_and_leaves():
    c = breakdown(samples(SCRIPT, {5030, 5031}))
    assert c["all"] == 4
    assert c["tc hooks"] == 2 and c["netfilter"] == 1
    assert c["prog tc_ingress"] == 1 and c["prog ms_stage_tcp"] == 1
    assert c["leaf tc_ingress (program)"] == 1
    assert c["leaf lookup_nulls_elem_raw"] == 1 and c["leaf nft_do_chain"] == 1
    assert "leaf tcp_sendmsg" not in c    # not under a hook


TCX_SCRIPT = (
    " 5030 \n"                     # a program run by tcx: no tc_run frame
    "\tffffffff81e2a000 lookup_nulls_elem_raw+0x20\n"
    "\tffffffffc002a73f bpf_prog_795572683aa00dd3_tc_ingress\n"
    "\tffffffff81eae725 __netif_receive_skb_core.constprop.0\n"
    "\n"
    " 5030 \n"                     # cls_bpf's own work, no program frame
    "\tffffffff81f46e7a cls_bpf_classify\n"
    "\tffffffff81ea1171 tc_run\n"
    "\n"
)


def test_breakdown_counts_tcx_programs_as_hooks_and_the_framework_apart():
    c = breakdown(samples(TCX_SCRIPT, {5030}))
    assert c["tc hooks"] == 1                       # only the cls_bpf sample is under tc_run
    assert c["hooks"] == 2 and c["programs"] == 1   # framework: hooks - programs = 1
    assert c["prog tc_ingress"] == 1 and c["leaf lookup_nulls_elem_raw"] == 1


# `perf script -F comm,pid,ip,sym` (--tasks): the task's name before the pid,
# with spaces or a CPU suffix; the idle task is "swapper".
TASKS_SCRIPT = (
    "python  5030 \n"
    "\tffffffff81e2a000 lookup_nulls_elem_raw+0x20\n"
    "\tffffffffc002a73f bpf_prog_795572683aa00dd3_tc_ingress\n"
    "\n"
    "kworker/0:1H-kblockd    41 \n"
    "\tffffffff81000100 process_one_work\n"
    "\n"
    "ksoftirqd/0    16 \n"
    "\tffffffff81000200 net_rx_action\n"
    "\n"
    "swapper     0 \n"
    "\tffffffff81000300 default_idle\n"
    "\n"
    "Web Content  777 \n"
    "\tffffffff81000400 tcp_sendmsg\n"
    "\n"
)


def test_samples_counts_every_task_of_the_cpu_and_keeps_the_lab_pids():
    import collections
    tasks = collections.Counter(comm for comm, _, _ in parse_script(TASKS_SCRIPT))
    chains = samples(TASKS_SCRIPT, {5030})
    assert chains == [["lookup_nulls_elem_raw", "bpf_prog_795572683aa00dd3_tc_ingress"]]
    assert tasks == {"python": 1, "kworker": 1, "ksoftirqd": 1, "swapper": 1, "Web Content": 1}
    assert len(samples(TASKS_SCRIPT, None)) == 5     # None: every task's samples


def test_client_sources_are_the_lab_client_then_its_subnet():
    from appliance.lab import CLIENT_V4
    from bench.policy import SOURCES_MAX, client_sources
    got = client_sources(3)
    assert got[0] == CLIENT_V4 and len(set(got)) == 3
    assert all(a.rsplit(".", 1)[0] == CLIENT_V4.rsplit(".", 1)[0] for a in got)
    assert int(client_sources(SOURCES_MAX)[-1].rsplit(".", 1)[1]) < 255      # not the broadcast
    with pytest.raises(ValueError, match="--sources"):
        client_sources(SOURCES_MAX + 1)
