# Two entry points, each installing what it needs into .venv on first use:
#   make demo   simulate a small dataset, convert it to a Zarr store, train, evaluate, analyse
#   make test   lint (ruff) and run the test suite (pytest -m "not multirank" skips the slow multi-rank tests);
#               it installs Debian's chromium for the browser tests where it can (tools/install_browser.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
HETREC := $(VENV)/bin/hetrec
DEMO ?= demo

.PHONY: install demo test clean

install: $(VENV)/.installed

# A machine with a GPU takes PyPI's torch (CUDA build, several GB); one without takes the CPU build from PyTorch's
# CPU index (about 200 MB), or torch==2.13.0 from PyPI where that index cannot be reached.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	else $(PY) -m pip install -q --retries 0 --timeout 10 --index-url $(TORCH_CPU_INDEX) torch==2.13.0 2>/dev/null \
	  || $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[test,mpi]'
	touch $@

demo: install
	$(HETREC) simulate -o $(DEMO)/sim --n 4000 --box 64 --snr 0.1 --seed 0 --overwrite
	$(HETREC) convert $(DEMO)/sim/particles.star -o $(DEMO)/particles.zarr --overwrite
	$(HETREC) inspect $(DEMO)/particles.zarr
	$(HETREC) train $(DEMO)/particles.zarr -o $(DEMO)/run --config configs/demo.yaml --overwrite
	$(HETREC) eval $(DEMO)/run --gt $(DEMO)/sim/ground_truth
	$(HETREC) analyze $(DEMO)/run --k 10 --gt $(DEMO)/sim/ground_truth
	@echo "summary: $(DEMO)/run/analyze.10/index.html   maps: $(DEMO)/run/eval_maps/, $(DEMO)/run/analyze.10/maps/"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO)/run/tb"
	@echo "explore in the browser: $(HETREC) explore $(DEMO)/run --gt $(DEMO)/sim/ground_truth"

test: install
	-tools/install_browser.sh
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(DEMO)
