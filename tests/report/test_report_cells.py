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
