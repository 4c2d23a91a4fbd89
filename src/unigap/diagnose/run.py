"""One diagnostics run end to end: choose the shared parameters, collect, analyse, sweep, write.

The per-task loss is `unigap.train.dpo.task_dpo_loss` on a single-pair batch — the trainer's own loss,
so the diagnostics measure exactly the gradients training would follow.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from unigap.diagnose import stats, sweep
from unigap.diagnose.figures import write_figures
from unigap.diagnose.gradients import FULL, LossFn, ParameterSet, collect, full_parameter_set, lora_parameter_set
from unigap.errors import UnigapWarning
from unigap.model import UnifiedModel
from unigap.atomic import write_json
from unigap.train.dpo import DPOOptions, GenerationPair, UnderstandingPair, task_dpo_loss

REPORT = "diagnostics.json"
# SPEC §1: the LoRA every training strategy trains
LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 64, 128, 0.05


def shared_parameters(
    um: UnifiedModel, full_params: bool, seed: int, rank: int = LORA_RANK, alpha: float = LORA_ALPHA
) -> ParameterSet:
    """The tensors to diagnose: the LLM's own weights, or its LoRA — a fresh one (SPEC defaults, seeded
    init, B = 0) when the model carries no adapter yet.

    Leaves the model in eval mode: peft creates its LoRA modules in train mode, and LoRA dropout would
    make every gradient (and so every cosine) depend on the dropout stream rather than on the data.
    """
    if full_params:
        params = full_parameter_set(um)
    else:
        if um.peft is None:
            torch.manual_seed(seed)
            um.add_lora(rank=rank, alpha=alpha, dropout=LORA_DROPOUT)
        params = lora_parameter_set(um)
    um.model.eval()
    return params


def dpo_loss_fn(options: DPOOptions) -> LossFn:
    """`loss_fn(um, pair)`: the task's DPO loss on the one-pair batch [pair]."""
    return lambda um, pair: task_dpo_loss(um, [pair], options).loss


def run_diagnostics(
    um: UnifiedModel,
    params: ParameterSet,
    und_pairs: Sequence[UnderstandingPair],
    gen_pairs: Sequence[GenerationPair],
    n_batches: int,
    seed: int,
    sweep_probes: int = 16,
    options: DPOOptions = DPOOptions(),
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The report (without figures): statistics of `n_batches` seeded single-pair batches, plus the
    length sweep over `sweep_probes` ShapeWorld probes per condition (0 skips it).
    `progress()` is called after every gradient pass group (n_batches + 2·sweep_probes calls)."""
    loss_fn = dpo_loss_fn(options)
    tick = (lambda _: progress()) if progress is not None else None
    log = collect(um, params, und_pairs, gen_pairs, loss_fn, loss_fn, n_batches, seed, tick)
    und_tokens = [(und_pairs[i].chosen_tokens + und_pairs[i].rejected_tokens) / 2 for i in log.und_index]
    gen_tokens = [(gen_pairs[i].chosen_tokens + gen_pairs[i].rejected_tokens) / 2 for i in log.gen_index]
    report = stats.analyse(log, und_tokens, gen_tokens)
    report["parameters"] = {
        "kind": FULL if set(params.factors) == {FULL} else "lora",
        "tensors": len(params.names),
        "numel": params.numel,
    }
    report["seed"] = seed
    # batches > pairs reuse some (each once before any twice): their samples are then not independent
    report["distinct_pairs"] = {"und": len(set(log.und_index)), "gen": len(set(log.gen_index)), "batches": n_batches}
    report["eval_mode"] = not um.model.training  # LoRA dropout off: gradients depend on the data only
    report["dpo"] = {"beta": options.beta, "loss_type": options.loss_type, "cfg_scale": options.cfg_scale}
    if sweep_probes > 0 and not len(sweep.usable_norms(report["samples"]["gen_norm"])):
        # (every one zero or overflowed, e.g. at an extreme beta: the sweep's ρ has no denominator; the tests above
        # report their nulls)
        warnings.warn("the length sweep is skipped: no generation gradient is finite and non-zero, so ρ is undefined",
                      UnigapWarning, stacklevel=2)
    elif sweep_probes > 0:
        pairs = sweep.probe_pairs(um, sweep.length_probes(sweep_probes, seed))
        gen_mean = sum(gen_tokens) / len(gen_tokens)
        report["sweep"] = sweep.run_sweep(um, params, pairs, loss_fn, report["samples"]["gen_norm"], gen_mean, progress)
    return report


def write_report(report: dict[str, Any], directory: str | os.PathLike) -> Path:
    """DIR/diagnostics.json (written atomically, no NaN) and the PNG figures next to it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    report = report | {"figures": write_figures(report, out)}
    write_json(out / REPORT, report)  # last: the study's job is done once it exists
    return out / REPORT
