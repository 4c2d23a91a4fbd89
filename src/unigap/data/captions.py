"""Users' own generation data: images with their captions, from any table `unigap.data.tables` reads.

Columns: `image` (a path relative to the file's folder, bytes, or an image) and `prompt` (or `caption`). The file
`unigap world sample` writes (`samples.jsonl`) is one: rendered ShapeWorld scenes with the prompt they satisfy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unigap.data.tables import StoredImage, base_folder, read_table, stored_image, text_cell
from unigap.errors import UserError

CAPTION_COLUMNS = ("prompt", "caption")


@dataclass(frozen=True)
class CaptionedImage:
    stored: StoredImage  # checked when read, decoded when used
    prompt: str
    where: str

    @property
    def image(self) -> np.ndarray:
        return self.stored.to_pixels()


def read_caption_data(path: str | Path, n: int | None = None) -> list[CaptionedImage]:
    """The first n (image, caption) rows (all when n is None), each image decoded once to check it (kept as stored);
    a bad row is a `UserError` naming `FILE:LINE`, raised before a model is loaded or anything is written."""
    base = base_folder(path)
    out = []
    for where, row in read_table(path)[:n]:
        column = next((name for name in CAPTION_COLUMNS if name in row), None)
        if column is None:
            raise UserError(f"{where}: needs a 'prompt' (or 'caption') column")
        out.append(CaptionedImage(stored_image(row, base, where), text_cell(row, column, where), where))
    return out
