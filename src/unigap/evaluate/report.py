"""Writing a report safely and showing it: an interrupted run must never leave a half-written file."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from rich.markup import escape
from rich.table import Table

from unigap import atomic
from unigap.errors import STORAGE_REFUSED, UserError

HEADLINES = (
    ("understanding", "accuracy", "by_kind"),
    ("generation", "accuracy", "by_category"),
    ("nonunification", "score", "by_category"),
    ("weak_generation", "rate", "by_category"),
    ("judge", "accuracy", "by_category"),
)


def check_output_file(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """Fail before any work if `path` cannot be a file: it is a directory, `atomic.check_creatable` refuses it, or
    its name ends in another format's suffix than `suffix` (JSON written to `report.png` or `report.html` would
    mislead; `eval`, `eval_lam0.5` or `eval.seed1` are taken as given)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output path {path} is a directory; give a file name")
    if suffix is not None and path.suffix[1:].isalpha() and path.suffix.lower() != suffix:
        raise UserError(f"output path {path}: this writes {suffix[1:].upper()}; give a file name ending in {suffix}")
    return atomic.check_creatable(path)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`unigap.atomic.write_atomically` for a user-named output: checked, parent created, errors as one line."""
    path = check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic.write_atomically(path, write)
    except OSError as exc:
        if exc.errno in STORAGE_REFUSED:  # (mid-run: the CLI says how to continue)
            raise
        raise UserError(f"cannot write {path}: {exc}") from None


def save_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """The report as indented JSON (null for values of empty samples), written atomically."""
    data = (json.dumps(report, indent=2, allow_nan=False) + "\n").encode("utf-8")
    return write_atomically(path, lambda tmp: tmp.write_bytes(data))


def save_images(images: Sequence[Image.Image], folder: str | os.PathLike) -> None:
    """Images as `folder/0000.png`, ... in order, each written atomically (a run's images, kept to be judged again)."""
    for index, image in enumerate(images):
        write_atomically(Path(folder) / f"{index:04d}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))


def load_images(folder: str | os.PathLike, n: int) -> list[Image.Image] | None:
    """The n images `save_images` wrote to `folder`, as RGB; None when any is missing (none were kept)."""
    paths = [Path(folder) / f"{index:04d}.png" for index in range(n)]
    if not all(path.is_file() for path in paths):
        return None
    return [Image.open(path).convert("RGB") for path in paths]


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def summary_table(report: dict[str, Any]) -> Table:
    """Headline metrics with n and stderr, each followed by its per-kind / per-category rows."""
    table = Table(title=f"unigap eval (n={report['config']['n']}, seed={report['config']['seed']})")
    for column in ("metric", "value", "n", "stderr"):
        table.add_column(column, justify="left" if column == "metric" else "right", overflow="fold")

    def row(label: str, metric: dict[str, Any], key: str) -> None:
        table.add_row(label, _fmt(metric[key]), str(metric["n"]), _fmt(metric["stderr"]))

    for name, key, breakdown in HEADLINES:
        row(f"[bold]{name}.{key}[/bold]", report[name], key)
        for group, sub in report[name][breakdown].items():
            row(f"  {escape(group)}", sub, key)
    if "vqa_score" in report["understanding"]:  # users' understanding data
        row("[bold]understanding.vqa_score[/bold]", report["understanding"]["vqa_score"], "vqa_score")
    row("[bold]mean P(yes)[/bold]", report["nonunification"]["mean_p_yes"], "mean")
    judge = report["self_judge"]
    within = judge["auc_within"]
    table.add_row("[bold]self_judge.auc_within[/bold]", _fmt(within["auc"]), f"{within['pairs']} pairs",
                  _fmt(within.get("stderr")))  # (a report from before its interval: none)
    for category, sub in judge["auc_by_category"].items():
        table.add_row(f"  {escape(category)}", _fmt(sub["auc"]), f"{sub['n_correct']}+{sub['n_wrong']}",
                      _fmt(sub["stderr"]))
    row("[bold]self_judge.precision[/bold]", judge["precision"], "precision")
    for name in ("stop_when_correct", "stop_when_wrong", "valid_edit_rate", "format_failures"):
        if "reflect" in report:
            row(f"[bold]reflect.{name}[/bold]", report["reflect"][name], "rate")
    if report.get("edit") is not None:
        row("[bold]edit.accuracy[/bold]", report["edit"], "accuracy")
    elif "edit_skipped" in report:
        table.add_row("[bold]edit.accuracy[/bold]", "—", "0", "—")
    if "vq_reconstruction" in report:  # added by `unigap eval`, which holds a real VQ
        row("[bold]vq_reconstruction.accuracy[/bold]", report["vq_reconstruction"], "accuracy")
    return table
