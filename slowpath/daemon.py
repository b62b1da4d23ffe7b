"""`microseg run`: the live appliance on asyncio (uvloop).

Start: compile the fast path, apply the policy, attach to the interfaces,
open the payload ring buffer and register its fd with the event loop (no
polling thread), beat the heartbeat, serve metrics, write EVE.
SIGHUP: read the policy and the rules files again; each is applied only if
it is valid (a bad file is logged and the running one stays).
SIGTERM / SIGINT: stop the heartbeat first (the kernel then applies the
slow-path-down action at once instead of after the timeout), close the
flows (EVE flow records), detach, exit.
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


def empty_rules():
    from slowpath.rules import load_rules_text
    return load_rules_text("{}\n", "<no rules>")


def load_rules_file(path: str | None):
    from slowpath.rules import load_rules
    return load_rules(path) if path else empty_rules()


def eve_log(cfg: RunConfig):
    from slowpath import eve
    sinks = []
    if cfg.eve.file:
        sinks.append(eve.FileSink(cfg.eve.file.path, cfg.eve.file.max_bytes, cfg.eve.file.backups))
    if cfg.eve.syslog:
        s = cfg.eve.syslog
        sinks.append(eve.SyslogSink(s.host, s.port, s.transport, app_name=s.app_name))
    if cfg.eve.stdout:
        sinks.append(eve.StdoutSink())
    return eve.EveLog(sinks)


class Daemon:
    def __init__(self, cfg: RunConfig, config_path: str = ""):
        self.cfg = cfg
        self.config_path = config_path
        self.stop_event: asyncio.Event | None = None
        self.fp = None
        self.engine = None
        self.reloads = 0

    # -- start -----------------------------------------------------------------
    def start(self) -> None:
        """Everything that can fail on bad input or a bad kernel, before any
        change: files read and checked, then compile, policy, attach."""
        from appliance import policyfile as pf
        from appliance.xdp import sync_blocklist
        from datapath import attach, state
        from datapath.policy_maps import PolicyMaps
        from datapath.sweeper import Sweeper
        from datapath.sessions import layouts_of
        from slowpath.engine import Engine
        from slowpath.metrics import Metrics, parse_listen
        from slowpath.records import (RecordDecoder, VerdictWriter, open_payload_channel, record_type, session_seq,
                                      session_stats)
        from slowpath.inject import Injector

        cfg = self.cfg
        policy = pf.compile_file(cfg.policy) if cfg.policy else None
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
        # Sessions, counters, verdicts and the ring live in pinned maps: a
        # restart or an upgrade carries them on (datapath/state.py).
        fp, lines = state.load(cfg.datapath, cfg.netns, pf.state_dir(cfg.netns) / state.LAYOUT_FILE)
        self.fp = fp
        for line in lines:
            log.info("state: %s", line)
        pm = PolicyMaps.for_fastpath(fp)
        pm.seed_generation(pf.last_generation(cfg.netns))
        if policy:
            st = pm.apply(policy[1])
            log.info("policy %s in force (generation %d)", cfg.policy, st.gen)
        types = layouts_of(fp)
        self.decoder = RecordDecoder(record_type({"ms_insp_scratch": (None, fp.table("ms_insp_scratch").Leaf)}),
                                     types["ms_flows"][0])
        self.writer = VerdictWriter(fp.table("ms_verdicts").map_fd, fp.table("ms_slowpath").map_fd,
                                    fp.table("ms_verdicts").Leaf, fp.table("ms_slowpath").Leaf)
        self.writer.heartbeat(os.getpid())
        self.metrics = Metrics(self._kernel_reader)
        self.injector = Injector(session_seq(fp), self._call_later)
        self.engine = Engine(self.rules, self.eve.emit, self.writer, failure_actions=cfg.datapath.failure_actions,
                             simulate=cfg.datapath.simulate, metrics=self.metrics, injector=self.injector,
                             plugins=fp.protocols, app_names={i: n for n, i in fp.l7.ids.items()},
                             session_stats=session_stats(fp), inspect_budget=cfg.datapath.inspect_budget)
        self.ring, self.reader_class = open_payload_channel(fp)
        self.server = None
        if cfg.metrics:
            host, port = parse_listen(cfg.metrics.listen)
            self.server = self.metrics.serve(host, port)
        self.attached = attach.attach(fp, cfg.interfaces, cfg.netns)
        for a in self.attached:
            log.info("attached %s on %s (prog id %d)", a.name, a.iface, a.prog_id)
        self.force_no_bloom = cfg.datapath.compat.bloom == "off"
        if policy:
            log.info("%s", sync_blocklist(list(getattr(policy[1], "blocklist", [])), cfg.interfaces, cfg.netns,
                                          self.force_no_bloom))
        self.sweeper = Sweeper.for_fastpath(fp)
        if policy:
            model, pol, text = policy
            st = pm.state()
            builds = [{"prog_id": a.prog_id, "generation": st.gen, "slot": st.slot}
                      for a in self.attached if a.direction == "DIR_INGRESS"][:1]
            pf.store_applied(cfg.netns, text, cfg.policy, builds, pf.summary(model, pol))
        self.started = time.monotonic()

    def _call_later(self, delay: float, fn) -> None:
        asyncio.get_running_loop().call_later(delay, fn)

    def _kernel_reader(self) -> dict:
        from slowpath.metrics import kernel_counter_rows
        from datapath import pressure, sessions
        counts = self.fp.counters()
        t = self.fp.table
        # ms_flows: the kernel's own count (O(1); a walk of half a million
        # sessions per scrape would take seconds). ms_halfopen (an LRU, which
        # the kernel does not count evictions of): one batched walk.
        flows = pressure.read_pressure(t("ms_pressure").map_fd, t("ms_pressure_user").map_fd, t("ms_pressure").Leaf,
                                       t("ms_pressure_user").Leaf, self.cfg.datapath.flow_table_size,
                                       self.cfg.datapath.pressure_pct).entries
        tmo = sessions.read_timeouts_ns(t("ms_timeouts").map_fd, t("ms_timeouts").Leaf)
        halfopen, _ = sessions.census(t("ms_halfopen").map_fd, t("ms_halfopen").Leaf,
                                      ctypes.sizeof(t("ms_halfopen").Key), tmo)
        return {"counters": kernel_counter_rows(counts),
                "sessions": {"ms_flows": flows, "ms_halfopen": halfopen},
                "capacity": {"ms_flows": self.cfg.datapath.flow_table_size,
                             "ms_halfopen": self.cfg.datapath.halfopen_table_size},
                "pressure_pct": self.cfg.datapath.pressure_pct}

    # -- the loop ----------------------------------------------------------------
    def _on_record(self, raw: bytes) -> None:
        try:
            rec = self.decoder.decode(raw)
        except ValueError as e:
            self.engine.counters.bad_records += 1
            log.warning("bad payload record: %s", e)
            return
        self.engine.handle(rec)

    async def _heartbeat(self) -> None:
        period = self.cfg.datapath.heartbeat_timeout_s / 3
        while True:
            self.writer.heartbeat(os.getpid())
            await asyncio.sleep(period)

    async def _sweeping(self) -> None:
        """Expired sessions out of the kernel's tables, in a worker thread
        (a pass over a million sessions takes a third of a second: not on
        the loop that drains the ring)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.sweep_interval_s)
            try:
                st = await loop.run_in_executor(None, self.sweeper.sweep)
                if st.expired_flows or st.expired_halfopen:
                    log.info("sweep: %d expired sessions deleted (%d half-open)",
                             st.expired_flows + st.expired_halfopen, st.expired_halfopen)
            except Exception as e:   # a failed pass is logged; the next one tries again
                log.error("sweep failed: %s", e)

    async def _housekeeping(self) -> None:
        from slowpath import eve
        while True:
            await asyncio.sleep(self.cfg.stats_interval_s)
            self.engine.sweep()
            self.metrics.set_flows(len(self.engine.flows))
            self.metrics.set_queue_depth(self.ring.pending_bytes())
            c = self.engine.counters
            self.eve.emit(eve.stats_record({
                "slowpath.records": c.records, "slowpath.bytes": c.bytes, "slowpath.flows": len(self.engine.flows),
                **{f"slowpath.verdicts.{k.lower()}": v for k, v in c.verdicts.items()},
                **{f"slowpath.failures.{k}": v for k, v in c.failures.items()},
                **{f"slowpath.hits.{k}": v for k, v in c.hits.items()},
            }, uptime=time.monotonic() - self.started))

    def reload(self) -> None:
        """SIGHUP: policy and rules again, each only if valid. The work
        (compiling the policy and the rules, writing the maps, netlink) runs
        in a worker thread: on the event loop it would stall the heartbeat,
        and the kernel would take the slow path for down meanwhile."""
        asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        from appliance import policyfile as pf
        from appliance.xdp import sync_blocklist
        from datapath.policy_maps import PolicyMaps
        loop = asyncio.get_running_loop()
        self.reloads += 1
        if self.cfg.policy:
            def apply_policy():
                _, pol, _ = pf.compile_file(self.cfg.policy)
                return pol, PolicyMaps.for_fastpath(self.fp).apply(pol)
            pol = None
            try:
                pol, st = await loop.run_in_executor(None, apply_policy)
                log.info("reload: policy %s in force (generation %d)", self.cfg.policy, st.gen)
            except (MicrosegError, OSError) as e:
                log.error("reload: policy not applied, the running one stays: %s", e)
            if pol is not None:
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
            self.engine.rules = self.rules = await loop.run_in_executor(None, load_rules_file, self.cfg.rules)
            log.info("reload: rules %s loaded", self.cfg.rules or "(none)")
        except (MicrosegError, OSError) as e:
            log.error("reload: rules not loaded, the running ones stay: %s", e)
        for s in self.eve.sinks:
            if hasattr(s, "reopen"):
                s.reopen()
        log.info("reload %d done", self.reloads)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        reader = self.reader_class(self.ring, self._on_record)
        reader.start(loop)
        tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._housekeeping()),
                 asyncio.create_task(self._sweeping())]
        log.info("running (pid %d)", os.getpid())
        print(f"microseg running (pid {os.getpid()})", flush=True)
        try:
            await self.stop_event.wait()
        finally:
            for t in tasks:
                t.cancel()
            reader.stop()
            # Heartbeat off at once: the kernel applies the slow-path-down
            # action now rather than after the timeout.
            try:
                self.writer.stop()
            except OSError:
                pass

    def shutdown(self) -> None:
        """After the event loop has ended (pyroute2's netlink runs an event
        loop of its own, which cannot start inside a running one)."""
        from datapath import attach
        try:
            self.writer.stop()
        except OSError:
            pass
        for raw in self.ring.drain():
            self._on_record(raw)
        self.engine.close_all("shutdown")
        attach.detach(self.cfg.interfaces, self.cfg.netns)
        for i in self.cfg.interfaces:
            attach.detach_xdp(i, self.cfg.netns)
        self.ring.close()
        self.injector.close()
        if self.server is not None:
            self.server.close()
        self.eve.close()
        self.fp.close()
        log.info("stopped")


def main(cfg: RunConfig, config_path: str) -> int:
    import uvloop
    logging.basicConfig(level=logging.INFO, format="%(asctime)s microseg %(levelname)s %(message)s")
    d = Daemon(cfg, config_path)
    d.start()
    try:
        uvloop.run(d.run())
    finally:
        d.shutdown()
    return 0
