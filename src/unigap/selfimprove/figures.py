"""The self-improvement figure: validation accuracy and non-unification per epoch, and the discard pool."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from unigap.plotting import save_figure


def epochs_plot(epochs: Sequence[dict[str, Any]], path: Path) -> Path:
    """Two panels over epochs (0 = the base model): the validation probe, and the discard pool size."""
    figure = Figure(figsize=(8, 3.2))
    left, right = figure.subplots(1, 2)
    x = [row["epoch"] for row in epochs]
    for key, label in (("val_generation_accuracy", "generation accuracy"), ("val_nonunification", "non-unification")):
        points = [(e, row[key]) for e, row in zip(x, epochs, strict=True) if row.get(key) is not None]
        if points:
            left.plot(*zip(*points, strict=True), marker="o", label=label)
    left.set(xlabel="epoch", ylabel="share (validation prompts)", ylim=(0, 1), title="probe")
    if left.lines:
        left.legend(fontsize=8)
    right.plot(x, [row["discard_pool"] for row in epochs], marker="o", color="grey")
    right.set(xlabel="epoch", ylabel="prompts with no accepted image", title="discard pool")
    return save_figure(figure, path)
