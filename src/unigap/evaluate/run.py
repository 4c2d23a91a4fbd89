"""One call that measures a model: the numbers every later stage (DPO, the study) compares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from unigap.evaluate.critique import reflect_on, reflection_metrics, self_judge_metrics
from unigap.evaluate.data import held_out_pairs
from unigap.evaluate.editing import edit_accuracy
from unigap.evaluate.generation import generate_and_judge, generation_metrics, judged_generation
from unigap.evaluate.judges import Judge, get_judge
from unigap.evaluate.progress import check_batch_size
from unigap.evaluate.stats import with_cis
from unigap.evaluate.understanding import (
    DEFAULT_MAX_NEW_TOKENS,
    answer_items,
    understanding_items,
    understanding_metrics,
)
from unigap.data.understanding import UserItem, kinds_of
from unigap.model.editing import EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE
from unigap.model.generation import CFG_SCALE
from unigap.world import QUESTION_KINDS, PromptSpec


def evaluate(
    um: Any,
    n: int = 200,
    seed: int = 0,
    *,
    data_seed: int = 0,
    batch_size: int = 32,
    cfg_scale: float | None = CFG_SCALE,
    temperature: float = 1.0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    critique: bool = True,
    split: str = "test",
    progress: bool = True,
    on_images: Callable[[list[Image.Image]], None] | None = None,
    prompts: Sequence[PromptSpec] | None = None,
    questions: Sequence[UserItem] | None = None,
    judge: Judge | None = None,
    edit_cfg_scale: float | None = EDIT_CFG_SCALE,
    edit_image_cfg_scale: float | None = EDIT_IMAGE_CFG_SCALE,
) -> dict[str, Any]:
    """Understanding and generation metrics on n held-out items (n questions, n prompts → n images).

    `um` is a `UnifiedModel` (or anything with its `answer`, `judge`, `generate_images` and
    `decode_tokens`). The result holds `config`, the metric objects `understanding`, `generation`,
    `nonunification`, `weak_generation`, `judge`, `self_judge`, and `records` (`understanding` and
    `generation`: one dict per item) for per-item statistics. With `critique` (it needs `reflect`, and
    `edit` where `supports_editing`) it adds `reflect` (the model's reflections on its own n images) and
    `edit` (n edits of broken held-out scenes, guided by `edit_cfg_scale` and `edit_image_cfg_scale`, as
    `UnifiedModel.edit` takes them; null, with `edit_skipped` saying why, on a model that cannot edit). `split`
    "val" measures on the validation split instead, for choosing settings without touching the test split. `on_images`, if given, receives the n generated images (in record order), for a
    caller that saves them or judges them again. `prompts` (e.g. a user's prompt file) replaces the held-out
    generation prompts; `questions` (a user's understanding data, `read_understanding_data`) replaces the held-out
    questions and adds the VQA soft score. `judge` (an independent judge other than the verifier, e.g. `clip:DIR`)
    adds `judged_generation`, generation accuracy by that judge; `config.judge` records the judge that decided
    (the verifier by default). Same arguments on the same device ⇒ the same numbers.
    """
    check_batch_size(batch_size)
    pairs = held_out_pairs(n, seed, data_seed, split=split)
    items = understanding_items(n, seed, data_seed, pairs) if questions is None else list(questions)
    understanding_records = answer_items(um, items, batch_size, max_new_tokens, progress)
    kinds = QUESTION_KINDS if questions is None else kinds_of(list(questions))
    specs = list(prompts) if prompts is not None else [spec for spec, _ in pairs]
    images, generation_records = generate_and_judge(um, specs, seed, batch_size, cfg_scale, temperature, progress)
    judge = judge or get_judge("verifier")
    judged = None if judge.name == "verifier" else judged_generation(judge, um, specs, images, generation_records)
    if on_images is not None:
        on_images(images)
    config = {
        "n": n,
        "seed": seed,
        "data_seed": data_seed,
        "batch_size": batch_size,
        "cfg_scale": cfg_scale,
        "temperature": temperature,
        "edit_cfg_scale": edit_cfg_scale,
        "edit_image_cfg_scale": edit_image_cfg_scale,
        "max_new_tokens": max_new_tokens,
        "split": split,
        "prompts": "held-out" if prompts is None else f"{len(prompts)} given",
        "questions": "held-out" if questions is None else f"{len(questions)} given",
        "judge": judge.describe(),
    }
    report = {
        "config": config,
        "understanding": understanding_metrics(understanding_records, kinds),
        **generation_metrics(generation_records),
        "self_judge": self_judge_metrics(generation_records),
        **({} if judged is None else {"judged_generation": judged}),
        "records": {"understanding": understanding_records, "generation": generation_records},
    }
    if critique:
        reflections = reflect_on(um, images, generation_records, batch_size, progress)
        report["reflect"] = reflection_metrics(reflections)
        report["records"]["reflection"] = reflections
        if getattr(um, "supports_editing", False):
            edits = edit_accuracy(um, n, seed, data_seed, batch_size, edit_cfg_scale, temperature, progress, split,
                                  edit_image_cfg_scale)
            report["records"]["edit"] = edits.pop("records")
            report["edit"] = edits
        else:
            report["edit"] = None
            report["edit_skipped"] = "the checkpoint cannot edit images (supports_editing is false)"
    return with_intervals(report)


def with_intervals(report: dict[str, Any]) -> dict[str, Any]:
    """Every metric of an eval report given its 95% interval, in place: what `evaluate` returns, and what a caller
    that replaces some of its metrics (the study's inference-time arms) applies again before saving it."""
    for key, value in report.items():
        if key not in ("config", "records"):
            with_cis(value)
    return report
