# Two commands a newcomer needs: `make demo` and `make test`. Both create (or reuse) .venv and
# install minidiff with the exact versions in constraints.txt (torch 2.13.0, CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER_CHAPTERS ?= 04_forward_noising 06_samplers

.PHONY: demo test quick lab chapters browser setup clean
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,bench]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m minidiff demo

# One thread per process: two workers (and a notebook's kernel) on two cores. With torch's default of one
# thread per core, their OpenMP threads wait on each other and the whole run takes twice as long.
test: $(STAMP)
	OMP_NUM_THREADS=1 MINIDIFF_FAST=1 $(BIN)/python -m pytest -n 2 --dist loadscope

quick: $(STAMP)  # the unit tests only: no notebooks, none marked slow (real training, sampling, scoring)
	OMP_NUM_THREADS=1 MINIDIFF_FAST=1 $(BIN)/python -m pytest -n 2 --dist loadscope tests -m "not slow"

chapters: $(STAMP)  # re-run every chapter in full mode and save its outputs (maintainers)
	$(BIN)/python chapters/execute.py

browser: $(STAMP)  # open chapters in JupyterLab in headless Chromium (apt-get install chromium), move every widget
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,bench,browser]"
	$(BIN)/python chapters/browser_check.py $(BROWSER_CHAPTERS)

lab: $(STAMP)
	$(BIN)/jupyter lab chapters/

clean:
	rm -rf $(VENV) outputs
