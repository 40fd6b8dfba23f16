# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Idle OpenMP threads sleep: spinning ones made small-op CPU work (the simulator) ~7x slower here;
# see s2e/__init__.py.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install lint test test-all test-fast demo clean

# The stamp depends on the pinned requirements and the project metadata: a rerun with nothing
# changed does nothing.
$(STAMP): requirements/cpu.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build, so no dependency resolves a multi-GB CUDA wheel.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements/cpu.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Lint and format check first: a red lint fails `make test` (and CI) in seconds, before the suite.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The whole suite except the four tests marked heavy (real inductor builds, the end-to-end
# ablation: 4-10 minutes together on 2 cores), so that `make test` (and CI) stays under 15 minutes
# there; `make test-all` runs those too.
test: lint
	$(PY) -m pytest -q -m "not heavy" $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything except tests marked slow.
test-fast: lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py --out artifacts/demo

clean:
	rm -rf $(VENV) .pytest_cache
