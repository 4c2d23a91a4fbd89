"""Parallel test workers (pytest-xdist, as `make test` runs them) share the CPUs instead of each taking them all.

Why: on a 2-core machine two workers with one torch thread each finish the suite about 1.6x sooner than one
process with two threads, and two workers with two threads each would oversubscribe the cores. A user's own
`UNIGAP_NUM_THREADS` wins; the value set here reaches the CLI subprocesses that tests start.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("UNIGAP_NUM_THREADS"):
    import torch

    from unigap.threads import available_cpus

    share = max(1, available_cpus() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["UNIGAP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)
