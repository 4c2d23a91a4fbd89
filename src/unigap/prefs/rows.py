"""The preference-row format: one row per pair, in JSONL or Parquet, and its conversion to DPO pairs.

Why this shape: a row is self-contained and loadable with HF `datasets`
(`load_dataset("json" | "parquet", data_files=FILE)`), so pairs can be inspected, filtered or shared
without unigap. Every row carries the reference log-probs computed once at build time, so training never
runs the reference model.

Columns (every kind):
  kind                      "und" | "gen-real" | "gen-model"
  model, seed, candidate    provenance: the model path, the build seed, the candidate's index in the
                            seed's deterministic candidate stream
  fallback                  und: the chosen answer is the ground truth, not a sample (`--fallback-gt`)
  chosen_ids, rejected_ids  token ids: answer tokens (EOS included) for und, VQ image tokens for gen
  chosen_score, rejected_score      exact scores (`unigap.prefs.scoring`)
  chosen_ref_logprob, rejected_ref_logprob, chosen_tokens, rejected_tokens
                            summed log-prob and token count under the base model (conditional-only
                            scoring for images)
und only: question, question_kind, answer (ground truth), chosen, rejected (answer texts), and
  scene — the ShapeWorld scene as canonical JSON. The image is *not* stored: the renderer is
  deterministic, so `render(Scene.from_dict(json.loads(scene)))` gives it back exactly, and a file stays a
  single self-contained file.
gen only: prompt, category.

A malformed row raises `UserError` naming the file and line (JSONL) or row (Parquet, 1-based).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unigap.errors import UserError
from unigap.prefs.kinds import KINDS, check_suffix, task_of
from unigap.train.checkpoint import atomic_write_bytes
from unigap.train.dpo import GenerationPair, Pair, UnderstandingPair
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
_BY_KIND: dict[str, dict[str, type | tuple[type, ...]]] = {
    "und": {"question": str, "question_kind": str, "answer": str, "chosen": str, "rejected": str, "scene": str},
    "gen": {"prompt": str, "category": str},
}


def _problem(row: Any) -> str:
    """Why a row is malformed ('' when it is fine)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if row.get("kind") not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {row.get('kind')!r}"
    for name, kind in (_COMMON | _BY_KIND[task_of(row["kind"])]).items():
        if name not in row or row[name] is None:
            return f"missing {name!r}"
        value = row[name]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return f"{name!r} has the wrong type ({type(value).__name__})"
    for name in ("chosen_ref_logprob", "rejected_ref_logprob"):
        if not math.isfinite(row[name]):
            return f"{name!r} is not finite"
    for name in ("chosen_ids", "rejected_ids"):
        if not row[name] or not all(isinstance(i, int) and not isinstance(i, bool) for i in row[name]):
            return f"{name!r} must be a non-empty list of integer token ids"
    return ""


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSONL (sorted keys) or Parquet, chosen by the suffix; atomically."""
    path = Path(path)
    check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        atomic_write_bytes(path, lambda handle: handle.write(text.encode()))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        atomic_write_bytes(path, lambda handle: pq.write_table(pa.Table.from_pylist(list(rows)), handle))
    return path


def _raw_rows(path: Path) -> list[tuple[str, Any]]:
    """(location, row) for every row: location is 'FILE:LINE' (JSONL) or 'FILE:row N' (Parquet)."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{path}: cannot read Parquet: {exc}") from None
        return [(f"{path}:row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]
    out = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                out.append((f"{path}:{line_no}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_no}: malformed preference row: invalid JSON ({exc.msg})") from None
    return out


def _validated(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) for every row, each checked; `UserError` naming file:line on the first bad one."""
    check_suffix(path)
    if not path.is_file():
        raise UserError(f"preference file not found: {path}")
    rows = _raw_rows(path)
    for where, row in rows:
        problem = _problem(row)
        if problem:
            raise UserError(f"{where}: malformed preference row: {problem}")
    if not rows:
        raise UserError(f"{path}: no preference rows")
    return rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The validated rows of a preference file."""
    return [row for _, row in _validated(Path(path))]


def row_to_pair(row: dict[str, Any]) -> Pair:
    """The DPO pair of a validated row (und rows re-render their scene)."""
    refs = {"ref_chosen": float(row["chosen_ref_logprob"]), "ref_rejected": float(row["rejected_ref_logprob"])}
    if row["kind"] == "und":
        image = render(Scene.from_dict(json.loads(row["scene"])))
        counts = {"chosen_tokens": row["chosen_tokens"], "rejected_tokens": row["rejected_tokens"]}
        return UnderstandingPair(image, row["question"], row["chosen"], row["rejected"], **refs, **counts)
    return GenerationPair(row["prompt"], tuple(row["chosen_ids"]), tuple(row["rejected_ids"]), **refs)


def load_pairs(path: str | Path, task: str) -> list[Pair]:
    """All pairs of a preference file for one task ('und' or 'gen'); a row of the other task is an error."""
    pairs = []
    for where, row in _validated(Path(path)):
        if task_of(row["kind"]) != task:
            raise UserError(f"{where}: a {row['kind']!r} pair, but this file was given as {task} data")
        try:
            pairs.append(row_to_pair(row))
        except (json.JSONDecodeError, UserError) as exc:
            raise UserError(f"{where}: malformed preference row: {exc}") from None
    return pairs
