"""The study's PNG figures: the understanding–generation trade-off, training dynamics, gradient diagnostics.

Drawn on `matplotlib.figure.Figure` with the Agg canvas: no pyplot global state and no display, so the
report builds on a headless machine; each file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from unigap.plotting import plain, save_figure
from unigap.train.defaults import LN2
from unigap.arms import ARMS
from unigap.report.stats import series
from unigap.study.results import BASE, MethodRun, Study

DPI = 110
SMOOTH = 25  # steps in the moving average of per-step (batch-1, noisy) training curves
BINS = 30


@dataclass(frozen=True)
class Plot:
    """A written figure with the title and caption the HTML report shows under it."""

    path: Path
    title: str
    caption: str


def _save(figure: Figure, path: Path) -> Path:
    return save_figure(figure, path, dpi=DPI)


PALETTE = [*colormaps["tab10"].colors, *colormaps["tab20"].colors[1::2]]  # tab10's strong colours, tab20's light
MARKERS = ("o", "s", "^", "D")  # a new marker for each round of the palette: a full study has 30 methods


def method_colours(methods: Sequence[str]) -> dict[str, Any]:
    """One colour per method, the same in every figure."""
    return {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(methods)}


def method_markers(methods: Sequence[str]) -> dict[str, str]:
    """One marker per method: with the colour, one look per method where there are more methods than colours."""
    return {method: MARKERS[i // len(PALETTE) % len(MARKERS)] for i, method in enumerate(methods)}


def _legend_outside(ax: Axes) -> None:
    """Legend right of the axes: with a dozen methods it would hide the data inside them. Left out of the layout, so
    long arm names widen the saved picture (`save_figure` saves the tight box) instead of squeezing the axes."""
    rows = 16  # legend entries per column that fit beside the axes
    count = len(ax.get_legend_handles_labels()[0])
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              ncol=max(1, -(-count // rows))).set_in_layout(False)


def tradeoff_plot(results: dict[str, Any], path: Path) -> Path:
    """Each method as an arrow from the base (the origin) to its Δ understanding, Δ generation accuracy, with the
    95% CIs of its tests: which arm closes the gap, and in which direction."""
    figure = Figure(figsize=(8.5, 5.5))
    ax = figure.add_subplot()
    colours, markers = method_colours(results["methods"]), method_markers(results["methods"])
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.plot([0], [0], marker="*", markersize=14, color="black", linestyle="none", label=BASE)
    for method in results["methods"]:
        if method == BASE:
            continue
        und = results["results"][method]["understanding.accuracy"]
        gen = results["results"][method]["generation.accuracy"]
        if und["delta"] is None or gen["delta"] is None:
            continue
        errors = [
            [[m["delta"] - m["delta_ci95"][0]], [m["delta_ci95"][1] - m["delta"]]] if m["delta_ci95"] else None
            for m in (und, gen)
        ]
        filled = und["significant"] or gen["significant"]
        ax.annotate("", xy=(und["delta"], gen["delta"]), xytext=(0.0, 0.0),
                    arrowprops={"arrowstyle": "->", "color": colours[method], "alpha": 0.6, "shrinkA": 0, "shrinkB": 4})
        ax.errorbar(
            und["delta"], gen["delta"], xerr=errors[0], yerr=errors[1], marker=markers[method], capsize=3,
            linestyle="none", color=colours[method], markerfacecolor=colours[method] if filled else "white",
            label=plain(method),
        )  # fmt: skip
    ax.set(
        xlabel="Δ understanding accuracy vs base",
        ylabel="Δ generation accuracy vs base",
        title="Understanding–generation trade-off (filled: significant after Bonferroni)",
    )
    _legend_outside(ax)
    return _save(figure, path)


def _seed_mean(runs: Sequence[MethodRun], name: str) -> tuple[np.ndarray, np.ndarray]:
    """A training-log series averaged over seeds at each step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for step, value in zip(*series(run.log_rows, name), strict=True):
            by_step[step].append(value)
    steps = np.array(sorted(by_step))
    return steps, np.array([np.mean(by_step[s]) for s in steps])


def _smooth(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trailing moving average over SMOOTH steps (a quarter of a short log), plotted at each window's end."""
    window = max(1, min(SMOOTH, len(values) // 4))  # a short log keeps three quarters of its points
    kernel = np.ones(window) / window
    return steps[window - 1 :], np.convolve(values, kernel, mode="valid")


def _trained(study: Study) -> list[str]:
    """The DPO-trained methods: those with a training log that train on the study's pairs (`Arm.needs_pairs`; not
    the SFT or GRPO arms' logs)."""
    return [m for m in study.methods() if any(run.log_rows for run in study.of(m))
            and (m not in ARMS or ARMS[m].needs_pairs)]


def _panels(methods: Sequence[str], path: Path, ylabel: str, draw: Callable[[Axes, str], None], sharey: bool) -> Path:
    """One panel per method (three to a row, sharing the step axis), each drawn by `draw(ax, method)`."""
    cols = min(3, max(1, len(methods)))
    rows = max(1, -(-len(methods) // cols))
    figure = Figure(figsize=(3.6 * cols, 2.8 * rows))
    axes = figure.subplots(rows, cols, sharex=True, sharey=sharey, squeeze=False).ravel()
    for ax, method in zip(axes, methods, strict=False):
        draw(ax, method)
        ax.set_title(plain(method), fontsize="medium")
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel(ylabel)
    for column in range(cols):  # the lowest drawn panel of each column carries the step axis, hidden ones do not
        bottom = axes[column + cols * ((len(methods) - 1 - column) // cols)] if column < len(methods) else None
        if bottom is not None:
            bottom.tick_params(labelbottom=True)
            bottom.set_xlabel("step")
    if methods:
        axes[0].legend(fontsize="small")
    return _save(figure, path)


def losses_plot(study: Study, path: Path) -> Path:
    """Per-task DPO loss vs step, one panel per strategy, with the ln 2 'no signal' line."""

    def draw(ax: Axes, method: str) -> None:
        for task, colour in (("und", "tab:blue"), ("gen", "tab:red")):
            steps, values = _seed_mean(study.of(method), f"{task}_loss")
            if len(steps):
                ax.plot(*_smooth(steps, values), color=colour, label=f"{task} loss")
        ax.axhline(LN2, color="black", linestyle="--", linewidth=0.8, label="ln 2")

    return _panels(_trained(study), path, "DPO loss", draw, sharey=True)


def _shift(runs: Sequence[MethodRun], task: str, side: str) -> tuple[np.ndarray, np.ndarray]:
    """log π − log π_ref of a task's chosen or rejected sequences per step, averaged over seeds."""
    steps, policy = _seed_mean(runs, f"{task}_{side}_logp")
    ref_steps, ref = _seed_mean(runs, f"{task}_{side}_ref_logp")
    if len(steps) == 0 or not np.array_equal(steps, ref_steps):
        return np.array([]), np.array([])
    return steps, policy - ref


def logps_plot(study: Study, path: Path) -> Path:
    """Chosen (solid) and rejected (dashed) log-prob against the reference's, per task, one panel per arm: where
    DPO's loss falls because the chosen rise (healthy) or only because the rejected fall (over-optimisation)."""

    def draw(ax: Axes, method: str) -> None:
        for task, colour in (("und", "tab:blue"), ("gen", "tab:red")):
            for side, style in (("chosen", "-"), ("rejected", "--")):
                steps, values = _shift(study.of(method), task, side)
                if len(steps):
                    ax.plot(*_smooth(steps, values), color=colour, linestyle=style, label=f"{task} {side}")
        ax.axhline(0, color="black", linewidth=0.8)

    return _panels(_with_logps(study), path, "log π − log π_ref (nats)", draw, sharey=False)


def _with_logps(study: Study) -> list[str]:
    """The trained arms whose logs hold TRL's log-probability keys (logs from before them hold none)."""
    return [m for m in _trained(study) if any(len(_shift(study.of(m), t, "chosen")[0]) for t in ("und", "gen"))]


def weights_plot(study: Study, path: Path) -> Path:
    """w_U (solid) and w_G (dashed) vs step per strategy, averaged over seeds."""
    figure = Figure(figsize=(8.5, 4.5))
    ax = figure.add_subplot()
    colours = method_colours(study.methods())
    for method in _trained(study):
        for name, style in (("w_und", "-"), ("w_gen", "--")):
            steps, values = _seed_mean(study.of(method), name)
            if len(steps):
                ax.plot(steps, values, linestyle=style, color=colours[method],
                        label=plain(method) if name == "w_und" else None)
    ax.set(xlabel="step", ylabel="task weight", title="Task weights (solid w_U, dashed w_G)")
    ax.set_ylim(bottom=-0.02, top=max(1.02, ax.get_ylim()[1]))  # (torchjd's weightings can pass 1)
    _legend_outside(ax)
    return _save(figure, path)


def _histogram(ax: Axes, groups: dict[str, list[float]], xlabel: str) -> None:
    values = [v for group in groups.values() for v in group]
    bins = np.histogram_bin_edges(values, bins=BINS)
    for label, group in groups.items():
        if group:
            ax.hist(group, bins=bins, alpha=0.5, label=f"{label} (n={len(group)})")
    ax.set(xlabel=xlabel, ylabel="batches")
    ax.legend(fontsize="small")


def _per_layer(ax: Axes, runs: Sequence[MethodRun], key: str, ylabel: str) -> None:
    """Per-layer mean of `key` with its 95% CI, one line per seed; zero-gradient layers omitted."""
    for run in runs:
        rows = [r for r in run.diagnostics.get("per_layer", []) if r.get(f"{key}_mean") is not None]
        if not rows:
            continue
        means = np.array([r[f"{key}_mean"] for r in rows])
        cis = [r.get(f"{key}_ci95") or [m, m] for r, m in zip(rows, means, strict=True)]
        errors = np.abs(np.array(cis).T - means)
        ax.errorbar([r["layer"] for r in rows], means, yerr=errors, marker="o", capsize=2, label=f"seed {run.seed}")
    ax.set(xlabel="decoder layer", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.has_data():
        ax.legend(fontsize="small")


def gradients_plot(runs: Sequence[MethodRun], path: Path) -> Path:
    """Cosine and ρ histograms (raw per-batch values, pooled over seeds) and per-layer cosine and ρ."""
    figure = Figure(figsize=(10, 7.5))
    (cos_ax, ratio_ax), (layer_cos_ax, layer_ratio_ax) = figure.subplots(2, 2)
    samples = [run.diagnostics.get("samples", {}) for run in runs]
    pooled = {
        key: [v for s in samples for v in s.get(key, [])]
        for key in ("inter_cos", "intra_und_cos", "intra_gen_cos", "ratio")
    }
    if any(pooled[k] for k in ("inter_cos", "intra_und_cos", "intra_gen_cos")):
        labels = {"und vs gen": "inter_cos", "und vs und": "intra_und_cos", "gen vs gen": "intra_gen_cos"}
        _histogram(cos_ax, {label: pooled[key] for label, key in labels.items()}, "cosine")
        cos_ax.axvline(0.0, color="black", linewidth=0.8)
    if pooled["ratio"]:
        _histogram(ratio_ax, {"ρ": pooled["ratio"]}, "ρ = ‖g_U‖ / ‖g_G‖")
    cos_ax.set_title("Gradient cosines per batch")
    ratio_ax.set_title("Norm ratio per batch")
    _per_layer(layer_cos_ax, runs, "cos", "cos(g_U, g_G)")
    if layer_cos_ax.has_data():
        layer_cos_ax.axhline(0.0, color="black", linewidth=0.8)
    layer_cos_ax.set_title("Per-layer cosine")
    _per_layer(layer_ratio_ax, runs, "ratio", "ρ")
    layer_ratio_ax.set_title("Per-layer ρ")
    for ax in (cos_ax, ratio_ax, layer_cos_ax, layer_ratio_ax):
        if not ax.has_data():  # an older or trimmed diagnostics.json: say so rather than draw an empty frame
            ax.text(0.5, 0.5, "not in diagnostics.json", ha="center", va="center", transform=ax.transAxes)
    return _save(figure, path)


def write_figures(study: Study, results: dict[str, Any], directory: str | Path) -> list[Plot]:
    """Every figure the study supports, into `directory`, with titles and captions for the report."""
    directory = Path(directory)
    plots = [
        Plot(
            tradeoff_plot(results, directory / "tradeoff.png"),
            "Understanding–generation trade-off",
            "Δ vs base of the pooled per-item accuracies (all seeds); error bars: 95% CIs of the difference (each "
            "row's test: paired on the same items). Filled markers: significant on either axis after Bonferroni.",
        )
    ]
    if _trained(study):
        plots.append(
            Plot(
                losses_plot(study, directory / "losses.png"),
                "Training dynamics: per-task DPO loss",
                f"Mean over seeds, moving average over up to {SMOOTH} steps. The dashed line is ln 2 ≈ {LN2:.3f}: "
                "a loss that stays there carries no preference signal.",
            )
        )
        if _with_logps(study):
            plots.append(Plot(
                logps_plot(study, directory / "logps.png"),
                "Training dynamics: chosen and rejected log-probability against the reference",
                "log π − log π_ref per sequence (TRL's logps/chosen − ref_logps/chosen, and the same for the rejected), "
                "mean over seeds, moving average. Healthy DPO raises the chosen (solid) above 0; a chosen line that "
                "falls below 0 while the loss goes to 0 is over-optimisation: only the rejected (dashed) were pushed "
                "down.",
            ))  # (no empty figure under a caption about its lines)
        plots.append(
            Plot(
                weights_plot(study, directory / "weights.png"),
                "Training dynamics: task weights",
                "w_U and w_G of the shared-LoRA update per step, mean over seeds.",
            )
        )
    for method in results["diagnostics"]:
        diagnosed = [run for run in study.of(method) if run.diagnostics is not None]
        plots.append(
            Plot(
                gradients_plot(diagnosed, directory / f"gradients-{method}.png"),
                f"Gradient diagnostics ({method})",
                "Top: per-batch inter-task and intra-task (calibration) cosines and the norm ratio ρ, "
                "pooled over seeds. Bottom: per-layer means with 95% CIs, one line per seed.",
            )
        )
    return plots
