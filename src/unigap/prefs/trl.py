"""Preference pairs in TRL's column convention, in and out, so pairs move between unigap and TRL's `DPOTrainer`.

TRL's vision preference rows (conversational): `prompt` = [{"role": "user", "content": [{"type": "image"},
{"type": "text", "text": question}]}], `chosen` / `rejected` = [{"role": "assistant", "content": [{"type":
"text", "text": answer}]}], `images` = [image]; plain strings are accepted for all three on reading, and `image`
for `images`. TRL has no image-generation preference trainer; generation rows here are `prompt` (the caption),
`chosen_image` / `rejected_image`, plus unigap's `chosen_ids` / `rejected_ids` (VQ tokens) when known. Reference
log-probs go out under TRL's precomputed names `ref_chosen_logps` / `ref_rejected_logps`; on reading they are
recomputed with the base model being trained, as every unigap pair's are.

Images: in Parquet a `{"bytes": PNG, "path": None}` struct (what `datasets` writes for an Image column); in JSONL
a path relative to the file's folder, the PNGs written to `<file stem>_images/` beside it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from unigap.data.tables import image_cell, stored_image
from unigap.errors import UserError
from unigap.model.images import ImageInput, to_rgb_array
from unigap.train.dpo import GenerationPair, Pair, REFERENCE_BATCH, UnderstandingPair, with_reference


def is_trl_row(row: dict[str, Any]) -> bool:
    """A row in TRL's convention (no unigap `kind`; prompt and chosen, rejected or their images)."""
    return "kind" not in row and "prompt" in row


def trl_task(row: dict[str, Any]) -> str:
    return "gen" if "chosen_image" in row or "chosen_ids" in row else "und"


def _text(value: Any, role: str) -> str:
    """A plain string (as written), or the text parts of a conversational message list's `role` messages (each
    stripped)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [part.get("text", "") for message in value if isinstance(message, dict) and message.get("role") == role
                 for part in (message.get("content") if isinstance(message.get("content"), list)
                              else [{"text": message.get("content")}])
                 if isinstance(part, dict) and isinstance(part.get("text"), str)]
        return " ".join(p.strip() for p in parts if p.strip())
    return ""


def trl_prompt(row: dict[str, Any]) -> str:
    """A TRL row's prompt as the model reads it: its text, or its user messages' text parts."""
    return _text(row["prompt"], "user")


def _und_images(row: dict[str, Any]) -> Any:
    """An understanding row's image list: `images`, or its single `image` as a list (None when it has neither)."""
    return row.get("images", [row["image"]] if row.get("image") is not None else None)


def token_ids(value: Any) -> bool:
    """Whether `value` is a non-empty list of integer token ids (bools are not ids)."""
    return isinstance(value, list) and bool(value) and all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in value)


def stored_cells(row: dict[str, Any]) -> list[Any]:
    """The image cells a TRL row reads from storage: an understanding row's image, a generation row's two images
    unless it gives their token ids."""
    if trl_task(row) == "und":
        return _und_images(row)[:1]
    return [] if has_ids(row) else [row["chosen_image"], row["rejected_image"]]


def has_ids(row: dict[str, Any]) -> bool:
    """Whether a TRL generation row gives its images as token ids (`chosen_ids`, `rejected_ids`: non-empty lists)
    rather than as images: how reading it checks it and how converting it reads it agree."""
    return all(isinstance(row.get(f"{s}_ids"), list) and row[f"{s}_ids"] for s in ("chosen", "rejected"))


# A pair whose sides are the same has a DPO gradient of zero up to rounding: a diagnosis would divide by that
SAME_SIDES = "chosen and rejected are the same (a pair that prefers nothing)"


def trl_problem(row: dict[str, Any]) -> str:
    """Why a TRL-convention row is malformed ('' when it is fine)."""
    if not _text(row["prompt"], "user").strip():  # (compared stripped, as a conversation's parts are)
        return "'prompt' holds no text (a string, or a conversation with a user message)"
    if trl_task(row) == "gen":
        if not has_ids(row):
            if not all(row.get(f"{s}_image") is not None for s in ("chosen", "rejected")):
                return "a generation row needs chosen_image and rejected_image (or chosen_ids and rejected_ids)"
            return SAME_SIDES if row["chosen_image"] == row["rejected_image"] else ""
        bad = next((side for side in ("chosen_ids", "rejected_ids") if not token_ids(row[side])), None)
        if bad is not None:
            return f"{bad!r} must be a non-empty list of integer token ids"
        return SAME_SIDES if row["chosen_ids"] == row["rejected_ids"] else ""
    for side in ("chosen", "rejected"):
        if not _text(row.get(side), "assistant").strip():
            return f"{side!r} holds no text (a string, or a conversation with an assistant message)"
    if _text(row["chosen"], "assistant").strip() == _text(row["rejected"], "assistant").strip():
        return SAME_SIDES
    images = _und_images(row)
    if not isinstance(images, list) or len(images) != 1:
        return "an understanding row needs one image ('images': [image] or 'image')"
    return ""


def check_ids(um: Any, where: str, row: dict[str, Any]) -> None:
    """A generation row's image-token ids (`chosen_ids`, `rejected_ids`; integers, as reading the row checked) fit
    `um`: its image length, ids inside its codebook. `UserError` naming the row: ids of another model's tokenizer
    would fail deep in training."""
    for side in ("chosen_ids", "rejected_ids"):
        ids = row[side]
        if len(ids) != um.num_image_tokens:
            problem = f"{len(ids)} ids, it needs {um.num_image_tokens}"
        elif not all(0 <= t < um.codebook_size for t in ids):
            problem = f"ids from {min(ids)} to {max(ids)}, its codebook holds 0 to {um.codebook_size - 1}"
        else:
            continue
        raise UserError(f"{where}: {side} does not fit this model ({problem}); build the pairs with this model")


def trl_pairs(um: Any, rows: Sequence[tuple[str, dict[str, Any]]], base: Path) -> list[Pair]:
    """Validated TRL rows (with their locations) as DPO pairs: images decoded (generation images VQ-encoded by
    `um`), reference log-probs and token counts computed with `um`'s base model."""
    pairs: list[Pair] = []
    for where, row in rows:
        prompt = trl_prompt(row)
        if trl_task(row) == "und":
            image = stored_image({"image": _und_images(row)[0]}, base, where)  # decoded when scored
            pairs.append(UnderstandingPair(image, prompt, _text(row["chosen"], "assistant"),
                                           _text(row["rejected"], "assistant"), math.nan, math.nan, 0, 0))
            continue
        if has_ids(row):
            check_ids(um, where, row)
            chosen, rejected = tuple(row["chosen_ids"]), tuple(row["rejected_ids"])
        else:
            images = [image_cell(row, base, where, f"{side}_image") for side in ("chosen", "rejected")]
            chosen, rejected = (tuple(ids) for ids in um.encode_images(images).tolist())
            if chosen == rejected:  # (one file under two names, two files of one picture, or two the VQ reads alike)
                raise UserError(f"{where}: {SAME_SIDES}: its two images encode to the same image tokens")
        pairs.append(GenerationPair(prompt, chosen, rejected, math.nan, math.nan))
    return rescored(um, pairs)


def rescored(um: Any, pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs with reference log-probs (and token counts) computed by `um`'s base model, `REFERENCE_BATCH` at a
    time (shared between processes under `accelerate launch`): a file may hold many thousands."""
    return with_reference(um, pairs, batch=REFERENCE_BATCH, shared=True)


def png_bytes(image: ImageInput) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(to_rgb_array(image))).save(buffer, format="PNG")
    return buffer.getvalue()


def to_trl(row: dict[str, Any], image: ImageInput | None, chosen_image: Image.Image | None,
           rejected_image: Image.Image | None) -> dict[str, Any]:
    """A unigap row in TRL's columns (images as PNG bytes; the writer stores them), its provenance and scores kept."""
    keep = {key: row[key] for key in ("model", "model_fingerprint", "model_dtype", "seed", "data_seed", "candidate",
                                      "chosen_score", "rejected_score", "judge")
            if key in row}  # (the scores are the judge's, where a row names one)
    refs = {"ref_chosen_logps": row["chosen_ref_logprob"], "ref_rejected_logps": row["rejected_ref_logprob"]}
    if row["kind"] == "und":
        return {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}],
                **{side: [{"role": "assistant", "content": [{"type": "text", "text": row[side]}]}]
                   for side in ("chosen", "rejected")},
                "images": [png_bytes(image)], **refs, **keep}
    return {"prompt": row["prompt"], "chosen_image": png_bytes(chosen_image), "rejected_image":
            png_bytes(rejected_image), "chosen_ids": row["chosen_ids"], "rejected_ids": row["rejected_ids"],
            **refs, **keep}


def check_trl_export(rows: Sequence[dict[str, Any]], model: str | None) -> None:
    """What an export needs before it loads a model: one task's pairs (TRL trains one task's columns at a time, and a
    Parquet column cannot hold an understanding prompt's messages and a generation prompt's text), and --model
    exactly when there are generation images to decode."""
    generation = any(row["kind"] != "und" for row in rows)
    if generation and any(row["kind"] == "und" for row in rows):
        raise UserError("the file mixes understanding and generation pairs: export each task's pairs to a file of "
                        "its own (`unigap train` and TRL take one task's pairs per file)")
    if generation and model is None:
        raise UserError("exporting generation pairs decodes their images: pass --model (the model that built them)")
    if rows and not generation and model is not None:
        raise UserError("--model decodes generation pairs' images; these are understanding pairs, which need none")
