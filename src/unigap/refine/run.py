"""`unigap refine`: the refine loop on held-out prompts, the oracle reflector and the best-of-N baseline.

Each part is a job done when its file exists, so a rerun with `resume` skips finished parts (a different
configuration in the same directory is refused):

    OUT/refine.json           the loop's per-round metrics, stop metrics, gain, best_of_n, oracle, records (and
                              `judged`: the same metrics by `--judge` when it is not the verifier)
    OUT/parts/{self,oracle,best_of_n}.json
    OUT/strips/NNN.png        for the first prompts: the image of every round, the instruction under it
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from unigap import distributed
from unigap.atomic import cached_json, claim_settings, path_setting, path_settings, write_atomically, write_json
from unigap.errors import UserError
from unigap.evaluate.data import FREE_TEXT_HINT, HELD_OUT_SPLITS, FreePrompt, prompt_specs
from unigap.evaluate.judges import Judge, check_judge_name, get_judge
from unigap.model.checkpoint import model_identity
from unigap.model.editing import EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE, EDIT_SETTINGS, EditGuidance
from unigap.model.decoding import check_temperature
from unigap.model.generation import CFG_SCALE, check_guidance_scale
from unigap.refine.loop import Refinable, Trajectory, check_loop, refiner_for, run_loop
from unigap.refine.metrics import best_of_n, gain, judged_part, round_metrics, stop_metrics
from unigap.train.config import check_field_types
from unigap.world import SPLITS, PromptSpec

STRIPS = 8  # prompts drawn as strips
SCALE = 3


@dataclass(frozen=True)
class RefineConfig:
    """One refine run (defaults: R3's evaluation budget of 4 images = 1 generation + 3 rounds)."""

    n: int = 300  # held-out prompts (at most n of a prompt file)
    rounds: int = 3  # reflect/refine rounds after the first generation; 0 = one-shot generation
    reflector: str = "self"
    refiner: str = "auto"
    # a split (test, val) or a prompt file (text lines or JSONL with a "prompt" field; free text only with a judge
    # that reads text)
    prompts: str = field(default="test", metadata=path_setting(SPLITS))
    seed: int = 0
    data_seed: int = 0
    cfg_scale: float = CFG_SCALE  # generation's (and regeneration's) guidance
    temperature: float = 1.0
    batch_size: int = 32
    # the independent judge of the reported accuracy (the loop always reads the verifier)
    judge: str = field(default="verifier", metadata=path_setting())
    edit_cfg_scale: float = EDIT_CFG_SCALE  # an edit's guidance: `unigap.model.editing.EditGuidance`
    edit_image_cfg_scale: float = EDIT_IMAGE_CFG_SCALE

    def __post_init__(self) -> None:
        check_field_types(self)
        check_loop(self.rounds, self.reflector, self.refiner)
        if self.n < 1:
            raise UserError(f"--n must be positive, got {self.n}")
        if self.prompts == "train":
            raise UserError("--prompts train: refine measures the loop on held-out prompts; use test, val or a "
                            "prompt file (refine train trains on the train split)")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be positive, got {self.batch_size}")
        check_temperature(self.temperature)
        for name in ("cfg_scale", "edit_cfg_scale", "edit_image_cfg_scale"):
            flag = f"--{name.replace('_scale', '').replace('_', '-')}" if name.startswith("edit") else name
            check_guidance_scale(flag, getattr(self, name))
        for name in ("seed", "data_seed"):  # (data_seed: the Python API's, and a TOML config's)
            if getattr(self, name) < 0:
                raise UserError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        check_judge_name(self.judge, independent=True)
        if self.refiner == "regenerate" and self.edit_flags:
            raise unused_guidance(self.edit_flags, "--refiner regenerate never edits")

    @property
    def edit_guidance(self) -> EditGuidance:
        return EditGuidance(self.edit_cfg_scale, self.edit_image_cfg_scale)

    @property
    def edit_flags(self) -> list[str]:
        """The edit-guidance flags set away from their defaults."""
        return [flag for flag, value, default in (("--edit-cfg", self.edit_cfg_scale, EDIT_CFG_SCALE),
                                                  ("--edit-image-cfg", self.edit_image_cfg_scale, EDIT_IMAGE_CFG_SCALE))
                if value != default]


def unused_guidance(flags: Sequence[str], why: str) -> UserError:
    """The refusal of edit guidance a run would record and never use."""
    return UserError(f"{' and '.join(flags)} guide{'s' if len(flags) == 1 else ''} edits; {why}")


def check_refiner(um: Refinable, config: RefineConfig) -> str:
    """The refiner this model runs; `UserError` for `edit` on a model that cannot edit, and for edit guidance where
    the loop regenerates (`auto` on such a model): it would be recorded, and never used."""
    if config.refiner == "edit" and not um.supports_editing:
        raise UserError("--refiner edit needs a model that can edit images; this one cannot (use regenerate or auto)")
    mode = refiner_for(um, config.refiner)
    if mode != "edit" and config.edit_flags:  # (`regenerate` is refused by the config itself)
        raise unused_guidance(config.edit_flags, "this model cannot edit, so the loop regenerates")
    return mode


def refine_prompts(config: RefineConfig) -> list[PromptSpec | FreePrompt]:
    """The loop's prompts: free text (a real checkpoint's) only where a judge that reads text grades the images; a
    `UserError` names the line otherwise."""
    return prompt_specs(config.prompts, config.n, config.seed, config.data_seed, free_text=config.judge != "verifier",
                        free_text_hint=FREE_TEXT_HINT, splits=HELD_OUT_SPLITS)


def _loop_part(um: Refinable, specs: list[PromptSpec | FreePrompt], config: RefineConfig, reflector: str,
               progress: bool, judge: Judge | None) -> tuple[dict[str, Any], list[Trajectory]]:
    trajectories = run_loop(um, specs, config.rounds, reflector, config.refiner, config.seed, config.cfg_scale,
                            config.temperature, config.batch_size, progress, config.edit_guidance)
    rounds = round_metrics(trajectories, config.rounds)
    part = {"accuracy": rounds[-1]["accuracy"], "rounds": rounds, "stop": stop_metrics(trajectories, config.rounds),
            "gain": gain(trajectories, config.rounds), "records": [t.to_dict() for t in trajectories]}
    if judge is not None:
        part["judged"] = judged_part(judge, um, trajectories, config.rounds)
        for record, verdicts in zip(part["records"], part["judged"].pop("verdicts"), strict=True):
            record["judged"] = verdicts
    return part, trajectories


def _strip(trajectory: Trajectory) -> Image.Image:
    """Every round's image (green frame: the verifier accepts it; red: it rejects it; grey: free text, which it
    cannot read), the prompt, and under it one line per reflection: what the reflector said about image r."""
    side = trajectory.images[0].width * SCALE
    notes = trajectory.reflections
    sheet = Image.new("RGB", (side * len(trajectory.images), side + 18 + 14 * len(notes)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, side + 2), trajectory.spec.text, fill="black")
    for round_, image in enumerate(trajectory.images):
        x = round_ * side
        sheet.paste(image.resize((side, side), Image.NEAREST), (x, 0))
        colour = {True: (40, 170, 40), False: (200, 20, 20), None: (150, 150, 150)}[trajectory.verified[round_]]
        draw.rectangle((x, 0, x + side - 1, side - 1), outline=colour, width=3)
    for round_, note in enumerate(notes):
        draw.text((4, side + 16 + 14 * round_), f"on image {round_}: {note}", fill=(60, 60, 160))
    return sheet


def _part(out: Path, name: str, make: Any, judged: bool = False) -> dict[str, Any]:
    """A part of the run, made or read back; with `judged`, one that holds another judge's metrics."""
    part = cached_json(out / "parts" / f"{name}.json", make, write=distributed.is_main())
    if judged and "judged" not in part:  # (written before a loop part kept the judge's full metrics)
        raise UserError(f"{out / 'parts' / f'{name}.json'} was written by an earlier unigap: resume it with that "
                        "version, or rerun without --resume into a new --out")
    return part


def run_refine(um: Refinable, config: RefineConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """The loop (with the configured reflector), the oracle reflector and best-of-N; `refine.json` in OUT."""
    out = Path(out)
    mode = check_refiner(um, config)
    specs = refine_prompts(config)
    instructible = any(isinstance(spec, PromptSpec) for spec in specs)  # the oracle stops free text at once
    judge = get_judge(config.judge, independent=True)
    extra = None if judge.name == "verifier" else judge  # the verifier's accuracy is always reported
    identity = model_identity(um)
    settings = {**asdict(config), "refiner_used": mode, "n_prompts": len(specs), **identity}
    writer = distributed.is_main()  # under `accelerate launch` every process holds the results; the main one writes
    required = EDIT_SETTINGS if mode == "edit" else ()  # (one that regenerated never edited)
    defaults = {f.name: f.default for f in fields(RefineConfig) if f.name not in required}
    defaults |= identity  # a run from before they were recorded: its model is unknown, not refused
    claim_settings(out / "settings.json", settings, "refine", defaults, write=writer, paths=path_settings(config))
    progress = progress and writer

    def loop(reflector: str) -> dict[str, Any]:
        part, trajectories = _loop_part(um, specs, config, reflector, progress, extra)
        if reflector == config.reflector and writer:
            for index, trajectory in enumerate(trajectories[:STRIPS]):
                strip = _strip(trajectory)
                write_atomically(out / "strips" / f"{index:03d}.png", lambda tmp, s=strip: s.save(tmp, format="PNG"))
        return part

    main = _part(out, config.reflector, lambda: loop(config.reflector), judged=extra is not None)
    # (with no round after the first image, the oracle's loop is the same one-shot generation: not run again)
    oracle = main if config.reflector == "oracle" or config.rounds == 0 else (
        _part(out, "oracle", lambda: loop("oracle"), judged=extra is not None) if instructible else None)
    baseline = _part(out, "best_of_n", lambda: best_of_n(um, specs, 1 + config.rounds, config.seed, config.cfg_scale,
                                                         config.temperature, config.batch_size, progress, extra))
    report = {
        "config": {**settings, "judge": judge.describe()},
        "rounds": main["rounds"],
        "stop": main["stop"],
        "gain": main["gain"],
        "best_of_n": baseline,
        "oracle": None if oracle is None else {"accuracy": oracle["accuracy"], "rounds": oracle["rounds"],
                                               "gain": oracle["gain"]},
        "records": main["records"],
    }
    if oracle is None:
        report["oracle_skipped"] = "no ShapeWorld prompt: the oracle reads the verifier's parse of each image"
    if extra is not None:
        judged = main["judged"]
        report["judged"] = {"judge": judge.name, "rounds": judged["rounds"], "stop": judged["stop"],
                            "gain": judged["gain"], "best_of_n": baseline["judged"],
                            "oracle": None if oracle is None else oracle["judged"]["rounds"][-1]}
    if writer:
        write_json(out / "refine.json", report)
    return report
