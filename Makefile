# Two commands a new user needs: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test clean

venv: $(STAMP)

# A torch already in the venv is never replaced: a CUDA build installed on a login node without
# a GPU is still the user's CUDA build. Only a venv without torch gets the pinned CPU build (an
# open range would pull a multi-GB CUDA build onto a CPU machine). Everything else comes from
# setup.py, the one list of dependencies; `pip install -e` also installs the ramvid-* commands.
$(STAMP): setup.py
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
