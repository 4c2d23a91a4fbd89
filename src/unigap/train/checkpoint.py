"""Atomic training checkpoints: everything a killed run needs to continue bit for bit.

Why atomic: a run killed mid-write must leave the previous checkpoint intact (write a temporary file in
the same directory, then `os.replace`). Why all of this state: resuming must reach the same final adapter
as an uninterrupted run, so the trainable tensors, AdamW moments, scheduler position, strategy state
(grad-weighted's held weights) and the RNG states (LoRA dropout draws from torch's global RNG) are saved.
The data order needs no state: it is a function of (seed, task, step).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unigap.atomic import atomic_write_bytes
from unigap.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """The torch RNG states a step consumes (CPU, and every CUDA device when present)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`'s states; of the CUDA devices', those this process sees (a run resumed on fewer GPUs:
    `set_rng_state_all` would raise an IndexError)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        for device, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, optimizer/scheduler state dicts, plain values) to DIR/checkpoint.pt."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    atomic_write_bytes(path, lambda handle: torch.save(state, handle), sole=True)  # (the main process's alone)
    return path


def load_checkpoint(directory: Path, mmap: bool = False) -> dict[str, Any]:
    """The state saved by `save_checkpoint` (with `mmap`, its tensors mapped, not read: for a look at its settings);
    `UserError` when there is none or it is unreadable."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"nothing to resume: no {CHECKPOINT_FILE} in {directory}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # (the last: a file torch did not write)
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None


def training_state(
    step: int, named: Sequence[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, scheduler: Any,
    config: dict[str, Any], **extra: Any,
) -> dict[str, Any]:
    """Everything a trainer's next step depends on: the step, trainable tensors, optimizer and scheduler state,
    the RNG, the settings (checked on resume) and any `extra` state (a strategy's)."""
    return {
        "step": step,
        "trainable": {name: p.detach().clone() for name, p in named},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": config,
        **extra,
    }


def restore_training_state(state: dict[str, Any], named: Sequence[tuple[str, torch.nn.Parameter]],
                           optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Load `training_state` back into the trainer's tensors, optimizer, scheduler and RNG (its settings checked
    by `loop.resumed_state`); the step to continue at."""
    with torch.no_grad():
        for name, p in named:
            p.copy_(state["trainable"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])
