"""The inspection engine: payload records from the kernel in, verdicts
back into the kernel's maps and EVE records out.

Record decoding and the verdict writer (records.py, ringbuf.py,
perfbuf.py), TCP reassembly, protocol detection and parser hand-off
(analyzer.py), the rules (waf.py, dlp.py, domains.py, inspector.py,
rulesfile.py), the per-flow engine (engine.py), resets and held payload
sent on (inject.py), EVE records and sinks (eve.py, eve_sinks.py),
Prometheus metrics (metrics.py) and the capture reader (pcap.py).

May import datapath and protocols; never appliance (the daemon and replay
that wire it to the kernel live there).
"""
