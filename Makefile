# flarestream developer tasks. `make` lists them.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: help venv install demo test test-unit bench bench-replay bench-nvflare bench-security bench-signing clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

venv:  ## create .venv
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip

install: venv  ## editable install with every extra the tests need
	$(PIP) install -q -e '.[dev]' --config-settings editable_mode=strict

demo: venv  ## the main job: local broker, simulated sites, the three sinks, summary
	$(PIP) install -q -e '.[tensorboard,mlflow,archive,demo]' --config-settings editable_mode=strict
	.venv/bin/flarestream demo

test: install  ## every test (unit + integration against a real Kafka), ruff and mypy
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy -p flarestream
	$(PY) -m pytest

test-unit: install  ## unit tests only (no broker)
	$(PY) -m pytest -m "not integration"

bench: install  ## sender and codec beside raw confluent-kafka and fastavro
	$(PY) bench/bench_sender.py

bench-replay: install  ## replay from topic and archive beside the raw readers
	$(PY) bench/bench_replay.py

bench-nvflare: install  ## NVFlare's own analytics path beside flarestream's
	$(PY) bench/bench_nvflare.py

bench-security: install  ## sender and sink with and without TLS
	$(PY) bench/bench_security.py

bench-signing: install  ## sender and sink with and without record signing
	$(PY) bench/bench_signing.py

clean:  ## remove build output
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
