"""Every bpf(2) call microseg makes itself, through ctypes, and every uapi
number it uses (commands, map and program types, flags, helper ids).

BCC loads the fast path; what it does not expose is here: BPF_PROG_TEST_RUN
(run a loaded program on a packet), program loads of raw instructions
(preflight's probes, the kernel sweep's linker), BTF loads, map creation,
element and batch operations, pins, and the object-info calls that
`microseg status` and `preflight` need (program and map info by id, map
memory from /proc fdinfo). Layouts follow include/uapi/linux/bpf.h; only the
leading fields we use are declared, which the kernel accepts (it copies
min(size, its size) and checks that the bytes it does not know are zero).
No other module declares a bpf_attr layout or a uapi number.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import sys
import threading
from dataclasses import dataclass

from .errors import MicrosegError

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

# __NR_bpf per architecture (arch/*/include/uapi/asm/unistd*.h).
_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}

# enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_LOAD = 18
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

# enum bpf_map_type
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_RINGBUF = 27
BPF_MAP_TYPE_BLOOM_FILTER = 30
# Map types whose value is stored once per possible CPU.
PERCPU_MAP_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH})

# map_flags
BPF_F_NO_PREALLOC = 1 << 0     # LPM_TRIE refuses to be created without it
BPF_F_NO_COMMON_LRU = 1 << 1
BPF_F_NUMA_NODE = 1 << 2
BPF_F_INNER_MAP = 1 << 12      # an inner array whose size may differ from its template's

# struct bpf_ringbuf_hdr: the length word's flag bits, and the header size
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8

# enum bpf_prog_type
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
BPF_PROG_TYPE_SYSCALL = 31
# prog_flags; a SYSCALL program must be sleepable (kernel 6.x)
BPF_F_SLEEPABLE = 1 << 4

# enum bpf_func_id (helpers preflight and compat probe for)
BPF_FUNC_ktime_get_coarse_ns = 160
BPF_FUNC_timer_init = 169

# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

_ENOENT = 2
_ENOSPC = 28


class BpfError(OSError):
    """A bpf(2) call failed; errno and the command are kept."""


# This machine's bpf(2) number, looked up once at import rather than on
# every call (a verdict map write, a heartbeat). platform.machine() caches
# its answer, so this saves only ~0.1 us of the ~4.5 us syscall (measured).
_NR = _NR_BPF.get(platform.machine())


def _nr() -> int:
    if _NR is None:
        raise BpfError(0, f"bpf syscall number unknown for architecture {platform.machine()}")
    return _NR


def sys_bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_nr(), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf cmd {cmd}: {os.strerror(err)}")
    return ret


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


# struct bpf_insn: code, dst:4 src:4, off, imm
INSN = struct.Struct("<BBhi")


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn: opcode, dst/src register nibbles, offset, immediate."""
    return INSN.pack(code, (src << 4) | dst, off, imm)


class _ProgLoadAttr(ctypes.Structure):
    """union bpf_attr, the BPF_PROG_LOAD member, up to line_info_cnt."""
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("func_info_cnt", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("line_info_cnt", ctypes.c_uint32)]


def prog_load(insns: bytes, prog_type: int, *, name: str = "", flags: int = 0, btf_fd: int = 0,
              func_info: list[tuple[int, int]] = (), log: ctypes.Array | None = None) -> int:
    """BPF_PROG_LOAD of raw instructions (GPL, so that GPL-only helpers are
    not refused for the licence alone); returns the fd (caller closes),
    raises BpfError. ``func_info``: (insn_off, BTF type id) per function,
    types from ``btf_fd``. ``log``: a char buffer (ctypes.create_string_buffer)
    the verifier writes its log into (log_level 1)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    finfo = (ctypes.c_uint32 * max(2 * len(func_info), 1))(*[v for rec in func_info for v in rec])
    attr = _ProgLoadAttr()
    attr.prog_type = prog_type
    attr.insn_cnt = len(insns) // INSN.size
    attr.insns = ctypes.addressof(code)
    attr.license = ctypes.addressof(lic)
    attr.prog_name = name.encode()[:15]
    attr.prog_flags = flags
    if func_info:
        attr.prog_btf_fd = btf_fd
        attr.func_info_rec_size = 8          # struct bpf_func_info: insn_off, type_id
        attr.func_info = ctypes.addressof(finfo)
        attr.func_info_cnt = len(func_info)
    if log is not None:
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    return sys_bpf(BPF_PROG_LOAD, attr)


class _BtfLoadAttr(ctypes.Structure):
    _fields_ = [("btf", ctypes.c_uint64), ("btf_log_buf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32),
                ("btf_log_size", ctypes.c_uint32), ("btf_log_level", ctypes.c_uint32)]


def btf_load(blob: bytes, log: ctypes.Array) -> int:
    """BPF_BTF_LOAD; returns the fd (caller closes), raises BpfError with the
    kernel's reasons in ``log`` (a char buffer)."""
    buf = ctypes.create_string_buffer(blob, len(blob))
    attr = _BtfLoadAttr(ctypes.addressof(buf), ctypes.addressof(log), len(blob), len(log), 1)
    return sys_bpf(BPF_BTF_LOAD, attr)


# struct __sk_buff (uapi) as far as test_run lets a caller set fields:
# mark, priority, ingress_ifindex, ifindex, cb[5], tstamp, wire_len,
# gso_segs, gso_size, hwtstamp. The struct is declared up to hwtstamp.
class SkBuff(ctypes.Structure):
    _fields_ = [
        ("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32), ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32), ("protocol", ctypes.c_uint32), ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32), ("vlan_proto", ctypes.c_uint32), ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32), ("ifindex", ctypes.c_uint32), ("tc_index", ctypes.c_uint32),
        ("cb", ctypes.c_uint32 * 5), ("hash", ctypes.c_uint32), ("tc_classid", ctypes.c_uint32),
        ("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32), ("napi_id", ctypes.c_uint32),
        ("family", ctypes.c_uint32), ("remote_ip4", ctypes.c_uint32), ("local_ip4", ctypes.c_uint32),
        ("remote_ip6", ctypes.c_uint32 * 4), ("local_ip6", ctypes.c_uint32 * 4),
        ("remote_port", ctypes.c_uint32), ("local_port", ctypes.c_uint32), ("data_meta", ctypes.c_uint32),
        ("flow_keys", ctypes.c_uint64), ("tstamp", ctypes.c_uint64), ("wire_len", ctypes.c_uint32),
        ("gso_segs", ctypes.c_uint32), ("sk", ctypes.c_uint64), ("gso_size", ctypes.c_uint32),
        ("tstamp_type", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 3), ("hwtstamp", ctypes.c_uint64),
    ]


@dataclass
class TestRunResult:
    retval: int
    duration_ns: int  # mean per repetition, as the kernel reports it
    data_out: bytes


# The least a test run takes: the kernel builds the skb from an Ethernet header.
ETH_HLEN = 14
# Largest packet the harness accepts back (a packet may grow, e.g. by encap).
_MAX_OUT = 65535 + 256


_thread_bufs = threading.local()


def _test_run(prog_fd: int, data: bytes, repeat: int, ctx: ctypes.Structure | None,
              what: str) -> TestRunResult:
    if len(data) < 14:
        raise ValueError(f"packet of {len(data)} bytes: BPF_PROG_TEST_RUN for {what} needs at least "
                         f"an Ethernet header (14)")
    # The kernel reads the input where the bytes object holds it (no copy),
    # and writes the packet back into this thread's one output buffer (was a
    # new zeroed 64 KiB buffer per call).
    inbuf = ctypes.c_char_p(data if isinstance(data, bytes) else bytes(data))
    outbuf = getattr(_thread_bufs, "out", None)
    if outbuf is None:
        outbuf = _thread_bufs.out = ctypes.create_string_buffer(_MAX_OUT)
    attr = _TestRunAttr()
    attr.prog_fd = prog_fd
    attr.data_size_in = len(data)
    attr.data_size_out = _MAX_OUT
    attr.data_in = ctypes.cast(inbuf, ctypes.c_void_p).value
    attr.data_out = ctypes.addressof(outbuf)
    attr.repeat = repeat
    if ctx is not None:
        attr.ctx_size_in = ctypes.sizeof(ctx)
        attr.ctx_in = ctypes.addressof(ctx)
    sys_bpf(BPF_PROG_TEST_RUN, attr)
    # string_at copies the packet only (outbuf.raw would copy all 64 KiB first).
    return TestRunResult(attr.retval, attr.duration, ctypes.string_at(outbuf, min(attr.data_size_out, _MAX_OUT)))


def _bytes_data_offset() -> int | None:
    """Where a bytes object's contents start, from its address (CPython:
    PyBytesObject's ob_sval, the last member, one byte of it counted in the
    type's basic size), checked on a probe; None if the check fails (another
    interpreter), and TestRunner copies instead."""
    off = bytes.__basicsize__ - 1
    probe = b"microseg bytes offset probe"
    try:
        return off if ctypes.string_at(id(probe) + off, len(probe)) == probe else None
    except (ValueError, OSError):
        return None


_BYTES_DATA_OFFSET = _bytes_data_offset()


class TestRunner:
    """One program run on packet after packet (a capture's frames), one
    bpf(2) call per packet: the attr, the __sk_buff context and the output
    buffer are made once, a bytes packet is read by the kernel where it is
    (another buffer is made bytes first), and the syscall's arguments are
    bound once. prog_test_run() builds the attr and context per call (and
    copies the packet back), which in a replay cost as much as the program.

    ``copy_out=False`` asks for no packet back (data_out NULL: the kernel
    copies nothing); then ``run()`` returns the retval only and ``data_out``
    stays empty. Not thread-safe: one runner per thread."""

    def __init__(self, prog_fd: int, *, tc: bool = True, ingress_ifindex: int = 0, ifindex: int = 0,
                 mark: int = 0, copy_out: bool = True, out_size: int = _MAX_OUT):
        self._attr = attr = _TestRunAttr()
        attr.prog_fd = prog_fd
        attr.repeat = 1
        self._ctx = None
        if tc:    # XDP's test run refuses a __sk_buff (see prog_test_run_xdp)
            self._ctx = ctx = SkBuff()
            ctx.ingress_ifindex, ctx.ifindex, ctx.mark = ingress_ifindex, ifindex, mark
            attr.ctx_size_in = ctypes.sizeof(ctx)
            attr.ctx_in = ctypes.addressof(ctx)
        self._out = ctypes.create_string_buffer(out_size) if copy_out else None
        self._out_size = out_size if copy_out else 0
        if copy_out:
            attr.data_out = ctypes.addressof(self._out)
        self._in = ctypes.create_string_buffer(0)
        self._in_addr = ctypes.addressof(self._in)
        self._memmove = ctypes.memmove
        self._syscall = _libc.syscall
        self._args = (_nr(), ctypes.c_int(BPF_PROG_TEST_RUN), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
        self.duration_ns = 0

    def run(self, data: bytes) -> int:
        """Run the program once on ``data`` (bytes, at least an Ethernet
        header); its return value. Raises BpfError as sys_bpf() does."""
        n = len(data)
        if n < ETH_HLEN:
            raise ValueError(f"packet of {n} bytes: BPF_PROG_TEST_RUN needs at least an Ethernet header ({ETH_HLEN})")
        attr = self._attr
        attr.data_size_in = n
        # The kernel writes the packet's size back here; a stale hint smaller
        # than the next packet would make that run fail with ENOSPC.
        attr.data_size_out = self._out_size
        if type(data) is not bytes:
            data = bytes(data)         # a bytearray, a memoryview: one copy
        if _BYTES_DATA_OFFSET is not None:
            # The kernel copies the packet in from the bytes object's own
            # buffer (alive: ``data`` holds it until the call returns): no
            # memmove, a ctypes call that cost ~0.4 us a frame.
            attr.data_in = id(data) + _BYTES_DATA_OFFSET
        else:
            if n > len(self._in):      # grown once to the largest frame seen
                self._in = ctypes.create_string_buffer(n)
                self._in_addr = ctypes.addressof(self._in)
            self._memmove(self._in, data, n)
            attr.data_in = self._in_addr
        if self._syscall(*self._args) < 0:
            err = ctypes.get_errno()
            raise BpfError(err, f"bpf cmd {BPF_PROG_TEST_RUN}: {os.strerror(err)}")
        self.duration_ns = attr.duration
        return attr.retval

    def bound(self):
        """run() for a loop over many packets: a function whose attr,
        syscall and arguments are closure cells, not attribute lookups (a
        replay calls it once a frame; the method's lookups and its
        ``duration_ns`` store were a tenth of the Python around the
        syscall). Same checks and errors as run(); ``duration_ns`` is not
        kept. A packet that is not bytes, too short, or a runner that copies
        the packet back or cannot pass bytes in place takes run() itself."""
        if _BYTES_DATA_OFFSET is None or self._out is not None or sys.byteorder != "little":
            return self.run
        syscall, args, off, slow = self._syscall, self._args, _BYTES_DATA_OFFSET, self.run
        # The attr's fields through memoryviews of it, not ctypes' field
        # descriptors: an item store is ~30 ns cheaper than a field's (three
        # stores and a read a frame, ~0.1 us of ~6 us a frame outside the
        # engine). data_size_in and data_size_out are adjacent u32s
        # (_TestRunAttr), one u64 on a little-endian machine: the packet's
        # size in the low half, 0 in the high.
        raw = memoryview(self._attr).cast("B")
        u32, u64 = raw.cast("I"), raw.cast("Q")
        sizes, data_in, retval = (_TestRunAttr.data_size_in.offset // 8, _TestRunAttr.data_in.offset // 8,
                                  _TestRunAttr.retval.offset // 4)

        def run(data: bytes) -> int:
            n = len(data)
            if n < ETH_HLEN or type(data) is not bytes:
                return slow(data)
            # data_size_out zeroed each time: the kernel writes the packet's
            # size back there (see run()), and a stale size would make a
            # larger packet fail.
            u64[sizes] = n
            u64[data_in] = id(data) + off
            if syscall(*args) < 0:
                err = ctypes.get_errno()
                raise BpfError(err, f"bpf cmd {BPF_PROG_TEST_RUN}: {os.strerror(err)}")
            return u32[retval]
        return run

    @property
    def data_out(self) -> bytes:
        """The packet as the last run left it (empty with copy_out=False)."""
        if self._out is None:
            return b""
        return ctypes.string_at(self._out, min(self._attr.data_size_out, self._out_size))


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1,
                  ingress_ifindex: int = 0, ifindex: int = 0, mark: int = 0) -> TestRunResult:
    """Run a sched_cls program once (or ``repeat`` times) on ``data``."""
    ctx = SkBuff()
    ctx.ingress_ifindex = ingress_ifindex
    ctx.ifindex = ifindex
    ctx.mark = mark
    return _test_run(prog_fd, data, repeat, ctx, "TC")


def prog_test_run_xdp(prog_fd: int, data: bytes, repeat: int = 1) -> TestRunResult:
    """Run an XDP program once (or ``repeat`` times) on ``data``.

    No context is passed: XDP's test run refuses a __sk_buff, and without
    a struct xdp_md the kernel makes one on the loopback device.
    """
    return _test_run(prog_fd, data, repeat, None, "XDP")


class _GetInfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _GetFdByIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


@dataclass
class MapInfo:
    id: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    memlock: int | None  # bytes the kernel charges for the map


@dataclass
class ProgInfo:
    id: int
    name: str
    tag: str
    jited: bool
    xlated_len: int
    map_ids: list[int]


def _get_info(fd: int, info: ctypes.Structure) -> None:
    attr = _GetInfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info))
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, attr)


def prog_info_by_fd(fd: int) -> ProgInfo:
    info = _ProgInfo()
    _get_info(fd, info)
    n = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    info2 = _ProgInfo()
    info2.nr_map_ids = n
    info2.map_ids = ctypes.addressof(ids)
    _get_info(fd, info2)
    return ProgInfo(info2.id, info2.name.decode(errors="replace"), bytes(info2.tag).hex(),
                    info2.jited_prog_len > 0, info2.xlated_prog_len, list(ids)[:n])


def prog_fd_by_id(prog_id: int) -> int:
    return sys_bpf(BPF_PROG_GET_FD_BY_ID, _GetFdByIdAttr(prog_id, 0, 0))


def map_fd_by_id(map_id: int) -> int:
    return sys_bpf(BPF_MAP_GET_FD_BY_ID, _GetFdByIdAttr(map_id, 0, 0))


def _fdinfo_memlock(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def map_info_by_fd(fd: int) -> MapInfo:
    info = _MapInfo()
    _get_info(fd, info)
    return MapInfo(info.id, info.name.decode(errors="replace"), info.type, info.key_size,
                   info.value_size, info.max_entries, info.map_flags, _fdinfo_memlock(fd))


def prog_with_maps(prog_id: int) -> tuple[ProgInfo, list[MapInfo]]:
    """Program info and the info of every map it uses, by program id."""
    pfd = prog_fd_by_id(prog_id)
    try:
        prog = prog_info_by_fd(pfd)
    finally:
        os.close(pfd)
    maps = []
    for mid in prog.map_ids:
        mfd = map_fd_by_id(mid)
        try:
            maps.append(map_info_by_fd(mfd))
        finally:
            os.close(mfd)
    return prog, maps


class _PinAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


def obj_pin(fd: int, path: str) -> None:
    """Pin a map or program at ``path`` (inside a mounted bpffs)."""
    buf = ctypes.create_string_buffer(path.encode())
    sys_bpf(BPF_OBJ_PIN, _PinAttr(ctypes.addressof(buf), fd, 0))


def obj_get(path: str) -> int:
    """The object pinned at ``path``: a new fd (caller closes); raises BpfError."""
    buf = ctypes.create_string_buffer(path.encode())
    return sys_bpf(BPF_OBJ_GET, _PinAttr(ctypes.addressof(buf), 0, 0))


def map_keys(fd: int, key_size: int):
    """Every key of a hash map (BPF_MAP_GET_NEXT_KEY), as bytes."""
    cur = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        kbuf = ctypes.create_string_buffer(cur, key_size) if cur is not None else None
        attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(kbuf) if kbuf is not None else 0,
                            value=ctypes.addressof(nxt))
        try:
            sys_bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except BpfError as e:
            if e.errno == 2:      # ENOENT: past the last key
                return
            raise
        cur = nxt.raw
        yield cur


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """Value bytes for ``key``, or None when absent."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    try:
        sys_bpf(BPF_MAP_LOOKUP_ELEM, _MapElemAttr(fd, 0, ctypes.addressof(kbuf), ctypes.addressof(vbuf), 0))
    except BpfError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    return vbuf.raw


def lookup_struct(fd: int, leaf_type: type, index: int = 0):
    """One element of an array map as a ctypes ``leaf_type``."""
    raw = map_lookup(fd, index.to_bytes(4, "little"), ctypes.sizeof(leaf_type))
    if raw is None:
        raise MicrosegError(f"map fd {fd}: no element {index}")
    return leaf_type.from_buffer_copy(raw)


def build_maps(entry_prog_id: int) -> tuple[ProgInfo, list[int], list[MapInfo]]:
    """An attached build: its entry program, the ids of the stage programs
    its PROG_ARRAY points to, and every map any of them uses (by map id)."""
    prog, maps = prog_with_maps(entry_prog_id)
    by_id = {m.id: m for m in maps}
    stage_ids = []
    for m in maps:
        if m.type != BPF_MAP_TYPE_PROG_ARRAY:
            continue
        fd = map_fd_by_id(m.id)
        try:
            for i in range(m.max_entries):
                v = map_lookup(fd, i.to_bytes(4, "little"), 4)
                if v is not None:
                    stage_ids.append(int.from_bytes(v, "little"))
        finally:
            os.close(fd)
    for sid in stage_ids:
        for m in prog_with_maps(sid)[1]:
            by_id.setdefault(m.id, m)
    return prog, stage_ids, sorted(by_id.values(), key=lambda m: m.name)


# -- element and batch map operations ----------------------------------------
# The batch commands move many entries per system call between a map and
# flat user buffers (keys back to back, values back to back), which is what
# makes a sweep of a million sessions cost well under a second: the
# per-entry cost is the kernel's, not Python's. Buffers are passed by
# address so callers can hand numpy arrays (array.ctypes.data) directly.

# Largest batch cursor any map type uses: a hash map's is its u32 bucket
# index, an array's is a key (generic_map_lookup_batch); 64 bytes covers
# every key microseg's arrays and hashes use as a cursor.
BATCH_CURSOR_BYTES = 64


class _BatchAttr(ctypes.Structure):
    # union bpf_attr, the `batch` member (BPF_MAP_*_BATCH commands)
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def map_update(fd: int, key: bytes | None, value: bytes, flags: int = BPF_ANY) -> None:
    """Write one element (BPF_MAP_UPDATE_ELEM). ``key`` None passes a NULL
    key, as maps without keys (BLOOM_FILTER, QUEUE, STACK) require."""
    kbuf = ctypes.create_string_buffer(key, len(key)) if key is not None else None
    vbuf = ctypes.create_string_buffer(value, len(value))
    sys_bpf(BPF_MAP_UPDATE_ELEM, _MapElemAttr(fd, 0, ctypes.addressof(kbuf) if kbuf is not None else 0,
                                              ctypes.addressof(vbuf), flags))


def map_delete(fd: int, key: bytes) -> bool:
    """Delete one element (BPF_MAP_DELETE_ELEM); False when there was none."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    try:
        sys_bpf(BPF_MAP_DELETE_ELEM, _MapElemAttr(fd, 0, ctypes.addressof(kbuf), 0, 0))
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup_batch(fd: int, keys_addr: int, values_addr: int, count: int,
                     in_cursor: int, out_cursor: int) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH call: copy up to ``count`` entries into the
    buffers at ``keys_addr`` / ``values_addr``.

    ``in_cursor`` is the address of the cursor the previous call returned,
    or 0 to start at the beginning; the kernel writes the next cursor at
    ``out_cursor`` (buffers of BATCH_CURSOR_BYTES). Returns (entries copied,
    finished): the kernel says "no more" with ENOENT, and may copy a last
    batch in that same call. A hash map copies whole buckets; concurrent
    changes may make an entry show up twice or not at all in one walk.
    """
    attr = _BatchAttr(in_cursor, out_cursor, keys_addr, values_addr, count, fd, 0, 0)
    try:
        sys_bpf(BPF_MAP_LOOKUP_BATCH, attr)
    except BpfError as e:
        if e.errno == _ENOENT:
            return attr.count, True
        if e.errno == _ENOSPC and attr.count == 0:
            raise BpfError(e.errno, f"bpf map lookup batch: a hash bucket holds more than {count} "
                                    f"entries; use a larger batch") from None
        raise
    return attr.count, False


def map_delete_batch(fd: int, keys_addr: int, count: int) -> tuple[int, int]:
    """One BPF_MAP_DELETE_BATCH call over ``count`` keys back to back.

    The kernel deletes key by key and stops at the first failure. Returns
    (keys deleted before it stopped, errno of the key it stopped at or 0):
    ENOENT means someone else (the kernel's lazy expiry) removed that key
    first, and the caller may go on after it.
    """
    attr = _BatchAttr(0, 0, keys_addr, 0, count, fd, 0, 0)
    try:
        sys_bpf(BPF_MAP_DELETE_BATCH, attr)
    except BpfError as e:
        return attr.count, e.errno
    return attr.count, 0


def map_update_batch(fd: int, keys_addr: int, values_addr: int, count: int,
                     elem_flags: int = BPF_ANY) -> int:
    """One BPF_MAP_UPDATE_BATCH call; returns entries written. A failure
    (e.g. E2BIG on a full hash map) raises after reporting how many went in
    through the exception's ``written`` attribute."""
    attr = _BatchAttr(0, 0, keys_addr, values_addr, count, fd, elem_flags, 0)
    try:
        sys_bpf(BPF_MAP_UPDATE_BATCH, attr)
    except BpfError as e:
        e.written = attr.count
        raise
    return attr.count


class _MapCreateAttr(ctypes.Structure):
    """union bpf_attr, the BPF_MAP_CREATE member, up to map_extra (5.16).

    A kernel older than a field accepts the shorter struct as long as the
    bytes it does not know are zero, so map_extra stays 0 except for
    BLOOM_FILTER (where it is the number of hash functions).
    """
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
        ("map_ifindex", ctypes.c_uint32),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0, map_extra: int = 0, name: str = "", inner_map_fd: int = 0) -> int:
    """BPF_MAP_CREATE; returns the new map's fd (caller closes), raises BpfError.

    ``inner_map_fd``: for ARRAY_OF_MAPS / HASH_OF_MAPS, a map of the type
    every inner map must have (the kernel copies its layout, not the map)."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=flags, map_extra=map_extra,
                          map_name=name.encode()[:15], inner_map_fd=inner_map_fd)
    return sys_bpf(BPF_MAP_CREATE, attr)


# -- tcx links (kernel 6.6+): the TC hooks without a qdisc ---------------------
# One bpf_link per (interface, direction), created with BPF_LINK_CREATE and
# swapped to a new program with BPF_LINK_UPDATE (atomic: a packet meets the
# old program or the new one). include/uapi/linux/bpf.h.
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34
BPF_TCX_INGRESS = 46          # enum bpf_attach_type
BPF_TCX_EGRESS = 47
BPF_LINK_TYPE_TCX = 11        # enum bpf_link_type


class _LinkCreateTcxAttr(ctypes.Structure):
    # link_create with its tcx member: relative_fd 0 and no BPF_F_BEFORE /
    # BPF_F_AFTER flag append the program after the others on the hook.
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("relative_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("expected_revision", ctypes.c_uint64)]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("new_prog_fd", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("old_prog_fd", ctypes.c_uint32)]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


class _ProgQueryAttr(ctypes.Structure):
    _fields_ = [("target_ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("count", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("prog_attach_flags", ctypes.c_uint64), ("link_ids", ctypes.c_uint64),
                ("link_attach_flags", ctypes.c_uint64), ("revision", ctypes.c_uint64)]


class _LinkInfo(ctypes.Structure):
    # struct bpf_link_info up to its tcx member (the union starts 8-aligned);
    # the kernel copies only as much as it has, the rest stays zero.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("_rest", ctypes.c_uint64 * 4)]


@dataclass
class LinkInfo:
    id: int
    type: int
    prog_id: int
    ifindex: int        # tcx: the interface (0 once it is gone: the link is defunct)
    attach_type: int


# Programs one tcx hook can list at once: Cilium runs one or two, an
# operator a few more; 64 is far past any real hook.
TCX_QUERY_MAX = 64


def link_create_tcx(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """BPF_LINK_CREATE of a tcx link (``ifindex`` in the calling thread's
    network namespace); returns the link fd (caller closes or pins it)."""
    return sys_bpf(BPF_LINK_CREATE, _LinkCreateTcxAttr(prog_fd, ifindex, attach_type, 0, 0, 0, 0))


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program of a link in one step (BPF_LINK_UPDATE)."""
    sys_bpf(BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd, new_prog_fd, 0, 0))


def link_detach(link_fd: int) -> None:
    """Detach a link from its hook now, whoever else holds it (BPF_LINK_DETACH)."""
    sys_bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd))


def link_info_by_fd(fd: int) -> LinkInfo:
    info = _LinkInfo()
    _get_info(fd, info)
    return LinkInfo(info.id, info.type, info.prog_id, info.ifindex, info.attach_type)


def prog_query_tcx(ifindex: int, attach_type: int) -> list[tuple[int, int]]:
    """(program id, link id) of every program on a tcx hook, in run order
    (BPF_PROG_QUERY; ``ifindex`` in the calling thread's namespace)."""
    progs = (ctypes.c_uint32 * TCX_QUERY_MAX)()
    links = (ctypes.c_uint32 * TCX_QUERY_MAX)()
    attr = _ProgQueryAttr(target_ifindex=ifindex, attach_type=attach_type, prog_ids=ctypes.addressof(progs),
                          count=TCX_QUERY_MAX, link_ids=ctypes.addressof(links))
    sys_bpf(BPF_PROG_QUERY, attr)
    n = min(attr.count, TCX_QUERY_MAX)
    return [(progs[k], links[k]) for k in range(n)]
