"""`microseg run`: the live appliance on asyncio (uvloop).

Start: compile the fast path, apply the policy, attach to the interfaces,
start the slow-path workers (appliance/workers.py: one process per CPU by
default, setting ``slowpath.workers``; each reads its own ring buffer from
its own event loop and beats its own heartbeat), serve metrics (summed
over the workers), write the workers' EVE to the sinks.
SIGHUP: read the policy and the rules files again; each is applied only if
it is valid (a bad file is logged and the running one stays).
SIGTERM / SIGINT: the workers stop their heartbeats first (the kernel then
applies the slow-path-down action at once instead of after the timeout),
read what is left in their rings, close their flows (EVE flow records) and
exit; then the daemon exits. The programs stay attached and the pinned
state stays: sessions keep their windows, denied flows stay denied, and the
next `microseg run` replaces the programs atomically with its own build
(only `microseg down`, or `run --detach-on-exit`, detaches).

One owner per namespace (datapath/owner.py): the daemon holds the
namespace's owner lock for its life, and checks every OWNER_CHECK_S that
its programs are still the attached ones and that the pinned ring and
heartbeat are still its own maps; if anyone replaced them it says so (a log
line, microseg_ownership_lost_total) and exits with EXIT_OWNERSHIP_LOST so
a supervisor starts it again.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import time

from appliance.runconfig import RunConfig
from datapath.errors import MicrosegError, UsageError

log = logging.getLogger("microseg.run")

# How often the daemon checks that its programs, ring and heartbeat are
# still its own: a takeover is noticed within a second; a check is one
# netlink dump of the namespace's filters and two map lookups.
OWNER_CHECK_S = 1.0
# Exit status when the daemon's programs, ring or heartbeat were replaced
# by someone else: distinct from bad input (2) and a failed gate (3), and
# non-zero, so a supervisor (systemd Restart=on-failure) starts it again.
EXIT_OWNERSHIP_LOST = 4
# The pinned maps that make a daemon's identity, and what each is called
# when someone else's replaces it.
OWNED_MAPS = {"ms_insp_ring": "ring", "ms_slowpath": "heartbeat"}
# After a sweep that kept expired sessions because ms_events was full, the
# next pass comes this soon rather than sweep_interval_s later: the flow
# log reads a full 2 MiB ring (~17,000 end records) in well under it, and
# each pass then logs and deletes another ring's worth.
DEFERRED_RESWEEP_S = 0.25


def next_sweep_delay(stats, interval_s: float) -> float:
    """Seconds to the next sweep after one that returned ``stats``."""
    return min(DEFERRED_RESWEEP_S, interval_s) if stats.deferred else interval_s


def empty_rules():
    from slowpath.rulesfile import load_rules_text
    return load_rules_text("{}\n", "<no rules>")


def load_rules_file(path: str | None):
    from slowpath.rulesfile import load_rules
    return load_rules(path) if path else empty_rules()


def eve_log(cfg: RunConfig):
    from slowpath import eve_sinks
    sinks = []
    if cfg.eve.file:
        sinks.append(eve_sinks.FileSink(cfg.eve.file.path, cfg.eve.file.max_bytes, cfg.eve.file.backups))
    if cfg.eve.syslog:
        s = cfg.eve.syslog
        sinks.append(eve_sinks.SyslogSink(s.host, s.port, s.transport, app_name=s.app_name))
    if cfg.eve.redis:
        # The config's fields are the sink's keyword arguments, one for one.
        sinks.append(eve_sinks.RedisSink(**cfg.eve.redis.model_dump()))
    if cfg.eve.stdout:
        sinks.append(eve_sinks.StdoutSink())
    return eve_sinks.EveLog(sinks)


class Daemon:
    def __init__(self, cfg: RunConfig, config_path: str = "", lock=None, detach_on_exit: bool = False):
        self.cfg = cfg
        self.config_path = config_path
        self.lock = lock                    # datapath.owner.NamespaceLock held for this daemon
        self.detach_on_exit = detach_on_exit
        self.stop_event: asyncio.Event | None = None
        self.fp = None
        self.workers = None                 # appliance.workers.WorkerSet
        self.flowlog = None                 # appliance.flowlog.FlowLog: kernel session ends -> EVE flow
        self.droplog = None                 # appliance.droplog.DropLog (None: no drop ring)
        self.worker_stats: dict[int, dict] = {}
        self.retired_stats: dict[str, int] = {}
        self.reloads = 0
        self._reload_lock = asyncio.Lock()    # one reload at a time (reload())
        self.lost: str | None = None        # what someone else replaced ("programs", "ring", "heartbeat")
        self.exit_code = 0

    # -- start -----------------------------------------------------------------
    def start(self) -> None:
        """Everything that can fail on bad input or a bad kernel, before any
        change: files read and checked, then compile, policy, attach."""
        from appliance import policyfile as pf
        from appliance.bringup import Policy, bring_up
        from datapath import attach
        from datapath.kernelstate import BuildMaps, metrics_reading
        from appliance.workers import default_workers
        from datapath import compat, state
        from datapath.insp_rings import WorkerRings
        from datapath.sessions import WIDE_KEY_MAP, layouts_of
        from datapath.sweeper import Sweeper
        from slowpath.metrics import Metrics, WorkerSeries, parse_listen
        from slowpath.records import RecordDecoder, VerdictWriter, record_type

        cfg = self.cfg
        # slowpath.cpus: the workers run there (appliance/priority.py), one
        # each by default; the daemon stays where it was started
        n = cfg.slowpath.workers or (len(cfg.slowpath.cpus) if cfg.slowpath.cpus else default_workers())
        if cfg.slowpath.cpus:
            from appliance.priority import format_cpulist
            log.info("slow-path workers on CPUs %s (slowpath.cpus)", format_cpulist(cfg.slowpath.cpus))
        if n > 1 and not compat.decide(cfg.datapath.compat).ringbuf:
            log.info("slowpath.workers: %d asked, 1 runs: this kernel's payload channel is the perf buffer "
                     "fallback (no BPF ring buffers), which one worker reads", n)
            n = 1
        # worker_flow_ends: the kernel writes an inspected session's end into
        # its worker's ring, which the worker reads anyway (appliance/flowlog.py)
        cfg = self.cfg = cfg.model_copy(update={"datapath": cfg.datapath.model_copy(
            update={"slowpath_workers": n, "worker_flow_ends": True})})
        policy = Policy(*pf.compile_file(cfg.policy), cfg.policy) if cfg.policy else None
        # The policy's L7 allow-lists (slowpath/l7allow.py), compiled once
        # here; the workers inherit them, and get a reload's by message.
        from slowpath.l7allow import L7Policy, compile_lists
        self.l7 = compile_lists(policy.model) if policy else L7Policy()
        self.rules = load_rules_file(cfg.rules)
        if cfg.netns:
            from pyroute2 import netns as pnetns
            try:
                pnetns.setns(cfg.netns)
            except OSError as e:
                raise UsageError(f"network namespace {cfg.netns!r}: {e.strerror or e}")
        # netlink and pins by the namespace's name (pins live under its name
        # in bpffs), although this process now is in it
        with attach.netlink(cfg.netns) as ipr:
            attach.resolve(ipr, cfg.interfaces, cfg.netns)
        self.eve = eve_log(cfg)
        self.force_no_bloom = cfg.datapath.compat.bloom == "off"

        def prepare(b):
            """The slow path, up before the programs are attached: the
            heartbeat tells the kernel it may hand flows over."""
            fp = self.fp = b.fp
            for line in b.state_lines:
                log.info("state: %s", line)
            if policy:
                log.info("policy %s in force (generation %d)", cfg.policy, b.applied.gen)
            types = layouts_of(fp)
            self.decoder = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                                         types[WIDE_KEY_MAP][0])
            self.rings = WorkerRings(fp, n, state.state_dir(cfg.netns))
            for line in self.rings.lines:
                log.info("state: %s", line)
            # One heartbeat writer per worker slot. The daemon beats every
            # slot once now, so the kernel hands flows over from the moment
            # the programs are attached; each worker then beats its own.
            self.writers = [VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                                          fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf, worker=i)
                            for i in range(n)]
            for w in self.writers:
                w.heartbeat(os.getpid())
            kernel = BuildMaps.of_fastpath(fp)
            self.series = WorkerSeries()
            self.metrics = Metrics(lambda: metrics_reading(kernel), slowpath=False, workers=self.series)
            from slowpath.metrics import EveSinkCollector
            self.metrics.registry.register(EveSinkCollector(self.eve.counters))
            from prometheus_client import Counter
            self.ownership_lost = Counter("microseg_ownership_lost",
                                          "Times the daemon found its programs, ring or heartbeat replaced by "
                                          "someone else (it then exits for its supervisor to restart it)",
                                          ["what"], registry=self.metrics.registry)
            for what in ("programs", *OWNED_MAPS.values()):
                self.ownership_lost.labels(what=what)
            self.server = None
            if cfg.metrics:
                host, port = parse_listen(cfg.metrics.listen)
                try:
                    self.server = self.metrics.serve(host, port)
                except OSError as e:
                    raise UsageError(f"metrics.listen {cfg.metrics.listen}: {e.strerror or e}")

        def after(b):
            self.build = b          # what a reload records again (bringup.record)
            self.attached = b.attached
            for a in self.attached:
                log.info("attached %s on %s (prog id %d)", a.name, a.iface, a.prog_id)
            self.own_progs = {(a.iface, a.direction): a.prog_id for a in self.attached}
            self.own_maps = self._own_map_ids()

        # Sessions, counters, verdicts and the ring live in pinned maps: a
        # restart or an upgrade carries them on (datapath/state.py).
        bring_up(cfg.datapath, cfg.netns, cfg.interfaces, policy, prepare=prepare, after=after,
                 blocklist=lambda line: log.info("%s", line), keep_open=True)
        # The daemon reads ms_events (its flow log): a sweep may keep
        # expired sessions whose records a full ring refused (sweeper.py).
        self.sweeper = Sweeper.for_fastpath(self.fp, defer_full_ring=True)
        self.started = time.monotonic()
        self._start_workers()
        self._record_slowpath()
        # Drop records (appliance/droplog.py): the kernel's drop events, read
        # on the event loop, to the EVE sinks. After the workers fork: the
        # ring's mapping is the daemon's alone.
        from appliance.droplog import DropLog
        self.droplog = DropLog.for_fastpath(self.fp, self.eve.emit)
        if self.droplog is not None:
            self.metrics.registry.register(self.droplog.collector())
            if policy:
                self.droplog.rule_names = pf.rule_names(policy.pol)

    # -- workers -----------------------------------------------------------------
    def _start_workers(self) -> None:
        """Fork the workers (before any thread of the event loop exists;
        a restart later forks from the running daemon the same way)."""
        import types

        from appliance.workers import WorkerSet
        ctx = types.SimpleNamespace(fp=self.fp, cfg=self.cfg, decoder=self.decoder, rules=self.rules,
                                    load_rules=load_rules_file, flow_events=None, wall=None, l7=self.l7)
        if self.fp.features.ringbuf:
            # Session ends come from the kernel (appliance/flowlog.py); the
            # workers log inspected sessions' flow records when told of them.
            from datapath.flowevents import FlowEventDecoder, WallClock, flow_event_type
            ctx.flow_events = FlowEventDecoder(flow_event_type(self.fp))
            ctx.wall = WallClock()
        rings = self.rings.fds if self.fp.features.ringbuf else [None]
        self.workers = WorkerSet(ctx, rings, on_eve=self.eve.emit_line, on_report=self._on_report,
                                 on_exit=self._on_worker_exit, close_in_child=self._fds_not_for_workers)
        self.workers.start_all()

    def _fds_not_for_workers(self) -> list[int]:
        """What a forked worker closes: the metrics endpoint's listening
        socket (a worker outliving the daemon must not hold its port)."""
        return [self.server.fileno()] if self.server is not None else []

    def _on_report(self, i: int, report: dict) -> None:
        self.series.update(i, report.get("metrics") or [])
        self.worker_stats[i] = report.get("stats") or {}

    def _on_worker_exit(self, i: int, pid: int, status: str) -> None:
        """A worker ended: its heartbeat to 0 at once (its flows, only
        its, take the slow-path-down action now, not after the timeout),
        its counters kept (they do not go backwards when it restarts)."""
        from datapath import bpfsys
        t = self.fp.table("ms_slowpath")
        try:
            raw = bpfsys.map_lookup(t.map_fd, i.to_bytes(4, "little"), ctypes.sizeof(t.Leaf))
            if raw and t.Leaf.from_buffer_copy(raw).pid in (pid, os.getpid()) and self.lost != "heartbeat":
                self.writers[i].stop()
        except OSError as e:
            log.error("worker %d: heartbeat not cleared: %s", i, e)
        self.series.retire(i)
        for k, v in self.worker_stats.pop(i, {}).items():
            if k != "slowpath.flows":
                self.retired_stats[k] = self.retired_stats.get(k, 0) + v
        if self.workers.stopping:
            log.info("slow-path worker %d (pid %d) stopped: %s", i, pid, status)

    def slowpath_stats(self) -> dict[str, int]:
        """The workers' counters summed (those of ended workers kept)."""
        out = dict(self.retired_stats)
        for stats in self.worker_stats.values():
            for k, v in stats.items():
                out[k] = out.get(k, 0) + v
        return out

    # -- ownership -----------------------------------------------------------------
    def _own_map_ids(self) -> dict[str, int]:
        """Kernel ids of this daemon's pinned ring and heartbeat maps."""
        from datapath import bpfsys, state
        out = {}
        for name in OWNED_MAPS:
            if not (state.state_dir(self.cfg.netns) / name).exists():
                continue        # not pinned in this build (the perf buffer fallback has no ring)
            try:
                out[name] = bpfsys.map_info_by_fd(self.fp.table(name).map_fd).id
            except (KeyError, AttributeError, OSError):
                continue
        return out

    def _heartbeat_pids(self) -> list[int]:
        """The pid in each worker's heartbeat slot (0: none)."""
        from datapath import bpfsys
        t = self.fp.table("ms_slowpath")
        out = []
        for i in range(len(self.writers)):
            raw = bpfsys.map_lookup(t.map_fd, i.to_bytes(4, "little"), ctypes.sizeof(t.Leaf))
            out.append(t.Leaf.from_buffer_copy(raw).pid if raw else 0)
        return out

    def _own_pids(self) -> set[int]:
        return {0, os.getpid(), *(self.workers.pids.values() if self.workers is not None else ())}

    def _ownership_problem(self) -> tuple[str, str] | None:
        """(what, why) when someone else replaced this daemon's programs,
        ring or heartbeat; None while they are its own. Netlink: run in a
        worker thread (this process is in the namespace already)."""
        from datapath import attach, bpfsys, state
        now = {(a.iface, a.direction): a.prog_id for a in attach.attached(None)}
        for (iface, d), prog_id in sorted(self.own_progs.items()):
            got = now.get((iface, d))
            if got != prog_id:
                hook = d.removeprefix("DIR_").lower()
                return "programs", (f"the {hook} program on {iface} is "
                                    f"{'gone' if got is None else f'prog id {got}'}, not this daemon's "
                                    f"prog id {prog_id}")
        for name, map_id in sorted(self.own_maps.items()):
            path = state.state_dir(self.cfg.netns) / name
            try:
                fd = bpfsys.obj_get(str(path))
            except OSError:
                return OWNED_MAPS[name], f"{path} was removed"
            try:
                got = bpfsys.map_info_by_fd(fd).id
            finally:
                os.close(fd)
            if got != map_id:
                return OWNED_MAPS[name], f"{path} is map id {got}, not this daemon's map id {map_id}"
        ours = self._own_pids()
        for i, pid in enumerate(self._heartbeat_pids()):
            # A worker that just died may still be named until its exit is
            # handled: only a pid that is not a child of this daemon counts.
            if pid not in ours and not _is_child(pid):
                return "heartbeat", (f"worker {i}'s heartbeat is written by pid {pid}, not by this daemon "
                                     f"(pid {os.getpid()}) or its workers")
        return None

    async def _watching(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(OWNER_CHECK_S)
            self._record_slowpath()         # a restarted worker's pid
            try:
                problem = await loop.run_in_executor(None, self._ownership_problem)
            except Exception as e:   # a failed check is logged; the next one tries again
                log.error("ownership check failed: %s: %s", type(e).__name__, e)
                continue
            if problem is not None:
                what, why = problem
                self.lost, self.exit_code = what, EXIT_OWNERSHIP_LOST
                self.ownership_lost.labels(what=what).inc()
                log.error("ownership lost: %s (replaced by someone else); exiting with status %d so a "
                          "supervisor starts microseg run again", why, EXIT_OWNERSHIP_LOST)
                self.stop_event.set()
                return

    def _stop_heartbeat(self) -> None:
        """Heartbeats 0: the kernel applies the slow-path-down action now,
        not after the timeout. Never over another process's heartbeat."""
        if self.lost == "heartbeat":
            return
        try:
            ours = self._own_pids()
            for w, pid in zip(self.writers, self._heartbeat_pids()):
                if pid in ours or _is_child(pid):
                    w.stop()
        except OSError:
            pass

    def _record_slowpath(self) -> None:
        """Workers and the metrics address in the owner record, for
        `microseg status` (the address is in cfg.netns: this daemon serves
        from inside it). Written again when a worker's pid changes."""
        pids = {str(i): pid for i, pid in sorted(self.workers.pids.items())}
        if self.lock is None or self.lock.record.get("worker_pids") == pids:
            return
        metrics = None
        if self.server is not None:
            host = f"[{self.server.address}]" if ":" in self.server.address else self.server.address
            metrics = {"listen": f"{host}:{self.server.port}", "url": self.server.url, "netns": self.cfg.netns}
        try:
            self.lock.write(workers=len(self.workers), worker_pids=pids, metrics=metrics)
        except OSError as e:
            log.error("owner record not updated: %s", e)

    def _record_reload(self, **result) -> None:
        """What the last reload did, in the owner record: `policy apply`
        through this daemon reads it."""
        if self.lock is not None:
            try:
                self.lock.write(reloads=self.reloads, last_reload={"n": self.reloads, **result})
            except OSError as e:
                log.error("owner record not updated: %s", e)

    # -- the loop ----------------------------------------------------------------

    async def _sweeping(self) -> None:
        """Expired sessions out of the kernel's tables, in a worker thread
        (a pass over a million sessions takes a third of a second: not on
        the loop that drains the ring)."""
        loop = asyncio.get_running_loop()
        delay, kept = self.cfg.sweep_interval_s, 0
        while True:
            await asyncio.sleep(delay)
            delay = self.cfg.sweep_interval_s
            try:
                st = await loop.run_in_executor(None, self.sweeper.sweep)
                if st.expired_flows or st.expired_halfopen:
                    log.info("sweep: %d expired sessions deleted (%d half-open)",
                             st.expired_flows + st.expired_halfopen, st.expired_halfopen)
                if st.deferred and not kept:
                    log.info("sweep: %d expired sessions kept until the flow log has read their end "
                             "records (ms_events full); sweeping again every %g s meanwhile",
                             st.deferred, next_sweep_delay(st, self.cfg.sweep_interval_s))
                elif kept and not st.deferred:
                    log.info("sweep: the expired sessions kept for a full ring are all logged and deleted")
                kept = st.deferred
                delay = next_sweep_delay(st, self.cfg.sweep_interval_s)
            except Exception as e:   # a failed pass is logged; the next one tries again
                log.error("sweep failed: %s", e)

    async def _housekeeping(self) -> None:
        from slowpath import eve
        while True:
            await asyncio.sleep(self.cfg.stats_interval_s)
            # Suricata's stats groups only (its schema refuses others): the
            # worker count and each restart are not written here (the
            # daemon logs every restart).
            self.eve.emit(eve.stats_record(eve.suricata_stats(self.slowpath_stats()),
                                           uptime=time.monotonic() - self.started))

    def reload(self) -> None:
        """SIGHUP: policy and rules again, each only if valid. The work
        (compiling the policy and the rules, writing the maps, netlink) runs
        in a worker thread: on the event loop it would stall the heartbeat,
        and the kernel would take the slow path for down meanwhile."""
        asyncio.get_running_loop().create_task(self._reload_in_turn())

    async def _reload_in_turn(self) -> None:
        """Reloads one at a time: a SIGHUP during a reload runs after it, so
        two never apply maps at once, and each waits for the workers'
        confirmations of its own rules (WorkerSet.reload counts them per
        reload)."""
        async with self._reload_lock:
            await self._reload()

    async def _reload(self) -> None:
        from appliance import policyfile as pf
        from appliance.bringup import Policy, record
        from appliance.xdp import sync_blocklist
        from datapath.policy_maps import PolicyMaps
        loop = asyncio.get_running_loop()
        self.reloads += 1
        result = {"policy": "unchanged (no policy file)", "rules": "unchanged"}
        if self.cfg.policy:
            def apply_policy():
                from slowpath.l7allow import compile_lists
                policy = Policy(*pf.compile_file(self.cfg.policy), self.cfg.policy)
                l7 = compile_lists(policy.model)      # before the kernel's flip: a failure changes nothing
                return policy, PolicyMaps.for_fastpath(self.fp).apply(policy.pol), l7
            pol = None
            try:
                policy, st, l7 = await loop.run_in_executor(None, apply_policy)
                # The workers' allow-lists follow the kernel's new generation at once.
                self.l7 = self.workers.ctx.l7 = l7
                self.workers.send_l7(l7.spec)
                pol = policy.pol
                log.info("reload: policy %s in force (generation %d)", self.cfg.policy, st.gen)
                result.update(policy="applied", generation=st.gen)
            except (MicrosegError, OSError) as e:
                log.error("reload: policy not applied, the running one stays: %s", e)
                result["policy"] = f"not applied, the running one stays: {str(e).splitlines()[0]}"
            if pol is not None:
                # The stored copy as the bring-up writes it: `policy explain`,
                # `diff`, `status` and the next `up` read what is in force.
                # Only after a successful apply: a failed one changed nothing.
                self.build.policy, self.build.applied = policy, st
                if self.droplog is not None:
                    self.droplog.rule_names = pf.rule_names(pol)
                try:
                    await loop.run_in_executor(None, record, self.build)
                except OSError as e:   # the policy is in force all the same
                    log.error("reload: applied policy not recorded: %s", e)
                    result["policy"] = f"applied, not recorded: {e.strerror or e}"
                # netns None: this process is in the namespace already. pyroute2's
                # NetNS (by name) forks a helper, which must not happen in a
                # process running an event loop and threads: it once took the
                # daemon down mid-reload.
                try:
                    log.info("reload: %s", await loop.run_in_executor(
                        None, sync_blocklist, list(getattr(pol, "blocklist", [])), self.cfg.interfaces,
                        None, self.force_no_bloom))
                except Exception as e:   # netlink or the XDP build: logged, the reload goes on
                    log.error("reload: XDP blocklist not updated: %s: %s", type(e).__name__, e)
        try:
            self.rules = await loop.run_in_executor(None, load_rules_file, self.cfg.rules)
            self.workers.ctx.rules = self.rules      # what a worker started from now on has
            late = await self.workers.reload()       # the running workers load the file again
            if late:
                from appliance.workers import RELOAD_CONFIRM_S
                log.warning("reload: worker %s has not confirmed the new rules within %.0f s; it applies them "
                            "when loaded", ", ".join(map(str, late)), RELOAD_CONFIRM_S)
            log.info("reload: rules %s loaded", self.cfg.rules or "(none)")
            result["rules"] = "loaded"
        except (MicrosegError, OSError) as e:
            log.error("reload: rules not loaded, the running ones stay: %s", e)
            result["rules"] = f"not loaded, the running ones stay: {str(e).splitlines()[0]}"
        for s in self.eve.sinks:
            if hasattr(s, "reopen"):
                s.reopen()
        self._record_reload(**result)
        log.info("reload %d done", self.reloads)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.workers.attach(loop)
        if self.droplog is not None:
            self.droplog.start(loop)
        self.flowlog = None
        if self.workers.ctx.flow_events is not None:
            from appliance.flowlog import FlowLog
            self.flowlog = FlowLog(self.fp, self.eve.emit, app_names={i: n for n, i in self.fp.l7.ids.items()},
                                   forward=self.workers.forward_flow_ends, wall=self.workers.ctx.wall)
            self.flowlog.start(loop)
            self._flow_metrics()
            # the batch sweep (no kernel sweep) reports its deletes: written on this loop
            self.sweeper.on_ended = lambda entries: loop.call_soon_threadsafe(self.flowlog.sessions_ended, entries)
        else:
            log.info("no BPF ring buffers on this kernel: sessions are not logged as EVE flow records "
                     "(inspected flows' records come from the slow path)")
        tasks = [asyncio.create_task(self._housekeeping()),
                 asyncio.create_task(self._sweeping()), asyncio.create_task(self._watching())]
        log.info("running (pid %d)", os.getpid())
        print(f"microseg running (pid {os.getpid()})", flush=True)
        try:
            await self.stop_event.wait()
        finally:
            if self.lock is not None:
                try:    # a daemon starting meanwhile waits for this one instead of refusing
                    self.lock.write(stopping=True)
                except OSError:
                    pass
            for t in tasks:
                t.cancel()
            # Each worker sets its heartbeat to 0 first (the kernel applies
            # the slow-path-down action now rather than after the timeout),
            # then reads its ring out and closes its flows; their EVE comes
            # here while this waits.
            if self.flowlog is not None:
                # session ends waiting in the ring (FlowLog reads it every
                # few ms) to their workers first: their records carry the
                # workers' side
                self.flowlog.drain()
            await self.workers.stop()
            if self.flowlog is not None:
                self.flowlog.stop()     # what is left: written here (the workers are gone)
                if self.fp.features.ringbuf:
                    # and the session ends left in the workers' rings
                    self.flowlog.worker_leftovers(self.rings.fds)
            self._stop_heartbeat()
            if self.droplog is not None:
                self.droplog.stop()     # shutdown() reads what is left

    def _flow_metrics(self) -> None:
        """Session ends the kernel could not write (ms_events full), read at
        each scrape."""
        from prometheus_client.core import CounterMetricFamily
        flowlog = self.flowlog

        class Lost:
            def collect(self):
                yield CounterMetricFamily("microseg_flow_events_lost",
                                          "Session ends the kernel could not write to ms_events (ring full): "
                                          "sessions without an EVE flow record", value=flowlog.lost())
        self.metrics.registry.register(Lost())

    def shutdown(self) -> None:
        """After the event loop has ended (pyroute2's netlink runs an event
        loop of its own, which cannot start inside a running one)."""
        from datapath import attach
        self._stop_heartbeat()
        if self.detach_on_exit and self.lost is None:
            attach.detach(self.cfg.interfaces, self.cfg.netns)
            for i in self.cfg.interfaces:
                attach.detach_xdp(i, self.cfg.netns)
            log.info("detached from %s (--detach-on-exit)", ", ".join(self.cfg.interfaces))
        else:
            log.info("programs left attached on %s (%s); the next `microseg run` replaces them, "
                     "`microseg down` removes them", ", ".join(self.cfg.interfaces),
                     "someone else's now" if self.lost == "programs" else "inspected flows get the "
                     "slowpath_down action meanwhile")
        self._remove_sweep_lock()
        self.rings.close()
        if self.server is not None:
            self.server.close()
        if self.droplog is not None:
            try:     # the last drops out before the sinks close
                self.droplog.drain()
            except Exception as e:   # a corrupt ring: logged, the stop goes on
                log.error("drop log: last events not read: %s", e)
            self.droplog.close()
        self.eve.close()
        self.fp.close()
        log.info("stopped")

    def _remove_sweep_lock(self) -> None:
        """The sweeper's lock file of this build (only when nobody holds
        it): a stopped daemon leaves no lock files behind."""
        import fcntl

        from datapath.sweeper import _remove_stale_locks
        path = getattr(self.sweeper, "_lock_path", None)
        if path is None:
            return
        try:       # and those of builds gone since (a killed daemon's)
            _remove_stale_locks(path.parent)
        except Exception as e:   # housekeeping: never in the way of the stop
            log.warning("stale sweep locks not removed: %s", e)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError:
            pass        # a sweep is running: its lock file stays
        finally:
            os.close(fd)


def _is_child(pid: int) -> bool:
    """``pid`` is a process this daemon started (its parent is this one)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False


def main(cfg: RunConfig, config_path: str, detach_on_exit: bool = False) -> int:
    import uvloop
    from datapath import owner, pins
    logging.basicConfig(level=logging.INFO, format="%(asctime)s microseg %(levelname)s %(message)s")
    if cfg.netns is None:
        # Under `ip netns exec NS`: pins, lock and records by NS's name.
        name = pins.current_netns_name()
        if name is not None:
            cfg = cfg.model_copy(update={"netns": name})
    pins.enter_system_mount_ns()
    lock = owner.NamespaceLock(cfg.netns)
    try:
        lock.acquire(owner.DAEMON, config=os.path.abspath(config_path) if config_path else None,
                     policy=os.path.abspath(cfg.policy) if cfg.policy else None, reloads=0)
    except owner.Owned as e:
        raise MicrosegError(f"{e}: one owner per namespace; stop it first (nothing was changed)")
    try:
        d = Daemon(cfg, config_path, lock, detach_on_exit)
        d.start()
        try:
            from appliance.workers import profiled
            profiled("daemon", lambda: uvloop.run(d.run()))
        finally:
            d.shutdown()
        return d.exit_code
    finally:
        lock.release()
