"""`pretrain`: build the tokenizer and tiny Janus, train the VQ, then the rest; save a `load_model` checkpoint.

Long work checkpoints into the output directory (`vq.pt` every `checkpoint_every` steps of stage 1,
`vq.safetensors` at its end, `joint.pt` every `checkpoint_every` steps of stage 2, all written atomically)
and a rerun with the same arguments resumes from them; a finished run removes them, leaving just the checkpoint that ships. The corpus is rebuilt from the seed (deterministic), so it is never stored.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import JanusForConditionalGeneration

from unigap.atomic import write_atomically, write_text_atomically
from unigap.errors import UserError
from unigap.evaluate import vq_fidelity
from unigap.model import (
    UnifiedModel,
    build_word_tokenizer,
    save_tiny,
    tiny_janus_config,
)
from unigap.model.images import vq_decode, vq_encode
from unigap.model.prompts import TINY_TEMPLATE
from unigap.model.tiny import tiny_generation_config
from unigap.pretrain.config import PretrainConfig
from unigap.pretrain.corpus import Corpus, build_corpus
from unigap.pretrain.joint import joint_step, make_optimizer, trainable_parameters
from unigap.pretrain.vq import to_pixels, train_vq
from unigap.world import vocabulary

VQ_FILE = "vq.safetensors"
VQ_PARTIAL = "vq.pt"  # stage 1 in progress
JOINT_FILE = "joint.pt"
LOG_FILE = "pretrain_log.jsonl"
SUMMARY_FILE = "pretrain.json"
ENCODE_BATCH = 64
VQ_CHECK = 200  # held-out scenes the VQ's reconstructions are verified on


@contextmanager
def _bar(description: str, total: int, show: bool) -> Iterator[Callable[..., None]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")
        yield lambda done, info="": progress.update(task, completed=done, info=info)


def build_model(config: PretrainConfig) -> UnifiedModel:
    """The untrained tiny Janus over the ShapeWorld vocabulary, seeded."""
    tokenizer = build_word_tokenizer(vocabulary())
    torch.manual_seed(config.seed)
    janus_config = tiny_janus_config(
        len(tokenizer),
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        codebook_size=config.codebook_size,
        vision_hidden_size=config.vision_hidden_size,
        vision_layers=config.vision_layers,
    )
    model = JanusForConditionalGeneration(janus_config)
    model.generation_config = tiny_generation_config(tokenizer)  # the special ids UnifiedModel reads
    return UnifiedModel(model, tokenizer, template=TINY_TEMPLATE)


@torch.no_grad()
def tokenize_corpus(um: UnifiedModel, corpus: Corpus) -> None:
    """VQ ids of every render, and the VQ's reconstruction of them (understanding sees both)."""
    vq = um.model.model.vqmodel
    tokens, recons = [], []
    for start in range(0, len(corpus), ENCODE_BATCH):
        ids = vq_encode(vq, to_pixels(corpus.renders[start : start + ENCODE_BATCH]))
        tokens.append(ids.numpy())
        recons.append(np.stack([np.asarray(image) for image in vq_decode(vq, ids)]))
    corpus.tokens, corpus.reconstructions = np.concatenate(tokens), np.concatenate(recons)


def _log(out: Path, row: dict) -> None:
    with (out / LOG_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _stage_vq(um: UnifiedModel, corpus: Corpus, config: PretrainConfig, out: Path, show: bool) -> float:
    """Train (or, on resume, load) the VQ; returns the seconds its training took (recorded in the file on resume)."""
    vq = um.model.model.vqmodel
    if (out / VQ_FILE).is_file():
        vq.load_state_dict(load_file(out / VQ_FILE))
        with safe_open(out / VQ_FILE, framework="pt") as handle:  # the seconds it took, kept across resumes
            return float((handle.metadata() or {}).get("seconds", 0.0))
    partial = out / VQ_PARTIAL
    resume = torch.load(partial, weights_only=False) if partial.is_file() else None
    start = time.perf_counter() - (resume["seconds"] if resume else 0.0)

    def checkpoint(state: dict) -> None:
        state["seconds"] = time.perf_counter() - start
        write_atomically(partial, lambda tmp: torch.save(state, tmp))

    with _bar("VQ tokenizer", config.vq_steps, show) as update:
        update(resume["step"] if resume else 0)

        def on_step(step: int, numbers: object) -> None:
            update(step + 1, f"loss {numbers.loss:.4f} codes {numbers.codes_used}")
            if (step + 1) % 10 == 0 or step + 1 == config.vq_steps:
                _log(out, {"stage": "vq", "step": step + 1, **asdict(numbers)})

        train_vq(vq, corpus.renders, config.vq_steps, config.vq_batch, config.vq_lr, config.seed, on_step=on_step,
                 crop=config.vq_crop, empty_crop_weight=config.vq_empty_crop_weight, checkpoint=checkpoint,
                 checkpoint_every=config.checkpoint_every, resume=resume)
    seconds = time.perf_counter() - start
    state = {k: v.contiguous() for k, v in vq.state_dict().items()}
    write_atomically(out / VQ_FILE, lambda tmp: save_file(state, tmp, metadata={"seconds": repr(seconds)}))
    partial.unlink(missing_ok=True)
    return seconds


def _stage_joint(um: UnifiedModel, corpus: Corpus, config: PretrainConfig, out: Path, show: bool) -> dict:
    """Train everything but the VQ, checkpointing every `checkpoint_every` steps; resumes from `joint.pt`."""
    params = trainable_parameters(um)
    optimizer, schedule = make_optimizer(params, config)
    rng = np.random.default_rng([config.seed, 2])
    step, seconds = 0, 0.0
    checkpoint = out / JOINT_FILE
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        um.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["rng"]
        step, seconds = state["step"], state["seconds"]
    um.model.train()
    um.model.model.vqmodel.eval()
    last = None
    with _bar("understanding + generation", config.steps, show) as update:
        update(step)
        started = time.perf_counter() - seconds
        while step < config.steps:
            last = joint_step(um, corpus, optimizer, schedule, params, rng, config)
            step += 1
            update(step, f"und {last.und_loss:.3f} gen {last.gen_loss:.3f}")
            if step % 10 == 0 or step == config.steps:
                _log(out, {"stage": "joint", "step": step, **asdict(last)})
            if step % config.checkpoint_every == 0 or step == config.steps:
                state = {
                    "model": um.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": rng.bit_generator.state,
                    "step": step,
                    "seconds": time.perf_counter() - started,
                }
                write_atomically(checkpoint, lambda tmp: torch.save(state, tmp))
    um.model.eval()
    return {"seconds": time.perf_counter() - started, "final": asdict(last) if last else None}


def pretrain(out: str | os.PathLike, config: PretrainConfig, show_progress: bool = True) -> Path:
    """Train a tiny Janus on ShapeWorld into `out` (a `load_model`-able checkpoint) and return it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    um = build_model(config)
    with _bar("corpus", config.scenes, show_progress) as update:
        corpus = build_corpus(config.scenes, config.seed, config.questions_per_scene, update)
    vq_seconds = _stage_vq(um, corpus, config, out, show_progress)
    tokenize_corpus(um, corpus)
    fidelity = vq_fidelity(um, n=VQ_CHECK, seed=config.seed, data_seed=config.seed, progress=show_progress)
    _log(out, {"stage": "vq_fidelity", **fidelity})
    joint = _stage_joint(um, corpus, config, out, show_progress)
    save_tiny(um.model, um.tokenizer, out)
    summary = {
        "config": asdict(config),
        "vq_seconds": vq_seconds,
        "vq_reconstruction_accuracy": fidelity,  # verifier acceptance of held-out VQ reconstructions
        "joint_seconds": joint["seconds"],
        "final_losses": joint["final"],
        "wall_seconds_this_run": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
    }
    write_text_atomically(out / SUMMARY_FILE, json.dumps(summary, indent=2))
    for stage_checkpoint in (VQ_PARTIAL, VQ_FILE, JOINT_FILE):  # only a killed run needs them
        (out / stage_checkpoint).unlink(missing_ok=True)
    return out
