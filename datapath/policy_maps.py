"""Write a compiled policy into the kernel as one new generation.

The running policy is never edited in place. A new generation is built
beside it: fresh inner maps (groups, rules, exact overrides) are created
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
import os
from dataclasses import dataclass

from . import bpfsys
from .errors import MicrosegError
from .policy_tables import CompiledPolicy, Verdict

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1

# name of outer array -> (template map, map type, flags)
INNER = {
    "ms_pol_grp": ("ms_pol_grp_t", BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC),
    "ms_pol_rule": ("ms_pol_rule_t", BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC),
    "ms_pol_exact": ("ms_pol_exact_t", BPF_MAP_TYPE_HASH, 0),
}
POLICY_MAPS = ("ms_pol_state", "ms_pol_dflt", *INNER, *(t for t, _, _ in INNER.values()))
# The maps apply() writes (the templates only lend their layouts).
WRITTEN_MAPS = ("ms_pol_state", "ms_pol_dflt", *INNER)
HOOKS = {"ingress": 0, "egress": 1}


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
    def _verdict_bytes(self, tmpl: str, vd: Verdict) -> bytes:
        leaf = self.types[tmpl][1]()
        leaf.rule_id, leaf.action, leaf.inspect, leaf.app, leaf.log = (
            vd.rule_id, vd.action, vd.inspect, vd.app, vd.log)
        return bytes(leaf)

    def _inner(self, outer: str, entries: list[tuple[bytes, bytes]]) -> int:
        tmpl, mtype, flags = INNER[outer]
        k, v = self.types[tmpl]
        fd = bpfsys.create_map(mtype, ctypes.sizeof(k), ctypes.sizeof(v), max(len(entries), 1),
                               flags, name=tmpl[:-2] + "_i")
        try:
            for key, val in entries:
                bpfsys.map_update(fd, key, val)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _group_entries(self, pol: CompiledPolicy):
        k, _ = self.types["ms_pol_grp_t"]
        out = []
        for net, gid in pol.groups:
            key = k()
            key.prefixlen = net.prefixlen
            key.addr = (ctypes.c_uint8 * 16)(*net.network_address.packed)
            out.append((bytes(key), bytes(ctypes.c_uint32(gid))))
        return out

    def _rule_entries(self, pol: CompiledPolicy):
        k, _ = self.types["ms_pol_rule_t"]
        out = []
        for e in pol.rules:
            key = k()
            key.prefixlen = e.prefixlen
            key.sgroup = (ctypes.c_uint8 * 4)(*e.sgroup.to_bytes(4, "big"))
            key.dgroup = (ctypes.c_uint8 * 4)(*e.dgroup.to_bytes(4, "big"))
            key.proto = e.proto if e.prefixlen > 64 else 0
            port = e.port if e.prefixlen > 72 else 0
            key.port = (ctypes.c_uint8 * 2)(*port.to_bytes(2, "big"))
            out.append((bytes(key), self._verdict_bytes("ms_pol_rule_t", e.verdict)))
        return out

    def _exact_entries(self, pol: CompiledPolicy):
        k, _ = self.types["ms_pol_exact_t"]
        out = []
        for e in pol.exact:
            key = k()
            key.saddr = (ctypes.c_uint8 * 16)(*e.saddr)
            key.daddr = (ctypes.c_uint8 * 16)(*e.daddr)
            key.sport = int.from_bytes(e.sport.to_bytes(2, "big"), "little")   # network order
            key.dport = int.from_bytes(e.dport.to_bytes(2, "big"), "little")
            key.proto = e.proto
            out.append((bytes(key), self._verdict_bytes("ms_pol_exact_t", e.verdict)))
        return out

    def apply(self, pol: CompiledPolicy) -> PolicyState:
        """Load ``pol`` as the next generation and make it live in one write."""
        cur = self.state()
        spare = 1 - cur.slot if cur.gen else 0
        inner = {}
        try:
            inner["ms_pol_grp"] = self._inner("ms_pol_grp", self._group_entries(pol))
            inner["ms_pol_rule"] = self._inner("ms_pol_rule", self._rule_entries(pol))
            inner["ms_pol_exact"] = self._inner("ms_pol_exact", self._exact_entries(pol))
            slot_key = bytes(ctypes.c_uint32(spare))
            for outer, fd in inner.items():
                bpfsys.map_update(self.fds[outer], slot_key, bytes(ctypes.c_uint32(fd)))
            for hook, h in HOOKS.items():
                vd = pol.defaults.get(hook)
                if vd is None:
                    raise MicrosegError(f"compiled policy has no default for {hook}")
                bpfsys.map_update(self.fds["ms_pol_dflt"], bytes(ctypes.c_uint32(spare * 2 + h)),
                                  self._verdict_bytes("ms_pol_dflt", vd))
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
