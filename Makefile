# Every target sets itself up: a fresh Debian / Raspberry Pi OS machine needs nothing else.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# node-media-server for the interop tests, exactly as tests/interop/package-lock.json pins it.
NODE_STAMP := tests/interop/node_modules/.installed

.PHONY: setup apt interop demo test test-fast test-image lint bench clean

setup: apt $(STAMP)

apt:
	@scripts/ensure-apt.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

interop: apt $(NODE_STAMP)

$(NODE_STAMP): tests/interop/package.json tests/interop/package-lock.json
	cd tests/interop && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

demo: setup
	$(BIN)/streamer demo

# Python may write its bytecode caches (a machine may say otherwise in its environment):
# without them every test process rewrites and compiles every test module again, about 5 s
# of CPU each.
unexport PYTHONDONTWRITEBYTECODE

# Everything, as CI runs it: four test processes at once (most tests wait on real time,
# streams and servers, not on the CPU; those marked `heavy` take turns in one of them), then
# the tests marked `alone` (they load the machine on purpose) by themselves. The 15 slowest
# tests are listed at the end of each part.
test: setup interop
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup -m "not alone"; together=$$?; \
	$(BIN)/python -m pytest -q -m alone; alone=$$?; \
	test $$together -eq 0 && test $$alone -eq 0

# The quick round while working: all but the tests marked slow (over ~5 s each).
test-fast: setup
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup -m "not slow and not alone"

# firmware/install.sh on a booted Debian 12 (debootstrap, cached in /var/cache/streamer-image;
# systemd-nspawn), then the unit it installs: ready, streaming, watchdog, reboot. Needs root and
# a few minutes; skipped with the reason where it cannot run. Not part of `make test`.
test-image: setup
	@if [ "$$(id -u)" -eq 0 ]; then scripts/ensure-apt.sh debootstrap systemd-container; fi
	$(BIN)/python -m pytest -v -s --timeout=2700 tests/image

lint: setup
	$(BIN)/ruff check streamer tests bench
	$(BIN)/ruff format --check streamer tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/cpu.py
	$(BIN)/python bench/squeeze.py
	$(BIN)/python bench/passthrough.py --duration 30

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/interop/node_modules
