PY ?= python3

.PHONY: setup test test-all bench readme-tables

# One-time set-up: the pinned CPU torch first (an unpinned torch pulls CUDA wheels), then unigap + dev extras.
setup:
	$(PY) -m pip install --quiet torch==2.13.0
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
