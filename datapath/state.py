"""Pinned state: the maps that outlive a program build.

Sessions, counters, the SYN budget, fragments, the slow path's verdicts and heartbeat, and the payload ring are pinned under
/sys/fs/bpf/microseg/<namespace>/state/ (bpf/lib/maps.h MS_STATE_TABLE).
A new build (an upgrade, `microseg up` again, a daemon restart) compiled
with that directory opens the same maps: established connections keep
their sessions and pass on, not re-checked as new flows.

A layout is part of the state. ``layout.json`` (in the instance's run
directory, /run/microseg/<namespace>/: bpffs holds BPF objects only, and
both are emptied by a reboot alike) records, per map, the kernel's view (type, key and value size, max_entries, flags)
and every field of key and value (path, offset, size) as the build that
made it compiled them. Before a new build is compiled, its layouts are
compared with the record:

* the same: the pins are reused as they are;
* a value gained, lost or moved fields, or a table was resized: the old
  map is set aside, the build creates a new one, and every entry is copied
  across field by field by name (new fields start at zero); counters are
  re-indexed by (hook, reason), since reasons are appended, never
  renumbered; the ring buffer is made anew (unread records are lost, and
  said so);
* a key changed so that an old key cannot be carried over: refused, with
  the map and the field named (`--fresh-state` starts from empty tables);
* a session table of a build from before the tables were split by family
  (one ms_flows, one ms_halfopen, IPv4 keys IPv4-mapped: ``SPLIT``): set
  aside the same way, and each entry copied into the table of its family
  (sessions.map_key: the IPv4 ones under their 16-byte key).

Never is a pinned map read with a layout it was not written with.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import bpfsys, pins
from .enums import DIRECTION_COUNT, REASON_COUNT
from .errors import MicrosegError
from .insp_rings import PIN_PREFIX as WORKER_RING_PREFIX
from .loader import FastPath
from .pressure import possible_cpus
from .sessions import FAMILY_TABLES, _compile_layouts, layouts, map_key

STATE_MAPS = (*FAMILY_TABLES["ms_flows"], *FAMILY_TABLES["ms_halfopen"], "ms_pressure", "ms_pressure_user", "ms_counters", "ms_syn_dst",
              "ms_syn_global", "ms_frags", "ms_verdicts", "ms_slowpath", "ms_insp_ring")
# Session tables pinned by builds before the split by family, by the table
# name they had, which is the name of the table their entries now go to.
SPLIT = tuple(FAMILY_TABLES)
LAYOUT_FILE = "layout.json"
LAYOUT_FORMAT = 1
ASIDE = "set-aside"   # bpffs refuses names with a dot in them
PERCPU_TYPES = (5, 6, 10)   # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH


def state_dir(netns: str | None) -> Path:
    return pins.ns_dir(netns) / "state"


def flatten(ctype, prefix: str = "", base: int = 0) -> list[tuple[str, int, int]]:
    """Every scalar of a ctypes type as (path, offset, size): "tcp[1].end", ..."""
    if issubclass(ctype, ctypes.Structure) or issubclass(ctype, ctypes.Union):
        out = []
        for name, ftype, *_ in ctype._fields_:
            off = getattr(ctype, name).offset
            out += flatten(ftype, f"{prefix}.{name}" if prefix else name, base + off)
        return out
    if issubclass(ctype, ctypes.Array):
        el = ctype._type_
        size = ctypes.sizeof(el)
        if not (issubclass(el, (ctypes.Structure, ctypes.Union, ctypes.Array))):
            return [(prefix, base, ctypes.sizeof(ctype))]      # a byte or number array: one field
        out = []
        for i in range(ctype._length_):
            out += flatten(el, f"{prefix}[{i}]", base + i * size)
        return out
    return [(prefix, base, ctypes.sizeof(ctype))]


def field_layout(key_type, leaf_type) -> dict:
    return {"key": flatten(key_type), "value": flatten(leaf_type),
            "key_size": ctypes.sizeof(key_type), "value_size": ctypes.sizeof(leaf_type)}


def new_layouts(types: dict[str, tuple[type, type]]) -> dict[str, dict]:
    """Field layouts of the state maps from compiled BCC types (a per-CPU
    value BCC types as one slot per CPU: the slot's type)."""
    out = {}
    for name in STATE_MAPS:
        if name not in types:
            continue
        k, v = types[name]
        if issubclass(v, ctypes.Array) and issubclass(v._type_, ctypes.Structure):
            v = v._type_
        out[name] = field_layout(k, v)
    if "ms_counters" in out:
        out["ms_counters"].update(entries=DIRECTION_COUNT * REASON_COUNT, hooks=DIRECTION_COUNT)
    return out


@dataclass
class Plan:
    directory: Path
    record_path: Path
    reuse: list[str] = field(default_factory=list)
    migrate: dict[str, str] = field(default_factory=dict)     # map -> why
    split: list[str] = field(default_factory=list)            # SPLIT tables pinned: entries to share out
    fresh: bool = False
    notes: list[str] = field(default_factory=list)


def _kernel_info(path: Path) -> dict | None:
    try:
        fd = bpfsys.obj_get(str(path))
    except OSError:
        return None
    try:
        m = bpfsys.map_info_by_fd(fd)
        return {"type": m.type, "key_size": m.key_size, "value_size": m.value_size,
                "max_entries": m.max_entries, "flags": getattr(m, "flags", 0)}
    finally:
        os.close(fd)


def plan(directory: Path, record_path: Path, layouts: dict[str, dict], sizes: dict[str, int], *,
         fresh: bool = False) -> Plan:
    """What to do with the pins in ``directory`` for a build with these
    layouts and sizes. Raises MicrosegError when the state cannot be carried."""
    p = Plan(directory, record_path)
    pinned = [n for n in (*STATE_MAPS, *SPLIT) if (directory / n).exists()]
    if fresh or not pinned:
        p.fresh = True
        if pinned:
            p.notes.append(f"--fresh-state: {len(pinned)} pinned maps in {directory} discarded")
        return p
    try:
        record = json.loads(p.record_path.read_text())
        if record.get("format") != LAYOUT_FORMAT:
            raise ValueError(f"format {record.get('format')!r}")
    except (OSError, ValueError) as e:
        raise MicrosegError(
            f"{directory}: pinned maps without a readable {p.record_path} ({e}); their layout is unknown, "
            f"so they are not reused: start with empty tables with --fresh-state")
    for name in pinned:
        if name in SPLIT:
            _plan_split(p, name, record["maps"].get(name), layouts, _kernel_info(directory / name))
            continue
        old = record["maps"].get(name)
        new = layouts.get(name)
        info = _kernel_info(directory / name)
        if old is None or new is None or info is None:
            p.migrate[name] = "not in the layout record" if old is None else "gone from this build"
            continue
        if info["key_size"] != old["key_size"] or info["value_size"] not in (old["value_size"],
                                                                             _percpu_stride(old)):
            raise MicrosegError(f"{directory / name}: the kernel map ({info['key_size']}-byte keys, "
                                f"{info['value_size']}-byte values) is not what {LAYOUT_FILE} records; "
                                f"refusing to read it (--fresh-state starts from empty tables)")
        why = []
        if _pairs(old["key"]) != _pairs(new["key"]):
            # Every old key field must be in the new key with its size, or
            # an old session's key cannot be written in the new form.
            new_key = dict(_by_path(new["key"]))
            missing = [f for f, _, size in old["key"] if f not in new_key or new_key[f][1] != size]
            if missing or old["key_size"] != new["key_size"]:
                raise MicrosegError(
                    f"{name}: the key layout changed ({', '.join(missing) or 'sizes'}); sessions cannot be "
                    f"carried into this build. Start it with --fresh-state (established connections are then "
                    f"new to the fast path: set `loose: true` to pick them up mid-stream)")
            why.append("key fields moved")
        if _pairs(old["value"]) != _pairs(new["value"]):
            why.append("value layout changed")
        want = sizes.get(name)
        if want is not None and want != info["max_entries"]:
            why.append(f"resized {info['max_entries']} -> {want}")
        if name == "ms_counters":
            want_n = layouts[name].get("entries")
            if want_n is not None and want_n != info["max_entries"]:
                why.append(f"{info['max_entries']} -> {want_n} counters")
        if why:
            p.migrate[name] = ", ".join(why)
        else:
            p.reuse.append(name)
    return p


def _plan_split(p: Plan, name: str, old: dict | None, layouts: dict[str, dict], info: dict | None) -> None:
    """A pinned session table of a build before the split (``name`` in
    SPLIT): its entries go to the maps of their family, if its key can be
    read as the canonical key of this build (that of the IPv6 map)."""
    if old is None or info is None:
        p.notes.append(f"{name}: pinned by an older build without a layout record: its sessions are not carried")
        return
    if info["key_size"] != old["key_size"] or info["value_size"] != old["value_size"]:
        raise MicrosegError(f"{p.directory / name}: the kernel map ({info['key_size']}-byte keys, "
                            f"{info['value_size']}-byte values) is not what {LAYOUT_FILE} records; "
                            f"refusing to read it (--fresh-state starts from empty tables)")
    wide = dict(_by_path(layouts[FAMILY_TABLES[name][1]]["key"]))
    missing = [f for f, _, size in old["key"] if f not in wide or wide[f][1] != size]
    if missing:
        raise MicrosegError(
            f"{name}: the key layout changed ({', '.join(missing)}); sessions cannot be carried into this "
            f"build. Start it with --fresh-state (established connections are then new to the fast path: "
            f"set `loose: true` to pick them up mid-stream)")
    p.split.append(name)


def _percpu_stride(layout: dict) -> int:
    return (layout["value_size"] + 7) // 8 * 8


def _pairs(fields) -> list:
    return [tuple(f) for f in fields]


def _by_path(fields):
    return [(f[0], (f[1], f[2])) for f in fields]


def prepare(p: Plan) -> None:
    """Before the compile: set aside what is migrated (the build then makes
    new maps there), or everything when starting fresh."""
    pins.ensure_bpffs()
    p.directory.mkdir(parents=True, exist_ok=True)
    aside = p.directory / ASIDE
    if aside.exists():
        shutil.rmtree(aside)
    if p.fresh:
        for n in (*STATE_MAPS, *SPLIT):
            try:
                (p.directory / n).unlink()
            except FileNotFoundError:
                pass
        for ring in p.directory.glob(f"{WORKER_RING_PREFIX}*"):   # further workers' rings
            ring.unlink(missing_ok=True)
        return
    if p.migrate or p.split:
        aside.mkdir()
        for n in (*p.migrate, *p.split):
            os.rename(p.directory / n, aside / n)


def _convert(raw: bytes, old_fields, new_fields, new_size: int) -> bytes:
    out = bytearray(new_size)
    old = dict(_by_path(old_fields))
    for path, off, size in new_fields:
        o = old.get(path)
        if o is not None and o[1] == size:
            out[off:off + size] = raw[o[0]:o[0] + size]
    return bytes(out)


def migrate(p: Plan, fastpath, record: dict, layouts: dict[str, dict], ncpus: int) -> list[str]:
    """After the build loaded (its new maps pinned): copy the set-aside
    maps' entries in, field by field. Returns one line per map."""
    aside = p.directory / ASIDE
    lines = []
    for name, why in p.migrate.items():
        path = aside / name
        old = record["maps"].get(name)
        new = layouts.get(name)
        if not path.exists() or old is None or new is None:
            lines.append(f"{name}: {why}: nothing to carry over")
            continue
        fd = bpfsys.obj_get(str(path))
        try:
            info = bpfsys.map_info_by_fd(fd)
            dst = fastpath.table(name).map_fd
            if info.type == bpfsys.BPF_MAP_TYPE_RINGBUF:
                lines.append(f"{name}: {why}: made anew (unread records dropped)")
                continue
            n = _copy(fd, dst, info, old, new, name, ncpus)
            lines.append(f"{name}: {why}: {n} entries carried over")
        finally:
            os.close(fd)
    for name in p.split:
        fd = bpfsys.obj_get(str(aside / name))
        try:
            n = _share_out(fd, name, record["maps"][name], fastpath, layouts)
            lines.append(f"{name}: one table for both families before: "
                         + ", ".join(f"{k} {v}" for k, v in n.items()) + " entries carried over")
        finally:
            os.close(fd)
    shutil.rmtree(aside, ignore_errors=True)
    return lines


def _share_out(src: int, name: str, old: dict, fastpath, layouts: dict[str, dict]) -> dict[str, int]:
    """Copy the entries of SPLIT table ``name`` into the maps of their
    families; returns the entries carried per map."""
    n = {m: 0 for m in FAMILY_TABLES[name]}
    wide = layouts[FAMILY_TABLES[name][1]]
    for k in list(bpfsys.map_keys(src, old["key_size"])):
        raw = bpfsys.map_lookup(src, k, old["value_size"])
        if raw is None:
            continue
        target, key = map_key(name, _convert(k, old["key"], wide["key"], wide["key_size"]))
        new = layouts[target]
        try:
            bpfsys.map_update(fastpath.table(target).map_fd, key,
                              _convert(raw, old["value"], new["value"], new["value_size"]))
            n[target] += 1
        except OSError:
            pass      # a full table (the IPv6 one is smaller): what fits is carried
    return n


def _copy(src: int, dst: int, info, old: dict, new: dict, name: str, ncpus: int) -> int:
    percpu = info.type in PERCPU_TYPES
    old_vs, new_vs = old["value_size"], new["value_size"]
    read_vs = _percpu_stride(old) * ncpus if percpu else old_vs
    is_array = info.type in (2, 6)   # ARRAY, PERCPU_ARRAY: every index exists
    keys = ([i.to_bytes(4, "little") for i in range(info.max_entries)] if is_array
            else list(bpfsys.map_keys(src, info.key_size)))
    n = 0
    old_count = info.max_entries
    for k in keys:
        raw = bpfsys.map_lookup(src, k, read_vs)
        if raw is None:
            continue
        if percpu:
            so, sn = _percpu_stride(old), (new_vs + 7) // 8 * 8
            value = b"".join(_convert(raw[c * so:c * so + old_vs], old["value"], new["value"], new_vs).ljust(sn, b"\0")
                             for c in range(ncpus))
        else:
            value = _convert(raw, old["value"], new["value"], new_vs)
        key = _convert(k, old["key"], new["key"], new["key_size"]) if not is_array else k
        if name == "ms_counters" and new.get("entries") and new["entries"] != old_count:
            # index = hook * reasons + reason; reasons were appended
            hook, reason = divmod(int.from_bytes(k, "little"), old_count // new["hooks"])
            key = (hook * (new["entries"] // new["hooks"]) + reason).to_bytes(4, "little")
        if not any(value):
            continue
        try:
            bpfsys.map_update(dst, key, value)
            n += 1
        except OSError:
            pass      # a full new table (it was made smaller): what fits is carried
    return n


def write_record(p: Plan, fastpath, layouts: dict[str, dict]) -> None:
    """After a build loaded: what its pinned maps are, for the next one."""
    maps = {}
    for name in STATE_MAPS:
        if name in layouts:
            maps[name] = {**layouts[name], **(_kernel_info(p.directory / name) or {})}
    p.record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": LAYOUT_FORMAT, "maps": maps}, indent=1))
    os.replace(tmp, p.record_path)


def read_record(record_path: Path) -> dict:
    try:
        return json.loads(record_path.read_text())
    except (OSError, ValueError):
        return {"format": LAYOUT_FORMAT, "maps": {}}


def remove(netns: str | None, record_path: Path | None = None) -> None:
    shutil.rmtree(state_dir(netns), ignore_errors=True)
    for d in (pins.ns_dir(netns), pins.ns_dir(netns).parent):   # emptied: gone too
        try:
            d.rmdir()
        except OSError:
            pass
    if record_path is not None:
        try:
            record_path.unlink()
        except FileNotFoundError:
            pass


def load(config, netns: str | None, record_path: Path, *, fresh: bool = False, **fastpath_kw):
    """A FastPath whose state maps are the pinned ones of ``netns`` (made,
    reused or migrated as the module docstring says). Returns (fastpath,
    lines saying what happened to the state)."""
    # The layouts of the program about to be built: its own text when it
    # is not the installed one (a test, an upgrade being staged).
    text = fastpath_kw.get("text")
    lay = new_layouts(_compile_layouts(text) if text is not None else layouts())
    d = state_dir(netns)
    p = plan(d, record_path, lay, config.state_map_sizes(), fresh=fresh)
    record = read_record(record_path)
    prepare(p)
    fp = FastPath(config, pin_dir=d, **fastpath_kw)
    try:
        lines = list(p.notes)
        if p.reuse:
            lines.append(f"reused {len(p.reuse)} pinned maps ({d})")
        lines += migrate(p, fp, record, lay, possible_cpus())
        write_record(p, fp, lay)
    except Exception:
        fp.close()
        raise
    return fp, lines
