"""Preference-data kinds (free of torch, so the command line's help stays fast)."""

from __future__ import annotations

from pathlib import Path

from unigap.errors import UserError

KINDS: tuple[str, ...] = ("und", "gen-real", "gen-model")
SUFFIXES: tuple[str, ...] = (".jsonl", ".parquet")


def task_of(kind: str) -> str:
    """'und' or 'gen': which DPO task a row kind trains."""
    return "und" if kind == "und" else "gen"


def check_suffix(path: Path) -> None:
    """Preference files are JSONL or Parquet, told apart by the suffix."""
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: preference files must end in {' or '.join(SUFFIXES)}")
