PY ?= python3

.PHONY: setup test test-all bench readme-tables

# Linux without an NVIDIA GPU gets torch's CPU build (PyPI's Linux torch brings gigabytes of CUDA wheels); macOS
# and GPU machines get PyPI's. Override with `make setup TORCH_INDEX=URL` (or TORCH_INDEX= for PyPI).
TORCH_INDEX ?= $(shell [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1 && echo https://download.pytorch.org/whl/cpu)

# One-time set-up: the pinned torch first, then unigap + dev extras. Where the CPU index cannot be reached, PyPI's
# torch is installed instead (it works, with CUDA wheels on Linux).
setup:
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) || $(PY) -m pip install --quiet torch==2.13.0)
	$(PY) -m pip install --quiet -e ".[dev]"

# Test workers (pytest-xdist; tests/conftest.py gives each its share of the CPUs). Two suit a 2-core machine;
# `make test TEST_WORKERS=8` on a larger one, TEST_WORKERS=0 for one process.
TEST_WORKERS ?= 2

# Fast default suite (slow tests excluded via pyproject addopts); a test file stays on one worker.
test:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Everything, including tests marked slow.
test-all:
	$(PY) -m pytest -q -m "" -n $(TEST_WORKERS) --dist loadfile

bench:
	$(PY) benchmarks/sampling.py

# The README's result tables, regenerated from the results JSON (docs/readme_tables.py).
readme-tables:
	$(PY) docs/readme_tables.py
