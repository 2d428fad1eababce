# Two commands a new user needs: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test clean

venv: $(STAMP)

# A torch already in the venv is never replaced: a CUDA build installed on a login node without
# a GPU is still the user's CUDA build. A venv without torch gets torch==2.13.0 as pip resolves
# it: from PyPI on Linux x86-64 that is the CUDA build (several GB); a pip whose find-links holds
# a CPU wheel may pick that. For the CPU build on purpose, install it into .venv first:
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# Everything else comes from pyproject.toml, the one list of dependencies; `pip install -e` also
# installs the ramvid-* commands.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[mpi,dev]"
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info
