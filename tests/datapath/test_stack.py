"""Every program of the fast path stays far under the 512-byte BPF stack."""
from __future__ import annotations

from datapath.stack import stack_depth

# Half the verifier's limit: room for the stages still to come (the
# inspection handoff) without anyone having to count bytes again.
STACK_BUDGET = 256


def test_stack_depth_of_every_program(fastpath_build):
    fp = fastpath_build
    names = [fn.name for fn in (*fp.fns.values(), *fp.stage_fns.values())]
    depths = {n: stack_depth(fp.bpf.dump_func(n)) for n in names}
    assert len(depths) == 6   # two entry points, four stages
    for name, d in depths.items():
        assert 0 < d <= STACK_BUDGET, (name, d)


def test_stack_depth_reads_frame_pointer_offsets():
    # r1 = r10; r1 += -64; *(u64 *)(r10 - 8) = r2; r0 = *(u64 *)(r10 - 120)
    import struct
    prog = b"".join([
        struct.pack("<BBhi", 0xBF, (10 << 4) | 1, 0, 0),
        struct.pack("<BBhi", 0x07, 1, 0, -64),
        struct.pack("<BBhi", 0x7B, (2 << 4) | 10, -8, 0),
        struct.pack("<BBhi", 0x79, (10 << 4) | 0, -120, 0),
    ])
    assert stack_depth(prog) == 120
    assert stack_depth(prog[:16]) == 64
