# hsmd — the two commands a newcomer needs are `make run` and `make test`; both set up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
N      ?= 1000
PYTEST_ARGS ?=

.PHONY: setup run test lint unit proto proto-check molecule bench-agent bench-sandbox bench-modules bench-sync bench-proxy clean

setup:
	@./scripts/setup.sh

## The main job on its embedded default: sandbox API + SoftHSM token + agent + operator + proxy.
run: setup
	$(PY) -m hsmd dev

## The whole suite: lint and type checks, then every test (unit, component, end-to-end, molecule).
test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check hsmd tests benchmarks collections
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py tests/test_proto.py
	$(VENV)/bin/yamllint -s . && $(VENV)/bin/ansible-lint -q

unit: setup
	$(PY) -m pytest tests/unit

## Regenerate the committed gRPC code from proto/ (tests/test_proto.py fails if it drifts).
proto: setup
	$(PY) -m hsmd.proto.generate

molecule: setup
	cd roles/.. && $(VENV)/bin/molecule test

bench-agent: setup
	$(PY) benchmarks/bench_agent.py

bench-sandbox: setup
	$(PY) benchmarks/bench_sandbox.py

bench-modules: setup
	$(PY) benchmarks/bench_modules.py

bench-sync: setup
	$(PY) benchmarks/bench_sync.py --n $(N)

bench-proxy: setup
	$(PY) benchmarks/bench_proxy.py

clean:
	rm -rf .run .bench .pytest_cache .mypy_cache .ruff_cache
