"""`DPOTrainer`: multi-task DPO on the shared LoRA, one pair per task per step, with a strategy.

Each step: one understanding and one generation pair (a fixed permutation per epoch, from the seed), each
task's DPO loss (`task_dpo_loss`) and gradient on every trainable parameter, the strategy's combination on
the shared LoRA (the generation head gets the strategy's task-specific weights), clip, AdamW, cosine LR.
Single-task strategies still compute the other task's loss and gradient when its data is given, so the
log always shows both tasks, their gradient norms and cosine (the interference the study measures).

Files in the output directory: `log.jsonl` (one JSON object per step), `checkpoint/checkpoint.pt` every
`checkpoint_every` steps (atomic), `train_config.json`, and at the end the adapter in PEFT format
(`adapter_config.json`, `adapter_model.safetensors`), loadable with `UnifiedModel.load_adapter`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from unigap.errors import UserError
from unigap.metrics_log import parse_report_to
from unigap.model.checkpoint import model_identity
from unigap.model.unified import UnifiedModel
from unigap import distributed
from unigap.train.loop import (
    CHECKPOINT_DIR,
    LOG_FILE,
    StepCallback,
    TrainingDiverged,
    bf16_autocast,
    holds_run,
    optimizer_step,
    run_steps,
)
from unigap.train.config import TrainConfig
from unigap.train.dpo import GenerationPair, Pair, UnderstandingPair, REFERENCE_BATCH, task_dpo_loss, with_reference
from unigap.train.names import TASKS, check_pair_tasks
from unigap.train.strategies import Strategy, build_strategy, length_norm_weight


@dataclass(frozen=True)
class TrainResult:
    steps: int
    out_dir: Path
    log_file: Path


def data_order(seed: int, task: str, step: int, n: int) -> int:
    """Index of the pair a task uses at `step`: a fresh permutation of its n pairs every epoch."""
    epoch, offset = divmod(step, n)
    return int(np.random.default_rng([seed, TASKS.index(task), epoch]).permutation(n)[offset])


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().float().reshape(-1) for t in tensors])


class DPOTrainer:
    """Trains a fresh LoRA on `um` with one strategy; `train()` runs (or resumes) to `config.steps`."""

    def __init__(
        self,
        um: UnifiedModel,
        config: TrainConfig,
        und_pairs: Sequence[UnderstandingPair],
        gen_pairs: Sequence[GenerationPair],
        out_dir: str | Path,
        report_to: Sequence[str] = (),
    ) -> None:
        if config.batch_size < distributed.world_size():
            raise UserError(f"batch-size {config.batch_size} gives a process no pairs: use at least one per process "
                            f"(--batch-size {distributed.world_size()} or more)")
        given = {"und": und_pairs, "gen": gen_pairs}
        check_pair_tasks(config.strategy, [task for task, pairs in given.items() if pairs])
        lengths = {len(ids) for pair in gen_pairs for ids in (pair.chosen, pair.rejected)}
        if lengths - {um.num_image_tokens}:
            raise UserError(
                f"generation pairs hold images of {sorted(lengths)} tokens, but this model uses {um.num_image_tokens}"
            )
        # half-precision results move with a batch's shape: under `--bf16` autocast or in bf16 weights (a GPU's
        # default) the references are rescored as the policy scores, so that training starts at the reference
        rounded = config.bf16 or um.dtype in (torch.bfloat16, torch.float16)
        if config.gen_cfg_scale and gen_pairs and not rounded:  # the stored references are conditional-only
            given["gen"] = with_reference(um, gen_pairs, config.gen_cfg_scale, REFERENCE_BATCH, shared=True)
        if rounded:  # in batches of the policy's (exact at one pair per process)
            share = -(-config.batch_size // distributed.world_size())
            with bf16_autocast(um.device) if config.bf16 else contextlib.nullcontext():
                given = {task: with_reference(um, pairs, (config.gen_cfg_scale or None) if task == "gen" else None,
                                              share, shared=True) if pairs else pairs for task, pairs in given.items()}
        self.um, self.config, self.out_dir = um, config, Path(out_dir)
        self.report_to = parse_report_to(report_to)
        self.pairs: dict[str, Sequence[Pair]] = {task: pairs for task, pairs in given.items() if pairs}
        self.strategy: Strategy = build_strategy(
            config.strategy,
            joint_alpha=config.joint_alpha,
            fixed_w_und=config.fixed_w_und,
            reweight_every=config.reweight_every,
            length_w_und=self._length_w_und,
        )
        self.identity = model_identity(um)  # before the LoRA: the model a resumed run must continue on
        torch.manual_seed(config.seed)  # the LoRA A init and the dropout stream
        um.add_lora(config.lora_rank, config.lora_alpha, config.lora_dropout,
                    gradient_checkpointing=config.gradient_checkpointing)
        self.named = [(name, p) for name, p in um.model.named_parameters() if p.requires_grad]
        shared = {id(p) for p in um.shared_lora_parameters().parameters}
        self.is_shared = [id(p) in shared for _, p in self.named]
        params = [p for _, p in self.named]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, 0, config.steps)
        self.step = 0

    def _length_w_und(self) -> float:
        und, gen = self.pairs["und"], self.pairs["gen"]
        answer_tokens = sum(p.chosen_tokens + p.rejected_tokens for p in und) / (2 * len(und))
        image_tokens = sum(p.chosen_tokens for p in gen) / len(gen)
        return length_norm_weight(image_tokens, answer_tokens)

    # -- training ----------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    @property
    def has_checkpoint(self) -> bool:
        """Whether `out_dir` holds a run that `train(resume=True)` can continue."""
        return holds_run(self.out_dir)

    def train(self, resume: bool = False, on_step: StepCallback | None = None) -> TrainResult:
        """Run to `config.steps`; with `resume`, continue from the checkpoint in the output directory."""

        def step(index: int) -> dict[str, Any]:
            self.step = index
            return self._train_step()

        self.um.model.train()  # LoRA dropout on
        try:
            self.step = run_steps(
                self.out_dir, self.config, self.named, self.optimizer, self.scheduler, self.config.steps,
                self.config.checkpoint_every, step, resume, self.report_to, f"{self.out_dir.name}-{self.config.strategy}",
                extra_state=lambda: {"strategy": self.strategy.state_dict()},
                restore_extra=lambda state: self.strategy.load_state_dict(state["strategy"]), on_step=on_step,
                bf16=self.config.bf16, identity=self.identity,
            )  # fmt: skip
        finally:
            self.um.model.eval()
        if distributed.is_main():
            self.um.save_adapter(self.out_dir)
        return TrainResult(self.step, self.out_dir, self.out_dir / LOG_FILE)

    def _task_gradients(self, task: str) -> tuple[list[torch.Tensor], dict[str, float]]:
        """`batch_size` pairs of `task` (this process's share of them, in data-parallel runs: `distributed`): their
        mean DPO loss's metrics and gradient on every trainable tensor, summed over processes."""
        pairs, size = self.pairs[task], self.config.batch_size
        order = np.array([data_order(self.config.seed, task, self.step * size + k, len(pairs)) for k in range(size)])
        mine = [pairs[i] for i in distributed.shard(order)]
        result = task_dpo_loss(self.um, mine, self.config.dpo)
        share = len(mine) / size  # this process's part of the global batch mean
        loss = float(distributed.all_sum(result.loss.detach() * share))
        if not math.isfinite(loss):
            raise TrainingDiverged(f"non-finite {task} DPO loss ({loss}) at step {self.step}: training stopped")
        params = [p for _, p in self.named]
        grads = torch.autograd.grad(result.loss * share, params, allow_unused=True)
        grads = distributed.sum_tensors([torch.zeros_like(p) if g is None else g
                                         for p, g in zip(params, grads, strict=True)])
        metrics = result.metrics
        if distributed.world_size() > 1:  # the global batch's means
            summed = distributed.all_sum(torch.tensor([v * share for v in metrics.values()], dtype=torch.float64))
            metrics = dict(zip(metrics, summed.tolist(), strict=True))
        return grads, metrics

    def _train_step(self) -> dict[str, Any]:
        record: dict[str, Any] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        grads: dict[str, list[torch.Tensor]] = {}
        for task in self.pairs:
            grads[task], metrics = self._task_gradients(task)
            record |= {f"{task}/{key}" if "/" in key else f"{task}_{key}": value for key, value in metrics.items()}
        zeros = [torch.zeros_like(p) for _, p in self.named]
        g = {task: grads.get(task, zeros) for task in TASKS}
        flat = {task: _flat([t for t, s in zip(g[task], self.is_shared, strict=True) if s]) for task in TASKS}
        with torch.autocast(flat["und"].device.type, enabled=False):  # (gradient maths in float32, not under --bf16's
            combo = self.strategy.combine(flat["und"], flat["gen"], self.step)  # autocast: torchjd solves in numpy)
        norms = {task: float(flat[task].norm()) for task in TASKS}
        cos = (
            float(torch.dot(flat["und"], flat["gen"]) / (norms["und"] * norms["gen"]))
            if all(norms.values())
            else None
        )
        record |= {
            "w_und": combo.w_und,
            "w_gen": combo.w_gen,
            "und_grad_norm": norms["und"],
            "gen_grad_norm": norms["gen"],
            "cos": cos,
        }
        offset = 0
        for i, (_, p) in enumerate(self.named):
            if self.is_shared[i]:
                p.grad = combo.shared[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            else:
                p.grad = combo.specific_und * g["und"][i] + combo.specific_gen * g["gen"][i]
        record["grad_norm"] = optimizer_step(self.named, self.optimizer, self.scheduler, self.config.max_grad_norm,
                                             self.step)
        return record
