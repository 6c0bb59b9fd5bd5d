# One virtual environment, .venv, for everything; each target installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export TF_CPP_MIN_LOG_LEVEL := 2
export NO_MKDOCS_2_WARNING := 1

.PHONY: test demo figures bench docs wheel-check ci lint format venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

# ruff, then the whole suite on TensorFlow, then the backend-agnostic tests on JAX
# (less the few marked slow, which train whole zoo models: they ran on TensorFlow).
test: $(PY)
	$(PIP) install -q -e ".[tensorflow-cpu,jax,test]"
	$(PY) -m ruff check tfnorms tests examples benchmarks scripts
	$(PY) -m ruff format --check tfnorms tests examples benchmarks scripts
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --durations=15 tests
	KERAS_BACKEND=jax $(PY) -m pytest -n 2 --durations=15 -m "not tensorflow_only and not slow" tests

# The main job: the digits comparison of every normalization.
demo: $(PY)
	$(PIP) install -q -e ".[tensorflow-cpu,examples]"
	KERAS_BACKEND=tensorflow $(PY) examples/digits_compare.py --out outputs/digits

# The documentation figures (docs/img/) from the demo's results.
figures: demo
	KERAS_BACKEND=tensorflow $(PY) scripts/make_figures.py --digits-results outputs/digits/results.json

# Timing ratios against Keras's own layers; writes docs/performance.md.
bench: $(PY)
	$(PIP) install -q -e ".[tensorflow-cpu,jax]"
	$(PY) benchmarks/bench.py

# The documentation site, strict: a broken link or reference fails the build.
docs: $(PY)
	$(PIP) install -q -e ".[docs]"
	$(PY) -m mkdocs build --strict --site-dir site

# Build the sdist and wheel, install the wheel (not editable) into a fresh
# venv, and smoke-test it from outside the source tree.
WHEEL_VENV := build/wheel-venv
wheel-check: $(PY)
	$(PIP) install -q build
	rm -rf dist $(WHEEL_VENV)
	mkdir -p build && $(PY) -m build --outdir dist . > build/build.log 2>&1 || (cat build/build.log; exit 1)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q dist/*.whl tensorflow-cpu
	cd /tmp && KERAS_BACKEND=tensorflow $(CURDIR)/$(WHEEL_VENV)/bin/python $(CURDIR)/scripts/smoke_installed.py

# What CI runs.
ci: test docs wheel-check

lint: $(PY)
	$(PY) -m ruff check tfnorms tests examples benchmarks scripts
	$(PY) -m ruff format --check tfnorms tests examples benchmarks scripts

format: $(PY)
	$(PY) -m ruff format tfnorms tests examples benchmarks scripts

clean:
	rm -rf $(VENV) build dist *.egg-info outputs .pytest_cache site
