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
    """The deepest YAML node along ``loc`` (keys and list indexes)."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node = v
                    break
            else:
                return node
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
