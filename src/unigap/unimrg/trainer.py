"""`UniMRGTrainer`: understanding SFT, plus (objective `unimrg`) generating each input image's representations.

Each step: one batch of understanding examples (images with their questions; loss = mean answer-token
cross-entropy, EOS included, the answers scored as at inference by `grouped_answer_logprobs`) and, for `unimrg`,
one batch per auxiliary representation (the input image through the understanding encoder, the representation's
instruction, loss = mean cross-entropy on the target's image tokens: `edit_token_logprobs`, the autoregressive-token
form of UniMRG's loss). The step minimises und + Σ weight · aux; each task is backpropagated as soon as its loss
is known (the gradients add up to the sum's), so only one task's graph is alive at a time. Batches are a function
of (seed, task, step), so resuming needs no data state. LoRA on the LLM (the generation head trains too, in full,
as in every unigap method: only the auxiliary losses reach it).

Logged keys (`LOGGED_KEYS`): step, lr, loss, und/loss, <representation>/loss, grad_norm. Files in the output
directory are those of `DPOTrainer`: log.jsonl, checkpoint/checkpoint.pt (atomic), train_config.json, the PEFT adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from unigap.model.editing import edit_token_logprobs
from unigap.train.loop import LOG_FILE, TrainingDiverged, optimizer_step, refuse_unless_resuming, run_steps
from unigap.train.trainer import TrainResult
from unigap.unimrg.config import REPRESENTATIONS, UniMRGConfig
from unigap.unimrg.data import INSTRUCTIONS, UniMRGData, check_instructions

LOGGED_KEYS = ("step", "lr", "loss", "und/loss", *(f"{r}/loss" for r in REPRESENTATIONS), "grad_norm")
TASKS = ("und", *REPRESENTATIONS)


def batch_rows(seed: int, task: str, step: int, n: int, size: int) -> np.ndarray:
    """The data rows `task` trains on at `step`: `size` distinct rows, a function of (seed, task, step)."""
    return np.random.default_rng([seed, TASKS.index(task), step]).choice(n, size=min(size, n), replace=False)


class UniMRGTrainer:
    """Trains a fresh LoRA on `um`; `train()` runs (or resumes) to `config.steps`."""

    def __init__(self, um: Any, config: UniMRGConfig, data: UniMRGData, out_dir: str | Path,
                 report_to: tuple[str, ...] = ()) -> None:
        missing = [r for r in config.auxiliary if r not in data.targets]
        if missing:
            raise ValueError(f"the data holds no targets for {', '.join(missing)}")
        check_instructions(um, list(config.auxiliary))
        self.um, self.config, self.data, self.out_dir, self.report_to = um, config, data, Path(out_dir), report_to
        torch.manual_seed(config.seed)  # the LoRA A init and the dropout stream
        um.add_lora(config.lora_rank, config.lora_alpha, config.lora_dropout)
        self.named = [(name, p) for name, p in um.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(config.adam_beta1, config.adam_beta2))
        warmup = math.ceil(config.warmup_ratio * config.steps)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup, config.steps)
        self.step = 0

    def train(self, resume: bool = False, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
        """Run to `config.steps`; with `resume`, continue from the checkpoint in the output directory."""
        c = self.config

        def step(index: int) -> dict[str, Any]:
            self.step = index
            return self._train_step()

        self.um.model.train()  # LoRA dropout on
        try:
            self.step = run_steps(self.out_dir, c.to_dict(), self.named, self.optimizer, self.scheduler, c.steps,
                                  c.checkpoint_every, step, resume, self.report_to, f"{self.out_dir.name}-{c.objective}",
                                  on_step=on_step)
        finally:
            self.um.model.eval()
        self.um.save_adapter(self.out_dir)
        return TrainResult(self.step, self.out_dir, self.out_dir / LOG_FILE)

    def _task_loss(self, task: str) -> torch.Tensor:
        """This step's batch of `task`: the understanding loss, or one representation's token cross-entropy."""
        c, data, um = self.config, self.data, self.um
        rows = batch_rows(c.seed, task, self.step, len(data), c.batch_size)
        images = [data.images[r] for r in rows]
        if task == "und":
            questions = [data.questions[r] for r in rows]
            total, count = um.grouped_answer_logprobs(
                images, [[q.text for q in qs] for qs in questions], [[q.answer for q in qs] for qs in questions]
            )
            return -total.sum() / count.sum()
        instructions = [INSTRUCTIONS[task]] * len(rows)
        return -edit_token_logprobs(um.model, um.prompts, um.vision, images, instructions, data.targets[task][rows],
                                    None).mean()

    def _train_step(self) -> dict[str, Any]:
        record: dict[str, Any] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        weights = {"und": 1.0, **self.config.auxiliary}
        total = 0.0
        for task, weight in weights.items():
            loss = self._task_loss(task)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"non-finite {task} loss at step {self.step}: training stopped")
            (weight * loss).backward()
            record[f"{task}/loss"] = float(loss.detach())
            total += weight * record[f"{task}/loss"]
        record["loss"] = total
        record["grad_norm"] = optimizer_step(self.named, self.optimizer, self.scheduler, self.config.max_grad_norm,
                                             self.step)
        return record


def train_unimrg(um: Any, config: UniMRGConfig, out_dir: str | Path, resume: bool = False,
                 report_to: tuple[str, ...] = (), show_progress: bool = True, data: UniMRGData | None = None
                 ) -> TrainResult:
    """Build the data (unless given: it depends on the data settings only, not on the seed), then train (or resume)
    a run in `out_dir`, with progress bars: what `unigap train --objective unimrg|und-sft` and the study's `unimrg`
    and `und-sft` arms run."""
    from unigap.progress import progress
    from unigap.unimrg.data import build_data

    refuse_unless_resuming(out_dir, resume)
    if data is None:
        representations = list(config.auxiliary)
        with progress("data", config.n_scenes * (1 + len(representations)), show_progress) as update:
            data = build_data(um, config.n_scenes, config.data_seed, config.questions_per_image,
                              config.sentence_fraction, representations, update)
    trainer = UniMRGTrainer(um, config, data, out_dir, report_to)
    with progress(config.objective, config.steps, show_progress) as update:
        return trainer.train(resume, lambda step, record: update(step, f"loss {record['loss']:.3f}"))
