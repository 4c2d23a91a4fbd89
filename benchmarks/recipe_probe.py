"""Recipe probe: a short pretraining run of the full preset with changes, then its metrics on the val split.

Why: the full recipe takes about two hours on a 2-core CPU, so its settings are chosen on shorter runs that share
the expensive first stage. `--reuse DIR` copies a finished VQ (and, unless `--new-vision`, the vision tower) out
of a checkpoint directory (e.g. the shipped model's, `src/unigap/assets/tiny`), exactly as a resumed run would
find them, so only the stages that differ are trained; `--reuse-joint` also takes its weights as a finished
stage 3 of `--steps` steps (give the checkpoint's own: 3000 for the shipped model), so only stage 4 (polish)
trains. The evaluation uses the val split, never the test split.

    python benchmarks/recipe_probe.py --out runs/probe-a --steps 500 [--set num_layers=6] [--reuse DIR] [--new-vision]
    python benchmarks/recipe_probe.py --out runs/probe-p --steps 3000 --reuse src/unigap/assets/tiny --reuse-joint \
        --set polish_steps=600

Writes the checkpoint to OUT and `OUT/eval_val.json` (`unigap eval --split val --n 300 --seed 11`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from _common import positive_int, run_main
from unigap.atomic import write_atomically
from unigap.errors import first_line
from unigap.evaluate import evaluate, save_report
from unigap.model import load_model
from unigap.model.loading import resolve_checkpoint
from unigap.pretrain import FULL, PretrainConfig, pretrain
from unigap.pretrain.joint import PatchHead, make_optimizer, trainable_parameters
from unigap.pretrain.run import (
    JOINT_FILE, STAGE_STREAMS, VISION_FILE, VQ_FILE, save_stage, stage_settings, stage_state,
)


def reuse_stages(source: Path, out: Path, vision: bool, config: PretrainConfig) -> None:
    """Write the VQ (and vision tower) of a trained checkpoint as finished stage files of `config` in `out`."""
    um = load_model(source)
    recorded = json.loads((source / "pretrain.json").read_text()) if (source / "pretrain.json").is_file() else {}
    stages = [(um.model.model.vqmodel, VQ_FILE, recorded.get("vq_seconds", 0.0), "vq")]
    if vision:
        stages.append((um.model.model.vision_model, VISION_FILE, recorded.get("vision_seconds", 0.0), "vision"))
    out.mkdir(parents=True, exist_ok=True)
    for module, name, seconds, stage in stages:
        if not (out / name).is_file():
            save_stage(module, out / name, seconds, stage_settings(config, stage))


def reuse_joint(source: Path, out: Path, config: PretrainConfig) -> None:
    """Write the checkpoint's weights as a finished stage 3 of `config` (fresh optimiser state: stage 4 starts
    its own), so a resumed run goes straight to polishing."""
    if (out / JOINT_FILE).is_file():
        return
    um = load_model(source)
    recorded = json.loads((source / "pretrain.json").read_text())
    head = PatchHead(config.hidden_size)
    optimizer, schedule = make_optimizer(trainable_parameters(um, config) + list(head.parameters()), config)
    rng = np.random.default_rng([config.seed, STAGE_STREAMS["joint"]])
    state = stage_state(um, head, optimizer, schedule, rng, config.steps, recorded["joint_seconds"],
                        recorded.get("final_losses"), stage_settings(config, "joint"))
    write_atomically(out / JOINT_FILE, lambda tmp: torch.save(state, tmp))


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=positive_int, default=500, help="joint-stage steps")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a PretrainConfig change")
    parser.add_argument("--reuse", type=Path, help="checkpoint directory whose VQ (and vision tower) to reuse")
    parser.add_argument("--new-vision", action="store_true", help="train the vision stage instead of reusing it")
    parser.add_argument("--reuse-joint", action="store_true", help="also reuse --reuse's weights as stage 3")
    parser.add_argument("--n", type=positive_int, default=300)
    return parser


def config_changes(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, object]:
    """`--set FIELD=JSON` items as `PretrainConfig` changes, each refused in one line before any stage trains."""
    names, changes = {field.name for field in fields(PretrainConfig)}, {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or name not in names:
            parser.error(f"--set {item!r}: give FIELD=JSON, FIELD a PretrainConfig field (e.g. num_layers=6)")
        if name == "steps":
            parser.error(f"--set {item!r}: give the joint stage's steps as --steps")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError as exc:
            parser.error(f"--set {item!r}: the value is not JSON ({exc}); a string is quoted: FIELD='\"text\"'")
    return changes


def main(argv: list[str] | None = None) -> None:
    parser = options()
    args = parser.parse_args(argv)
    if args.reuse_joint and args.reuse is None:
        parser.error("--reuse-joint needs --reuse DIR (the checkpoint whose weights are the finished stage 3)")
    reuse = None if args.reuse is None else resolve_checkpoint(args.reuse)  # (a UserError: run_main's one line)
    if args.reuse_joint and not (reuse / "pretrain.json").is_file():
        parser.error(f"--reuse-joint: {reuse} holds no pretrain.json (the record of its stage 3)")
    changes = config_changes(parser, args.set)
    try:
        config = FULL.scaled(steps=args.steps, **changes)
    except ValueError as exc:  # (a UserError, or a value check's plain ValueError: vq_merge_similarity's)
        parser.error(f"--set: {first_line(exc)}")
    if reuse is not None:
        reuse_stages(reuse, args.out, vision=not args.new_vision, config=config)
        if args.reuse_joint:
            reuse_joint(reuse, args.out, config)
    pretrain(args.out, config, show_progress=False)
    report = evaluate(load_model(args.out), args.n, seed=11, split="val", progress=False)
    report["config"].update(model=str(args.out), probe={"steps": args.steps, **changes})
    save_report(report, args.out / "eval_val.json")
    print(f"wrote {args.out / 'eval_val.json'}")


if __name__ == "__main__":
    run_main(options(), main)
