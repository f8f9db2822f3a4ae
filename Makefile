# Set-up is part of every target: on a fresh machine with Python and pip, `make test` or
# `make bench-quick` installs what is missing and builds the kernels (again only when csrc/ changed).
PY ?= python3
TORCH_PIN ?= torch==2.13.0
STAMP := build/.installed
TRAIN_STAMP := build/.train-deps
# train-deps keeps the torch that is there (the kernels were built against it)
TORCH_NOW := $(shell $(PY) -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null)
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

.PHONY: setup train-deps train test wheel-check bench bench-quick bench-plot cuda-check cuda-emu cuda-emu-asan clean

setup: $(STAMP)

# train.py's packages (pinned torch in the same command) and the emoji font of the default data set
train-deps: $(TRAIN_STAMP)

$(TRAIN_STAMP): requirements-train.txt
	@test -f $(EMOJI_FONT) || { apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji >/dev/null; } \
	  || { echo "install the emoji font: apt-get install fonts-noto-color-emoji (as root)"; exit 1; }
	$(PY) -m pip install -q -r requirements-train.txt torch==$(or $(TORCH_NOW),2.13.0)
	@mkdir -p build && touch $@

$(STAMP): setup.py pyproject.toml $(shell find csrc -type f -not -path "csrc/cuda_emu/*")
	@# torch only when missing: an unpinned torch would pull several GB of CUDA packages
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q pytest ninja hypothesis
	$(PY) -m pip install -q --no-build-isolation -e .
	@mkdir -p build && touch $@

train: setup train-deps
	$(PY) train.py

# The suite includes the CUDA kernels on the CPU emulation of CUDA (test_cuda_emu.py and the
# cuda-emu device) wherever the CUDA headers are, then runs them under ASan + UBSan.
test: setup train-deps
	$(PY) -m pytest -q python_tests
	$(EMU_ASAN_RUN)

# The wheel as a user gets it: built with pip wheel, installed into a fresh venv holding only torch and
# numpy, smoke-tested there from outside the checkout (.ci/wheel_check.sh, python_tests/wheel_smoke.py).
wheel-check: setup
	PY=$(PY) bash .ci/wheel_check.sh

bench-quick: setup
	$(PY) bench/compare.py --quick

bench: setup
	$(PY) bench/compare.py

# bench/results/<device>.png from the CSVs of bench/compare.py (needs matplotlib)
bench-plot:
	for f in bench/results/*.csv; do case $$f in */rerank_*|*/train_*) ;; *) $(PY) bench/plot.py $$f;; esac; done

clean:
	rm -rf build itr_kernels/_C*.so *.egg-info

cuda-check:
	bash csrc/cuda/check.sh

# The CUDA kernels on the CPU emulation of CUDA (csrc/cuda_emu/, README "CUDA emulation"): the
# emulated cases of the suite (3 thread orders), then the cases marked asan under ASan + UBSan.
# Skipped, with the reason, where there are no CUDA headers.
cuda-emu: setup
	$(PY) python_tests/cuda_emu.py
	$(PY) -m pytest -q python_tests -m emulated
	$(EMU_ASAN_RUN)

cuda-emu-asan: setup
	$(EMU_ASAN_RUN)

# The emulation built with AddressSanitizer + UBSan (out-of-bounds tensor and shared-array
# accesses, undefined behaviour), on the cases marked asan, one thread order. ASan must be the
# first library of the Python process, and intercepts C++ throws only if libstdc++ comes with it.
EMU_ASAN := ITR_EMU_SANITIZE=1 ITR_EMU_SEEDS=1 ASAN_OPTIONS=detect_leaks=0 \
  LD_PRELOAD="$(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)"
define EMU_ASAN_RUN
@reason="$$($(PY) python_tests/cuda_emu.py --why-not)"; if [ -n "$$reason" ]; then echo "$$reason"; else \
  $(EMU_ASAN) $(PY) python_tests/cuda_emu.py && \
  $(EMU_ASAN) $(PY) -m pytest -q python_tests/test_cuda_emu.py -m asan; fi
endef
