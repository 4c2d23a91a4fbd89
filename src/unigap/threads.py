"""How many threads torch uses: one per CPU this process may run on, unless the user says otherwise.

Why: inside containers torch counts the host's cores, not the ones the process may use, and more threads
than cores made evaluation 3x slower on a 2-core machine. The command line sets `OMP_NUM_THREADS` (which torch
reads when it starts) before torch is imported: to `UNIGAP_NUM_THREADS` when that is set and not empty, else
to an `OMP_NUM_THREADS` the user already set, else to the CPUs available to the process (its CPU affinity,
capped by a cgroup CPU quota).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from unigap.errors import UserError

VARIABLE = "UNIGAP_NUM_THREADS"
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")  # cgroup v1 (older Docker hosts): "<quota>", -1 for none
CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _quota() -> tuple[int, int] | None:
    """The cgroup's CPU quota and period in µs (v2, else v1), None where there is none or it cannot be read."""
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        return None if quota == "max" else (int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        quota = int(CFS_QUOTA.read_text())
        return None if quota <= 0 else (quota, int(CFS_PERIOD.read_text()))
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by the cgroup quota when there is one."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _quota()
    if quota is not None and quota[1] > 0:
        count = min(count, max(1, math.ceil(quota[0] / quota[1])))
    return count


def configure_threads(environ: dict[str, str] | None = None) -> int | None:
    """Set OMP_NUM_THREADS as the module docstring says; returns the number chosen (the first of an OpenMP list such
    as "4,2"; None for a user's value that is no count, which is left for torch to read)."""
    env = os.environ if environ is None else environ
    wanted = env.get(VARIABLE, "").strip()
    if wanted:
        if not (wanted.isascii() and wanted.isdigit()) or int(wanted) < 1:  # ("²" and "４" are digits to Python)
            raise UserError(f"{VARIABLE} must be a positive integer (or empty for the default), got {wanted!r}")
        env["OMP_NUM_THREADS"] = wanted
    elif not env.get("OMP_NUM_THREADS", "").strip():
        env["OMP_NUM_THREADS"] = str(available_cpus())
    first = env["OMP_NUM_THREADS"].split(",")[0].strip()
    return int(first) if first.isascii() and first.isdigit() else None
