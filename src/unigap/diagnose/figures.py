"""PNG figures of a diagnostics report: cosine and ρ histograms, per-layer cosines and ratios, the sweep.

Drawn on `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot global state, no display
needed; each file is written atomically, so a crash never leaves half a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from unigap.plotting import save_figure

BINS = 30


def _save(figure: Figure, path: Path) -> Path:
    return save_figure(figure, path, dpi=120)


def cosine_histogram(report: dict[str, Any], path: Path) -> Path:
    """Inter-task cosines against the intra-task calibration cosines."""
    samples = report["samples"]
    series = {"und vs gen": "inter_cos", "und vs und": "intra_und_cos", "gen vs gen": "intra_gen_cos"}
    bins = np.histogram_bin_edges([v for key in series.values() for v in samples[key]], bins=BINS)
    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot()
    for label, key in series.items():
        if samples[key]:
            ax.hist(samples[key], bins=bins, alpha=0.5, label=f"{label} (n={len(samples[key])})")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set(xlabel="cosine", ylabel="count (batches; couples of batches within a task)", title="Gradient cosines")
    ax.legend()
    return _save(figure, path)


def ratio_histogram(report: dict[str, Any], path: Path) -> Path:
    """ρ = ‖g_U‖/‖g_G‖ per batch, with its mean."""
    inter = report["inter"]
    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot()
    ax.hist(report["samples"]["ratio"], bins=BINS, color="tab:orange", alpha=0.8)
    if inter.get("ratio_mean") is not None:
        ax.axvline(inter["ratio_mean"], color="black", linestyle="--", label=f"mean {inter['ratio_mean']:.3g}")
        ax.legend()
    cv = inter.get("ratio_cv")
    ax.set(xlabel="ρ = ‖g_U‖ / ‖g_G‖", ylabel="batches", title=f"Norm ratio (CV {cv:.2f})" if cv else "Norm ratio")
    return _save(figure, path)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float], list[list[float]]]:
    """Layers, means and [below, above] error-bar lengths of `key` over the rows that define it."""
    layers, means, errors = [], [], [[], []]
    for row in rows:
        mean, ci = row.get(f"{key}_mean"), row.get(f"{key}_ci95")
        if mean is None:
            continue
        layers.append(row["layer"])
        means.append(mean)
        errors[0].append(mean - ci[0] if ci else 0.0)
        errors[1].append(ci[1] - mean if ci else 0.0)
    return layers, means, errors


def per_layer_plot(report: dict[str, Any], path: Path) -> Path:
    """Per-layer mean cosine and ρ (95% CIs), for the whole layer and per module kind and factor."""
    figure = Figure(figsize=(7, 6))
    cos_ax, ratio_ax = figure.subplots(2, 1, sharex=True)
    rows = report["per_layer"]
    groups = {"all": rows}
    for section in ("modules", "factors"):
        names = sorted({name for row in rows for name in row[section]})
        groups |= {name: [{"layer": r["layer"], **r[section].get(name, {})} for r in rows] for name in names}
    for offset, (label, series) in enumerate(groups.items()):
        for ax, key in ((cos_ax, "cos"), (ratio_ax, "ratio")):
            layers, means, errors = _series(series, key)
            if layers:
                shifted = [layer + 0.08 * offset for layer in layers]
                ax.errorbar(shifted, means, yerr=errors, marker="o", capsize=2, label=label)
    cos_ax.axhline(0.0, color="black", linewidth=0.8)
    cos_ax.set(ylabel="cos(g_U, g_G)", title="Per layer (zero-gradient groups omitted)")
    ratio_ax.set(xlabel="decoder layer", ylabel="ρ")
    ratio_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    cos_ax.legend(fontsize="small")
    return _save(figure, path)


def sweep_plot(sweep: dict[str, Any], path: Path) -> Path:
    """ρ against the token ratio T/N per probe, log-log, one colour per condition."""
    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot()
    for name, condition in sweep["conditions"].items():
        ax.scatter(condition["samples"]["token_ratio"], condition["samples"]["ratio"], label=name, alpha=0.7)
    ax.set(xscale="log", yscale="log", xlabel="answer tokens / image tokens", ylabel="ρ")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
    slope = sweep.get("loglog_slope")
    ax.set_title(f"ρ vs target length (log-log slope {slope:.2f})" if slope is not None else "ρ vs target length")
    ax.legend()
    return _save(figure, path)


def write_figures(report: dict[str, Any], directory: Path) -> list[str]:
    """All figures the report supports, into `directory`; returns their file names."""
    paths = [
        cosine_histogram(report, directory / "cosines.png"),
        ratio_histogram(report, directory / "ratio.png"),
        per_layer_plot(report, directory / "per_layer.png"),
    ]
    if report.get("sweep"):
        paths.append(sweep_plot(report["sweep"], directory / "sweep.png"))
    else:  # a rerun without the sweep leaves no earlier run's figure beside this report
        (directory / "sweep.png").unlink(missing_ok=True)
    return [p.name for p in paths]
