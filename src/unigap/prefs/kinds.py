"""Preference-data kinds (free of torch, so the command line's help stays fast)."""

from __future__ import annotations

from pathlib import Path

from unigap.errors import UserError

GEN_KINDS: tuple[str, ...] = ("gen-real", "gen-model")  # rendered scene chosen / both sampled
KINDS: tuple[str, ...] = ("und", *GEN_KINDS)
MARGIN = 0.5  # the default least score margin of a kept pair (und; gen-model by the verifier)
SUFFIXES: tuple[str, ...] = (".jsonl", ".parquet")


def task_of(kind: str) -> str:
    """'und' or 'gen': which DPO task a row kind trains."""
    return "und" if kind == "und" else "gen"


def check_suffix(path: Path) -> None:
    """Preference files are JSONL or Parquet, told apart by the suffix."""
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: preference files must end in {' or '.join(SUFFIXES)}")


def images_folder(path: Path) -> Path:
    """Where a JSONL preference file keeps its images: `<stem>_images/` next to it."""
    return path.parent / f"{path.stem}_images"


def check_output(path: Path) -> None:
    """A preference file to write: its suffix, and not a path that cannot be written (a directory, or a JSONL whose
    `<stem>_images` folder is a file), checked before any work."""
    check_suffix(path)
    if path.is_dir():
        raise UserError(f"output path {path} is a directory; give a file name")
    images = images_folder(path)
    if path.suffix == ".jsonl" and images.exists() and not images.is_dir():
        raise UserError(f"cannot write {path}'s images: {images} is a file")
