"""YAML files validated by pydantic, with errors that name file and line.

pydantic reports where in the data a value is wrong (a path of keys and
indexes); the YAML node graph knows where in the file each value came
from. Joining the two turns "timeouts.established: must be > 0" into
"microseg.yaml:12: timeouts.established: Input should be greater than 0".

Every YAML file microseg reads (policy, rules, run configuration, datapath
settings) comes in through read_text() (size limit, UTF-8 with the bad
byte named) and parse_yaml() (nesting and alias limits checked on the
parser's events before anything recursive runs): bad input is one
``FILE[:LINE]: message`` line, never a traceback or a crash.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import UsageError

M = TypeVar("M", bound=BaseModel)

# -- limits of every YAML file microseg reads ------------------------------------
# Each file (policy, rules, run configuration, datapath settings) is read by
# read_text() and parsed by parse_yaml(), which refuse a file beyond these
# before the YAML parser sees it: the parser, the composer (recursive C in
# libyaml's binding: a 50,000-deep '[[[...]]]' overflowed the C stack and the
# process died with SIGSEGV), pydantic and the policy compiler all cost memory
# and stack in proportion to what these bound.

MiB = 1 << 20
# Settings files (run configuration, datapath settings) are tens of lines.
MAX_SETTINGS_BYTES = 1 * MiB
# The 100,000-rule policy of bench/policy_scale.py is 9.6 MB and takes about
# 1 GB at its peak to check (~100 bytes of memory per byte of file); a
# 200 MB policy once grew `policy check` to 12 GB. 32 MiB is 3x the bench's
# policy and bounds a check at about 3.5 GB.
MAX_POLICY_BYTES = 32 * MiB
# Rule files: signatures and domain lists; 16 MiB holds ~500,000 domains.
MAX_RULES_BYTES = 16 * MiB
# The deepest structure a microseg file has is about 6 levels (rules ->
# list -> rule -> list -> ...); 32 leaves room and stays far below what the
# composer, the constructor and pydantic recurse through safely (Python's
# limit is 1000 frames; a 3,000-deep mapping raised RecursionError).
MAX_NESTING = 32
# Nodes that aliases (*name) add when they are expanded. Anchors save typing
# in a hand-written file; a "billion laughs" document doubles at every level
# and pydantic would validate every copy.
MAX_ALIAS_NODES = 100_000


def node_line(root, loc) -> int:
    """1-based line of the deepest YAML node along ``loc`` (keys and list
    indexes; of a key written twice, the last: the one the loaded data
    holds). 1 when the file has no node at all."""
    if root is None:
        return 1
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if k.value == str(part)]
            if not found:
                break
            node = found[-1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1


def load_model(path: str | Path, model: type[M]) -> M:
    """Read (read_text: size and encoding checked), parse (parse_yaml:
    nesting checked) and validate a settings file; a UsageError names file,
    line and field."""
    path = Path(path)
    try:
        root, data = parse_yaml(read_text(path, MAX_SETTINGS_BYTES), path, what="mapping of settings")
    except FileErrors as e:
        raise UsageError(str(e)) from None     # one error: "microseg: error: FILE:LINE: ..."
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = list(err["loc"])
        line = node_line(root, loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise UsageError(f"{path}:{line}: {field}: {err['msg']}{more}")


# -- files with several errors -------------------------------------------------
# `load_model` stops at the first error, which suits a settings file. A
# policy file is checked as a whole and every error is reported, each on its
# own line; the helpers below serve that (appliance/policyfile.py).

class FileErrors(UsageError):
    """Errors in one file, each (line, message); one ``file:line: message`` line each."""

    def __init__(self, path: str | Path, errors: list[tuple[int, str]]):
        self.path = str(path)
        self.errors = sorted(set(errors))
        super().__init__("\n".join(f"{self.path}:{line}: {msg}" for line, msg in self.errors))

    def lines(self) -> list[str]:
        return str(self).splitlines()

    @classmethod
    def whole(cls, path: str | Path, why: str):
        """An error of the whole file (it cannot be read): ``FILE: why``."""
        err = cls(path, [])
        err.args = (f"{path}: {why}",)
        return err


def read_text(path: str | Path, max_bytes: int, error: type[FileErrors] = FileErrors) -> str:
    """The text of a file microseg reads, or one ``error`` line: unreadable,
    larger than ``max_bytes`` (refused before reading when the file says
    its size, never more than max_bytes + 1 read when not: a pipe, a
    device), or not UTF-8 (the byte, its offset and line)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
                raise error.whole(path, _too_large(st.st_size, max_bytes))
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error.whole(path, f"cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error.whole(path, _too_large(None, max_bytes))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(path, [(line, f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                                  f"({e.reason}); save the file as UTF-8")]) from None


def _too_large(size: int | None, limit: int) -> str:
    what = f"{size} bytes, larger" if size is not None else "larger"
    return f"{what} than the {limit} bytes ({limit // MiB} MiB) this kind of file may have; refused before parsing"


def _yaml_error(e: yaml.YAMLError, text: str) -> tuple[int, str]:
    """(line, one-line message) of a YAML error (some span lines: a reader
    error quotes the input, a parser error names where the block began)."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        line, msg = mark.line + 1, getattr(e, "problem", None) or str(e)
    elif isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        msg = f"character #x{e.character:04x} at offset {e.position}: {e.reason}" \
            if isinstance(e.character, int) else e.reason
    else:
        line, msg = 1, str(e)
    return line, "not valid YAML: " + " ".join(str(msg).split())


_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def check_structure(text: str, path: str | Path) -> None:
    """Refuse a document nested deeper than MAX_NESTING or whose aliases
    expand to more than MAX_ALIAS_NODES nodes, from the parser's events:
    libyaml's parser is a loop with a stack, not recursive, so this pass is
    safe on any input, and it stops at the first level too deep."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    stack: list[list] = []          # per open collection: [its anchor, its nodes (aliases expanded)]
    sizes: dict[str, int] = {}      # anchor -> nodes of its value, aliases expanded
    added = 0                       # nodes the aliases added
    try:
        for ev in yaml.parse(text, Loader=loader):
            if isinstance(ev, _OPEN):
                if len(stack) >= MAX_NESTING:
                    raise FileErrors(path, [(ev.start_mark.line + 1,
                                             f"nested deeper than {MAX_NESTING} levels (no microseg file needs "
                                             f"more than a few); refused before parsing")])
                stack.append([ev.anchor, 1])
                continue
            if isinstance(ev, _CLOSE):
                anchor, n = stack.pop()
            elif isinstance(ev, yaml.ScalarEvent):
                anchor, n = ev.anchor, 1
            elif isinstance(ev, yaml.AliasEvent):
                anchor, n = None, sizes.get(ev.anchor, 1)   # an undefined one: the composer says so
                added += n
                if added > MAX_ALIAS_NODES:
                    raise FileErrors(path, [(ev.start_mark.line + 1,
                                             f"aliases expand to more than {MAX_ALIAS_NODES} nodes; "
                                             f"write the values out (refused before parsing)")])
            else:
                continue
            if anchor:
                sizes[anchor] = n
            if stack:
                stack[-1][1] += n
    except yaml.YAMLError as e:
        raise FileErrors(path, [_yaml_error(e, text)]) from None


def parse_yaml(text: str, path: str | Path, what: str = "mapping"):
    """(root node, data) of a YAML text; FileErrors on bad YAML, too deep a
    structure (check_structure, before the composer) or a non-mapping."""
    check_structure(text, path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when present: policies get long
    try:
        root = yaml.compose(text, Loader=loader)
        # the data from the same nodes (parsing twice doubled the cost)
        data = loader("").construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        raise FileErrors(path, [_yaml_error(e, text)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FileErrors(path, [(1, f"expected a {what} at the top level")])
    return root, data


def duplicate_keys(node, loc=()) -> list[tuple[tuple, str, int, int]]:
    """Keys written twice in one mapping (YAML loaders keep the last silently):
    (location of the mapping, key, line of the repeat, line of the first)."""
    out = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for k, v in node.value:
            line = k.start_mark.line + 1
            if k.value in first:
                out.append((loc, k.value, line, first[k.value]))
            else:
                first[k.value] = line
            out += duplicate_keys(v, (*loc, k.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += duplicate_keys(v, (*loc, i))
    return out


def _pydantic_msg(err: dict) -> str:
    if err["type"] == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required, missing"
    if err["type"] == "literal_error":
        return f"{err['input']!r}: {err['msg'][0].lower()}{err['msg'][1:]}"
    return err["msg"]


def validation_errors(e: ValidationError, root, where=None) -> list[tuple[int, str]]:
    """Every error of a pydantic validation as (line, "field: message").
    ``where(loc) -> str`` names the field (default: dotted keys)."""
    out = []
    for err in e.errors():
        loc = tuple(err["loc"])
        field = where(loc) if where else (".".join(str(p) for p in loc) or "(top level)")
        out.append((node_line(root, loc), f"{field}: {_pydantic_msg(err)}"))
    return out
