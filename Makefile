# Two commands on a fresh machine: `make demo` and `make test`. Both create the virtual
# environment when missing. PyTorch is installed first, from TORCH_SPEC, only when the
# environment has none: override it for a CUDA build, e.g. make TORCH_SPEC="torch --index-url ...".
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.useg-installed

.PHONY: demo test bench lint clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/useg demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean-venv:
	rm -rf $(VENV)
