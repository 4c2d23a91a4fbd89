"""The step loop every unigap trainer shares: start or resume, log each step, checkpoint atomically.

Why one loop: DPO, UniMRG and GRPO differ in what a step does, not in how a run is kept. Each trainer passes its
step function and the state it checkpoints; this loop owns the rules: a directory holding a run is only continued
with `resume`, a resumed run must have the same settings (`resumed_state`), the log drops the rows from
the resumed step on (`MetricLogger`), and a checkpoint is written every `checkpoint_every` steps and at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from unigap.atomic import atomic_write_lines, config_differences, differences_since, path_settings
from unigap.errors import UserError
from unigap.metrics_log import MetricLogger
from unigap import distributed
from unigap.train.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)

LOG_FILE = "log.jsonl"
StepCallback = Callable[[int, dict[str, Any]], None]  # (steps done, the step's log record)
CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "train_config.json"
IDENTITY_KEY = "model_identity"  # a checkpoint's record of the model it trains (`resumed_state`)


class TrainingDiverged(UserError):
    """A non-finite loss or gradient: the run stops and the last good checkpoint is kept (`run_steps` says where)."""


def bf16_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast over float32 weights (TRL's `bf16=True`) where `enabled`, else a no-op: every trainer's forward
    passes, and the reference log-probs they start from, run under the same one."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def optimizer_step(named: Sequence[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
                   scheduler: Any | None, max_grad_norm: float, step: int | str) -> float:
    """Clip the accumulated gradients, step the optimizer and the schedule (if any: None is a constant rate), clear
    the gradients; the gradient norm before clipping. A non-finite norm stops the run (`TrainingDiverged`) before any
    parameter moves; `step` names where ("at step {step}")."""
    norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in named], max_grad_norm))
    if not math.isfinite(norm):
        raise TrainingDiverged(f"non-finite gradient norm ({norm}) at step {step}: training stopped")
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def holds_run(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds a checkpoint a run can resume from."""
    return (Path(out_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE).exists()


def refuse_unless_resuming(out_dir: str | Path, resume: bool) -> None:
    if holds_run(out_dir) and not resume:
        raise UserError(f"{out_dir} already holds a run; pass --resume to continue it, or use a new --out")


# switches every trainer may change on resume: recomputing activations gives the same gradients, and is the usual
# way on for a run that ran out of memory
RECOMPUTE_SETTINGS = ("gradient_checkpointing",)


def resumed_state(out_dir: str | Path, settings: Any, resume: bool, free_settings: Sequence[str] = (),
                  required_settings: Sequence[str] = (), mmap: bool = False,
                  identity: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint a run continues from (None for a fresh start), refused (`UserError`) where `out_dir` holds a
    run and `resume` is off, or where it was saved under other settings than the dataclass `settings` (see
    `run_steps` for `free_settings` and `required_settings`) or on another model than `identity`
    (`unigap.model.checkpoint.model_identity`: weights and dtype, so not a GPU's bf16 run resumed on a CPU in
    float32; a checkpoint from before it was recorded is not checked). Trainers that build data first call it
    before that work too, with `mmap` (the tensors are not read), so a mistaken resume fails in seconds."""
    if not (resume and holds_run(out_dir)):
        refuse_unless_resuming(out_dir, resume)
        return None
    state = load_checkpoint(Path(out_dir) / CHECKPOINT_DIR, mmap=mmap)
    free_settings = (*free_settings, *RECOMPUTE_SETTINGS)
    defaults = {f.name: f.default for f in fields(settings) if f.name not in required_settings}
    changed = differences_since({k: v for k, v in state["config"].items() if k not in free_settings},
                                {k: v for k, v in asdict(settings).items() if k not in free_settings}, defaults,
                                path_settings(settings))
    if changed:
        raise UserError(f"cannot resume {out_dir} under different settings: {'; '.join(changed)}")
    saved = state.get(IDENTITY_KEY)
    if identity is not None and saved is not None and (changed := config_differences(saved, identity)):
        raise UserError(f"cannot resume {out_dir} on another model than it was started on ({'; '.join(changed)}): "
                        f"give the same model and --dtype")
    return state


def checkpoint_step(done: int, checkpoint_every: int, steps: int) -> int:
    """The step of the latest checkpoint `run_steps` has written once `done` steps are done: every
    `checkpoint_every` steps and at the last step."""
    return done if done == steps else done // checkpoint_every * checkpoint_every


def kept_checkpoint(out_dir: Path, step: int, kept: str = "the last good checkpoint",
                    resume: str = "--resume") -> str:
    """Where a stopped run can be resumed from (its checkpoint of `step`), and with which flags."""
    if not holds_run(out_dir):
        return "no checkpoint had been written yet"
    return (f"{kept} (step {step}) is kept in {out_dir / CHECKPOINT_DIR} ({resume} continues from it; "
            f"{LOG_FILE} shows the steps before)")


def run_steps(
    out_dir: Path,
    settings: Any,
    named: Sequence[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    steps: int,
    checkpoint_every: int,
    step_fn: Callable[[int], dict[str, Any]],
    resume: bool = False,
    report_to: Sequence[str] = (),
    run_name: str | None = None,
    extra_state: Callable[[], dict[str, Any]] = dict,
    restore_extra: Callable[[dict[str, Any]], None] = lambda state: None,
    on_step: StepCallback | None = None,
    bf16: bool = False,
    free_settings: Sequence[str] = (),
    required_settings: Sequence[str] = (),
    identity: dict[str, Any] | None = None,
) -> int:
    """Run `step_fn(step)` (it updates the parameters and returns the step's log record) from the first step, or
    from the checkpoint with `resume`, to `steps`; returns the step reached. `extra_state()` adds trainer state to
    each checkpoint and `restore_extra(state)` reads it back. A `TrainingDiverged` from a step is re-raised saying
    which checkpoint survives. `settings` is the run's config dataclass: saved with every checkpoint, and a resumed
    run must match it, except for `free_settings` (switches that change no number, only whether the run goes on)
    and settings added since the checkpoint was written that keep their defaults, unless named in
    `required_settings` (added with a default that differs from what runs before them did), and on the model
    `identity` describes (saved with the checkpoint where given: see `resumed_state`). With
    `bf16`, each step runs under bf16 autocast (the backward pass in the forward ops' dtypes, as autocast makes it
    anyway; the optimiser's float32 arithmetic is not on autocast's list)."""
    config = asdict(settings)
    step = 0
    state = resumed_state(out_dir, settings, resume, free_settings, required_settings, identity=identity)
    recorded = {} if identity is None else {IDENTITY_KEY: identity}
    if state is not None:
        step = restore_training_state(state, named, optimizer, scheduler)
        restore_extra(state)
    distributed.own_random_stream(settings.seed, step)
    main = distributed.is_main()  # data-parallel processes hold the same state: one of them writes it
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_lines(out_dir / CONFIG_FILE, [json.dumps(config, indent=2)])
        logger = MetricLogger(out_dir / LOG_FILE, report_to, resume_step=step if resume else None, run_name=run_name)
    try:
        while step < steps:
            try:
                with bf16_autocast(named[0][1].device, bf16):
                    record = step_fn(step)
            except TrainingDiverged as exc:
                kept = kept_checkpoint(out_dir, checkpoint_step(step, checkpoint_every, steps))
                raise TrainingDiverged(f"{exc}; {kept}") from None
            step += 1
            if main:
                logger.log(step - 1, record)
                if checkpoint_step(step, checkpoint_every, steps) == step:
                    save_checkpoint(out_dir / CHECKPOINT_DIR,
                                    training_state(step, named, optimizer, scheduler, config, **extra_state(),
                                                   **recorded))
            if checkpoint_step(step, checkpoint_every, steps) == step:
                distributed.own_random_stream(settings.seed, step)  # as a resume from this checkpoint would
            if on_step is not None:
                on_step(step, record)
    finally:
        if main:
            logger.close()
    return step


def bar_and(update: Callable[..., None], on_step: StepCallback | None) -> StepCallback:
    """A step callback that moves a progress bar (the step's loss beside it), then calls `on_step`, if any (a study
    shows its own bar where the trainer's would break its display)."""
    def step(done: int, record: dict[str, Any]) -> None:
        update(done, f"loss {record['loss']:.3f}")
        if on_step is not None:
            on_step(done, record)

    return step
