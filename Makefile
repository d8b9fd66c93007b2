# Two commands on a fresh machine: `make demo` and `make test`. Both create the virtual
# environment when missing. PyTorch is installed first, from TORCH_SPEC, only when the
# environment has none: override it for a CUDA build, e.g. make TORCH_SPEC="torch --index-url ...".
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.useg-installed

.PHONY: demo test bench lint clean-venv system-test-deps

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

# What some tests need from the system (Debian packages; root): Chromium renders the run report
# (tests/test_report.py), Xvfb and the X/OpenGL libraries run napari (tests/test_napari.py).
# Without them those tests skip and say why. CI installs them (.ci/run).
SYSTEM_TEST_DEPS := chromium xvfb libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1

system-test-deps:
	dpkg -s $(SYSTEM_TEST_DEPS) >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(SYSTEM_TEST_DEPS) >/dev/null; }

clean-venv:
	rm -rf $(VENV)
