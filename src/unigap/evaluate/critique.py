"""How well the model critiques its own images: its self-judge against the verifier, and its reflections.

Why within categories: easy categories (one object) are generated well and hard ones (two objects in a
relation) badly, so a judge that only tells categories apart reaches a high pooled AUC while ranking the
images *of one prompt kind* no better than chance. `auc_within` averages each category's AUC weighted by its
(correct × wrong) pair count, over the categories that have both: the share of same-category pairs the
judge orders correctly.

Reflection (R3's question, `UnifiedModel.reflect`) is read against the grammar of `unigap.world.edits` and
the verifier's parse of the same image: on images the verifier passes, the right answer is to stop
(`stop_when_correct`), and stopping on an image it fails is the critic's other error (`stop_when_wrong`); there an
instruction is *valid* when it is one of the single edits that remove a difference (`unigap.world.is_valid_fix`).
Failed images whose parse no single edit improves (unnameable clutter: the diff is empty) have no valid
instruction and are counted apart (`unfixable`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image
from scipy.stats import rankdata

from unigap.evaluate.progress import map_items
from unigap.evaluate.generation import ACCEPT_THRESHOLD, self_p_yes
from unigap.evaluate.stats import as_percent, share_interval, summarize, summarize_grouped, with_ci
from unigap.world import CATEGORIES, Geometry, diff, is_valid_fix, parse_prompt, parse_reflection, verify

MIN_PER_CLASS = 10  # a category's AUC counts as meeting a bar only with this many correct and wrong images


class Reflector(Protocol):
    def reflect(self, images: Sequence[Image.Image], prompts: Sequence[str], max_new_tokens: int = 24) -> list[str]: ...


def auc(positives: Sequence[float], negatives: Sequence[float]) -> dict[str, Any]:
    """P(a positive scores above a negative), ties half, with the Hanley-McNeil standard error and its normal 95%
    interval (within [0, 1]). At an AUC of 0 or 1 that error is 0 however few the images, so it is taken there at
    the AUC shrunk half a pair inward, (U + ½) / (pairs + 1): a perfect ranking of 3 images is not certainty."""
    n_pos, n_neg = len(positives), len(negatives)
    out: dict[str, Any] = {"auc": None, "n": n_pos + n_neg, "n_correct": n_pos, "n_wrong": n_neg, "stderr": None,
                           "ci95": None}
    if not n_pos or not n_neg:
        return out
    ranks = rankdata([*positives, *negatives])
    value = (ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    pairs = n_pos * n_neg
    at = value if 0 < value < 1 else (value * pairs + 0.5) / (pairs + 1)
    q1, q2 = at / (2 - at), 2 * at**2 / (1 + at)
    variance = (at * (1 - at) + (n_pos - 1) * (q1 - at**2) + (n_neg - 1) * (q2 - at**2)) / pairs
    stderr = math.sqrt(max(variance, 0.0))
    return {**out, "auc": float(value), "stderr": stderr, "ci95": share_interval(float(value), stderr, math.inf)}


def within_auc(by_category: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The categories' AUCs (`auc`) averaged with weights their correct × wrong pair counts, over the categories that
    have both; its standard error from theirs (independent categories) and normal 95% interval, and n the images of
    those categories."""
    weights = {c: m["n_correct"] * m["n_wrong"] for c, m in by_category.items() if m["auc"] is not None}
    total = sum(weights.values())
    if not total:
        return {"auc": None, "pairs": 0, "categories": [], "n": 0, "stderr": None, "ci95": None}
    value = sum(by_category[c]["auc"] * w for c, w in weights.items()) / total
    stderr = math.sqrt(sum((w * by_category[c]["stderr"]) ** 2 for c, w in weights.items())) / total
    return {"auc": value, "pairs": total, "categories": sorted(weights), "stderr": stderr,
            "n": sum(by_category[c]["n_correct"] + by_category[c]["n_wrong"] for c in weights),
            "ci95": share_interval(value, stderr, math.inf)}


def self_judge_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The self-judge's P(yes) against the verifier on generation records (`generate_and_judge`); free-text prompts,
    which the verifier cannot read, are left out."""
    records = [r for r in records if r["verified"] is not None]
    by_category = {}
    for category in CATEGORIES:
        rows = [r for r in records if r["category"] == category]
        by_category[category] = auc([r["p_yes"] for r in rows if r["verified"]], [r["p_yes"] for r in rows if not r["verified"]])
    pooled = auc([r["p_yes"] for r in records if r["verified"]], [r["p_yes"] for r in records if not r["verified"]])
    accepted = [r for r in records if r["self_accepted"]]
    return {
        "auc_within": within_auc(by_category),
        "auc_pooled": pooled,
        "auc_by_category": by_category,
        "precision": summarize_grouped(accepted, "verified", "precision", "category", CATEGORIES, "by_category"),
        "min_per_class": MIN_PER_CLASS,
    }


def win_rate(um: Any, images: Sequence[Image.Image], records: Sequence[dict[str, Any]],
             batch_size: int = 32) -> dict[str, Any]:
    """SPEC §2's understanding win rate of a trained model on the *base* model's images (`records`: the base's
    generation records of `images`, with its self-judge verdict `self_accepted` and the verifier's `verified`): among
    the images where the trained judge's verdict differs from the base judge's, the share where the trained one agrees
    with the verifier, × 100 (50 = no change; null when no verdict changed). n = the images whose verdict changed
    (among those the verifier could read). Judged in batches of `batch_size`, as the base's verdicts were."""
    post = map_items(list(zip(images, records, strict=True)), batch_size, lambda _, chunk: self_p_yes(
        um, [image for image, _ in chunk], [r["prompt"] for _, r in chunk]), "win rate", show=False)
    wins = [(p >= ACCEPT_THRESHOLD) == r["verified"] for r, p in zip(records, post, strict=True)
            if (p >= ACCEPT_THRESHOLD) != r["self_accepted"] and r["verified"] is not None]
    return as_percent(with_ci(summarize(wins, "value"), "value")) | {"wins": sum(wins)}


def reflect_on(
    um: Reflector, images: Sequence[Image.Image], records: Sequence[dict[str, Any]], batch_size: int, progress: bool
) -> list[dict[str, Any]]:
    """One reflection record per generated image of a ShapeWorld prompt (same order as `records`; the verifier grades
    reflections, so free-text prompts are left out)."""
    items = [(image, record) for image, record in zip(images, records, strict=True) if record["verified"] is not None]
    texts = map_items(items, batch_size, lambda _, chunk: um.reflect([image for image, _ in chunk],
                                                                     [record["prompt"] for _, record in chunk]),
                      "reflection", progress)
    return [_read_reflection(image, record, text) for (image, record), text in zip(items, texts, strict=True)]


def _read_reflection(image: Image.Image, record: dict[str, Any], text: str) -> dict[str, Any]:
    spec = parse_prompt(record["prompt"])
    canvas = image.size[0]
    objects = verify(image, spec, canvas=canvas).objects
    margin = Geometry.for_canvas(canvas).margin
    reading = parse_reflection(text)
    correct = record["verified"]
    fixable = not correct and bool(diff(objects, spec, margin))
    valid = None if correct or not fixable else bool(reading.edit is not None and is_valid_fix(objects, spec, reading.edit, margin))
    return {
        "index": record["index"],
        "category": record["category"],
        "reflection": text,
        "stopped": reading.stop,
        "format_ok": reading.format_ok,
        "format_failure": not reading.format_ok,
        "stop_when_correct": reading.stop if correct else None,
        "stop_when_wrong": None if correct else reading.stop,
        "fixable": None if correct else fixable,
        "valid_edit": valid,
    }


def reflection_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """stop_when_correct (on verified images), stop_when_wrong (on failed ones: the critic's other error, which
    `valid_edit_rate` folds in with wrong instructions), valid_edit_rate (on fixable failed ones), format failures."""

    def metric(outcome: str, key: str) -> dict[str, Any]:
        rows = [r for r in records if r[outcome] is not None]
        return summarize_grouped(rows, outcome, key, "category", CATEGORIES, "by_category")

    failed = [r for r in records if r["fixable"] is not None]
    return {
        "stop_when_correct": metric("stop_when_correct", "rate"),
        "stop_when_wrong": metric("stop_when_wrong", "rate"),
        "valid_edit_rate": metric("valid_edit", "rate"),
        "format_failures": metric("format_failure", "rate"),
        "unfixable": summarize([not r["fixable"] for r in failed], "rate"),
    }
