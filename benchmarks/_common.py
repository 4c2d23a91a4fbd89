"""What every benchmark records about where it ran, and how it writes its JSON (atomically, via unigap.atomic)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from unigap.atomic import write_text_atomically


def machine(um: Any = None) -> dict[str, Any]:
    """Device and dtype of the model (when one is timed), torch threads and platform: what a timing depends on."""
    where = {"device": str(um.device), "dtype": str(um.dtype)} if um is not None else {}
    return where | {"torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def write_result(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2))
    print(f"wrote {path}")
