"""Compile BPF C with BCC and load its functions, with failures reported as
one line plus the compiler's or verifier's last lines, never a traceback.

Every BCC compile of the project goes through ``compile_text`` (the fast
path, the kernel sweep, the XDP blocklist, the map-layout compile,
preflight's probe programs, the benchmarks). BCC is imported late: preflight
and ``--help`` work on a host without it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import MicrosegError

# How many lines of compiler / verifier output an error message carries:
# the verifier's conclusion is in its last lines.
ERROR_TAIL_LINES = 12


def headers_dir() -> Path:
    return Path("/lib/modules") / os.uname().release / "build"


def check_headers() -> None:
    """BCC needs kernel headers; say how to get them when they are missing."""
    d = headers_dir()
    if not (d / "include").is_dir():
        raise MicrosegError(
            f"kernel headers missing: {d} does not exist; run `make setup` "
            f"(installs linux-headers-{os.uname().release} or links Debian's newest headers)")


@contextlib.contextmanager
def capture_stderr():
    """Collect what BCC's C++ side and the kernel loader print on fd 2."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        box: dict[str, str] = {"text": ""}
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def error_tail(text: str, n: int = ERROR_TAIL_LINES) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("HINT:")]
    return "\n".join("  " + ln for ln in lines[-n:])


def compile_text(text: str, cflags: list[str] = (), *, what: str = "BPF compile",
                 error: type[Exception] = MicrosegError, tail: int = ERROR_TAIL_LINES):
    """A ``bcc.BPF`` compiled from ``text`` (kernel headers checked first).
    A failure raises ``error("<what> failed: <BCC's message>")`` followed by
    the compiler's last ``tail`` lines."""
    check_headers()
    from bcc import BPF  # late: preflight and --help work without BCC

    failure = None
    with capture_stderr() as err:
        try:
            bpf = BPF(text=text.encode(), cflags=list(cflags))  # BCC 0.26 warns on str
        except Exception as e:  # BCC raises bare Exception
            failure = e
    if failure is not None:
        raise error(f"{what} failed: {failure}\n{error_tail(err['text'], tail)}")
    return bpf


def load_func(bpf, name: str, prog_type: int, *, error: type[Exception] = MicrosegError,
              tail: int = ERROR_TAIL_LINES):
    """``bpf.load_func(name, prog_type)`` (a bpfsys.BPF_PROG_TYPE_*); a refusal
    raises ``error("BPF verifier rejected <name>: ...")`` with the verifier's
    last ``tail`` lines."""
    failure = None
    with capture_stderr() as err:
        try:
            fn = bpf.load_func(name.encode(), prog_type)
        except Exception as e:  # BCC raises bare Exception
            failure = e
    if failure is not None:
        raise error(f"BPF verifier rejected {name}: {failure}\n{error_tail(err['text'], tail)}")
    return fn
