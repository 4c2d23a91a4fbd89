"""Figures, the self-contained HTML report, build_report's files, the terminal table, a browser render."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
import subprocess

import pytest
from PIL import Image
from rich.console import Console

from unigap.report import BASE, MethodRun, Study, build_report, summary_table
from unigap.report.build import REPORT_HTML, RESULTS_CSV, RESULTS_JSON, BuiltReport
from unigap.report.figures import gradients_plot
from unigap.report.cells import fmt, fmt_p

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(study: Study, tmp_path_factory: pytest.TempPathFactory) -> BuiltReport:
    return build_report(study, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def html(built: BuiltReport) -> str:
    return next(p for p in built.files if p.name == REPORT_HTML).read_text(encoding="utf-8")


def test_build_report_writes_every_file(built):
    names = {p.name for p in built.files}
    assert {
        RESULTS_JSON,
        RESULTS_CSV,
        REPORT_HTML,
        "tradeoff.png",
        "losses.png",
        "logps.png",
        "weights.png",
        "gradients-base.png",
    } <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in built.files)
    assert not [p for p in built.files[0].parent.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing


def test_figures_are_valid_pngs(built):
    for path in (p for p in built.files if p.suffix == ".png"):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
        assert min(Image.open(io.BytesIO(data)).size) > 100


def test_html_is_self_contained(html):
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 5  # trade-off, losses, log-probs, weights, gradients
    assert all(base64.b64decode(uri).startswith(PNG_SIGNATURE) for uri in uris)


def test_html_holds_the_tables(built, html):
    results = built.results
    for method in results["methods"]:
        assert f"<td>{method}</td>" in html
    und = results["results"]["und-only"]["understanding.accuracy"]
    assert f'<td class="sig">{fmt(und["delta"], signed=True)}*' in html  # significant after Bonferroni: bold + *
    assert fmt_p(und["p"]) in html
    assert f'{fmt_p(und["p"])}<br><span class="ci">seeds {fmt_p(und["seed_level"]["p"])}</span>' in html
    joint = results["results"]["joint"]["generation.accuracy"]
    assert f"<td>{fmt(joint['delta'], signed=True)}<br>" in html and fmt_p(joint["p"]) in html
    assert "paper: Janus-Pro-7B" in html and "-0.0001" in html and "0.073" in html and "+0.0405" in html
    assert '<span class="flag">no signal</span>' in html  # gen-only's generation loss ends at ln 2
    assert f"{results['bonferroni']['alpha_corrected']:.2g}" in html
    assert "Study configuration" in html and "tiny" in html


def test_html_escapes_text(tmp_path):
    report = {"records": {"understanding": [{"correct": True}, {"correct": False}], "generation": []}}
    evil = "<img src=x onerror=alert(1)>"
    study = Study([MethodRun(BASE, 0, report), MethodRun(evil, 0, report)], {"note": "<b>&"})
    html = tmp_path / "out" / REPORT_HTML
    build_report(study, tmp_path / "out")
    text = html.read_text(encoding="utf-8")
    assert evil not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<b>&" not in text


def test_summary_table_lists_methods_and_flags(built):
    console = Console(record=True, width=220)
    console.print(summary_table(built.results))
    text = console.export_text()
    for method in built.results["methods"][1:]:
        assert method in text
    assert "no signal" in text and fmt_p(built.results["results"]["und-only"]["understanding.accuracy"]["p"]) in text


def _chromium() -> str | None:
    return next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built, tmp_path):
    """The report renders in a real browser to a non-blank page (a layout check a human can look at)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium / chromium-browser / google-chrome binary on PATH (apt-get install chromium)")
    report = next(p for p in built.files if p.name == REPORT_HTML)
    shot = tmp_path / "shot.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,3000",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", report.resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 3000)
    low, high = image.getextrema()
    assert high - low > 100  # text and figures, not a blank page
    histogram = image.histogram()
    assert sum(histogram[:128]) > 0.002 * sum(histogram)  # a visible share of dark (ink) pixels


def test_logs_without_log_probabilities_get_no_empty_figure(study: Study, tmp_path) -> None:
    """(Logs written before TRL's logps keys: the figure was a blank image under a caption about its lines.)"""
    bare = [dataclasses.replace(run, log_rows=[{k: v for k, v in row.items() if "logps" not in k}
                                               for row in run.log_rows]) for run in study.runs]
    built = build_report(Study(bare, study.config), tmp_path / "out")
    names = {p.name for p in built.files}
    assert "losses.png" in names and "logps.png" not in names
    text = (tmp_path / "out" / REPORT_HTML).read_text(encoding="utf-8")
    assert "chosen and rejected log-probability" not in text


def test_gradient_figure_without_raw_samples(tmp_path):
    """A diagnostics.json with only summary statistics still gives a valid figure."""
    run = MethodRun(
        BASE, 0, {}, diagnostics={"inter": {"cos_mean": 0.0}, "per_layer": [{"layer": 0, "zero_gradient": True}]}
    )
    path = gradients_plot([run], tmp_path / "g.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_win_rates_guard_stops_and_co_degradation_reach_results_and_html(study: Study, tmp_path) -> None:
    """SPEC §2 in the study: each trained arm's understanding win rate pooled over seeds, the guard's stops, and
    whether poor labels co-degrade, stated whichever way it falls."""
    from dataclasses import replace

    runs = []
    for run in study.runs:
        report = dict(run.eval_report)
        if run.method == "joint":  # renamed self-poor: its rates are the synthetic study's own
            run = replace(run, method="self-poor")
            report["win_rate"] = {"value": 100 * (6 + run.seed) / 10, "n": 10, "wins": 6 + run.seed}
        if run.method == "und-only" and run.seed == 0:
            report["guard"] = {"stopped": True, "precision": 0.2, "n": 30, "threshold": 0.4, "epoch": 1}
        runs.append(replace(run, eval_report=report))
    built = build_report(Study(runs, study.config), tmp_path)
    results = built.results
    wins = results["win_rates"]["self-poor"]
    seeds = len({run.seed for run in runs})
    assert wins["n"] == 10 * seeds and wins["wins"] == sum(6 + s for s in range(seeds))
    assert wins["value"] == pytest.approx(100 * wins["wins"] / wins["n"]) and wins["ci95"][0] < wins["value"] < wins["ci95"][1]
    assert list(results["win_rates"]) == ["self-poor"]  # only arms that measured one
    assert results["guard_stops"] == {"und-only": [{"seed": 0, "stopped": True, "precision": 0.2, "n": 30,
                                                    "threshold": 0.4, "epoch": 1}]}
    co, rows = results["co_degradation"], results["results"]["self-poor"]
    falls = [rows[m]["delta"] < 0 for m in ("nonunification.score", "generation.accuracy", "understanding.accuracy")]
    assert co["verdict"] != "appears" or (falls[0] and (falls[1] or falls[2]))
    assert (co["verdict"] == "does not appear") == (not falls[0] or not (falls[1] or falls[2]))
    html = (tmp_path / REPORT_HTML).read_text(encoding="utf-8")
    assert "Understanding win rate" in html and "The audit guard stopped und-only" in html
    assert "No win rate for und-only, gen-only" in html  # trained arms evaluated before the base images were kept
    assert co["sentence"].split(":")[0] in html


@pytest.mark.parametrize(("nonunification", "generation", "significant", "verdict"), [
    (-0.05, -0.04, True, "appears"),
    (-0.05, -0.04, False, "suggested, not significant"),
    (-0.05, +0.04, True, "does not appear"),  # generation rose: the gap closed for the right reason
    (+0.02, -0.04, True, "does not appear"),  # the gap did not close
])
def test_co_degradation_is_stated_whichever_way_it_falls(nonunification, generation, significant, verdict) -> None:
    from unigap.report.claims import co_degradation

    def row(delta: float) -> dict:
        return {"delta": delta, "p": 0.001 if significant else 0.3, "significant": significant,
                "significant_in_family": significant}

    results = {"results": {"self-poor": {"nonunification.score": row(nonunification),
                                         "generation.accuracy": row(generation), "understanding.accuracy": row(0.0)}},
               "bonferroni": {"families": {"p2": {"tests": 12, "alpha_corrected": 0.05 / 12}}}}
    found = co_degradation(results)
    assert found["verdict"] == verdict and found["sentence"].startswith("Co-degradation (") and verdict in found["sentence"]
    # (its p uncorrected: the threshold that decided beside them)
    assert found["sentence"].endswith("significant when p < 0.0042, Bonferroni over the family's 12 tests.")
    assert co_degradation({"results": {}}) is None


def test_a_claims_sentence_gives_each_seeds_difference_and_the_test_over_them(built) -> None:
    from unigap.report.claims import sentence, verdicts

    [claim] = verdicts(built.results)  # the synthetic study's arms are P1's: und-only decides
    row = built.results["results"]["und-only"]["understanding.accuracy"]
    assert claim["seed_level"] == row["seed_level"] and len(row["seed_level"]["deltas"]) == 3
    deltas = ", ".join(f"{d['delta']:+.3f}" for d in row["seed_level"]["deltas"])
    assert f"; per seed {deltas}, over them p {row['seed_level']['p']:.2g}; paired t-test" in sentence(claim)


def test_a_claim_no_test_could_weigh_is_not_tested_rather_than_not_reproduced() -> None:
    from unigap.report.claims import sentence, verdicts

    row = {"delta": 0.5, "delta_ci95": None, "p": None, "welch": {"p": None}, "test": "welch",
           "significant_in_family": False,
           "seed_level": {"deltas": [], "p": None}}
    results = {"arms": [{"name": "und-only", "family": "p1"}], "results": {"und-only": {"understanding.accuracy": row}},
               "bonferroni": {"families": {"p1": {"tests": 0}}}}
    [claim] = verdicts(results)
    assert claim["verdict"] == "not tested" and "no test result for und-only" in sentence(claim)


@pytest.mark.parametrize("count", [1, 3, 5, 7])
def test_every_column_of_panels_shows_its_step_axis(count, tmp_path, monkeypatch) -> None:
    """With a part-empty last row the panels above the hidden ones end their columns: they carry the step axis
    (the default p1 study's seven arms left two of three columns without one)."""
    from unigap.report import figures

    saved = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: saved.append(figure) or path)
    methods = [f"arm{i}" for i in range(count)]
    figures._panels(methods, tmp_path / "p.png", "loss", lambda ax, method: ax.plot([0, 1], [0, 1], label="x"), True)
    drawn = [ax for ax in saved[0].axes if ax.get_visible()]
    assert len(drawn) == count
    columns = {round(ax.get_position().x0, 3) for ax in drawn}
    labelled = [ax for ax in drawn if ax.get_xlabel() == "step"]
    assert {round(ax.get_position().x0, 3) for ax in labelled} == columns and len(labelled) == len(columns)
    assert all(label.get_visible() for ax in labelled for label in ax.get_xticklabels())
