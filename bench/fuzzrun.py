"""The runner the bench/fuzz_*.py scripts share.

A fuzz script says only what is its protocol's: a ``Target`` subclass that
builds input ``index`` of a seed's run (its seeds, valid conversations,
mutations), feeds one input to its parser and counts what comes out (the
events, the expected Malformed ones, its parser's own bounds), and its
report's wording. This module runs the inputs: one after another or in
``--jobs`` worker processes, each input under a timer (a run-away input is
interrupted and counted as a hang), every ``trace_every``-th one under
tracemalloc; any exception raised is counted with its input and place and
the run goes on; then the run-wide bounds (tracemalloc peak, RSS growth,
the slowest call) and the exit status.

Input i of a run depends only on (seed, i) for an indexed target, so
``--seed S --only i`` replays it (with its traceback) and a run in jobs
finds what the same run in one process finds.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import signal
import sys
import time
import tracemalloc
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.api import Event, Malformed  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
# Examples (exceptions with their input) kept per run: enough to start
# debugging, few enough that a broken parser does not flood the report.
MAX_EXAMPLES = 10
# The inputs between two progress lines on stderr (a long run is minutes).
PROGRESS_EVERY = 100_000


class Hang(Exception):
    """Raised by the per-input timer inside a run-away input."""


def _timeout(signum, frame):
    raise Hang()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def input_rng(seed: int, index: int) -> random.Random:
    """The generator of input ``index`` of ``seed``'s run: independent of
    every other input, so any one of them can be replayed alone."""
    return random.Random(seed * 1_000_003 + index)


def corpus_flows(names):
    """The flows (slowpath.pcap's) of the corpus captures ``names`` that
    are present (the corpus is a sibling checkout, possibly partial)."""
    from slowpath.pcap import read_capture
    for name in names:
        path = CORPUS / "pcaps" / name
        if path.is_file():
            yield from read_capture(path).flows


def rechunk(plan, rng: random.Random, sizes: tuple) -> list:
    """Each (direction, bytes) of ``plan`` cut into pieces of a size drawn
    from ``sizes`` or the whole rest, the pieces kept in order."""
    out = []
    for d, data in plan:
        i = 0
        while i < len(data):
            n = rng.choice((*sizes, len(data)))
            out.append((d, data[i:i + n]))
            i += n
    return out


def edit_at(b: bytearray, i: int, op: int, rng: random.Random, other: bytes, values: tuple) -> bool:
    """One byte-level edit of ``b`` at ``i`` (0 <= i < len(b)), chosen by
    ``op``: 0 flips a bit, 1 sets the byte to one of ``values`` or a random
    one, 2 cuts the rest, 4 deletes up to 15 bytes, 5 repeats up to 63, 6
    puts a piece of ``other`` in place of the rest. False: ``op`` is none of
    these (or 6 with no ``other``), the caller's own (a protocol's field)."""
    if op == 0:
        b[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        b[i] = rng.choice((*values, rng.randrange(256)))
    elif op == 2:
        del b[i:]
    elif op == 4:
        del b[i:i + rng.randrange(1, 16)]
    elif op == 5:
        b[i:i] = b[i:i + rng.randrange(1, 64)]
    elif op == 6 and other:
        j = rng.randrange(len(other))
        b[i:] = other[j:j + rng.randrange(1, 200)]
    else:
        return False
    return True


def edit_anywhere(b: bytearray, op: int, rng: random.Random, values: tuple, random_value: bool) -> bool:
    """One edit of non-empty ``b`` at random places, chosen by ``op``: 0
    flips 1 to 8 bits, 1 sets 1 to 4 bytes to one of ``values`` (or a random
    byte, with ``random_value``), 2 cuts at a random place, 4 deletes up to
    39 bytes. False: ``op`` is the caller's own."""
    if op == 0:
        for _ in range(rng.randrange(1, 9)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(len(b))] = rng.choice((*values, rng.randrange(256)) if random_value else values)
    elif op == 2:
        del b[rng.randrange(len(b)):]
    elif op == 4:
        at = rng.randrange(len(b))
        del b[at:at + rng.randrange(1, 40)]
    else:
        return False
    return True


@dataclass
class Stats:
    """What a run found. A target's own counters go in a subclass; when jobs
    are merged, ints and Counters add, lists join, floats take the largest
    (except ``SUMMED``)."""
    SUMMED = ("cpu_seconds",)

    inputs: int = 0
    start: int = 0
    kinds: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    malformed: int = 0
    exceptions: Counter = field(default_factory=Counter)   # "Type at file:line" -> inputs
    examples: list = field(default_factory=list)           # "input i: Type at file:line: message"
    hangs: list = field(default_factory=list)              # input numbers
    violations: list = field(default_factory=list)         # "input i: what" (or run-wide: what)
    slowest: tuple = (0.0, -1)                             # (seconds, input) of the slowest input
    slowest_call: tuple = (0.0, -1)                        # (seconds, input) of the slowest call timed
    traced_inputs: int = 0
    peak_mb: float = 0.0
    peak_input: int = -1
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_growth_mb: float = 0.0

    def ok(self) -> bool:
        return not (self.exceptions or self.hangs or self.violations)

    def count(self, events, index: int) -> None:
        """Count a parser call's events; anything that is not an Event is a violation."""
        for ev in events:
            if not isinstance(ev, Event):
                self.violations.append(f"input {index}: not an event: {ev!r}")
                continue
            self.events[ev.kind] += 1
            if isinstance(ev, Malformed):
                self.malformed += 1

    def call(self, took: float, index: int) -> None:
        """One timed parser call (the target's clock) took ``took`` seconds."""
        if took > self.slowest_call[0]:
            self.slowest_call = (took, index)

    def merge(self, other: Stats) -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "start":
                continue
            if f.name == "peak_mb":
                if theirs > mine:
                    self.peak_mb, self.peak_input = theirs, other.peak_input
            elif f.name == "peak_input":
                continue
            elif isinstance(mine, Counter):
                mine.update(theirs)
            elif isinstance(mine, list):
                mine.extend(theirs[:MAX_EXAMPLES - len(mine)] if f.name == "examples" else theirs)
            elif isinstance(mine, tuple):
                setattr(self, f.name, max(mine, theirs))
            elif isinstance(mine, float) and f.name not in self.SUMMED:
                setattr(self, f.name, max(mine, theirs))
            else:
                setattr(self, f.name, mine + theirs)


class Target:
    """One protocol's fuzzing: a subclass sets the limits and writes
    ``setup``, ``build`` (or ``inputs``), ``feed`` and ``report``."""
    name = "fuzz"
    stats = Stats
    # "wall": a hang is MAX_INPUT_SECONDS of elapsed time (SIGALRM); "cpu":
    # of this process's CPU time (SIGPROF), so that a busy shared machine
    # descheduling the run is not taken for a slow parser.
    clock = "wall"
    max_input_seconds: float | None = 5.0
    # tracemalloc hooks every allocation: a traced input gets this many times
    # the time before it counts as a hang.
    traced_time_factor = 1.0
    max_call_seconds: float | None = None     # the slowest Stats.call allowed
    max_peak_mb: float | None = None          # tracemalloc's peak over one traced input
    max_rss_growth_mb: float | None = None    # what the run may add to the process's RSS
    trace_every = 200
    trace_hostile = False                     # inputs of kind "hostile" are always traced
    indexed = True                            # input i depends on (seed, i) only
    progress_every = PROGRESS_EVERY
    protocol: str | None = None               # the registry's name of the parser fed

    def __init__(self, flows: list | None = None) -> None:
        self.flows = flows                    # instead of what ``corpus`` reads

    def corpus(self) -> list:
        """The seeds read from ../shared/corpus (flows of its captures)."""
        return []

    def setup(self, seed: int):
        """What building and feeding need, once per process: by default
        (``protocol``'s parser factory, the corpus seeds)."""
        from protocols import registry
        return registry.by_name()[self.protocol].parser_factory, self.corpus() if self.flows is None else self.flows

    def build(self, ctx, index: int, seed: int) -> tuple[str, object]:
        """Input ``index`` of ``seed``'s run: (kind, plan); by default
        the script's ``build_input(index, seed, seeds)``."""
        return self.build_input(index, seed, ctx[1])

    def build_input(self, index: int, seed: int, seeds: list) -> tuple[str, object]:
        raise NotImplementedError

    def inputs(self, ctx, indices, seed: int):
        """(index, kind, plan) for each of ``indices``; a target whose inputs
        come from one generator over the run overrides this."""
        for index in indices:
            kind, plan = self.build(ctx, index, seed)
            yield index, kind, plan

    def feed(self, ctx, plan, st: Stats, index: int, verbose: bool = False) -> None:
        """Feed one input to a fresh parser, counting into ``st``."""
        raise NotImplementedError

    def describe(self, plan) -> str | None:
        """The input, for an exception's example, where its number alone
        does not replay it (a target that is not indexed)."""
        return None

    def report(self, st: Stats, seed: int) -> str:
        raise NotImplementedError

    def add_arguments(self, ap: argparse.ArgumentParser) -> None:
        """The target's own command-line options."""

    def configure(self, args: argparse.Namespace) -> None:
        """Take the target's own options."""

    def print_report(self, st: Stats, seed: int) -> None:
        print(self.report(st, seed))


def _timer(target: Target):
    if target.clock == "cpu":
        return signal.SIGPROF, signal.ITIMER_PROF, time.thread_time
    return signal.SIGALRM, signal.ITIMER_REAL, time.perf_counter


def _run(target: Target, indices, seed: int, trace_every: int, progress: bool, verbose: bool) -> Stats:
    ctx = target.setup(seed)
    st = target.stats()
    sig, itimer, clock = _timer(target)
    rss0 = rss_mb()
    old = signal.signal(sig, _timeout)
    t_run = time.perf_counter()
    try:
        for index, kind, plan in target.inputs(ctx, indices, seed):
            st.inputs += 1
            st.kinds[kind] += 1
            if verbose:
                print(f"input {index} ({kind})")
            traced = (target.trace_hostile and kind == "hostile") or bool(trace_every and index % trace_every == 0)
            if traced:
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
            if target.max_input_seconds:
                signal.setitimer(itimer, target.max_input_seconds * (target.traced_time_factor if traced else 1))
            t0, c0 = clock(), time.thread_time()
            try:
                target.feed(ctx, plan, st, index, verbose)
            except Hang:
                st.hangs.append(index)
            except Exception as e:     # what a fuzz run exists to find: counted, the run goes on
                where = traceback.extract_tb(e.__traceback__)[-1]
                key = f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno}"
                st.exceptions[key] += 1
                if len(st.examples) < MAX_EXAMPLES:
                    what = target.describe(plan)
                    st.examples.append(f"input {index}: {key}: {e}" + (f" ({what})" if what else ""))
                if verbose:
                    traceback.print_exc()
            finally:
                if target.max_input_seconds:
                    signal.setitimer(itimer, 0)
            took = clock() - t0
            st.cpu_seconds += time.thread_time() - c0
            if took > st.slowest[0]:
                st.slowest = (took, index)
            if traced:
                peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
                tracemalloc.stop()
                st.traced_inputs += 1
                if peak > st.peak_mb:
                    st.peak_mb, st.peak_input = peak, index
            if progress and st.inputs % target.progress_every == 0:
                print(f"  {target.name}: {st.inputs:,} inputs, {time.perf_counter() - t_run:.0f} s, "
                      f"{sum(st.exceptions.values())} exceptions", file=sys.stderr, flush=True)
    finally:
        signal.signal(sig, old)
    st.seconds = time.perf_counter() - t_run
    st.rss_growth_mb = rss_mb() - rss0
    return st


_JOB_TARGET: Target | None = None     # the target of a run in jobs (inherited by the forked workers)


def _job(indices, seed: int, trace_every: int, progress: bool) -> Stats:
    return _run(_JOB_TARGET, indices, seed, trace_every, progress, False)


def run(target: Target, inputs: int, seed: int, *, start: int = 0, only: int | None = None,
        trace_every: int | None = None, jobs: int = 1, progress: bool = False) -> Stats:
    """Inputs start..start+inputs-1 of ``seed`` (or input ``only``, verbose),
    in ``jobs`` processes each taking every jobs-th input, their stats merged;
    then the run-wide bounds checked."""
    global _JOB_TARGET
    trace_every = target.trace_every if trace_every is None else trace_every
    if only is not None:
        st = _run(target, range(only, only + 1), seed, 1, False, True)     # traced too
        start = only
    elif jobs <= 1 or not target.indexed:
        st = _run(target, range(start, start + inputs), seed, trace_every, progress, False)
    else:
        import multiprocessing
        _JOB_TARGET = target
        try:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                parts = pool.starmap(_job, [(range(start + j, start + inputs, jobs), seed, trace_every,
                                             progress and j == 0) for j in range(jobs)])
        finally:
            _JOB_TARGET = None
        st = target.stats()
        for p in parts:
            st.merge(p)
    st.start = start
    if target.max_call_seconds is not None and st.slowest_call[0] > target.max_call_seconds:
        st.violations.append(f"slowest call {st.slowest_call[0]:.3f} s > {target.max_call_seconds} s "
                             f"(input {st.slowest_call[1]})")
    if target.max_peak_mb is not None and st.peak_mb > target.max_peak_mb:
        st.violations.append(f"tracemalloc peak {st.peak_mb:.1f} MB > {target.max_peak_mb} MB "
                             f"(input {st.peak_input})")
    if target.max_rss_growth_mb is not None and st.rss_growth_mb > target.max_rss_growth_mb:
        st.violations.append(f"RSS grew {st.rss_growth_mb:.0f} MB > {target.max_rss_growth_mb} MB")
    return st


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "big")


def arguments(target: Target, doc: str, *, seed_default=None, start_help: str | None = None):
    """The command line every fuzz script has: --inputs, --seed, and for an
    indexed target --start, --only, --trace-every, --jobs; then the
    target's own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=random_seed() if seed_default is None else seed_default)
    if target.indexed:
        ap.add_argument("--start", type=int, default=0, help=start_help or "first input number (a run in segments)")
        ap.add_argument("--only", type=int, help="replay input N of the seed's run and show its traceback")
        ap.add_argument("--trace-every", type=int, default=target.trace_every,
                        help="every Nth input is read under tracemalloc")
        ap.add_argument("--jobs", type=int, default=1, help="processes (each takes every Nth input)")
    target.add_arguments(ap)
    return ap


def run_args(target: Target, args: argparse.Namespace) -> Stats:
    """The run the parsed command line asks for."""
    target.configure(args)
    if target.indexed:
        return run(target, args.inputs, args.seed, start=args.start, only=args.only, trace_every=args.trace_every,
                   jobs=args.jobs, progress=args.only is None)
    return run(target, args.inputs, args.seed, progress=True)


def main(target: Target, doc: str, argv=None, **kw) -> int:
    """Parse, run, print the report; 1 on any finding."""
    args = arguments(target, doc, **kw).parse_args(argv)
    st = run_args(target, args)
    target.print_report(st, args.seed)
    return 0 if st.ok() else 1


def outcome_lines(st: Stats) -> list[str]:
    """The report's closing lines: exceptions, hangs, violations, the
    slowest input, memory, and the verdict."""
    return [f"  exceptions {sum(st.exceptions.values())} {st.examples[:5]}",
            f"  hangs {len(st.hangs)} {st.hangs[:5]}, violations {len(st.violations)} {st.violations[:5]}",
            f"  slowest input {st.slowest[0] * 1000:.1f} ms (#{st.slowest[1]}), tracemalloc peak "
            f"{st.peak_mb:.2f} MB over {st.traced_inputs} traced inputs, RSS growth {st.rss_growth_mb:.1f} MB",
            verdict(st)]


def verdict(st: Stats) -> str:
    return "  OK" if st.ok() else "  FAILED"
