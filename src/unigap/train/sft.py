"""`SFTTrainer`: supervised fine-tuning of a LoRA on several token cross-entropy tasks in one run.

Why one trainer for understanding and generation together: the popular alignment frameworks fine-tune a unified
model on one task per run; here each step takes one batch of every task (answers to questions about images;
image tokens from a caption; image tokens from an image + instruction, UniMRG's auxiliary maps) and minimises
Σ weight · mean token cross-entropy. Each task is backpropagated as soon as its loss is known (the gradients add
up to the sum's), so only one task's graph is alive at a time. Batches are a function of (seed, task, step), so
resuming needs no data state. LoRA on the LLM; the generation head trains in full (only image tasks reach it).

Logged keys: step, lr, loss, <task>/loss per task, grad_norm. Files in the output directory are those of every
unigap trainer: log.jsonl, checkpoint/checkpoint.pt (atomic), train_config.json, the PEFT adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from unigap.errors import UserError
from unigap.model.checkpoint import model_identity
from unigap.model.images import ImageInput
from unigap.train.config import check_field, check_field_types, check_ranges
from unigap import distributed
from unigap.train.loop import LOG_FILE, StepCallback, TrainingDiverged, optimizer_step, run_steps
from unigap.train.trainer import TrainResult


class Task(Protocol):
    """A set of examples with a differentiable token cross-entropy on any subset of them, returned as (summed loss,
    the count it is a mean over) so that data-parallel processes can divide by the global count. `dropped` [rows]
    marks the rows an image task trains unconditionally (prompt dropout); text tasks ignore it."""

    def __len__(self) -> int: ...

    def loss(
        self, um: Any, rows: np.ndarray, dropped: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def vq_tokens(um: Any, images: Sequence[ImageInput], batch_size: int,
              progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """VQ ids [len(images), N] (on the CPU) of images, `batch_size` per call: the targets of the image tasks;
    `progress(done)` after each call."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunks.append(um.encode_images(list(images[start : start + batch_size])).cpu())
            if progress is not None:
                progress(min(start + batch_size, len(images)))
    return torch.cat(chunks)


@dataclass(frozen=True)
class AnswerTask:
    """Understanding: each image with its questions and their answers (EOS included, scored as at inference)."""

    images: Sequence[ImageInput]
    questions: Sequence[Sequence[str]]
    answers: Sequence[Sequence[str]]

    def __len__(self) -> int:
        return len(self.images)

    def loss(self, um: Any, rows: np.ndarray, dropped: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed over answer tokens: a mean over every token of the batch."""
        total, count = um.grouped_answer_logprobs(
            [self.images[r] for r in rows], [self.questions[r] for r in rows], [self.answers[r] for r in rows]
        )
        return -total.sum(), count.sum().float()


@dataclass(frozen=True)
class TextToImageTask:
    """Generation: an image's VQ tokens from its caption: conditional (`dropped` rows from the unconditional
    prompt), or under the CFG mixture the sampler draws from when `cfg_scale` is given."""

    prompts: Sequence[str]
    targets: torch.Tensor  # [n, N] VQ ids
    cfg_scale: float | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def loss(self, um: Any, rows: np.ndarray, dropped: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's mean token loss, summed over images: a mean over images (every image has N tokens)."""
        prompts, targets = [self.prompts[r] for r in rows], self.targets[rows]
        logprobs = (um.image_token_logprobs(prompts, targets, cfg_scale=self.cfg_scale) if self.cfg_scale
                    else um.image_token_logprobs(prompts, targets, dropped=dropped))
        return -logprobs.mean(dim=-1).sum(), torch.tensor(float(len(rows)))


@dataclass(frozen=True)
class ImageToImageTask:
    """An image + one instruction → a target image's VQ tokens (UniMRG: the input's reconstruction or maps).
    The image always comes through the vision tower, whatever the checkpoint's `edit_source`: these tasks exist
    to train what understanding reads (and a reconstruction from the input's own VQ ids would be a copy)."""

    images: Sequence[ImageInput]
    instruction: str
    targets: torch.Tensor  # [n, N] VQ ids

    def __len__(self) -> int:
        return len(self.images)

    def loss(self, um: Any, rows: np.ndarray, dropped: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images = [self.images[r] for r in rows]
        logprobs = um.edit_token_logprobs(images, [self.instruction] * len(rows), self.targets[rows],
                                          dropped=dropped, source="vision")
        return -logprobs.mean(dim=-1).sum(), torch.tensor(float(len(rows)))


@dataclass(frozen=True)
class SFTOptions:
    """What every SFT run shares. Optimiser settings are UniMRG's (AdamW betas (0.9, 0.95), weight decay 0.02, 1%
    warm-up then cosine, grad-clip 1.0, one batch per task per step) except the learning rate: UniMRG fine-tunes
    the whole model at 1e-5; unigap trains a LoRA, which needs a larger one (`docs/experiments.md`)."""

    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 8  # examples per task per step (UniMRG: 16)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.02
    warmup_ratio: float = 0.01
    max_grad_norm: float = 1.0
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.05
    prompt_dropout: float = 0.0  # share of image-task rows trained from the unconditional prompt (CFG's branch)
    seed: int = 0  # LoRA init, batch order, dropout
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    bf16: bool = False  # bf16 autocast (TRL's bf16=True): float32 weights and optimiser, matmuls in bfloat16

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ranges(self, positive=("steps", "lr", "batch_size", "lora_rank", "lora_alpha", "max_grad_norm",
                                     "checkpoint_every"), non_negative=("weight_decay", "seed"))
        for name in ("warmup_ratio", "adam_beta1", "adam_beta2", "lora_dropout", "prompt_dropout"):
            check_field(self, name, 0 <= getattr(self, name) < 1, "lie in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_rows(seed: int, stream: int, step: int, n: int, size: int, dropout: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """The rows task number `stream` trains on at `step` (`size` distinct rows) and which of them are trained
    unconditionally (a `dropout` share): a function of (seed, stream, step), drawn for the global batch."""
    rng = np.random.default_rng([seed, stream, step])
    rows = rng.choice(n, size=min(size, n), replace=False)
    return rows, rng.random(len(rows)) < dropout


class SFTTrainer:
    """Trains a fresh LoRA on `um`; `tasks` maps a task name to (task, loss weight), the order fixing each task's
    batch stream; `train()` runs (or resumes) to `options.steps`."""

    def __init__(self, um: Any, options: SFTOptions, tasks: dict[str, tuple[Task, float]], out_dir: str | Path,
                 run_name: str, report_to: tuple[str, ...] = ()) -> None:
        if not tasks or any(len(task) == 0 for task, _ in tasks.values()):
            raise UserError("SFT needs at least one task, each with at least one example")
        self.um, self.options, self.tasks, self.out_dir = um, options, tasks, Path(out_dir)
        self.run_name, self.report_to = run_name, report_to
        self.identity = model_identity(um)  # before the LoRA: the model a resumed run must continue on
        torch.manual_seed(options.seed)  # the LoRA A init and the dropout stream
        um.add_lora(options.lora_rank, options.lora_alpha, options.lora_dropout,
                    gradient_checkpointing=options.gradient_checkpointing)
        self.named = [(name, p) for name, p in um.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=options.lr,
                                           weight_decay=options.weight_decay,
                                           betas=(options.adam_beta1, options.adam_beta2))
        warmup = math.ceil(options.warmup_ratio * options.steps)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup, options.steps)
        self.step = 0

    def train(self, resume: bool = False, on_step: StepCallback | None = None) -> TrainResult:
        """Run to `options.steps`; with `resume`, continue from the checkpoint in the output directory."""
        o = self.options

        def step(index: int) -> dict[str, Any]:
            self.step = index
            return self._train_step()

        self.um.model.train()  # LoRA dropout on
        try:
            self.step = run_steps(self.out_dir, o, self.named, self.optimizer, self.scheduler, o.steps,
                                  o.checkpoint_every, step, resume, self.report_to, self.run_name, on_step=on_step,
                                  bf16=o.bf16, identity=self.identity)
        finally:
            self.um.model.eval()
        if distributed.is_main():
            self.um.save_adapter(self.out_dir)
        return TrainResult(self.step, self.out_dir, self.out_dir / LOG_FILE)

    def _train_step(self) -> dict[str, Any]:
        record: dict[str, Any] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        total = 0.0
        for stream, (name, (task, weight)) in enumerate(self.tasks.items()):
            rows, dropped = batch_rows(self.options.seed, stream, self.step, len(task), self.options.batch_size,
                                       self.options.prompt_dropout)
            mine = distributed.shard(rows)
            summed, count = task.loss(self.um, mine, torch.from_numpy(distributed.shard(dropped)))
            loss = summed / distributed.all_sum(count)  # this process's share of the global batch's mean
            if len(mine):  # (a process whose shard of a small task is empty has nothing to add)
                (weight * loss).backward()
            record[f"{name}/loss"] = float(distributed.all_sum(loss.detach()))
            if not math.isfinite(record[f"{name}/loss"]):
                raise TrainingDiverged(f"non-finite {name} loss at step {self.step}: training stopped")
            total += weight * record[f"{name}/loss"]
        record["loss"] = total
        distributed.sum_gradients([p for _, p in self.named])
        record["grad_norm"] = optimizer_step(self.named, self.optimizer, self.scheduler, self.options.max_grad_norm,
                                             self.step)
        return record
