# StabilityBench. `make quick` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SB      = $(VENV)/bin/stabilitybench
STAMP   = $(VENV)/.installed
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: quick test test-all faults lint bench docs clean-corpus

# torch first, pinned to the local CPU wheel: a bare `torch` requirement would pull a
# multi-GB CUDA build. The project's torch range is satisfied by it, so pip adds nothing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(VENV): $(STAMP)

quick: $(STAMP)
	$(SB) generate --profile quick --out corpus --workers $(WORKERS)
	$(SB) status --corpus corpus --profile quick
	$(SB) analyze --corpus corpus --out results
	$(SB) report --results results --out reports/out
	@echo "corpus: $(CURDIR)/corpus   results: $(CURDIR)/results   report: $(CURDIR)/reports/out/index.html"

# the everyday suite (<= 10 min on a quiet 2-core machine): every test but the slow ones and the fault injection
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not faults"

# everything but the fault injection: `make test` plus the tests marked slow (Ray clusters, fresh-venv installs,
# the docs site build); what CI runs (.ci/run)
test-all: $(STAMP)
	$(PY) -m pytest -q -m "not faults"

# the fault-injection suite (tests/test_faults.py): >= 50 faults on the smoke profile, closing table printed
# and written to faults_table.md
faults: $(STAMP)
	$(PY) -m pytest -q -m faults tests/test_faults.py tests/test_reliability.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_rl_overhead.py --algo ppo --repeats 5
	$(PY) benchmarks/bench_rl_overhead.py --algo sac --steps 3000 --hparams '{"learning_starts": 500}'
	$(PY) benchmarks/bench_rl_overhead.py --algo td3 --steps 3000 --hparams '{"learning_starts": 500}'

# the documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or a bad docstring fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean-corpus:
	rm -rf corpus
