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

# Fast default suite (slow tests excluded via pyproject addopts).
test:
	$(PY) -m pytest -q

# Everything, including tests marked slow.
test-all:
	$(PY) -m pytest -q -m ""

bench:
	$(PY) benchmarks/sampling.py

# The README's result tables, regenerated from the results JSON (docs/readme_tables.py).
readme-tables:
	$(PY) docs/readme_tables.py
