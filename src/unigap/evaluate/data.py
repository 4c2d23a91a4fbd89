"""Held-out evaluation data: test-split prompts and scenes of a fixed partition, drawn with any seed.

Why not `sample_records(n, seed, "test")` directly: there the seed is both the partition seed and the
sampling seed, so evaluating with seeds 1 and 2 would move the test split and put prompts the model was
trained on (under the training data's seed) into it. Here the partition is fixed by `data_seed` (the seed
the training data was sampled with) and `seed` only draws from it; with seed == data_seed the pairs are
exactly `sample_records(n, data_seed, "test")`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unigap.data.tables import text_lines
from unigap.errors import UserError
from unigap.world import (
    CATEGORIES,
    DEFAULT_CANVAS,
    SPLITS,
    PromptSpec,
    Scene,
    parse_prompt,
    sample_records,
    split_prompts,
)

HELD_OUT = "test"
FREE_CATEGORY = "free"  # the category of free-text prompts in generation records
FREE_TEXT_HINT = " (free text needs --judge clip:DIR or vlm:DIR)"  # where a judge that reads text would grade it
HELD_OUT_SPLITS = ("test", "val")


def held_out_pairs(
    n: int, seed: int, data_seed: int = 0, canvas: int = DEFAULT_CANVAS, split: str = HELD_OUT
) -> list[tuple[PromptSpec, Scene]]:
    """n (held-out prompt, held-out scene satisfying it) pairs of `split` (test by default; val for choosing
    settings): category uniform, then prompt uniform in it."""
    if split not in HELD_OUT_SPLITS:
        raise UserError(f"evaluation split must be one of {', '.join(HELD_OUT_SPLITS)}, got {split!r}")
    return sample_records(n, data_seed, split, canvas=canvas, draw_seed=seed)


def distinct_prompts(n: int, seed: int, data_seed: int = 0, split: str = "train") -> list[PromptSpec]:
    """n distinct prompts of a split (all of them when it has fewer), categories taking turns so every category
    is represented: what a training method samples many images of, where a repeated prompt would be waste."""
    rng = np.random.default_rng([seed, data_seed, SPLITS.index(split)])
    pools = [list(split_prompts(split, data_seed, category)) for category in CATEGORIES]
    for pool in pools:
        rng.shuffle(pool)
    out: list[PromptSpec] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


@dataclass(frozen=True)
class FreePrompt:
    """A prompt outside ShapeWorld's grammar (a real benchmark's): only a judge that reads text can grade its image."""

    text: str
    category: str = FREE_CATEGORY


def prompt_specs(source: str, n: int, seed: int, data_seed: int = 0, free_text: bool = False,
                 free_text_hint: str = "", splits: Sequence[str] = SPLITS) -> list[PromptSpec | FreePrompt]:
    """At most n ShapeWorld prompts from a split (train: distinct prompts; test/val: `held_out_pairs`'s draw) or
    from a file: plain text (one prompt per line) or JSONL with a `prompt` field (GenEval's metadata shape).
    With `free_text`, a line outside ShapeWorld's grammar becomes a `FreePrompt` (for a judge that reads text);
    otherwise it is, like any bad line, a `UserError` naming `FILE:LINE` (and ending with `free_text_hint`, where
    the command could read free text with other options). `splits`: those the command takes, for the message
    naming neither a split nor a file."""
    if n < 1:
        raise UserError(f"--n must be positive, got {n}")
    if source in HELD_OUT_SPLITS:
        return [spec for spec, _ in held_out_pairs(n, seed, data_seed, split=source)]
    if source == "train":
        return distinct_prompts(n, seed, data_seed)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"--prompts must be a split ({', '.join(splits)}) or a prompt file; {path} is neither")
    specs: list[PromptSpec | FreePrompt] = []
    for line_no, text in read_prompt_file(path):
        try:
            specs.append(parse_prompt(text))
        except UserError as exc:
            if not free_text:
                raise UserError(f"{path}:{line_no}: {exc}{free_text_hint}") from None
            specs.append(FreePrompt(text))
    return specs[:n]


def training_prompt_specs(source: str, n: int, seed: int, data_seed: int, free_text: bool, free_text_hint: str,
                          trains: str) -> list[PromptSpec | FreePrompt]:
    """`prompt_specs` for a method that trains on them (`trains` names it): a prompt file holding a held-out
    ShapeWorld prompt of partition `data_seed` is refused, since training on it would leak into the evaluation."""
    specs = prompt_specs(source, n, seed, data_seed, free_text=free_text, free_text_hint=free_text_hint,
                         splits=("train",))
    if source != "train":
        held_out = {s.text: split for split in HELD_OUT_SPLITS for s in split_prompts(split, data_seed)}
        leaked = next((spec.text for spec in specs if spec.text in held_out), None)
        if leaked is not None:
            raise UserError(f"{source}: {leaked!r} is a {held_out[leaked]}-split prompt; {trains} train-split "
                            "prompts only (the evaluation is held out)")
    return specs


def read_prompt_file(path: str | Path) -> list[tuple[int, str]]:
    """(line number, prompt text) of every line of a prompt file: plain text, or JSONL with a `prompt` field
    (GenEval's metadata shape). Free text: what a real checkpoint generates from. A bad line is a `UserError`
    naming `FILE:LINE`; an empty file is one too."""
    return [(line_no, row["prompt"]) for line_no, row in read_prompt_rows(path)]


def prompt_lines(source: str | Path | None) -> list[tuple[str, str]]:
    """("FILE:LINE", text) of every line of a prompt file (none for a split, whose ShapeWorld prompts every model
    takes, or for no source): what `PromptFormat.check_texts` names a line it cannot take by."""
    if source is None or str(source) in SPLITS:
        return []
    return [(f"{source}:{line_no}", text) for line_no, text in read_prompt_file(source)]


def read_prompt_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, metadata object) of every line of a prompt file, checked as `read_prompt_file` does: a JSON
    line's object as written (GenEval's scorer reads its other fields), `{"prompt": text}` for a plain line. A table
    format is refused: read as text, a CSV's header would be the first prompt and its quotes part of each."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
        raise UserError(f"{path}: a prompt file is plain text (one prompt per line) or JSONL with a 'prompt' field, "
                        f"not {path.suffix}")
    lines = text_lines(path, "prompt file")
    while lines and not lines[-1].strip():  # (blank lines an editor leaves at the end: no line moves)
        lines.pop()
    out = []
    for line_no, line in enumerate(lines, start=1):
        try:
            out.append((line_no, _prompt_row(line, jsonl=path.suffix.lower() in (".jsonl", ".json"))))
        except UserError as exc:
            raise UserError(f"{path}:{line_no}: {exc}") from None
    if not out:
        raise UserError(f"{path} holds no prompts")
    return out


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:  # (a JSONDecodeError, or an integer of more digits than Python converts)
        return False
    return True


def _prompt_row(line: str, jsonl: bool = False) -> dict:
    """A line as a metadata object. Plain lines are prompts; in a .jsonl (or .json) file, a line that is JSON other
    than an object (a quoted string, an array) is refused, not read as a prompt with quotes in it."""
    if not line.strip():
        raise UserError("empty line")
    if not line.lstrip().startswith("{"):
        if jsonl and _is_json(line):
            raise UserError('a JSON line needs a string "prompt" field')
        return {"prompt": line}
    try:
        row = json.loads(line)
    except ValueError as exc:  # (a JSONDecodeError, or an integer of more digits than Python converts)
        raise UserError(f"not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise UserError('a JSON line needs a string "prompt" field')
    if not row["prompt"].strip():
        raise UserError('empty "prompt" field')
    return row
