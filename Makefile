# All set-up happens here: `make demo` and `make test` create ./.venv and install cvmtl into it
# (`make venv`: cvmtl with the dev extras).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-all demo lint format clean

# Two stamps: the demo needs only cvmtl's own dependencies; tests and lint add the dev extras
# (test references such as pyedgeeval, a C++ build, smp and onnx) on top, so a fresh `make demo`
# does not wait for them.
$(VENV)/.installed-runtime: setup.py pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-runtime
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: venv
	$(PY) -m pytest -m "not gpu" -q

demo: $(VENV)/.installed-runtime
	$(PY) tools/demo.py --config configs/synthetic_demo.yaml

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
