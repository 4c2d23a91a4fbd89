"""What every benchmark records about where it ran, and how it writes its JSON (atomically, via unigap.atomic)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
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


def positive_int(text: str) -> int:
    """An argparse type: a count of at least 1 (argparse turns the error into one line and exit code 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_device(parser: argparse.ArgumentParser, device: str | None) -> None:
    """Refuse a `--device` torch cannot use here (`cpu`, `cuda`, `cuda:1`, ...) in one line with exit code 2 before any
    work, as `unigap`'s own commands refuse it. After parsing, not as the option's type: the documented
    `--device cuda` still parses where no GPU is."""
    from unigap.errors import UserError
    from unigap.model.loading import default_device_and_dtype

    try:
        default_device_and_dtype(device, None)
    except UserError as exc:
        parser.error(f"--device: {exc}")


def seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of `run`, waiting for the device's queued work."""
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def paired_medians(runs: Sequence[Callable[[], object]], repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each run after one warm-up each, timed in alternation so a noisy machine slows all alike."""
    for run in runs:
        seconds(run, device)
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, timed in zip(runs, samples, strict=True):
            timed.append(seconds(run, device))
    return [statistics.median(timed) for timed in samples]


def matmul_flops(device: torch.device, dtype: torch.dtype, side: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square matmul of `side` on this device, dtype and thread count (median of repeats)."""
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    return 2 * side**3 / paired_medians([lambda: torch.mm(a, b)], repeats, device)[0]


def copy_bytes_per_s(device: torch.device, megabytes: int = 512, repeats: int = 10) -> float:
    """Memory bandwidth: bytes read plus written per second by a device-to-device copy (median of repeats)."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * source.numel() / paired_medians([lambda: target.copy_(source)], repeats, device)[0]


def write_result(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2))
    print(f"wrote {path}")
