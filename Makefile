# The README's two commands: `make demo` and `make test`. Each builds the venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch on these machines; a looser pin pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# torch-fidelity: the FID Inception reference in tests/test_fid.py (test-only). --no-deps, as its
	# requirements name torchvision, which has no build beside this CPU torch; the tests load only its
	# torchvision-free feature_extractor_inceptionv3 module.
	$(PY) -m pip install -q --no-deps torch-fidelity==0.4.0
	# Debian's chromium for the browser tests of `ddpm serve` (playwright drives it; no browser download).
	# Where apt is missing or fails, those tests skip and say why.
	-command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; } >/dev/null 2>&1; } || \
	  echo "note: chromium not installed; tests/test_server_browser.py will skip"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ddpm demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
