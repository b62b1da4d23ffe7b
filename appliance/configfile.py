"""YAML files validated by pydantic, with errors that name file and line.

pydantic reports where in the data a value is wrong (a path of keys and
indexes); the YAML node graph knows where in the file each value came
from. Joining the two turns "timeouts.established: must be > 0" into
"microseg.yaml:12: timeouts.established: Input should be greater than 0".
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from datapath.errors import UsageError

M = TypeVar("M", bound=BaseModel)


def _node_at(node, loc) -> yaml.Node:
    """The deepest YAML node along ``loc`` (keys and list indexes). Of a key
    written twice, the last (the one the loaded data holds)."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if k.value == str(part)]
            if not found:
                return node
            node = found[-1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def load_model(path: str | Path, model: type[M]) -> M:
    """Parse and validate ``path``; a UsageError names file, line and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}:1: expected a mapping of settings at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [p for p in err["loc"]]
        node = _node_at(root, loc) if root is not None else None
        line = node.start_mark.line + 1 if node is not None else 1
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


def node_line(root, loc) -> int:
    """1-based line of the value at ``loc`` (1 when the file has no node there)."""
    if root is None:
        return 1
    return _node_at(root, loc).start_mark.line + 1


def parse_yaml(text: str, path: str | Path):
    """(root node, data) of a YAML text; FileErrors on bad YAML or a non-mapping."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when present: policies get long
    try:
        root = yaml.compose(text, Loader=loader)
        # the data from the same nodes (parsing twice doubled the cost)
        data = loader("").construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise FileErrors(path, [(mark.line + 1 if mark else 1, f"not valid YAML: {getattr(e, 'problem', e)}")])
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FileErrors(path, [(1, "expected a mapping at the top level")])
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
