"""Where `unigap generate` puts its images: a grid sheet per prompt, or GenEval's folder layout.

GenEval's layout lets GenEval's own scorer (`evaluation/evaluate_images.py`) read the samples. It is the layout of
GenEval's `generation/diffusers_generate.py`, one folder per prompt file line:

    OUT/00000/metadata.jsonl        the line's JSON object as `json.dump` writes it ({"prompt": text} for plain text)
    OUT/00000/samples/00000.png     the n samples of that prompt
    OUT/00000/grid.png              the samples tiled (optional for the scorer)

Each prompt folder is written in a temporary directory and renamed, so a folder that exists is complete: an
interrupted run leaves no half-written folder and a resumed one skips the finished ones. Batches of prompts are
sampled with `batch_seed(seed, batch index)` over the whole file, so a resumed run writes the very images an
uninterrupted one would (a batch with an unfinished prompt is sampled again in full).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from unigap.atomic import directory_atomically, remove_stale_temporaries
from unigap.evaluate.generation import batch_seed
from unigap.evaluate.progress import batches

if TYPE_CHECKING:
    from unigap.model import UnifiedModel

METADATA, SAMPLES, GRID = "metadata.jsonl", "samples", "grid.png"


def grid(images: list[Image.Image]) -> Image.Image:
    """Tiles in row-major order, ceil(sqrt(K)) columns, no gaps (tile i at column i % cols, row i // cols)."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    sheet = Image.new("RGB", (cols * width, rows * height), (0, 0, 0))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % cols) * width, (i // cols) * height))
    return sheet


def prompt_folder(out: Path, index: int) -> Path:
    """OUT/00042: GenEval's folder of the prompt on line 43 (zero-based index, five digits)."""
    return out / f"{index:0>5}"


def write_geneval_layout(
    um: UnifiedModel,
    rows: Sequence[dict],
    out: Path,
    *,
    n: int,
    seed: int,
    cfg_scale: float | None,
    temperature: float,
    batch_size: int,
    progress: bool = True,
) -> int:
    """Write OUT/<index>/ for each metadata row (a dict with a "prompt") that has no folder yet, `batch_size` prompts
    per model call. Returns the number of prompt folders written."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    written = 0
    for index, chunk in enumerate(batches(range(len(rows)), batch_size, "generate", progress)):
        if all(prompt_folder(out, i).is_dir() for i in chunk):
            continue
        tokens = um.generate_images([rows[i]["prompt"] for i in chunk], n_per_prompt=n, cfg_scale=cfg_scale,
                                    temperature=temperature, seed=batch_seed(seed, index))
        images = um.decode_tokens(tokens)  # prompt-major: the n samples of chunk[0], then of chunk[1], ...
        for k, i in enumerate(chunk):
            if not prompt_folder(out, i).is_dir():
                _write_prompt(prompt_folder(out, i), rows[i], images[k * n : (k + 1) * n])
                written += 1
    return written


def _write_prompt(folder: Path, row: dict, images: list[Image.Image]) -> None:
    with directory_atomically(folder) as tmp:
        (tmp / METADATA).write_text(json.dumps(row), encoding="utf-8")  # as GenEval's json.dump(metadata, fp)
        (tmp / SAMPLES).mkdir()
        for count, image in enumerate(images):
            image.save(tmp / SAMPLES / f"{count:05}.png", format="PNG")
        grid(images).save(tmp / GRID, format="PNG")
