"""One way to write a matplotlib figure: the Agg canvas (no pyplot state, no display), tight layout, PNG written
atomically. Used by every module that draws (diagnose, self-improvement, the report)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unigap.atomic import write_atomically


def plain(text: str) -> str:
    """A user's text (an arm's name) as a matplotlib label: a `$` is a dollar sign, not the start of maths, which
    would render a `$...$` pair as a formula and fail the whole figure where it is not valid maths."""
    return text.replace("$", r"\$")


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    # The tight box, legends left out of the layout included: a legend beside the axes, with long arm names, widens
    # the picture instead of being cut off or squeezing the axes.
    aside = [ax.get_legend() for ax in figure.axes if ax.get_legend() and not ax.get_legend().get_in_layout()]
    extra = figure.get_default_bbox_extra_artists() + aside
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                                                            bbox_extra_artists=extra))
