# Set-up is part of every target: on a fresh machine with Python and pip, `make test` or
# `make bench-quick` installs what is missing and builds the kernels (again only when csrc/ changed).
PY ?= python3
TORCH_PIN ?= torch==2.13.0
STAMP := build/.installed
TRAIN_STAMP := build/.train-deps
# train-deps keeps the torch that is there (the kernels were built against it)
TORCH_NOW := $(shell $(PY) -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null)
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

.PHONY: setup train-deps train test bench bench-quick cuda-check clean

setup: $(STAMP)

# train.py's packages (pinned torch in the same command) and the emoji font of the default data set
train-deps: $(TRAIN_STAMP)

$(TRAIN_STAMP): requirements-train.txt
	@test -f $(EMOJI_FONT) || { apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji >/dev/null; } \
	  || { echo "install the emoji font: apt-get install fonts-noto-color-emoji (as root)"; exit 1; }
	$(PY) -m pip install -q -r requirements-train.txt torch==$(or $(TORCH_NOW),2.13.0)
	@mkdir -p build && touch $@

$(STAMP): setup.py pyproject.toml $(shell find csrc -type f)
	@# torch only when missing: an unpinned torch would pull several GB of CUDA packages
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q pytest ninja
	$(PY) -m pip install -q --no-build-isolation -e .
	@mkdir -p build && touch $@

train: setup train-deps
	$(PY) train.py

test: setup train-deps
	$(PY) -m pytest -q python_tests

bench-quick: setup
	$(PY) bench/compare.py --quick

bench: setup
	$(PY) bench/compare.py

clean:
	rm -rf build itr_kernels/_C*.so *.egg-info

cuda-check:
	bash csrc/cuda/check.sh
