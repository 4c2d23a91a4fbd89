"""What every benchmark records about where it ran, and how it writes its JSON (atomically, via unigap.atomic)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from unigap.atomic import write_text_atomically


def machine(um: Any = None) -> dict[str, Any]:
    """Device and dtype of the model (when one is timed), torch threads and platform: what a timing depends on."""
    where = {"device": str(um.device), "dtype": str(um.dtype)} if um is not None else {}
    if um is not None and um.device.type == "cuda":
        where["device_name"] = torch.cuda.get_device_name(um.device)
    return where | {"torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def copy_bytes_per_s(device: torch.device, megabytes: int = 512, repeats: int = 10) -> float:
    """Memory bandwidth: bytes read plus written per second by a device-to-device copy (median of repeats)."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        target.copy_(source)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * source.numel() / statistics.median(seconds[1:])


def matmul_flops(device: torch.device, dtype: torch.dtype, side: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square matmul of `side` on this device, dtype and thread count (median of repeats)."""
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * side**3 / statistics.median(seconds[1:])


def write_result(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2))
    print(f"wrote {path}")
