# Two entry points for a new machine: `make demo` and `make test`.
# Both run the idempotent set-up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup-host.sh

demo: setup
	$(VENV)/bin/microseg lab demo

test: setup
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'test: pytest collected no tests' >&2; exit 1; fi; exit $$rc

bench: setup
	$(PY) bench/fastpath.py

clean:
	rm -rf $(VENV) .pytest_cache
