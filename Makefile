# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv when missing and (re)installs the project when pyproject.toml changed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
EXTRAS  ?= dev

.PHONY: setup run test lint fuzz fuzz-api model bench bench-quick bench-soak chaos slowloris clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "panelsrv needs Python >= 3.11 (set PY=python3.11)")'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

setup: $(STAMP)

run: setup
	$(BIN)/panelsrv run

# The browser tests (tests/web) run whenever a Chromium is found (PANELSRV_TEST_CHROMIUM, else
# chromium or chromium-browser on PATH); without one they skip, said here and in -ra's summary.
CHROMIUM_FOUND := { [ -n "$$PANELSRV_TEST_CHROMIUM" ] || command -v chromium || command -v chromium-browser; } >/dev/null 2>&1

test: setup
	@$(CHROMIUM_FOUND) || echo "no Chromium found: browser tests (tests/web) skipped (apt-get install chromium)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# atheris (coverage-guided) on each parser: the HTTP reader, body decoding, the signature's
# canonical strings, money text and providers' answers, one process per target, 2 at a time,
# each for its FUZZ_RUNS inputs or FUZZ_SECONDS, whichever ends first; 0 crashes and 0 hangs or it
# fails. Figures in bench/results/fuzz.json (tests/fuzz/run.py; a short run of each target,
# hypothesis-fed, is in make test). The `fuzz` extra is installed once, like `bench`'s.
# The defaults reach 11 M inputs in all (the reader and the signature run slowest), ~10 min here.
FUZZ_RUNS ?= --runs 3000000 --runs reader=1000000 --runs sign=1000000
FUZZ_SECONDS ?= 3600
fuzz: setup
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,fuzz]'
	$(BIN)/python -m tests.fuzz.run $(FUZZ_RUNS) --seconds $(FUZZ_SECONDS)

# schemathesis against a live server, longer than `make test`'s 300 derandomized cases:
# FUZZ_API_EXAMPLES cases, half of them negative, from FUZZ_API_SEED (tests/docs/test_schemathesis.py).
FUZZ_API_EXAMPLES ?= 5000
FUZZ_API_SEED ?= $(shell date +%s)
fuzz-api: setup
	FUZZ_API_EXAMPLES=$(FUZZ_API_EXAMPLES) FUZZ_API_SEED=$(FUZZ_API_SEED) \
		$(BIN)/python -m pytest -s tests/docs/test_schemathesis.py

# The stateful model of the wallet (tests/model/test_wallet_model.py) with MODEL_PROGRAMS random
# examples (about 1.5 programs each) of up to MODEL_STEPS steps from MODEL_SEED (make test runs 2,000 derandomized ones); prints
# programs, steps, seconds and failures.
MODEL_PROGRAMS ?= 20000
MODEL_STEPS ?= 15
MODEL_SEED ?= $(shell date +%s)
model: setup
	MODEL_PROGRAMS=$(MODEL_PROGRAMS) MODEL_STEPS=$(MODEL_STEPS) \
		$(BIN)/python -m pytest -s -p no:cacheprovider tests/model --hypothesis-seed=$(MODEL_SEED)

lint: setup
	$(BIN)/ruff check panelsrv tests bench
	$(BIN)/mypy panelsrv

# The `bench` extra is installed once (checked by importing it), not on every run.
BENCH_DEPS := { test -x $(BIN)/py-spy && $(BIN)/python -c 'import fastapi, uvicorn, multipart, matplotlib'; } 2>/dev/null \
	|| $(BIN)/python -m pip install --quiet -e '.[dev,bench]'

bench: setup
	@$(BENCH_DEPS)
	$(BIN)/python -m bench.run

bench-quick: setup
	@$(BENCH_DEPS)
	$(BIN)/python -m bench.run --quick

# Memory: 5 minutes of the mixed load, RSS per worker sampled every 10 s (kept out of `bench`).
bench-soak: setup
	@$(BENCH_DEPS)
	$(BIN)/python -m bench.run --soak 300

# Faults of every kind (SIGKILLed API processes and workers, PostgreSQL and Redis restarts) for
# 6 minutes, or CHAOS_CYCLES=1000 faults (the long mode: about 80 minutes, a fault every 2-5 s
# plus its recovery), then the books checked; figures in bench/results/chaos_360s.json or
# chaos_1000cycles.json (bench/chaos.py; a 12-cycle run is in make test).
CHAOS_SECONDS ?= 360
CHAOS_CYCLES ?=
CHAOS_RUN := $(if $(CHAOS_CYCLES),--cycles $(CHAOS_CYCLES) --out bench/results/chaos_$(CHAOS_CYCLES)cycles.json,--seconds $(CHAOS_SECONDS) --out bench/results/chaos_$(CHAOS_SECONDS)s.json)
chaos: setup
	$(BIN)/python -m bench.chaos $(CHAOS_RUN)

# 1,000 slow connections (trickled heads and bodies, header/body timeouts of 2 s) while 100
# balance requests a second are timed: their p99 against the unloaded one, and how fast every
# slow connection is dropped; about 70 s, figures in bench/results/slowloris_1000.json
# (bench/slowloris.py; a 300-connection run is in make test).
SLOWLORIS ?= 1000
slowloris: setup
	$(BIN)/python -m bench.slowloris --slow $(SLOWLORIS) --out bench/results/slowloris_$(SLOWLORIS).json

clean:
	rm -rf $(VENV) var .pytest_cache build *.egg-info
