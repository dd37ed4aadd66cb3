# Every target sets itself up: a fresh Debian / Raspberry Pi OS machine needs nothing else.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup apt demo test test-fast test-image lint bench clean

setup: apt $(STAMP)

apt:
	@scripts/ensure-apt.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/streamer demo

# Everything, as CI runs it; the 15 slowest tests are listed at the end.
test: setup
	$(BIN)/python -m pytest -q

# The quick round while working: all but the tests marked slow (over ~5 s each).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
