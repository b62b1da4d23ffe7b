"""appliance.commands.replay.EveWriter: a replay's EVE lines, encoded as
the daemon encodes them, written in the replay's own thread (no sink queue
or writer thread), and a write failure reported, not lost silently."""
from __future__ import annotations

import errno
import io

from appliance.commands.replay import EveWriter
from slowpath.eve import encode

RECS = [{"event_type": "flow", "n": i, "src_ip": "10.0.0.1"} for i in range(5)]


class Failing(io.BytesIO):
    def __init__(self, ok_writes: int, on_flush: bool = False):
        super().__init__()
        self.ok, self.on_flush = ok_writes, on_flush

    def write(self, b):
        if self.ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.ok -= 1
        return super().write(b)

    def flush(self):
        if self.on_flush:
            raise OSError(errno.EIO, "Input/output error")


def test_lines_as_the_daemon_encodes_them_in_order():
    out = io.BytesIO()
    w = EveWriter(out, owned=False)
    for r in RECS:
        w.emit(r)
    w.close()
    assert out.getvalue() == b"".join(encode(r) for r in RECS)
    assert (w.records, w.lost, w.error) == (5, 0, None)


def test_write_failure_stops_writing_and_counts_the_rest():
    out = Failing(ok_writes=2)
    w = EveWriter(out, owned=False)
    for r in RECS:
        w.emit(r)
    w.close()
    assert w.error == "No space left on device"
    assert (w.records, w.lost) == (5, 3)
    assert out.getvalue() == b"".join(encode(r) for r in RECS[:2])


def test_flush_failure_counts_every_record_lost():
    w = EveWriter(Failing(ok_writes=10, on_flush=True), owned=True)
    for r in RECS:
        w.emit(r)
    w.close()
    w.close()                                    # a second close (the finally) is a no-op
    assert w.error == "Input/output error" and w.lost == w.records == 5
