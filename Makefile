# Two entry points for a new machine: `make demo` and `make test`.
# Both run the idempotent set-up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench bench-fastpath bench-sweep bench-policy bench-policy-scale bench-protocols \
	bench-slowpath bench-latency bench-lookups bench-memory clean

setup:
	@bash scripts/setup-host.sh

demo: setup
	$(VENV)/bin/microseg lab demo

# The suite on every CPU (pytest-xdist). A file runs whole, in order, on one
# worker (--dist loadfile): lab modules share a module-scoped appliance whose
# last test reads what the earlier ones made. Each worker compiles the fast
# path once (the session fixture in tests/conftest.py). `pytest` alone runs
# the suite serially.
test: setup
	@$(PY) -m pytest -n auto --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'test: pytest collected no tests' >&2; exit 1; fi; exit $$rc

# Every benchmark (docs/performance.md has their tables), one at a time:
# never in parallel, even under make -j, since they measure the same CPUs.
# A benchmark that fails (or prints a WARNING and exits 1) does not stop
# the others; `bench` fails at the end, naming them.
BENCHES := fastpath droplog sweep policy policy-scale protocols slowpath latency lookups memory

bench: setup
	@failed=; for b in $(BENCHES); do \
		echo "== make bench-$$b"; \
		$(MAKE) --no-print-directory bench-$$b || failed="$$failed bench-$$b"; \
	done; \
	if [ -n "$$failed" ]; then echo "bench: failed:$$failed" >&2; exit 1; fi

# ns per packet of the fast path (BPF_PROG_TEST_RUN) next to an empty TC program.
bench-fastpath: setup
	$(PY) bench/fastpath.py

# ns per dropped packet with the drop log (events off, suppressed, sent).
bench-droplog: setup
	$(PY) bench/droplog.py

# One sweeper pass over 1,000,000 sessions, kernel and batch, next to Calico's figure.
bench-sweep: setup
	$(PY) bench/sweep.py

# New connections per second and throughput through the lab gateway:
# no filter, microseg, nftables (linear and set) at 10, 1,000, 10,000 rules.
bench-policy: setup
	$(PY) bench/policy.py

# Load time of 100,000 rules / 50,000 prefixes; a new flow's cost, 10 vs 100k rules.
bench-policy-scale: setup
	$(PY) bench/policy_scale.py

# Parsed HTTP requests / TLS ClientHellos / DNS messages per second over the
# corpus, against reassembly and copy alone.
bench-protocols: setup
	$(PY) bench/protocols.py

# Slow path: records/s, inspected HTTP through the lab vs an allow rule, verdict latency.
bench-slowpath: setup
	$(PY) bench/slowpath.py

# Round-trip P50 / P99 / P99.9 through the lab gateway: no filter, microseg
# (no policy, policy), nftables, XDP blocklist; per-packet program cost spread.
bench-latency: setup
	$(PY) bench/latency.py

# ns per HASH / LPM_TRIE / BLOOM_FILTER lookup inside a BPF program, 10 to 100k entries.
bench-lookups: setup
	$(PY) bench/lookups.py

# Kernel memory of the configuration-sized maps, measured, next to the review's estimate.
bench-memory: setup
	$(PY) bench/memory.py

# CPU per frame of ndpiReader, tshark, `microseg replay` and the parsers alone
# on one replicated corpus capture, and per-flow agreement with nDPI. Installs
# its two peers first (Debian packages, root, apt only when one is missing;
# tshark's "may non-root users capture?" question answered no), so `make test`
# never needs them. Not in BENCHES: it installs packages.
PEER_PKGS := libndpi-bin tshark
.PHONY: bench-peers
bench-peers: setup
	scripts/bench-packages.sh $(PEER_PKGS)
	$(PY) bench/peers.py

# perf profiles of bench/policy.py's workloads per filter (CPU per connection
# and per MB in the hooks, docs/performance.md 4.3). Installs linux-perf
# first when missing; not in BENCHES.
.PHONY: bench-policy-perf
bench-policy-perf: setup
	scripts/bench-packages.sh linux-perf
	$(PY) bench/policy_perf.py

clean:
	rm -rf $(VENV) .pytest_cache
