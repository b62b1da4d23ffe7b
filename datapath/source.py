"""Assemble the BPF C source that BCC compiles.

BCC rewrites map method calls (``ms_flows.lookup(&k)``) only in the main
source text it is given, not in files that text #includes; a call left
unrewritten compiles into an indirect call the kernel refuses ("unknown
opcode 8d"). The sources stay split one concern per header (bpf/lib/), and
this module inlines the project's own ``#include "..."`` lines into one text,
with ``#line`` markers so compiler errors still name the real file and line.
System includes (``<...>``) are left to the compiler.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path


def _bpf_dir() -> Path:
    """The directory of the ``bpf`` package (fastpath.c, lib/*.h).

    It sits beside the ``datapath`` package in both layouts: the top-level
    ``bpf/`` of a source checkout (editable install included), and
    ``site-packages/bpf/`` of an installed wheel, which carries the sources as
    package data and installs all its packages into one directory. Looking
    beside ``datapath`` first keeps the C that is compiled the same version as
    the Python that reads its maps, and needs no import of ``bpf`` (an
    editable install made before ``bpf`` became a package does not map it).
    Otherwise: wherever the import system finds a ``bpf`` package that holds
    fastpath.c (the two packages installed apart)."""
    beside = Path(__file__).resolve().parent.parent / "bpf"
    if (beside / "fastpath.c").is_file():
        return beside
    try:
        spec = importlib.util.find_spec("bpf")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or ()) if spec else ():
        if (Path(loc) / "fastpath.c").is_file():
            return Path(loc).resolve()
    return beside   # not found: errors name the path a checkout would have


BPF_DIR = _bpf_dir()
LIB_DIR = BPF_DIR / "lib"
MAIN_SOURCE = BPF_DIR / "fastpath.c"

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def inline_includes(path: Path, search: tuple[Path, ...] = (LIB_DIR,),
                    _seen: set[Path] | None = None) -> str:
    """Return the text of ``path`` with local includes inlined once each."""
    seen = _seen if _seen is not None else set()
    path = path.resolve()
    seen.add(path)
    out: list[str] = [f'#line 1 "{path}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        m = _LOCAL_INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        target = _find(m.group(1), path.parent, search)
        if target is None:
            raise FileNotFoundError(f"{path}:{lineno}: include \"{m.group(1)}\" not found")
        if target not in seen:
            out.append(inline_includes(target, search, seen))
        out.append(f'#line {lineno + 1} "{path}"')
    return "\n".join(out) + "\n"


def _find(name: str, here: Path, search: tuple[Path, ...]) -> Path | None:
    for d in (here, *search):
        cand = (d / name).resolve()
        if cand.is_file():
            return cand
    return None


def program_text(main: Path = MAIN_SOURCE) -> str:
    return inline_includes(main)


def header_defines(prefix: str, lib_dir: Path = LIB_DIR) -> dict[str, int]:
    """Integer ``#define <prefix><NAME> <value>`` constants of bpf/lib/*.h, by
    NAME: Python reads bit values and limits from the one place they are
    written."""
    out: dict[str, int] = {}
    pat = re.compile(rf"^#define\s+{re.escape(prefix)}([A-Z0-9_]+)\s+(0x[0-9a-fA-F]+|\d+)\b", re.M)
    for header in sorted(lib_dir.glob("*.h")):
        for name, val in pat.findall(header.read_text()):
            out[name] = int(val, 0)
    return out
