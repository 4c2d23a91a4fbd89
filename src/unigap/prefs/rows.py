"""The preference-row format: one row per pair, in JSONL or Parquet, and its conversion to DPO pairs.

Why this shape: a row is self-contained and loadable with HF `datasets`
(`load_dataset("json" | "parquet", data_files=FILE)`), so pairs can be inspected, filtered or shared
without unigap. Every row carries the reference log-probs computed once at build time, so training runs the
reference model only to check a few rows (`fit_references`: pairs another model built get this model's).

Columns (every kind):
  kind                      "und" | "gen-real" | "gen-model"
  model, seed, candidate    provenance: the model path, the build seed, the candidate's index in the
                            seed's deterministic candidate stream
  model_fingerprint, model_dtype    the builder's `model_identity` (absent in files written before it)
  fallback                  und: the chosen answer is the ground truth, not a sample (`--fallback-gt`)
  chosen_ids, rejected_ids  token ids: answer tokens (EOS included) for und, VQ image tokens for gen
  chosen_score, rejected_score      exact scores (`unigap.world.scoring`)
  chosen_ref_logprob, rejected_ref_logprob, chosen_tokens, rejected_tokens
                            summed log-prob and token count under the base model (conditional-only
                            scoring for images)
und only: question, question_kind, answer (ground truth), chosen, rejected (answer texts), and
  scene — the ShapeWorld scene as canonical JSON. The image is *not* stored: the renderer is
  deterministic, so `render(Scene.from_dict(json.loads(scene)))` gives it back exactly, and a file stays a
  single self-contained file. Pairs built from your own questions (`prefs build --questions FILE`) have no scene
  and store the image instead, in `images` (TRL's name; how images are stored: `write_rows`).
gen only: prompt, category.

Rows in TRL's column convention (prompt / chosen / rejected + images: `unigap.prefs.trl`) are read too, and
`unigap prefs export` writes them.

A malformed row raises `UserError` naming the file and line (JSONL) or row (Parquet, 1-based).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unigap.errors import UnigapWarning, UserError
from unigap.evaluate.stats import finite
from unigap.model.checkpoint import model_identity
from unigap.prefs.kinds import KINDS, check_output, check_suffix, images_folder, task_of
from unigap.prefs.trl import (SAME_SIDES, check_ids, is_trl_row, rescored, stored_cells, token_ids, trl_pairs,
                              trl_problem, trl_prompt, trl_task)
from unigap.data.tables import StoredImage, read_table, stored_image
from unigap.atomic import atomic_write_bytes, atomic_write_lines, indexed_files_atomically
from unigap.train.dpo import GenerationPair, Pair, UnderstandingPair, with_reference
from unigap.world.render import render
from unigap.world.scene import Scene

_COMMON: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "model": str,
    "seed": int,
    "candidate": int,
    "fallback": bool,
    "chosen_ids": list,
    "rejected_ids": list,
    "chosen_score": (int, float),
    "rejected_score": (int, float),
    "chosen_ref_logprob": (int, float),
    "rejected_ref_logprob": (int, float),
    "chosen_tokens": int,
    "rejected_tokens": int,
}
IMAGE_COLUMNS = ("images", "chosen_image", "rejected_image")  # cells holding PNG bytes when written
_BY_KIND: dict[str, dict[str, type | tuple[type, ...]]] = {
    "und": {"question": str, "question_kind": str, "answer": str, "chosen": str, "rejected": str},
    "gen": {"prompt": str, "category": str},
}


def _problem(row: Any) -> str:
    """Why a row is malformed ('' when it is fine)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if is_trl_row(row):
        return trl_problem(row)
    if "kind" not in row and any(key in row for key in ("chosen", "rejected", "chosen_image", "rejected_image")):
        return ("a row in TRL's convention needs its 'prompt' column (TRL's implicit-prompt rows, whose chosen and "
                "rejected conversations carry the prompt, are not read: give the prompt its own column)")
    if row.get("kind") not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {row.get('kind')!r}"
    for name, kind in (_COMMON | _BY_KIND[task_of(row["kind"])]).items():
        if name not in row or row[name] is None:
            return f"missing {name!r}"
        value = row[name]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return f"{name!r} has the wrong type ({type(value).__name__})"
    if row["kind"] == "und" and isinstance(row.get("scene"), str):
        try:
            Scene.from_dict(json.loads(row["scene"]))
        except UserError as exc:  # ("malformed scene …"; first: a UserError is a ValueError)
            return str(exc)
        except ValueError as exc:  # (a JSONDecodeError, or an integer of more digits than Python converts)
            return f"malformed scene: invalid JSON ({exc})"
    elif row["kind"] == "und" and not (isinstance(row.get("images"), list) and len(row["images"]) == 1):
        return "an und row needs its 'scene' (ShapeWorld) or its 'images' (a list of one image)"
    for name in ("chosen_ref_logprob", "rejected_ref_logprob"):
        if finite(row[name]) is None:  # (also an integer beyond a float)
            return f"{name!r} is not finite"
    for name in ("chosen_ids", "rejected_ids"):
        if not token_ids(row[name]):
            return f"{name!r} must be a non-empty list of integer token ids"
    for name in ("chosen_tokens", "rejected_tokens"):  # (length-norm divides by them: a negative one flips w_und)
        if row[name] < 1:
            return f"{name!r} must be a positive count of tokens, got {row[name]}"
    return SAME_SIDES if row["chosen_ids"] == row["rejected_ids"] else ""


def _store_images(path: Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their PNG-bytes image cells (`IMAGE_COLUMNS`) made storable: Parquet `{"bytes", "path"}` structs,
    or, for JSONL, PNG files in `<stem>_images/` named by row and column, referenced by relative path. (Rows
    whose cells already name files there cannot be rewritten in place: the rewrite removes what it does not list.)"""
    folder = images_folder(path)

    def stored(value: bytes, name: str) -> Any:
        if path.suffix == ".parquet":
            return {"bytes": value, "path": None}
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(value)
        return f"{folder.name}/{name}"

    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        for column in IMAGE_COLUMNS:
            value = row.get(column)
            if isinstance(value, list):
                row[column] = [stored(v, f"{i:06d}_{column}_{k}.png") for k, v in enumerate(value)]
            elif isinstance(value, bytes):
                row[column] = stored(value, f"{i:06d}_{column}.png")
        out.append(row)
    return out


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSONL (sorted keys) or Parquet, chosen by the suffix, atomically: a JSONL file and its images
    (`_store_images`) are staged and swapped in together, so an interrupted rewrite leaves the earlier file with its
    own images and a complete file never points at a missing or another run's image."""
    path = Path(path)
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with indexed_files_atomically(path.parent, {path.name: IMAGE_COLUMNS}, inside=images_folder(path)) as staging:
            stored = _store_images(staging / path.name, rows)
            atomic_write_lines(staging / path.name, [json.dumps(row, sort_keys=True) for row in stored])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = _image_features(pa.Table.from_pylist(_store_images(path, rows)))
        atomic_write_bytes(path, lambda handle: pq.write_table(table, handle))
    return path


def _image_features(table: Any) -> Any:
    """The table with its image columns typed and declared as `datasets` does (`{bytes, path}` structs, the
    `Image` feature in the schema's metadata), so `load_dataset("parquet", ...)` gives PIL images, as TRL's trainers
    expect, not dicts."""
    import pyarrow as pa

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    listed = {}
    for column in IMAGE_COLUMNS:
        if column in table.column_names:
            listed[column] = pa.types.is_list(table.schema.field(column).type)
            table = table.set_column(table.column_names.index(column), column,
                                     table[column].cast(pa.list_(struct) if listed[column] else struct))
    try:
        import datasets  # (a dev dependency: without it the file is the same, only undeclared)
    except ImportError:
        return table
    if not listed:
        return table
    features = datasets.Features.from_arrow_schema(table.schema)
    features.update({column: [datasets.Image()] if many else datasets.Image() for column, many in listed.items()})
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features.to_dict()}})})


def read_located_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) for every row, each checked; `UserError` naming file:line on the first bad one."""
    path = Path(path)
    check_suffix(path)
    if not path.is_file():
        raise UserError(f"{path} is a directory, not a preference file" if path.is_dir()
                        else f"preference file not found: {path}")
    rows = read_table(path, "preference row")
    for where, row in rows:
        problem = _problem(row)
        if problem:
            raise UserError(f"{where}: malformed preference row: {problem}")
    return rows


def check_replaceable(out: Path, *inputs: str | Path | None) -> None:
    """`UserError` unless writing pairs to `out` loses nothing but earlier pairs: not a file the command reads, and
    an existing file only where it holds preference rows (a rerun rebuilds its own file, not a user's data)."""
    if not out.is_file():
        return
    if any(source is not None and Path(source).resolve() == out.resolve() for source in inputs):
        raise UserError(f"--out {out} is a file this command reads; choose another --out")
    try:
        read_located_rows(out)
    except UserError:
        raise UserError(f"--out {out} exists and holds no preference pairs; choose another --out") from None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The validated rows of a preference file."""
    return [row for _, row in read_located_rows(path)]


def row_image(row: dict[str, Any], base: Path, where: str = "row") -> np.ndarray | StoredImage:
    """An und row's image: its ShapeWorld scene rendered, or its stored image (paths relative to `base`; checked,
    decoded when used)."""
    if isinstance(row.get("scene"), str):
        return render(Scene.from_dict(json.loads(row["scene"])))
    return stored_image({"image": row["images"][0]}, base, where)


def row_to_pair(row: dict[str, Any], base: Path = Path(".")) -> Pair:
    """The DPO pair of a validated row (und rows re-render their scene, or read their image from `base`)."""
    refs = {"ref_chosen": float(row["chosen_ref_logprob"]), "ref_rejected": float(row["rejected_ref_logprob"])}
    if row["kind"] == "und":
        image = row_image(row, base)
        counts = {"chosen_tokens": row["chosen_tokens"], "rejected_tokens": row["rejected_tokens"]}
        return UnderstandingPair(image, row["question"], row["chosen"], row["rejected"], **refs, **counts)
    return GenerationPair(row["prompt"], tuple(row["chosen_ids"]), tuple(row["rejected_ids"]), **refs)


def check_pair_file(path: str | Path, task: str) -> list[tuple[str, dict[str, Any]]]:
    """The validated rows of a preference file given as `task` data ('und' or 'gen'): a row of the other task, or
    a file mixing unigap and TRL rows, is a `UserError`. Cheap: what a command checks before loading a model."""
    rows = read_located_rows(path)
    for where, row in rows:
        row_task = trl_task(row) if is_trl_row(row) else task_of(row["kind"])
        if row_task != task:
            raise UserError(f"{where}: a {row.get('kind', row_task)!r} pair, but this file was given as {task} data")
    check_one_convention(path, rows)
    return rows


def stored_images(rows: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> list[StoredImage]:
    """Every image validated rows of a preference file read from storage (not a scene they re-render, not token ids):
    what a resumed run claims with the file, whose own hash misses an image edited in place beside it."""
    images = []
    for where, row in rows:
        if is_trl_row(row):
            cells = stored_cells(row)
        else:
            stored = task_of(row["kind"]) == "und" and not isinstance(row.get("scene"), str)  # (gen rows: ids)
            cells = [row["images"][0]] if stored else []
        images += [StoredImage(cell, Path(path).parent, where) for cell in cells]
    return images


def check_one_convention(path: str | Path, rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """A file holds unigap rows or TRL rows, never both."""
    if len({is_trl_row(row) for _, row in rows}) > 1:
        raise UserError(f"{path} mixes unigap and TRL rows")


class PairsOnUse(Sequence[Pair]):
    """TRL rows as pairs, each converted when first indexed (integer indices only): converting runs the model, and a
    diagnosis draws a few hundred pairs from a file that may hold many thousands. Each pair's reference log-probs
    are computed alone, not in `trl_pairs`' batches: equal up to float rounding."""

    def __init__(self, um: Any, rows: Sequence[tuple[str, dict[str, Any]]], base: Path) -> None:
        self.um, self.rows, self.base = um, rows, base
        self.converted: dict[int, Pair] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Pair:  # type: ignore[override]
        if index not in self.converted:
            self.converted[index] = trl_pairs(self.um, [self.rows[index]], self.base)[0]
        return self.converted[index]


def load_pairs(path: str | Path, task: str, um: Any = None, on_use: bool = False) -> Sequence[Pair]:
    """All pairs of a preference file for one task (see `check_pair_file`). A file in TRL's convention needs `um`,
    the base model: its images are encoded and its reference log-probs computed, for every row (a list), or with
    `on_use` for each row when first indexed (`PairsOnUse`). Given `um`, image-token ids must fit it (`check_ids`)."""
    return pairs_of(check_pair_file(path, task), path, task, um, on_use)


def pairs_of(rows: Sequence[tuple[str, dict[str, Any]]], path: str | Path, task: str, um: Any = None,
             on_use: bool = False) -> Sequence[Pair]:
    """`load_pairs` of rows `check_pair_file(path, task)` already read (a command checks them before the model
    loads, then converts them). With the model, every row's text is tokenised first: one it cannot take fails here,
    naming its row, not at the training step that draws it."""
    if um is not None:
        texts = [(where, trl_prompt(row) if is_trl_row(row) else row["question" if task == "und" else "prompt"])
                 for where, row in rows]
        um.prompts.check_texts(**{"questions" if task == "und" else "prompts": texts})
    if is_trl_row(rows[0][1]):
        if um is None:
            raise ValueError("pairs in TRL's convention need the base model to be read")
        if on_use:
            return PairsOnUse(um, rows, Path(path).parent)
        return trl_pairs(um, rows, Path(path).parent)
    pairs = []
    for where, row in rows:
        if um is not None and task == "gen":
            check_ids(um, where, row)
        try:
            pairs.append(row_to_pair(row, Path(path).parent))
        except UserError as exc:  # (an unreadable image: the scenes were checked with the rows)
            raise UserError(f"{where}: malformed preference row: {exc}") from None
    return pairs if um is None else fit_references(um, pairs, rows)


REFERENCE_CHECKS = 4  # rows, evenly spread from the first to the last, whose stored references are recomputed
REFERENCE_TOLERANCE = (0.5, 0.02)  # nats, plus nats per token: float and bf16 rounding, not another model


def fit_references(um: Any, pairs: Sequence[Pair], rows: Sequence[tuple[str, dict[str, Any]]]) -> list[Pair]:
    """The pairs, with every reference log-prob recomputed by `um` (a one-line warning) where a row's builder
    (`model_fingerprint`) is not `um`, or a few spread-out rows show that `um` is not the model whose references the
    file stores (a file from before rows named their builder, or an edited one): a row keeps its builder's
    reference, and DPO of another model against it would train against the wrong reference without a word. (The
    numbers alone let a fine-tuned model's 2-token answers pass: 0.54 nats of drift per side.)"""
    mine = model_identity(um)  # (in another dtype the same weights hash otherwise: the numbers below tell)
    other = next(((where, row) for where, row in rows if mine["model"] is not None
                  and row.get("model_fingerprint") not in (None, mine["model"])
                  and row.get("model_dtype") == mine["model_dtype"]), None)
    if other is not None:
        where, row = other
        warnings.warn(f"{where}: built by another model ({row['model']}, fingerprint {row['model_fingerprint']}) than "
                      f"this one ({mine['model']}): every pair's reference is recomputed with this model",
                      UnigapWarning, stacklevel=2)
        return rescored(um, pairs)
    spots = sorted({round(i * (len(pairs) - 1) / (REFERENCE_CHECKS - 1)) for i in range(REFERENCE_CHECKS)})
    absolute, per_token = REFERENCE_TOLERANCE
    fresh = with_reference(um, [pairs[i] for i in spots])
    for i, new in zip(spots, fresh, strict=True):
        stored, (where, row) = pairs[i], rows[i]
        for side in ("chosen", "rejected"):
            old_value, new_value = getattr(stored, f"ref_{side}"), getattr(new, f"ref_{side}")
            tokens, counted = getattr(new, f"{side}_tokens"), getattr(stored, f"{side}_tokens")
            if tokens == counted and abs(old_value - new_value) <= absolute + per_token * tokens:
                continue
            counts = "" if tokens == counted else f", over {tokens} tokens, not {counted}"
            warnings.warn(f"{where}: {side}_ref_logprob {old_value:.2f} is not this model's ({new_value:.2f}{counts}; "
                          f"the pairs' builder: {row['model']}): every pair's reference is recomputed with this model",
                          UnigapWarning, stacklevel=2)
            return rescored(um, pairs)
    return list(pairs)
