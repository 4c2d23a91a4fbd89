"""How the report prints p-values and tells methods apart in its figures."""

from __future__ import annotations

from unigap.report.cells import fmt_p
from unigap.report.figures import PALETTE, method_colours, method_markers


def test_a_p_value_near_bonferronis_threshold_prints_to_the_thresholds_precision() -> None:
    """Three decimals printed 0.0016 as 0.002, in bold beside "p < 0.0018": the two now have one precision."""
    assert [fmt_p(p) for p in (0.083, 0.0016, 0.0064, 0.00042, None)] == ["0.083", "0.0016", "0.0064", "4.2e-04", "—"]


def test_no_two_of_a_full_studys_methods_look_alike() -> None:
    """A full study has 30 methods and the palette 20 colours: nine pairs shared one look in the trade-off figure."""
    methods = [f"arm{i}" for i in range(2 * len(PALETTE) + 3)]
    colours, markers = method_colours(methods), method_markers(methods)
    looks = {(colours[m], markers[m]) for m in methods}
    assert len(looks) == len(methods)


def test_the_task_weights_figure_shows_a_weight_above_one(tmp_path) -> None:
    """torchjd's UPGrad and DualProj weightings pass 1 where the gradients conflict; the axis stopped at 1.02."""
    from matplotlib.figure import Figure

    import unigap.report.figures as figures
    from unigap.study.results import MethodRun, Study

    rows = [{"step": s, "w_und": 2.3 if s % 2 else 0.5, "w_gen": 0.5} for s in range(4)]
    drawn: list[Figure] = []
    saved = figures._save
    figures._save = lambda figure, path: drawn.append(figure) or path
    try:
        figures.weights_plot(Study([MethodRun("upgrad", 0, {}, rows), MethodRun("base", 0, {})]), tmp_path / "w.png")
    finally:
        figures._save = saved
    assert drawn[0].axes[0].get_ylim()[1] >= 2.3


def test_a_significant_harm_is_coloured_as_a_harm_not_as_a_gain() -> None:
    """A significant fall in generation accuracy (or rise in a rate that should fall) is red, a gain green: colour
    must not show a collapse as a win, in the HTML and in the terminal's table alike."""
    import numpy as np

    from synthetic_study import eval_report
    from unigap.report.build import summary_table
    from unigap.report.cells import fmt
    from unigap.report.html import headline_table
    from unigap.report.stats import compute_stats
    from unigap.study.results import METRICS, MethodRun, Study

    runs = [MethodRun(method, seed, eval_report(np.random.default_rng([seed, i]), p_und, p_gen))
            for seed in (0, 1) for i, (method, (p_und, p_gen)) in enumerate({"base": (0.5, 0.6),
                                                                               "collapse": (0.9, 0.05)}.items())]
    results = compute_stats(Study(runs, {}))
    und, gen = (results["results"]["collapse"][name] for name in ("understanding.accuracy", "generation.accuracy"))
    assert und["significant"] and und["delta"] > 0 and gen["significant"] and gen["delta"] < 0
    html = headline_table(results)
    assert f'<td class="sig">{fmt(und["delta"], signed=True)}*' in html
    assert f'<td class="sig-worse">{fmt(gen["delta"], signed=True)}*' in html
    weak = results["results"]["collapse"]["weak_generation.rate"]  # a rate that should fall: its rise is a harm
    assert weak["significant"] and weak["delta"] > 0
    assert f'<td class="sig-worse">{fmt(weak["delta"], signed=True)}*' in html
    cells = {metric.name: column._cells[0] for metric, column in zip(METRICS, summary_table(results).columns[1:])}
    assert cells["understanding.accuracy"].startswith("[bold green]")
    assert cells["generation.accuracy"].startswith("[bold red]")
    assert cells["weak_generation.rate"].startswith("[bold red]")


def test_a_dollar_in_an_arms_name_is_a_dollar_not_maths(tmp_path) -> None:
    """`load_study` takes any folder name as an arm: matplotlib read a `$...$` pair in it as a formula, rendered as
    maths, or failing the whole figure (and report) where it was not valid maths."""
    from unigap.report.figures import losses_plot, weights_plot
    from unigap.study.results import MethodRun, Study

    rows = [{"step": s, "w_und": 0.5, "w_gen": 0.5, "und_loss": 0.6, "gen_loss": 0.6} for s in range(4)]
    name = r"lr $\frac$ cost"
    study = Study([MethodRun(name, 0, {}, rows), MethodRun("base", 0, {})])
    for plot in (weights_plot, losses_plot):
        assert plot(study, tmp_path / f"{plot.__name__}.png").stat().st_size > 1000


def test_a_long_arm_name_widens_the_figure_instead_of_being_cut_off(tmp_path) -> None:
    from PIL import Image

    from unigap.report.figures import weights_plot
    from unigap.study.results import MethodRun, Study

    rows = [{"step": s, "w_und": 0.5, "w_gen": 0.5} for s in range(4)]
    widths = []
    for name in ("short", "a-very-long-arm-name-" * 5):
        path = weights_plot(Study([MethodRun(name, 0, {}, rows), MethodRun("base", 0, {})]), tmp_path / "w.png")
        widths.append(Image.open(path).size[0])
    assert widths[1] > widths[0] + 300  # (the legend beside the axes grows by the name's ~100 extra characters)
