"""Edit accuracy: does the model's edit of a picture with the exact instruction satisfy the prompt?

Each item is a held-out prompt and a held-out scene satisfying it, broken by one random edit
(`unigap.world.break_scene`); the instruction is the first edit of the exact diff between the broken scene
and the prompt that can be drawn on the canvas (`unigap.world.drawable_fix`), the source image the broken scene's
render. A break whose every fix would need a position the canvas lacks is drawn again, from the item's own
generator: an exact editor scores every item. The edit is sampled with editing's guidance
(`unigap.model.editing.EditGuidance`), a temperature and a seed per batch, and the verifier judges it against the
prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from unigap.evaluate.data import held_out_pairs
from unigap.evaluate.generation import batch_seed
from unigap.evaluate.progress import map_items
from unigap.evaluate.stats import summarize_grouped
from unigap.model.editing import EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE
from unigap.world import CATEGORIES, EDIT_KINDS, break_scene, drawable_fix, parse_instruction, render, verify

EDIT_STREAM = 5  # rng stream that breaks the scenes, apart from the scene and question streams


class Editor(Protocol):
    supports_editing: bool

    def edit(self, images: Sequence[np.ndarray], instructions: Sequence[str], cfg_scale: float | None,
             temperature: float, seed: int | None, image_cfg_scale: float | None) -> torch.Tensor: ...

    def decode_tokens(self, ids: torch.Tensor) -> list[Image.Image]: ...


def edit_items(n: int, seed: int, data_seed: int = 0, split: str = "test") -> list[dict[str, Any]]:
    """n (prompt, broken scene render, exact instruction) items on held-out prompts and scenes, seeded."""
    rng = np.random.default_rng([seed, EDIT_STREAM])
    items = []
    for index, (spec, scene) in enumerate(held_out_pairs(n, seed, data_seed, split=split)):
        broken, _ = break_scene(scene, spec, rng)
        fix = drawable_fix(broken, spec)
        if fix is None:  # (its own generator: the items after it are drawn as before)
            broken, _ = break_scene(scene, spec, np.random.default_rng([seed, EDIT_STREAM, index]),
                                    accept=lambda b: drawable_fix(b, spec) is not None)
            fix = drawable_fix(broken, spec)
        items.append({"spec": spec, "image": render(broken), "instruction": fix.text})
    return items


def edit_accuracy(
    um: Editor,
    n: int,
    seed: int,
    data_seed: int = 0,
    batch_size: int = 32,
    cfg_scale: float | None = EDIT_CFG_SCALE,
    temperature: float = 1.0,
    progress: bool = True,
    split: str = "test",
    image_cfg_scale: float | None = EDIT_IMAGE_CFG_SCALE,
) -> dict[str, Any]:
    """`{"accuracy", "n", "stderr", "by_category", "by_kind", "records"}` of edits the verifier accepts."""
    items = edit_items(n, seed, data_seed, split)

    def batch(index: int, chunk: list[dict[str, Any]]) -> list[Image.Image]:
        return um.decode_tokens(um.edit([it["image"] for it in chunk], [it["instruction"] for it in chunk],
                                        cfg_scale=cfg_scale, temperature=temperature, seed=batch_seed(seed, index),
                                        image_cfg_scale=image_cfg_scale))

    edited = map_items(items, batch_size, batch, "editing", progress)
    records = []
    for item, image in zip(items, edited, strict=True):
        verdict = verify(image, item["spec"], canvas=image.size[0])
        records.append({
            "index": len(records),
            "prompt": item["spec"].text,
            "category": item["spec"].category,
            "instruction": item["instruction"],
            "kind": parse_instruction(item["instruction"]).kind,
            "verified": verdict.satisfied,
            "reason": verdict.reason,
        })
    metric = summarize_grouped(records, "verified", "accuracy", "category", CATEGORIES, "by_category")
    metric["by_kind"] = summarize_grouped(records, "verified", "accuracy", "kind", EDIT_KINDS, "by_kind")["by_kind"]
    return {**metric, "records": records}
