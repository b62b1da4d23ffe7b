"""C and Python agree on every shared enum and bit flag: Python's values,
compiled into the real program as static asserts (the fast path is built and
loaded, so this needs root; reading the lists is in tests/unit/test_enums.py)."""
from __future__ import annotations

import pytest

from datapath import enums
from datapath.errors import MicrosegError
from datapath.loader import FastPath
from datapath.source import program_text


def _compile_with_asserts(extra: str) -> None:
    text = program_text() + "\n" + extra
    fp = FastPath(text=text)
    fp.close()


def test_c_agrees_with_python():
    # Python's values, compiled into the real program as static asserts.
    _compile_with_asserts(enums.c_static_asserts())


def test_a_disagreement_fails_the_build():
    wrong = enums.c_static_asserts().replace("DROP_TCP_TRUNCATED == ", "DROP_TCP_TRUNCATED == 1000 + ")
    with pytest.raises(MicrosegError, match="DROP_TCP_TRUNCATED differs"):
        _compile_with_asserts(wrong)


@pytest.mark.parametrize("define", ["MS_INSPECT_HOLD", "MS_CFG_LOOSE", "MS_FRAG_MORE"])
def test_a_flag_disagreement_fails_the_build(define):
    # A bit changed on one side only (here: Python's copy) stops the build.
    wrong = enums.c_static_asserts().replace(f"({define} == ", f"({define} == 0x100 + ")
    assert wrong != enums.c_static_asserts()
    with pytest.raises(MicrosegError, match=f"{define} differs"):
        _compile_with_asserts(wrong)
