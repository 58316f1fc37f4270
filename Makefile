# pytest-cem: `make test` and `make demo` set everything up on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PY) -m pytest example_suite -p no:cacheprovider --cem-report cem-report.html --cem-json cem-results.json \
		--cem-cache-dir .cem-cache $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_engine.py --estimate-paper dncnn256
	$(PY) benchmarks/bench_precision.py --size 32

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
