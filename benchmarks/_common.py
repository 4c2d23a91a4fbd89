"""What every benchmark records about where it ran, and how it writes its JSON (atomically, via unigap.atomic)."""

from __future__ import annotations

import argparse
import json
import math
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


def nonnegative_int(text: str) -> int:
    """An argparse type: a seed of 0 or more (numpy's generators refuse a negative one, often after other work)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite number (NaN passes every `<=` check it fails, and infinity poisons a run)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (a learning rate, a peak rate to divide by)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def guidance_scale(text: str) -> float:
    """An argparse type: a CFG scale the sampler takes (0 to its maximum), refused before the model loads."""
    from unigap.model.decoding import MAX_GUIDANCE

    value = finite_float(text)
    if not 0 <= value <= MAX_GUIDANCE:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_GUIDANCE:g}, got {text}")
    return value


def check_model(parser: argparse.ArgumentParser, name: str) -> None:
    """Refuse a `--model` that is neither "tiny" nor a checkpoint directory in one line with exit code 2, where a
    script works (or records its settings) before it loads the model; elsewhere `run_main` reports the load's error.
    After parsing, not as the option's type: documented calls name checkpoints that are not here."""
    from unigap.errors import UserError
    from unigap.model.loading import resolve_checkpoint

    try:
        resolve_checkpoint(name)
    except UserError as exc:
        parser.error(f"--model: {exc}")


def check_device(parser: argparse.ArgumentParser, device: str | None, dtype: str | None = None) -> None:
    """Refuse a `--device` torch cannot use here (`cpu`, `cuda`, `cuda:1`, ...) or a `--dtype` a model cannot load
    in, in one line with exit code 2 before any work, as `unigap`'s own commands refuse them. After parsing, not as
    the option's type: the documented `--device cuda` still parses where no GPU is."""
    from unigap.errors import UserError
    from unigap.model.loading import default_device_and_dtype

    try:
        default_device_and_dtype(device, dtype)
    except UserError as exc:
        parser.error(str(exc))


def run_main(parser: argparse.ArgumentParser, main: Callable[[], object]) -> None:
    """Run a script's `main` as a command: a `UserError` (a model that is no checkpoint, a sweep's settings that
    clash with its folder's) is the user's, so it ends in argparse's one line and exit code 2, not a traceback."""
    from unigap.errors import UserError, first_line

    try:
        main()
    except UserError as exc:
        parser.error(first_line(exc))


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
    """The result as strict JSON (a NaN is refused: Python would write a `NaN` no JSON reader takes)."""
    write_text_atomically(path, json.dumps(payload, indent=2, allow_nan=False))
    print(f"wrote {path}")
