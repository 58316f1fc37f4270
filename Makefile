# pytest-cem: `make test` and `make demo` set everything up on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# where torch comes from: empty = pip's configured indexes (PyPI: a CUDA build on Linux); the CPU build anywhere:
# make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# `make test-spandrel`: a second environment with the optional spandrel extra. spandrel imports torchvision,
# and torchvision only imports beside the torch it was built for, so this environment pins both.
SPANDREL_VENV        ?= .venv-spandrel
SPANDREL_TORCH       ?= torch==2.14.1
SPANDREL_TORCHVISION ?= torchvision==0.29.1
SPY                  := $(SPANDREL_VENV)/bin/python
# the checkpoint-loading tests and the spandrel zoo (tests/zoo.py) (run with spandrel here; in .venv they skip)
SPANDREL_TESTS         ?= tests/test_plugin_load_model.py $(wildcard tests/test_loading*.py) tests/test_zoo_guard.py \
                          tests/test_zoo_coverage.py
SPANDREL_EXAMPLE_TESTS ?= example_suite/test_spandrel_checkpoints.py

.PHONY: setup test demo screenshot train bench clean setup-spandrel test-spandrel dist docs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $@

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PY) -m pytest example_suite -p no:cacheprovider --cem-report cem-report.html --cem-json cem-results.json \
		--cem-cache-dir .cem-cache -rs $(PYTEST_ARGS)

# the README's picture of the demo report, taken by the browser test in headless Chromium
screenshot: demo
	CEM_DEMO_REPORT=cem-report.html CEM_SCREENSHOT_OUT=docs/demo-report.png $(PY) -m pytest tests/test_report_browser.py \
		-k demo_report -p no:cacheprovider -q

# the sdist and the wheel users install (dist/), checked by twine; the wheel carries the report templates and the
# bundled images (tests/test_dist.py installs it into a fresh environment)
dist: setup
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*
	$(PY) -m zipfile -l dist/*.whl | grep -E 'templates/|data/'

# the documentation site (docs/, mkdocs.yml) -> site/
docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

# retrain the example suite's models (example_suite/checkpoints; about 8 minutes on 2 CPU cores)
train: setup
	$(PY) example_suite/train.py

bench: setup
	$(PY) benchmarks/bench_engine.py --estimate-paper dncnn256
	$(PY) benchmarks/bench_support.py
	$(PY) benchmarks/bench_precision.py --size 32

setup-spandrel: $(SPANDREL_VENV)/.installed

$(SPANDREL_VENV)/.installed: pyproject.toml Makefile
	test -x $(SPY) || $(PYTHON) -m venv $(SPANDREL_VENV)
	$(SPY) -m pip install --quiet --upgrade pip
	$(SPY) -m pip install --quiet "$(SPANDREL_TORCH)" "$(SPANDREL_TORCHVISION)"
	$(SPY) -m pip install --quiet -e '.[dev,spandrel]'
	$(SPY) -c "import torchvision, spandrel"
	touch $@

# tests/ and example_suite/ each have their own conftest.py and helper modules: two pytest runs keep them apart
test-spandrel: setup-spandrel
	$(SPY) -m pytest $(SPANDREL_TESTS) -rs $(PYTEST_ARGS)
	$(SPY) -m pytest $(SPANDREL_EXAMPLE_TESTS) -p no:cacheprovider -rs $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(SPANDREL_VENV) build dist site *.egg-info .pytest_cache
