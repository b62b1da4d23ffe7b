"""`microseg replay`: a capture through the real fast path and the slow
path (appliance/replay.py), EVE written beside the target and renamed over it."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from appliance.commands.common import require_privileges
from datapath.errors import MicrosegError, UsageError


# A replay is offline: its EVE lines are written in the replay's own thread,
# buffered. The daemon's sinks (a bounded queue and a writer thread each) cost
# a replay ~5 us of CPU per frame in thread hand-offs (one wakeup per record),
# and a queue the writer could not empty in time would drop records.
EVE_BUFFER_BYTES = 1 << 20


class EveWriter:
    """EVE records of a replay, encoded as the daemon encodes them
    (slowpath.eve.encode), written in order to ``stream``.
    After the first write error nothing more is written: ``error`` says why
    and ``lost`` counts the records not written."""

    def __init__(self, stream, *, owned: bool):
        from slowpath.eve import encode
        self._encode = encode
        self.stream = stream
        self.owned = owned          # closed by close(); stdout is flushed only
        self.records = 0
        self.encode_errors = 0
        self.lost = 0
        self.error: str | None = None
        self._closed = False

    def emit(self, record) -> None:
        line = self._encode(record)
        if line is None:
            self.encode_errors += 1
            return
        self.records += 1
        if self.error is not None:
            self.lost += 1
            return
        try:
            self.stream.write(line)
        except (OSError, ValueError) as e:       # full disk, closed pipe or stream
            self._failed(e)
            self.lost += 1

    def _failed(self, e: Exception) -> None:
        if self.error is None:
            self.error = getattr(e, "strerror", None) or str(e)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.stream.flush()
        except (OSError, ValueError) as e:
            self._failed(e)
            self.lost = self.records        # what the buffer held is unknown: count none as written
        if self.owned:
            try:
                self.stream.close()
            except (OSError, ValueError) as e:
                self._failed(e)
                self.lost = self.records


def cmd_replay(args) -> int:
    require_privileges("loading the fast path for a replay")
    import tempfile

    from appliance import policyfile as pf
    from datapath.configfile import load_model
    from datapath.config import DatapathConfig
    from datapath.loader import FastPath
    from slowpath import eve_sinks
    from appliance.daemon import load_rules_file
    from slowpath.pcap import ETH_HEADER_LEN, PcapError
    from appliance.replay import replay, replay_config

    # Every input is checked before the compile.
    base = load_model(args.config, DatapathConfig) if args.config else None
    if args.inspect_budget is not None and args.inspect_budget < 0:
        raise UsageError("--inspect-budget: must be 0 or more")
    policy_text = None
    if args.policy:
        pf.compile_file(args.policy)
        policy_text = Path(args.policy).read_text()
    rules = load_rules_file(args.rules)
    if not Path(args.pcap).is_file():
        raise UsageError(f"{args.pcap}: no such capture file")
    # A replay's EVE is its own file, written beside the target and renamed
    # over it only when the replay succeeded: a failed replay leaves an
    # existing file as it was.
    part = None
    if args.eve != "-":
        target = Path(os.path.realpath(args.eve))
        if target.is_dir():
            raise UsageError(f"--eve {args.eve}: is a directory")
        try:
            fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        except OSError as e:
            raise UsageError(f"--eve {args.eve}: {e.strerror}")
        try:
            os.fchmod(fd, eve_sinks.FILE_MODE)
        except OSError as e:
            os.close(fd)
            Path(part).unlink(missing_ok=True)
            raise UsageError(f"--eve {args.eve}: {e.strerror}")
        log = EveWriter(os.fdopen(fd, "wb", buffering=EVE_BUFFER_BYTES), owned=True)
    else:
        log = EveWriter(sys.stdout.buffer, owned=False)
    try:
        fp = FastPath(replay_config(base, args.inspect_budget))
        try:
            res = replay(args.pcap, fp, rules, log.emit, policy_text=policy_text,
                         policy_path=args.policy or "<built-in: inspect everything>")
        except PcapError as e:
            raise UsageError(str(e))
        finally:
            fp.close()
        log.close()
        if part is not None and log.error is not None:
            raise MicrosegError(f"--eve {args.eve}: writing failed ({log.error}), {log.lost} of "
                                f"{log.records} records not written; the file was left as it was")
        if part is not None:
            os.replace(part, target)
            part = None
    finally:
        log.close()
        if part is not None:
            Path(part).unlink(missing_ok=True)
    c = res.engine.counters
    summary = {"pcap": args.pcap, "frames": res.frames, "not_ethernet": res.not_ethernet,
               "too_short": res.too_short, "too_big": res.too_big, "resegmented": res.resegmented,
               "cut": None if res.cut is None else {"offset": res.cut.offset, "frame": res.cut.frame,
                                                    "message": str(res.cut)},
               "kernel": dict(sorted(res.reasons.items())), "records": res.records,
               "bad_records": c.bad_records,
               "flows": c.flows_opened, "verdicts": dict(c.verdicts), "failures": dict(c.failures),
               "hits": dict(c.hits), "eve_records": res.eve_records, "drop_records": res.drop_records,
               "eve": args.eve,
               "cpu_s": round(res.cpu_s, 6)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        out = sys.stderr if args.eve == "-" else sys.stdout
        print(f"{args.pcap}: {res.frames} frames, {res.records} payload records, {c.flows_opened} flows "
              f"inspected; {sum(c.hits.values())} rule hits; {res.eve_records} EVE records -> {args.eve}", file=out)
        if res.too_big or res.not_ethernet or res.too_short:
            print(f"  not run: {res.too_big} frames too large for BPF_PROG_TEST_RUN, "
                  f"{res.not_ethernet} of a link type without an Ethernet form, "
                  f"{res.too_short} shorter than an Ethernet header ({ETH_HEADER_LEN} bytes)", file=out)
        if c.bad_records:
            print(f"  {c.bad_records} malformed payload records skipped (first: {res.bad_record})", file=out)
        if res.resegmented:
            print(f"  {res.resegmented} captured TCP super-packets cut into wire-sized segments", file=out)
        for name, n in sorted(res.reasons.items()):
            print(f"  {name}: {n}", file=out)
    if res.cut is not None:
        # One line, after the summary: what was read ran, the rest is not there.
        print(f"warning: {res.cut}; replay stopped there, the summary covers the "
              f"{res.frames} frames before byte offset {res.cut.offset}", file=sys.stderr)
    return 0

