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

# The PyTorch the tests install: pinned, so that the torch pass is reproducible
# (the `torch` extra leaves the build to users: CPU or CUDA). On a machine
# without this CPU wheel in its pip cache, PyPI's Linux wheel of torch pulls
# several GB of CUDA libraries; a small CPU build instead:
#   make test TORCH_PIP="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP ?= torch==2.13.0

# The PyTorch pass: the library's tests, where everything backend-sensitive is
# (the examples, docs and benchmarks tests ran on TensorFlow and JAX; on PyTorch
# they would repeat the same library code), with the two-process torch.distributed
# tests and the .keras files across the three backends. torch.compile is slow to
# trace a model (minutes for the zoos): the kernel-kind zoos and plain WN are not
# compiled there; the CWN, BWN, data_init and per-example models are.
TORCH_TESTS := tests/library \
	--deselect tests/library/test_kernel_kinds.py::test_jit_compile \
	--deselect "tests/library/test_weight_norm.py::test_jit_compile[wn]"

# ruff, then the whole suite on TensorFlow, then the backend-agnostic tests on JAX
# and on PyTorch (less the few marked slow, which train whole zoo models: they ran
# on TensorFlow).
test: $(PY)
	$(PIP) install -q -e ".[tensorflow-cpu,jax,test]"
	$(PIP) install -q $(TORCH_PIP)
	$(PY) -m ruff check tfnorms tests examples benchmarks scripts
	$(PY) -m ruff format --check tfnorms tests examples benchmarks scripts
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --durations=15 tests
	KERAS_BACKEND=jax $(PY) -m pytest -n 2 --durations=15 -m "not tensorflow_only and not slow" tests
	KERAS_BACKEND=torch $(PY) -m pytest -n 2 --durations=15 -m "not tensorflow_only and not slow" $(TORCH_TESTS)

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
