# Two entry points for a new machine: `make demo` and `make test`.
# Both run the idempotent set-up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench bench-policy bench-policy-scale bench-protocols bench-slowpath clean

setup:
	@bash scripts/setup-host.sh

demo: setup
	$(VENV)/bin/microseg lab demo

test: setup
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'test: pytest collected no tests' >&2; exit 1; fi; exit $$rc

bench: setup
	$(PY) bench/fastpath.py

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

clean:
	rm -rf $(VENV) .pytest_cache
