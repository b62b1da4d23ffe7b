"""Write a compiled policy into the kernel as one new generation.

The running policy is never edited in place. A new generation is built
beside it: fresh inner maps (groups as a trie, as a hash and, for IPv4,
as a direct table; rules, exact overrides; bpf/lib/maps.h says how each
is keyed) are created
and filled, put into the spare slot of the outer arrays together with
that slot's defaults, and then ms_pol_state is rewritten to {spare slot,
generation + 1} in one 8-byte map write. A packet sees the old policy or
the new one, never a mix; sessions decided under the old generation are
decided again on their next packet (bpf/lib/policy.h). If anything fails
before the flip, the live policy is untouched.

Layouts come from BCC's types of the template maps (ms_pol_grp_t, ...),
so nothing here restates a struct.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass

from . import bpfsys
from .bpfsys import BPF_F_INNER_MAP, BPF_F_NO_PREALLOC, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LPM_TRIE
from .errors import MicrosegError
from .source import header_defines
from .policy_tables import (GROUP_WORLD, PREFIX_ANY_PORT, PREFIX_ANY_PROTO, CompiledPolicy, Ipv4Dir,
                            Verdict, group_lengths, ipv4_dir, no_gc)

# name of outer array -> (template map, map type, flags)
INNER = {
    "ms_pol_grp": ("ms_pol_grp_t", BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC),
    "ms_pol_gh": ("ms_pol_gh_t", BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC),
    "ms_pol_rule": ("ms_pol_rule_t", BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC),
    "ms_pol_exact": ("ms_pol_exact_t", BPF_MAP_TYPE_HASH, 0),
    "ms_pol_dir": ("ms_pol_dir_t", BPF_MAP_TYPE_ARRAY, BPF_F_INNER_MAP),
    "ms_pol_gv": ("ms_pol_gv_t", BPF_MAP_TYPE_ARRAY, BPF_F_INNER_MAP),
}
POLICY_MAPS = ("ms_pol_state", "ms_pol_dflt", "ms_pol_glen", *INNER, *(t for t, _, _ in INNER.values()))
# The maps apply() writes (the templates only lend their layouts).
WRITTEN_MAPS = ("ms_pol_state", "ms_pol_dflt", "ms_pol_glen", *INNER)
HOOKS = {"ingress": 0, "egress": 1}
# Rule-table records (bpf/lib/maps.h): prefix length, "every protocol" bit,
# and the protocols the fast path keeps sessions of (a pair with a rule
# for every protocol has a record for each of them, and one under 0).
RULE_RECORD = 0
RULE_HAS_ANY = 1 << 17
SESSION_PROTOS = (6, 17, 1, 58)
GLENS_LPM = 0xFF
# A group's filter of the (destination group, protocol) pairs of its rule
# records as a source (bpf/lib/maps.h struct ms_pol_group): size and hash
# read from the header, the bit positions computed as policy.h does.
_BLOOM = header_defines("MS_POL_BLOOM_")
BLOOM_BITS, BLOOM_MUL = _BLOOM["BITS"], _BLOOM["MUL"]


def bloom_bits(dgroup: int, proto: int) -> int:
    """The two bits of (dgroup, proto) in a group's filter, as a mask
    (policy.h ms_pol_bloom_maybe)."""
    h = ((dgroup ^ (proto << 24)) * BLOOM_MUL) & 0xFFFFFFFF
    return (1 << (h >> 25)) | (1 << ((h >> 18) & 127))


@dataclass
class PolicyState:
    slot: int
    gen: int


class PolicyMaps:
    """The policy maps of one build: fds by name, ctypes types by name."""

    def __init__(self, fds: dict[str, int], types: dict[str, tuple[type, type]]):
        self.fds, self.types = fds, types

    @classmethod
    def for_fastpath(cls, fp) -> "PolicyMaps":
        fds, types = {}, {}
        for name in POLICY_MAPS:
            t = fp.table(name)
            fds[name] = t.map_fd
            types[name] = (t.Key, t.Leaf)
        return cls(fds, types)

    @classmethod
    def for_build(cls, build, types: dict[str, tuple[type, type]]) -> "PolicyMaps":
        """The policy maps of an attached build (sessions.AttachedBuild).

        Only the maps the programs use are reachable by id: the state, the
        defaults and the outer arrays. The inner-map templates (ms_pol_*_t)
        are referenced by no instruction, so an attached build has none to
        open; their layouts come from ``types`` (sessions.layouts()), which
        is all ``apply`` needs of them."""
        fds = {}
        for n in WRITTEN_MAPS:
            m = build.info(n)
            k, v = types[n]
            want = (ctypes.sizeof(k), 4 if n in INNER else ctypes.sizeof(v))
            if (m.key_size, m.value_size) != want:
                raise MicrosegError(f"build {build.prog_id}: {n} holds {m.key_size}-byte keys and "
                                    f"{m.value_size}-byte values, this microseg expects {want[0]} and "
                                    f"{want[1]}; the attached build is from another version "
                                    f"(run `microseg up` again)")
            fds[n] = build.fd(n)
        return cls(fds, {n: types[n] for n in POLICY_MAPS})

    # -- reading -------------------------------------------------------
    def state(self) -> PolicyState:
        k, v = self.types["ms_pol_state"]
        raw = bpfsys.map_lookup(self.fds["ms_pol_state"], bytes(ctypes.c_uint32(0)), ctypes.sizeof(v))
        st = v.from_buffer_copy(raw)
        return PolicyState(st.slot, st.gen)

    # -- writing -------------------------------------------------------
    def _packer(self, tmpl: str, which: int, fields: list[tuple[str, str]]) -> struct.Struct:
        """A struct.Struct for the key (``which`` 0) or value (1) of ``tmpl``:
        ``fields`` (name, struct code) at the offsets BCC's type gives them,
        every other byte zero. Packing beats filling a ctypes object per
        entry by an order of magnitude, and the layout is still BCC's."""
        t = self.types[tmpl][which]
        fmt, pos = "=", 0
        for name, code in sorted(fields, key=lambda f: getattr(t, f[0]).offset):
            d = getattr(t, name)
            if d.offset < pos or struct.calcsize("=" + code) != d.size:
                raise MicrosegError(f"{tmpl}: field {name} is not where microseg expects it")
            fmt += "x" * (d.offset - pos) + code
            pos = d.offset + d.size
        return struct.Struct(fmt + "x" * (ctypes.sizeof(t) - pos))

    def _verdicts(self, tmpl: str):
        """Verdict -> its bytes, each distinct verdict packed once."""
        pk = self._packer(tmpl, 1, [("rule_id", "I"), ("action", "B"), ("inspect", "B"), ("app", "B"),
                                    ("log", "B")])
        cache: dict[Verdict, bytes] = {}

        def get(vd: Verdict) -> bytes:
            b = cache.get(vd)
            if b is None:
                b = cache[vd] = pk.pack(vd.rule_id, vd.action, vd.inspect, vd.app, vd.log)
            return b
        return get

    def _verdict_bytes(self, tmpl: str, vd: Verdict) -> bytes:
        return self._verdicts(tmpl)(vd)

    def _inner(self, outer: str, entries: tuple[int, bytes, bytes], size: int = 0) -> int:
        """A new inner map holding ``entries`` (count, keys, values: packed
        back to back), of ``size`` entries (0: as many as it holds)."""
        tmpl, mtype, flags = INNER[outer]
        k, v = self.types[tmpl]
        n, keys, values = entries
        fd = bpfsys.create_map(mtype, ctypes.sizeof(k), ctypes.sizeof(v), max(size, n, 1), flags,
                               name=tmpl[:-2] + "_i")
        try:
            _fill(fd, n, keys, values, ctypes.sizeof(k), ctypes.sizeof(v))
        except OSError:
            os.close(fd)
            raise
        return fd

    def _group_values(self, gids, records) -> dict[int, bytes]:
        """Group id -> its value (bpf/lib/maps.h struct ms_pol_group, in
        ms_pol_grp_t, ms_pol_gh_t and ms_pol_gv_t): the group and its filter
        of the (destination group, protocol) of ``records`` it is the source of."""
        if BLOOM_BITS != 128:
            raise MicrosegError(f"bpf/lib/maps.h: MS_POL_BLOOM_BITS is {BLOOM_BITS}, policy_maps packs 128")
        pv = self._packer("ms_pol_grp_t", 1, [("id", "I"), ("bloom", "16s")])
        masks: dict[int, int] = {}
        for sg, dg, p in records:
            masks[sg] = masks.get(sg, 0) | bloom_bits(dg, p)
        words = struct.Struct("=QQ")    # the filter's two u64, bit n in word n >> 6
        low = (1 << 64) - 1
        return {gid: pv.pack(gid, words.pack(masks.get(gid, 0) & low, masks.get(gid, 0) >> 64)) for gid in gids}

    def _group_entries(self, pol: CompiledPolicy, packed: dict[int, bytes]):
        """Every group prefix with its group's value (``packed``)."""
        pk = self._packer("ms_pol_grp_t", 0, [("prefixlen", "I"), ("addr", "16s")])
        keys = b"".join([pk.pack(net.prefixlen, net.network_address.packed) for net, _ in pol.groups])
        values = b"".join([packed[gid] for _, gid in pol.groups])
        return len(pol.groups), keys, values

    def _dir_entries(self, d: Ipv4Dir, packed: dict[int, bytes]):
        """The IPv4 direct table (its non-zero entries: an array starts
        zeroed) and its group values by index (bpf/lib/maps.h)."""
        nz = [i for i, e in enumerate(d.entries) if e]
        table = (len(nz), struct.pack(f"={len(nz)}I", *nz), struct.pack(f"={len(nz)}I", *[d.entries[i] for i in nz]))
        values = (len(d.groups), struct.pack(f"={len(d.groups)}I", *range(len(d.groups))),
                  b"".join([packed[g] for g in d.groups]))
        return table, values

    def _glens(self, pol: CompiledPolicy, how: str) -> list[bytes]:
        """ms_pol_glen's two values of a slot: mapped, other (policy_tables.group_lengths)."""
        leaf = self.types["ms_pol_glen"][1]
        most = leaf.len.size
        out = []
        for kind, lens in group_lengths(pol, most, how).items():
            v = leaf()
            if lens is None:
                v.n = GLENS_LPM
            else:
                v.n = len(lens)
                for i, ln in enumerate(lens):
                    v.len[i] = ln
            out.append(bytes(v))
        return out

    def _rule_entries(self, pol: CompiledPolicy):
        """The rule hash (bpf/lib/maps.h): every entry under its own prefix
        length, bits past it zero; and the records of each (source group,
        destination group, protocol). Returns (count, keys, values, the
        records' (source group, destination group, protocol))."""
        # Groups and port are big-endian in the key: packed natively after htonl / htons.
        pk = self._packer("ms_pol_rule_t", 0, [("prefixlen", "I"), ("sgroup", "I"), ("dgroup", "I"),
                                               ("proto", "B"), ("port", "H")])
        vpk = self._packer("ms_pol_rule_t", 1, [("v", "8s"), ("lens", "I")])
        vb = self._verdicts("ms_pol_dflt")      # its value is a struct ms_verdict, as the rules' v
        htonl, htons = socket.htonl, socket.htons
        keys, values = [], []
        lens: dict[tuple[int, int, int], int] = {}        # (sg, dg, proto) -> length bits
        any_of: dict[tuple[int, int], Verdict] = {}       # (sg, dg) -> its rule for every protocol
        for e in pol.rules:
            if e.prefixlen == PREFIX_ANY_PROTO:
                any_of[(e.sgroup, e.dgroup)] = e.verdict
                continue
            bits = e.prefixlen - PREFIX_ANY_PORT
            port = e.port >> (16 - bits) << (16 - bits) if bits else 0
            keys.append(pk.pack(e.prefixlen, htonl(e.sgroup), htonl(e.dgroup), e.proto, htons(port)))
            values.append(vpk.pack(vb(e.verdict), 0))
            k = (e.sgroup, e.dgroup, e.proto)
            lens[k] = lens.get(k, 0) | (1 << bits)
        none = vb(Verdict(0))
        for (sg, dg), vd in any_of.items():
            for p in (0, *SESSION_PROTOS):
                lens.setdefault((sg, dg, p), 0)
        for (sg, dg, p), bits in lens.items():
            vd = any_of.get((sg, dg))
            keys.append(pk.pack(RULE_RECORD, htonl(sg), htonl(dg), p, 0))
            values.append(vpk.pack(vb(vd) if vd else none, bits | (RULE_HAS_ANY if vd else 0)))
        return len(keys), b"".join(keys), b"".join(values), lens.keys()

    def _exact_entries(self, pol: CompiledPolicy):
        pk = self._packer("ms_pol_exact_t", 0, [("saddr", "16s"), ("daddr", "16s"), ("sport", "H"),
                                                ("dport", "H"), ("proto", "B")])
        vb = self._verdicts("ms_pol_exact_t")
        htons = socket.htons
        keys = b"".join([pk.pack(e.saddr, e.daddr, htons(e.sport), htons(e.dport), e.proto)
                         for e in pol.exact])
        values = b"".join([vb(e.verdict) for e in pol.exact])
        return len(pol.exact), keys, values

    def seed_generation(self, gen: int) -> None:
        """A new build starts counting where the one before it stopped, so a
        session decided under generation N by the old build is decided again
        by the new one (never mistaken for one of its own decisions). Before
        the first apply of a build that is not attached yet: slot 1, so the
        apply fills slot 0 and flips to it."""
        v = self.types["ms_pol_state"][1]()
        v.slot, v.gen = 1, gen
        bpfsys.map_update(self.fds["ms_pol_state"], bytes(ctypes.c_uint32(0)), bytes(v))

    def apply(self, pol: CompiledPolicy, group_lookup: str = "auto") -> PolicyState:
        """Load ``pol`` as the next generation and make it live in one write.
        ``group_lookup``: how the kernel finds an address's group (auto, hash,
        lpm: policy_tables.group_lengths; auto: IPv4-mapped addresses in the
        IPv4 direct table when the policy has IPv4 prefixes and the table
        fits, policy_tables.ipv4_dir); the trie and the hash are filled
        either way."""
        cur = self.state()
        spare = 1 - cur.slot if cur.gen else 0
        inner = {}
        try:
            with no_gc():     # a million packed keys beside a large compiled policy: no collections
                *rules, records = self._rule_entries(pol)
                packed = self._group_values({GROUP_WORLD} | {g for _, g in pol.groups}, records)
                groups = self._group_entries(pol, packed)
                del records
                v4dir = ipv4_dir(pol) if group_lookup == "auto" else None
                dirs = self._dir_entries(v4dir, packed) if v4dir else None
                del packed
            inner["ms_pol_grp"] = self._inner("ms_pol_grp", groups)
            inner["ms_pol_gh"] = self._inner("ms_pol_gh", groups)   # same keys: prefixes are masked
            inner["ms_pol_rule"] = self._inner("ms_pol_rule", rules)
            del groups, rules
            if dirs:
                inner["ms_pol_dir"] = self._inner("ms_pol_dir", dirs[0], size=len(v4dir.entries))
                inner["ms_pol_gv"] = self._inner("ms_pol_gv", dirs[1])
                del dirs
            # No overrides: no exact table in the slot at all, so a new flow
            # skips its two lookups (bpf/lib/policy.h: an empty slot is
            # none); the slot's table from an older generation goes. The
            # same for the direct table when the policy does not use it.
            if pol.exact:
                inner["ms_pol_exact"] = self._inner("ms_pol_exact", self._exact_entries(pol))
            slot_key = bytes(ctypes.c_uint32(spare))
            for outer in ("ms_pol_exact", "ms_pol_dir", "ms_pol_gv"):
                if outer not in inner:
                    bpfsys.map_delete(self.fds[outer], slot_key)
            for outer, fd in inner.items():
                bpfsys.map_update(self.fds[outer], slot_key, bytes(ctypes.c_uint32(fd)))
            for hook, h in HOOKS.items():
                vd = pol.defaults.get(hook)
                if vd is None:
                    raise MicrosegError(f"compiled policy has no default for {hook}")
                bpfsys.map_update(self.fds["ms_pol_dflt"], bytes(ctypes.c_uint32(spare * 2 + h)),
                                  self._verdict_bytes("ms_pol_dflt", vd))
            for kind, val in enumerate(self._glens(pol, group_lookup)):
                bpfsys.map_update(self.fds["ms_pol_glen"], bytes(ctypes.c_uint32(spare * 2 + kind)), val)
            new = PolicyState(spare, cur.gen + 1)
            _, sv = self.types["ms_pol_state"]
            st = sv()
            st.slot, st.gen = new.slot, new.gen
            bpfsys.map_update(self.fds["ms_pol_state"], bytes(ctypes.c_uint32(0)), bytes(st))  # the flip
        except OSError as e:
            raise MicrosegError(f"policy not applied (the running policy is unchanged): {e}")
        finally:
            for fd in inner.values():
                os.close(fd)   # the outer array holds its own reference
        return new


# Entries per BPF_MAP_UPDATE_BATCH call (the kernel copies them one by one;
# this only bounds one call's time).
BATCH = 65536
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)   # 524: ENOTSUPP, a map type without batch ops


def _fill(fd: int, n: int, keys: bytes, values: bytes, ksize: int, vsize: int) -> None:
    """Write ``n`` packed entries: BPF_MAP_UPDATE_BATCH (hash and, on recent
    kernels, LPM tries), else one BPF_MAP_UPDATE_ELEM each."""
    if n == 0:
        return
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values))
    kaddr, vaddr = ctypes.addressof(kbuf), ctypes.addressof(vbuf)
    done = 0
    while done < n:
        count = min(BATCH, n - done)
        try:
            wrote = bpfsys.map_update_batch(fd, kaddr + done * ksize, vaddr + done * vsize, count)
        except bpfsys.BpfError as e:
            if done == 0 and getattr(e, "written", 0) == 0 and e.errno in _NO_BATCH:
                break     # no batch updates for this map here: one at a time (a bad entry fails there too)
            raise
        done += wrote
        if wrote == 0:
            break
    for i in range(done, n):
        bpfsys.map_update(fd, keys[i * ksize:(i + 1) * ksize], values[i * vsize:(i + 1) * vsize])
