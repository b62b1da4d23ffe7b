"""The two schemas every EVE record microseg writes must pass.

Suricata's own (etc/schema.json of Suricata 8.0.6, kept outside the
repository in ../shared/reference as a test oracle: see the README there) is
the yardstick: a pipeline that reads Suricata's EVE must read ours unchanged,
and an unknown field fails it. The project's overlay (slowpath/eve_schema.json)
is stricter: required fields, value patterns, what microseg puts in
``metadata``.

Without the reference file the Suricata half is skipped, except under CI
(CI=true), where it fails, as the corpus tests do.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest

from slowpath.eve import load_schema

SURICATA_SCHEMA = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "suricata-eve-schema.json"
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@lru_cache(maxsize=1)
def project_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(), format_checker=jsonschema.FormatChecker())


@lru_cache(maxsize=1)
def suricata_validator() -> jsonschema.Draft202012Validator | None:
    """Suricata's schema, strictly (Draft 2020-12); None when the file is absent outside CI."""
    if not SURICATA_SCHEMA.is_file():
        if CI:
            pytest.fail(f"Suricata's EVE schema not found at {SURICATA_SCHEMA}")
        return None
    return jsonschema.Draft202012Validator(json.loads(SURICATA_SCHEMA.read_text()))


def require_suricata() -> jsonschema.Draft202012Validator:
    """Suricata's validator, or skip the test that needs it."""
    v = suricata_validator()
    if v is None:
        pytest.skip(f"Suricata's EVE schema not found at {SURICATA_SCHEMA}")
    return v


def schema_errors(record: dict) -> list[str]:
    """Every way ``record`` fails Suricata's schema or the project's overlay
    (empty: it passes both), each as "schema: path: message"."""
    out = []
    for name, v in (("suricata", suricata_validator()), ("microseg", project_validator())):
        if v is None:
            continue
        for e in v.iter_errors(record):
            out.append(f"{name}: {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}")
    return out
