# Set-up is part of every target: on a fresh machine with Python and pip, `make test` or
# `make bench-quick` installs what is missing and builds the kernels (again only when csrc/ changed).
PY ?= python3
TORCH_PIN ?= torch==2.13.0
STAMP := build/.installed

.PHONY: setup test bench bench-quick cuda-check clean

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml $(shell find csrc -type f)
	@# torch only when missing: an unpinned torch would pull several GB of CUDA packages
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q pytest ninja
	$(PY) -m pip install -q --no-build-isolation -e .
	@mkdir -p build && touch $@

test: setup
	$(PY) -m pytest -q python_tests

bench-quick: setup
	$(PY) bench/compare.py --quick

bench: setup
	$(PY) bench/compare.py

clean:
	rm -rf build itr_kernels/_C*.so *.egg-info

cuda-check:
	bash csrc/cuda/check.sh
