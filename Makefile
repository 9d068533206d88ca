# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and (re)install the project when setup.cfg changes;
# a second run reuses the venv and starts in seconds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: test demo demo-ablations demo-clean bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,beam]'
	touch $(STAMP)

# Two test processes (pytest-xdist): the suite's subprocesses and TensorFlow imports
# overlap with the other's compute. A file's tests stay on one process (loadfile: module
# fixtures are built once), the longest files first (tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(PY) tools/demo.py --out=$(DEMO_OUT)

# The demo plus two pretraining ablations (per-frame augmentation, uniform intervals).
demo-ablations: $(STAMP)
	$(PY) tools/demo.py --out=$(DEMO_OUT) --ablations

demo-clean:
	rm -rf $(DEMO_OUT)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean: demo-clean
	rm -rf $(VENV) *.egg-info
