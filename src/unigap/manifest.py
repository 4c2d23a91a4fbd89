"""Run manifests: what produced an output, so a result can be traced and reproduced.

Every command that writes an output directory also writes `manifest.json` there (`unigap eval`, which writes a
file, puts the same object under the report's `manifest` key): the unigap version, the git commit when unigap
runs from a checkout, the versions of the packages that decide the numbers, the full resolved settings, the
seeds, the judge, the device, and start and end times (UTC, ISO 8601). Kept free of torch: the device is passed in.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from unigap.atomic import write_text_atomically

MANIFEST_FILE = "manifest.json"
INPUTS_FILE = "inputs.json"  # what a command read: an adapter's base weights (`model_weights`), among others
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "numpy", "scipy", "torchjd")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the checkout unigap runs from, or None (an installed wheel, no git, or a package installed inside
    another repository, a virtual environment in a user's project, whose commit says nothing of unigap's code)."""
    package = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines() if out.returncode == 0 else []
    if len(lines) != 2 or (Path(lines[0]).resolve() / "src" / "unigap") != package:
        return None
    return lines[1]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def manifest(command: str, config: dict[str, Any], *, seeds: list[int] | None = None,
             judge: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """A manifest dict, filled with the end time when the block finishes; callers may add `device` to it."""
    record: dict[str, Any] = {
        "command": command,
        "unigap_version": _version("unigap"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "config": config,
        "seeds": seeds,
        "judge": judge,
        "device": None,
        "started_at": _now(),
        "ended_at": None,
    }
    yield record
    record["ended_at"] = _now()


def write_manifest(directory: str | Path, record: dict[str, Any]) -> Path:
    """`directory/manifest.json`, written atomically."""
    return write_text_atomically(Path(directory) / MANIFEST_FILE, json.dumps(record, indent=2, default=str) + "\n")


def read_record(path: str | Path) -> dict[str, Any] | None:
    """A JSON object a run wrote (its manifest, its inputs record), or None where there is none readable: for looking
    at what made a directory, never for failing on it."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def trained_on(adapter: str | Path) -> str | None:
    """The base weights (`model_weights`) an adapter's inputs record names: what `unigap train` and a soup of its
    adapters write; None for another tool's adapter, or a record without them."""
    base = (read_record(Path(adapter) / INPUTS_FILE) or {}).get("model_weights")
    return base if isinstance(base, str) else None
