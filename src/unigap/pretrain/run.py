"""`pretrain`: build the tokenizer and tiny Janus; train the VQ, the vision tower, then the rest (and, if asked,
polish it); save a `load_model` checkpoint.

Long work checkpoints into the output directory (`vq.pt` every `checkpoint_every` steps of stage 1,
`vq.safetensors` at its end, `vision.safetensors` at the end of stage 2, `joint.pt` and `polish.pt` every
`checkpoint_every` steps of stages 3 and 4, all written atomically) and a rerun with the same arguments resumes from them; a finished
run removes them, leaving just the checkpoint that ships. The corpora are rebuilt from the seed
(deterministic), so they are never stored.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from transformers import JanusForConditionalGeneration

from unigap.atomic import atomic_write_bytes, differences_since, entries, write_text_atomically
from unigap.errors import UnigapWarning, UserError
from unigap.evaluate import vq_fidelity
from unigap.metrics_log import LOGGER_FILES, MetricLogger, read_log
from unigap.model import (
    UnifiedModel,
    build_word_tokenizer,
    save_tiny,
    tiny_janus_config,
)
from unigap.model.prompts import TINY_TEMPLATE
from unigap.model.tiny import tiny_generation_config
from unigap.pretrain.config import PretrainConfig
from unigap.pretrain.corpus import (
    Corpora,
    UnderstandingCorpus,
    critique_corpus,
    edit_corpus,
    generation_corpus,
    understanding_corpus,
)
from unigap.pretrain.joint import PatchHead, joint_step, make_optimizer, trainable_parameters
from unigap.pretrain.labels import grid_side
from unigap.pretrain.vision import VisionStep, train_vision
from unigap.train.sft import vq_tokens
from unigap.pretrain.vq import merge_similar_codes, to_pixels, train_vq
from unigap.progress import progress
from unigap.world import vocabulary

VQ_FILE = "vq.safetensors"
VQ_PARTIAL = "vq.pt"  # stage 1 in progress
VISION_FILE = "vision.safetensors"
JOINT_FILE = "joint.pt"
POLISH_FILE = "polish.pt"
STAGE_FILES = {"joint": JOINT_FILE, "polish": POLISH_FILE}  # each stepped stage's checkpoint,
STAGE_STREAMS = {"joint": 2, "polish": 4}  # random stream (polish shares vision's number, which draws from another
# corpus for another purpose; kept so that the documented polish probes reproduce)
STAGE_BARS = {"joint": "understanding + generation", "polish": "polish: critique + editing"}  # and progress bar
LOG_FILE = "pretrain_log.jsonl"
SUMMARY_FILE = "pretrain.json"
ENCODE_BATCH = 64
MERGE_IMAGES = 500  # generation renders whose code usage picks which of similar codes survives
VQ_CHECK = 200  # held-out scenes the VQ's reconstructions are verified on


def _bar(description: str, total: int, show: bool):  # noqa: ANN202 - `unigap.progress.progress`, kept visible
    return progress(description, total, show, transient=False)


def build_model(config: PretrainConfig, device: str | torch.device = "cpu") -> UnifiedModel:
    """The untrained tiny Janus over the ShapeWorld vocabulary, seeded (initialised on the CPU, the same weights
    whatever `device` it then moves to)."""
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
    return UnifiedModel(model.to(device), tokenizer, template=TINY_TEMPLATE, edit_source=config.edit_source)


@torch.no_grad()
def vq_reconstructions(um: UnifiedModel, tokens: np.ndarray) -> np.ndarray:
    """The VQ's decoding [S, H, W, 3] uint8 of ids [S, N]."""
    images = [image for i in range(0, len(tokens), ENCODE_BATCH)
              for image in um.decode_tokens(torch.from_numpy(tokens[i : i + ENCODE_BATCH]))]
    return np.stack([np.asarray(image) for image in images])


def tokenize_corpora(um: UnifiedModel, corpora: Corpora) -> None:
    """Generation and edit targets are the VQ ids of their renders; understanding, critique and edit
    sources also come as VQ reconstructions (the kind of picture the model generates)."""
    corpora.gen.tokens = vq_tokens(um, corpora.gen.renders, ENCODE_BATCH).numpy()
    corpora.edit.tokens = vq_tokens(um, corpora.edit.results, ENCODE_BATCH).numpy()
    for corpus, pictures in ((corpora.und, corpora.und.renders), (corpora.critique, corpora.critique.renders),
                             (corpora.edit, corpora.edit.sources)):
        corpus.reconstructions = vq_reconstructions(um, vq_tokens(um, pictures, ENCODE_BATCH).numpy())


def build_corpora(config: PretrainConfig, grid: int, show: bool) -> Corpora:
    """Every corpus of the recipe, rebuilt from the seed (deterministic, so never stored)."""
    with _bar("generation corpus", config.scenes, show) as update:
        gen = generation_corpus(config.scenes, config.seed, grid, update)
    with _bar("understanding corpus", config.understanding_scenes, show) as update:
        und = understanding_corpus(config.understanding_scenes, config.seed, config.questions_per_scene,
                                   config.sentence_fraction, update)
    with _bar("critique corpus", config.critique_scenes, show) as update:
        critique = critique_corpus(config.critique_scenes, config.seed, update)
    with _bar("edit corpus", config.edit_pairs, show) as update:
        edit = edit_corpus(config.edit_pairs, config.seed, update)
    return Corpora(und=und, gen=gen, critique=critique, edit=edit)


def _log(logger: MetricLogger, row: dict) -> None:
    """A row of `pretrain_log.jsonl` (`stage` first, as always), its numbers to the backends as `<stage>/<key>`."""
    logger.log(row.get("step", 0), row, prefix=f"{row['stage']}/")


def _resume_log(logger: MetricLogger, stage: str, done: int = -1) -> None:
    """Before a stage logs: drop its rows after step `done` (those a resumed stage logs again; -1: all of them, for
    a stage that starts over or a one-off row) and a row a kill left half-written, so the log reads like one run's."""
    logger.keep_rows(lambda row: row.get("stage") != stage or row["step"] <= done)


def _log_again(logger: MetricLogger, row: dict) -> None:
    """A one-off row every run recomputes (the VQ check, the code merge): where an earlier run logged it alike it
    stays where it was, so a resumed log reads in one run's order (logged again, it landed after the finished vision
    stage's rows); else the old one goes and this one is logged."""
    earlier = [old for old in read_log(logger.path) if old.get("stage") == row["stage"]]
    if earlier != [{"step": row.get("step", 0), **row}]:
        _resume_log(logger, row["stage"])
        _log(logger, row)


def save_stage(module: torch.nn.Module, path: Path, seconds: float, settings: dict) -> None:
    """A finished stage's weights, with the seconds it took (kept across resumes) and the settings it was trained
    under (`stage_settings`), written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"seconds": repr(seconds), "settings": json.dumps(settings)}
    atomic_write_bytes(path, lambda handle: handle.write(save(state, metadata=metadata)), sole=True)


def _load_stage(module: torch.nn.Module, path: Path, settings: dict, stage: str) -> float:
    """Load a finished stage saved by `save_stage` (refused when trained under other settings); returns the seconds
    its training took."""
    refuse_other_settings(path, saved_settings(path), settings, stage)
    module.load_state_dict(load_file(path))
    with safe_open(path, framework="pt") as handle:
        return float((handle.metadata() or {}).get("seconds", 0.0))


def saved_settings(path: Path) -> dict | None:
    """The settings a stage file was written under: a finished stage's metadata, a stepped stage's checkpoint."""
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("settings", "null"))
    return torch.load(path, weights_only=False, mmap=True, map_location="cpu").get("config")  # (mapped: not read)


def check_stage_files(out: Path, config: PretrainConfig) -> None:
    """Refuse a rerun in `out` before any work: a finished run (it would train again from scratch), or stage files
    written under other settings than the stages they would resume (each stage checks again as it loads)."""
    if (out / SUMMARY_FILE).is_file():
        raise UserError(f"{out} holds a finished pretraining run ({SUMMARY_FILE}); choose a new --out")
    names = [name for name in entries(out) if not name.startswith(".")]  # (a user's own would be written over)
    ours = {LOG_FILE, VQ_FILE, VQ_PARTIAL, VISION_FILE, *STAGE_FILES.values()}
    if names and not ours & set(names) and not set(names) <= set(LOGGER_FILES):  # (those alone: killed before a row)
        raise UserError(f"{out} holds files a pretraining run did not write ({', '.join(sorted(names)[:3])}"
                        f"{', …' if len(names) > 3 else ''}); choose an empty or new --out")
    stages = [(VQ_FILE, "vq", config), (VQ_PARTIAL, "vq", config), (VISION_FILE, "vision", config)]
    stages += [(JOINT_FILE, "joint", config)] if config.steps else []
    stages += [(POLISH_FILE, "polish", config.polish())] if config.polish_steps else []
    for name, stage, stage_config in stages:
        if (out / name).is_file():
            refuse_other_settings(out / name, saved_settings(out / name), stage_settings(stage_config, stage), stage)


def refuse_other_settings(path: Path, saved: dict | None, settings: dict, stage: str) -> None:
    """`UserError` when a stage's file was written under other settings than `settings`. A file from before stage
    files recorded them (`saved` None) is taken as written under these, and a setting added since it was written as
    at its default."""
    differences = differences_since(settings if saved is None else saved, settings, asdict(PretrainConfig()))
    if differences:
        raise UserError(f"{path} was written under other {stage} settings ({'; '.join(differences)}); "
                        f"rerun with those settings or use a new --out")


def numerics(device: torch.device) -> dict:
    """What a stage's float rounding depends on besides its settings, recorded in each checkpoint: the kind of
    device, and on a CPU the torch thread count (its matrix products split their sums by thread)."""
    return {"device": device.type} | ({"threads": torch.get_num_threads()} if device.type == "cpu" else {})


def warn_other_numerics(path: Path, saved: dict, device: torch.device) -> None:
    """A warning where a stage resumes on another kind of device, or on a CPU with another thread count, than its
    checkpoint was written with (a run preempted on a GPU, resumed on a CPU; or on a node with another CPU quota): it
    goes on, but mixes two numerics, which its records would not show."""
    now = numerics(device)
    if saved.get("device") is not None and saved["device"] != now["device"]:
        warnings.warn(f"{path} was trained on {saved['device']} so far and goes on on {now['device']}: the run mixes "
                      f"the two devices' numerics (pass --device {saved['device']} to keep to one)", UnigapWarning,
                      stacklevel=2)
    elif saved.get("threads") is not None and now.get("threads") not in (None, saved["threads"]):
        warnings.warn(f"{path} was trained with {saved['threads']} torch threads so far and goes on with "
                      f"{now['threads']}: the weights will differ from an unbroken run's in float rounding (set "
                      f"UNIGAP_NUM_THREADS={saved['threads']} to keep to one)", UnigapWarning, stacklevel=2)


def _stage_vq(um: UnifiedModel, renders: np.ndarray, config: PretrainConfig, out: Path, show: bool,
              logger: MetricLogger) -> float:
    """Train (or, on resume, load) the VQ; returns the seconds its training took (recorded in the file on resume)."""
    vq, settings = um.model.model.vqmodel, stage_settings(config, "vq")
    if (out / VQ_FILE).is_file():
        return _load_stage(vq, out / VQ_FILE, settings, "vq")
    partial = out / VQ_PARTIAL
    resume = torch.load(partial, weights_only=False, map_location="cpu") if partial.is_file() else None
    if resume is not None:
        refuse_other_settings(partial, resume.get("config"), settings, "vq")
        warn_other_numerics(partial, resume, um.device)
    start = time.perf_counter() - (resume["seconds"] if resume else 0.0)

    def checkpoint(state: dict) -> None:
        state |= {"seconds": time.perf_counter() - start, "config": settings} | numerics(um.device)
        atomic_write_bytes(partial, lambda handle: torch.save(state, handle), sole=True)  # fsynced: a checkpoint

    _resume_log(logger, "vq", resume["step"] if resume else 0)
    with _bar("VQ tokenizer", config.vq_steps, show) as update:
        update(resume["step"] if resume else 0)

        def on_step(step: int, numbers: object) -> None:
            update(step + 1, f"loss {numbers.loss:.4f} codes {numbers.codes_used}")
            if (step + 1) % 10 == 0 or step + 1 == config.vq_steps:
                _log(logger, {"stage": "vq", "step": step + 1, **asdict(numbers)})

        train_vq(vq, renders, config.vq_steps, config.vq_batch, config.vq_lr, config.seed, on_step=on_step,
                 crop=config.vq_crop, empty_crop_weight=config.vq_empty_crop_weight, checkpoint=checkpoint,
                 checkpoint_every=config.checkpoint_every, resume=resume)
    seconds = time.perf_counter() - start
    save_stage(vq, out / VQ_FILE, seconds, settings)
    partial.unlink(missing_ok=True)
    return seconds


def _stage_vision(um: UnifiedModel, und: UnderstandingCorpus, config: PretrainConfig, out: Path, show: bool,
                  logger: MetricLogger) -> float:
    """Pretrain (or, on resume, load) the vision tower on per-patch labels; returns the seconds it took."""
    tower, settings = um.model.model.vision_model, stage_settings(config, "vision")
    if (out / VISION_FILE).is_file():
        return _load_stage(tower, out / VISION_FILE, settings, "vision")
    start = time.perf_counter()
    _resume_log(logger, "vision")  # (no checkpoint within the stage: it starts over)
    with _bar("vision tower", config.vision_steps, show) as update:

        def on_step(step: int, numbers: VisionStep) -> None:
            update(step + 1, f"loss {numbers.loss:.3f} shape {numbers.shape_accuracy:.2f}")
            if (step + 1) % 10 == 0 or step + 1 == config.vision_steps:
                _log(logger, {"stage": "vision", "step": step + 1, **asdict(numbers)})

        train_vision(tower, und, config.vision_steps, config.vision_batch, config.vision_lr, config.seed,
                     config.reconstructed_fraction, on_step=on_step)
    seconds = time.perf_counter() - start
    save_stage(tower, out / VISION_FILE, seconds, settings)
    return seconds


# With every vq_* setting but the merge, which follows stage 1. The VQ's initial weights also follow the modules built
# before it from the same seed: the LLM's width and the vision tower's.
VQ_SETTINGS = ("seed", "scenes", "codebook_size", "hidden_size", "vision_hidden_size", "vision_layers")
VISION_SETTINGS = ("understanding_scenes", "questions_per_scene", "sentence_fraction", "reconstructed_fraction",
                   "vq_merge_similarity")  # with the VQ's and every vision_* setting


def stage_settings(config: PretrainConfig, stage: str) -> dict:
    """What a stage's weights depend on: stored in its files, which a resume under other settings refuses. The VQ
    (stage 1) and the vision tower (stage 2, trained on the VQ's reconstructions) on their own settings only, so that
    later stages' may change after them; stage 3 on all but stage 4's, stage 4 on all."""
    settings = asdict(config)

    def vq(key: str) -> bool:
        return key in VQ_SETTINGS or (key.startswith("vq_") and key != "vq_merge_similarity")

    if stage == "vq":
        return {k: v for k, v in settings.items() if vq(k)}
    if stage == "vision":
        return {k: v for k, v in settings.items() if vq(k) or k in VISION_SETTINGS or k.startswith("vision_")}
    return {k: v for k, v in settings.items() if stage == "polish" or not k.startswith("polish_")}


def stage_state(um: UnifiedModel, head: PatchHead, optimizer: torch.optim.Optimizer, schedule: object,
                rng: np.random.Generator, step: int, seconds: float, final: dict | None, settings: dict) -> dict:
    """A stepped stage's checkpoint: everything a resume needs, its last losses (a run resumed after the stage
    finished still reports them) and the settings it was written under."""
    return {"model": um.model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "rng": rng.bit_generator.state, "step": step, "seconds": seconds,
            "final": final, "config": settings} | numerics(um.device)


def _stage_joint(um: UnifiedModel, corpora: Corpora, config: PretrainConfig, out: Path, show: bool,
                 logger: MetricLogger, stage: str = "joint") -> dict:
    """Train everything but the VQ for `config.steps` joint steps, checkpointing every `checkpoint_every`
    steps into its `STAGE_FILES` entry and resuming from it. Stage 3 (`joint`) and stage 4 (`polish`, run with
    `config.polish()`) are this loop, each with its own optimiser, schedule and random stream. The
    patch-label head is trained alongside and not saved with the model. A checkpoint written under other
    settings is refused, not resumed (its weights would not be what the settings say)."""
    if config.steps == 0:  # (polish is off by default: no optimiser, no bar, and any stale checkpoint ignored)
        _resume_log(logger, stage)  # (the rows of a run killed in it, before the stage was turned off)
        return {"seconds": 0.0, "final": None}
    torch.manual_seed(config.seed)
    head = PatchHead(config.hidden_size).to(um.device)
    params = trainable_parameters(um, config) + list(head.parameters())
    optimizer, schedule = make_optimizer(params, config)
    rng = np.random.default_rng([config.seed, STAGE_STREAMS[stage]])
    step, seconds, final = 0, 0.0, None
    settings = stage_settings(config, stage)
    checkpoint = out / STAGE_FILES[stage]
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False, map_location="cpu")  # (loading moves it to the model's)
        refuse_other_settings(checkpoint, state.get("config"), settings, stage)
        warn_other_numerics(checkpoint, state, um.device)
        um.model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["rng"]
        step, seconds, final = state["step"], state["seconds"], state.get("final")
    _resume_log(logger, stage, step)
    um.model.train()
    um.model.model.vqmodel.eval()
    with _bar(STAGE_BARS[stage], config.steps, show) as update:
        update(step)
        started = time.perf_counter() - seconds
        while step < config.steps:
            last = joint_step(um, head, corpora, optimizer, schedule, params, rng, config)
            final = asdict(last)
            step += 1
            update(step, f"und {last.und_loss:.3f} gen {last.gen_loss:.3f} critique {last.critique_loss:.3f} "
                         f"edit {last.edit_loss:.3f}")
            if step % 10 == 0 or step == config.steps:
                _log(logger, {"stage": stage, "step": step, **final})
            if step % config.checkpoint_every == 0 or step == config.steps:
                state = stage_state(um, head, optimizer, schedule, rng, step, time.perf_counter() - started, final,
                                    settings)
                atomic_write_bytes(checkpoint, lambda handle: torch.save(state, handle), sole=True)
    um.model.eval()
    return {"seconds": time.perf_counter() - started, "final": final}


def pretrain(out: str | os.PathLike, config: PretrainConfig, show_progress: bool = True,
             report_to: Sequence[str] = (), device: str | torch.device = "cpu") -> Path:
    """Train a tiny Janus on ShapeWorld into `out` (a `load_model`-able checkpoint) and return it. On `device` in
    float32; the corpora are drawn on the CPU, so a GPU run trains on the same data from the same initial weights
    (its float rounding differs, so its weights are not bit-equal to a CPU run's, and a resume there is not exact)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    check_stage_files(out, config)
    started = time.perf_counter()
    logger = MetricLogger(out / LOG_FILE, report_to, append=True, run_name=f"{out.name}-pretrain")  # stages resume
    um = build_model(config, device)
    corpora = build_corpora(config, grid_side(um.num_image_tokens), show_progress)
    corpus_seconds = time.perf_counter() - started
    vq_seconds = _stage_vq(um, corpora.gen.renders, config, out, show_progress, logger)
    coded = time.perf_counter()
    if config.vq_merge_similarity is None:
        _resume_log(logger, "vq_merge")  # (a rerun without the merge keeps no row of one)
    else:
        codes = merge_similar_codes(um.model.model.vqmodel, to_pixels(corpora.gen.renders[:MERGE_IMAGES]),
                                    config.vq_merge_similarity)
        _log_again(logger, {"stage": "vq_merge", "similarity": config.vq_merge_similarity, "codes": codes})
    tokenize_corpora(um, corpora)
    fidelity = vq_fidelity(um, n=VQ_CHECK, seed=config.seed, data_seed=config.seed, progress=show_progress)
    _log_again(logger, {"stage": "vq_fidelity", **fidelity})
    tokenize_seconds = time.perf_counter() - coded  # paid again by every resumed run: the corpora are not stored
    vision_seconds = _stage_vision(um, corpora.und, config, out, show_progress, logger)
    joint = _stage_joint(um, corpora, config, out, show_progress, logger)
    polish = _stage_joint(um, corpora, config.polish(), out, show_progress, logger, stage="polish")
    save_tiny(um.model, um.tokenizer, out, editing=config.edit_batch > 0 or (config.polish_steps > 0
                                                                           and config.polish_edit_batch > 0),
              edit_source=config.edit_source)
    summary = {
        "config": asdict(config),
        "corpus_seconds": corpus_seconds,
        "vq_seconds": vq_seconds,
        "tokenize_seconds": tokenize_seconds,
        "vq_reconstruction_accuracy": fidelity,  # verifier acceptance of held-out VQ reconstructions
        "vision_seconds": vision_seconds,
        "joint_seconds": joint["seconds"],
        "final_losses": joint["final"],
        "polish_seconds": polish["seconds"],
        "polish_final_losses": polish["final"],
        "wall_seconds_this_run": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "device": str(um.device),
    }
    write_text_atomically(out / SUMMARY_FILE, json.dumps(summary, indent=2))
    logger.close()
    for stage_checkpoint in (VQ_PARTIAL, VQ_FILE, VISION_FILE, JOINT_FILE, POLISH_FILE):  # only a killed run needs them
        (out / stage_checkpoint).unlink(missing_ok=True)
    return out
