"""How much of its 512-byte stack a loaded BPF program uses.

Read from the program's instructions (BCC's dump_func): every access
through the frame pointer r10 (loads, stores, and addresses formed as
rX = r10; rX += off) names a negative offset; the deepest one is the
stack the verifier will account. The verifier's own figure is only in
its log, which BCC 0.26 does not hand back on success.
"""
from __future__ import annotations

import struct

BPF_LDX, BPF_ST, BPF_STX = 0x01, 0x02, 0x03
MOV64_X = 0xBF   # BPF_ALU64 | BPF_MOV | BPF_X
ADD64_K = 0x07   # BPF_ALU64 | BPF_ADD | BPF_K
FP = 10


def stack_depth(insns: bytes) -> int:
    """Deepest frame-pointer offset used, in bytes (0: no stack)."""
    depth = 0
    fp_copies: set[int] = set()
    for i in range(0, len(insns) - 7, 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", insns, i)
        dst, src = regs & 0x0F, regs >> 4
        cls = code & 0x07
        if cls in (BPF_ST, BPF_STX) and dst == FP and off < 0:
            depth = max(depth, -off)
        elif cls == BPF_LDX and src == FP and off < 0:
            depth = max(depth, -off)
        if code == MOV64_X and src == FP:
            fp_copies.add(dst)
            continue
        if code == ADD64_K and dst in fp_copies and imm < 0:
            depth = max(depth, -imm)
        # any other write to a tracked register ends the copy
        if dst in fp_copies and cls in (0x04, 0x07, BPF_LDX) and not (code == ADD64_K):
            fp_copies.discard(dst)
    return depth
