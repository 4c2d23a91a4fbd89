"""`unigap compare`: eval reports against a baseline's with the study's tests (Welch, paired, Bonferroni)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from synthetic_study import eval_report

from unigap.cli import main
from unigap.errors import UnigapWarning


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["compare", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _write(path: Path, p_gen: float, seed: int = 0, draw: int = 0, n: int = 300) -> Path:
    report = eval_report(np.random.default_rng([seed, draw]), 0.6, p_gen, n=n)
    report["config"]["seed"] = seed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def _verified(path: Path) -> np.ndarray:
    return np.array([r["verified"] for r in json.loads(path.read_text())["records"]["generation"]], dtype=float)


def test_a_model_against_its_baseline_paired_welch_and_json(tmp_path: Path, capsys) -> None:
    before, after = _write(tmp_path / "before.json", 0.40), _write(tmp_path / "after.json", 0.55, draw=1)
    other = _write(tmp_path / "a=b.json", 0.40, draw=2)  # a file name with "=" in it is still a file
    code, out, _ = _run(capsys, before, f"trained={after}", other, "--out", tmp_path / "cmp.json")
    assert code in (0, None) and "trained" in out and "generation" in out
    results = json.loads((tmp_path / "cmp.json").read_text())
    assert results["methods"] == ["before", "trained", "a=b"] and results["base"] == "before"  # as given
    generation = results["results"]["trained"]["generation.accuracy"]
    a, b = _verified(after), _verified(before)
    assert math.isclose(generation["delta"], a.mean() - b.mean(), abs_tol=1e-12)
    welch, paired = stats.ttest_ind(a, b, equal_var=False), stats.ttest_rel(a, b)
    assert generation["test"] == "paired"  # the same items: the paired test decides
    assert math.isclose(generation["p"], paired.pvalue, rel_tol=1e-9)
    assert math.isclose(generation["t"], paired.statistic, rel_tol=1e-9)
    assert math.isclose(generation["welch"]["p"], welch.pvalue, rel_tol=1e-9)  # the papers' test beside it
    assert results["bonferroni"]["tests"] == 8 and "training" not in results
    assert "p_bonferroni_family" not in generation


def test_the_table_shows_both_sides_n_where_they_differ(tmp_path: Path, capsys) -> None:
    before, after = _write(tmp_path / "before.json", 0.40), _write(tmp_path / "after.json", 0.55, draw=1, n=200)
    code, out, _ = _run(capsys, before, after)
    assert code in (0, None) and "300 → 200" in out


def test_by_category_adds_each_category_and_question_kind(tmp_path: Path, capsys) -> None:
    before, after = _write(tmp_path / "before.json", 0.40), _write(tmp_path / "after.json", 0.55, draw=1)
    report = json.loads(after.read_text())
    for i, r in enumerate(report["records"]["generation"]):
        r["category"] = ("colors", "position")[i % 2]
    after.write_text(json.dumps(report))
    code, out, _ = _run(capsys, before, after, "--by-category", "--out", tmp_path / "c.json")
    results = json.loads((tmp_path / "c.json").read_text())
    names = [m["name"] for m in results["metrics"]]
    assert code in (0, None) and "generation: position" in out and len(names) == 7
    assert results["bonferroni"]["tests"] == 6  # before has no position prompt: that category is no test
    assert names[4:] == ["understanding.accuracy.color", "generation.accuracy.colors", "generation.accuracy.position"]
    position = results["results"]["after"]["generation.accuracy.position"]
    a = _verified(after)[1::2]
    assert position["n"] == 150 and math.isclose(position["pooled"], a.mean(), abs_tol=1e-12)
    assert results["results"]["before"]["generation.accuracy.position"]["n"] == 0  # before has no such category


def test_reports_sharing_a_name_are_one_models_seeds(tmp_path: Path, capsys) -> None:
    base = [_write(tmp_path / f"s{s}" / "eval.json", 0.4, seed=s) for s in (0, 1)]
    arm = [_write(tmp_path / f"arm{s}.json", 0.5, seed=s, draw=1) for s in (0, 1)]
    code, _, _ = _run(capsys, *(f"base={p}" for p in base), *(f"arm={p}" for p in arm), "--out", tmp_path / "c.json")
    results = json.loads((tmp_path / "c.json").read_text())
    assert code in (0, None) and results["seeds"] == [0, 1] and results["model_seeds"] == {"base": [0, 1], "arm": [0, 1]}
    assert results["results"]["arm"]["generation.accuracy"]["n"] == 600  # both seeds' items, pooled
    globs = f"base={tmp_path}/s*/eval.json", f"arm={tmp_path}/arm?.json"
    code, _, _ = _run(capsys, *globs, "--out", tmp_path / "g.json")
    assert code in (0, None) and json.loads((tmp_path / "g.json").read_text())["results"] == results["results"]


def test_warnings_name_the_baseline_as_the_user_did_and_any_model_may_be_called_base(tmp_path: Path, capsys) -> None:
    """The baseline is compared under the name it was given: warnings called it `base` (the study's name for it),
    and a model named `base` that was not the baseline was refused."""
    v7 = [_write(tmp_path / f"v7-{s}.json", 0.4, seed=s) for s in (0, 1)]
    with pytest.warns(UnigapWarning, match=r"base has seeds \[0\] and v7 \[0, 1\]: they are compared on the seeds"):
        code, _, _ = _run(capsys, *(f"v7={p}" for p in v7), f"base={_write(tmp_path / 'b.json', 0.5, draw=1)}",
                          "--out", tmp_path / "c.json")
    results = json.loads((tmp_path / "c.json").read_text())
    assert code in (0, None) and results["base"] == "v7" and list(results["results"]) == ["v7", "base"]
    assert results["results"]["base"]["generation.accuracy"]["n"] == 300


def test_the_title_names_each_models_seeds_where_they_differ(tmp_path: Path, capsys) -> None:
    base = [_write(tmp_path / f"s{s}.json", 0.4, seed=s) for s in (0, 1)]
    code, out, _ = _run(capsys, *(f"base={p}" for p in base), f"arm={_write(tmp_path / 'a.json', 0.5, seed=7)}",
                        "--out", tmp_path / "c.json")
    assert code in (0, None) and "seeds base [0, 1], arm [7]" in " ".join(out.split())  # not "seeds [0, 1, 7]"
    assert json.loads((tmp_path / "c.json").read_text())["model_seeds"] == {"base": [0, 1], "arm": [7]}


def test_another_judges_verdicts_are_compared_where_there_is_no_verifier(tmp_path: Path, capsys) -> None:
    """`eval --judge clip:DIR --prompts FILE`: no verifier verdicts, the judge's instead (`judge_accepted`)."""
    paths = []
    for name, rate in (("before", 0.3), ("after", 0.6)):
        report = json.loads(_write(tmp_path / f"{name}.json", 0.5).read_text())
        rng = np.random.default_rng(len(paths))
        for r in report["records"]["generation"]:
            r |= {"verified": None, "weak_generation": None, "judge_accepted": bool(rng.random() < rate)}
        report["config"]["judge"] = {"name": "clip:/m", "threshold": 0.3, "version": 1, "weights": "abc"}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    code, out, _ = _run(capsys, *paths, "--out", tmp_path / "c.json")
    results = json.loads((tmp_path / "c.json").read_text())
    assert code in (0, None) and "judged-generation" in out
    assert [m["name"] for m in results["metrics"]] == ["understanding.accuracy", "nonunification.score",
                                                        "judged_generation.accuracy"]
    judged = results["results"]["after"]["judged_generation.accuracy"]
    assert judged["n"] == 300 and judged["significant"] and results["bonferroni"]["tests"] == 3
    assert results["judge"] == json.loads(paths[0].read_text())["config"]["judge"]  # which judge said so
    assert results["manifest"]["command"] == "compare"  # (its record: a later --out onto it is known as compare's)


def test_verdicts_of_judges_that_differ_are_not_compared(tmp_path: Path, capsys) -> None:
    """Judges alike: the same kind, weights (a CLIP moved to another folder), version, and threshold up to float
    noise (calibrated again on another device). Judges that differ (recalibrated, another VLM at the same fixed
    threshold, another kind): their judged-generation accuracy is left out with a one-line warning, the rest compared."""
    def judged(name: str, judge: dict, rate: float = 0.6) -> Path:
        report = json.loads(_write(tmp_path / f"{name}.json", 0.5).read_text())
        report["config"]["judge"] = judge
        rng = np.random.default_rng(len(name))
        for r in report["records"]["generation"]:
            r["judge_accepted"] = bool(rng.random() < rate)
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
        return tmp_path / f"{name}.json"

    clip = {"name": "clip:/models/clip", "directory": "/models/clip", "threshold": 0.27, "version": 1,
            "weights": "a1"}
    vlm = {"name": "vlm:/models/vlm", "directory": "/models/vlm", "threshold": 0.5, "version": 1, "weights": "b2"}
    base, vlm_base = judged("base", clip, 0.3), judged("vlm-base", vlm, 0.3)
    alike = [judged("moved", clip | {"name": "clip:/elsewhere/clip", "directory": "/elsewhere/clip"}),
             judged("recalibrated-on-gpu", clip | {"threshold": 0.27 * (1 + 1e-7)}),
             judged("older", {key: value for key, value in clip.items() if key != "version"})]  # (version 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnigapWarning)
        code, _, _ = _run(capsys, base, *alike, "--out", tmp_path / "alike.json")
    assert code in (0, None)
    assert "judged_generation.accuracy" in json.loads((tmp_path / "alike.json").read_text())["results"]["moved"]
    apart = {"recalibrated": (base, clip | {"threshold": 0.31}, "clip:/models/clip (threshold 0.31, version 1)"),
             "another-vlm": (vlm_base, vlm | {"name": "vlm:/models/other", "weights": "c3"}, "vlm:/models/other"),
             "another-kind": (base, vlm, "vlm:/models/vlm (threshold 0.5")}
    for name, (baseline, judge, named) in apart.items():
        with pytest.warns(UnigapWarning, match="judged-generation accuracy left out: the reports' judges differ") as w:
            code, _, _ = _run(capsys, baseline, judged(name, judge), "--out", tmp_path / f"{name}-c.json")
        results = json.loads((tmp_path / f"{name}-c.json").read_text())
        assert code in (0, None) and "judged_generation.accuracy" not in results["results"][name]
        assert "generation.accuracy" in results["results"][name]  # the verifier's verdicts still compared
        assert named in str(w[0].message)


@pytest.mark.parametrize("case, message", [
    ("one", "give at least two models to compare"),
    ("missing", "report {tmp}/nothing.json not found"),
    ("directory", "{tmp}/d is a directory; give the report file `unigap eval --out` wrote"),
    ("not a report", "{tmp}/other.json is not a `unigap eval` report (no per-item generation or understanding"),
    ("records a list", "{tmp}/refine.json is not a `unigap eval` report (no per-item"),
    ("outcome missing", "{tmp}/partial.json is not a `unigap eval` report (a generation record lacks 'verified')"),
    ("outcome a word", "{tmp}/word.json is not a `unigap eval` report (a generation record's 'verified' is 'yes'"),
    ("records a number", "{tmp}/number.json is not a `unigap eval` report (its records are not JSON arrays)"),
    # (json reads NaN as a float: the Δ was NaN and writing --out a traceback)
    ("outcome NaN", "{tmp}/nan.json is not a `unigap eval` report (an understanding record's 'correct' is nan, not "
                    "true, false or a score in [0, 1])"),
    ("outcome 5", "{tmp}/five.json is not a `unigap eval` report (an understanding record's 'correct' is 5, not true, "
                  "false or a score in [0, 1])"),  # (read as an accuracy of 1.25)
    ("records empty", "no metric can be compared: no report holds an outcome of one"),  # (a table of nothing)
    ("outcome huge", "{tmp}/huge.json is not a `unigap eval` report (an understanding record's 'correct' is 1000"),  # (a
    # traceback: an integer beyond a float overflowed the finite check)
    ("seed a string", "{tmp}/seed.json is not a `unigap eval` report (its config has no integer seed)"),
    ("no seed", "{tmp}/noseed.json is not a `unigap eval` report (its config has no integer seed)"),
    ("same seed", "are both 'a' seed 0; name them apart with NAME=FILE"),
    ("same file", "{tmp}/good.json is given twice (as 'good' and as 'again')"),
    ("same file unnamed", "{tmp}/good.json is given twice"),
    ("same file name", "{tmp}/s0/eval.json and {tmp}/s1/eval.json would both be 'eval' ({tmp}/s0/eval.json is"),
    ("bad name", "'=x.json': expected NAME=FILE or FILE"),
    ("no match", "{tmp}/seed*/eval.json matches no file"),
    ("unnamed glob", "{tmp}/s*/eval.json: a glob needs a name"),
    ("out is an input", "--out {tmp}/good.json is one of the reports it reads"),
    ("out is a pipe", "output path {tmp}/fifo exists and is neither a file nor a directory"),
])  # fmt: skip
def test_bad_input_is_one_line_and_nothing_written(tmp_path: Path, capsys, case: str, message: str) -> None:
    good = _write(tmp_path / "good.json", 0.4)
    other = _write(tmp_path / "other.json", 0.4)
    s0, s1 = _write(tmp_path / "s0" / "eval.json", 0.4, seed=0), _write(tmp_path / "s1" / "eval.json", 0.4, seed=1)
    (tmp_path / "d").mkdir()
    other.write_text('{"loss": 1}')
    (tmp_path / "refine.json").write_text('{"records": [{"round": 0}]}')  # `unigap refine`'s report
    partial = json.loads(good.read_text())
    del partial["records"]["generation"][3]["verified"]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    partial["records"]["generation"][3]["verified"] = "yes"
    (tmp_path / "word.json").write_text(json.dumps(partial))
    nan = json.loads(good.read_text())
    nan["records"]["understanding"][0]["correct"] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(nan))
    nan["records"]["understanding"][0]["correct"] = 10**400
    (tmp_path / "huge.json").write_text(json.dumps(nan))
    nan["records"]["understanding"][0]["correct"] = 5
    (tmp_path / "five.json").write_text(json.dumps(nan))
    empty = json.loads(good.read_text())
    empty["records"] = {"understanding": [], "generation": []}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    (tmp_path / "empty2.json").write_text(json.dumps(empty | {"config": {"seed": 1}}))
    number = json.loads(good.read_text())
    number["records"]["understanding"] = 5
    (tmp_path / "number.json").write_text(json.dumps(number))
    (tmp_path / "seed.json").write_text(json.dumps(json.loads(good.read_text()) | {"config": {"seed": "0"}}))
    (tmp_path / "noseed.json").write_text(json.dumps(json.loads(good.read_text()) | {"config": {}}))
    os.mkfifo(tmp_path / "fifo")
    args = {
        "one": [good],
        "missing": [good, tmp_path / "nothing.json"],
        "directory": [good, tmp_path / "d"],
        "not a report": [good, other],
        "records a list": [good, tmp_path / "refine.json"],
        "outcome missing": [good, tmp_path / "partial.json"],
        "outcome a word": [good, tmp_path / "word.json"],
        "records a number": [good, tmp_path / "number.json"],
        "outcome NaN": [good, tmp_path / "nan.json"],
        "outcome huge": [good, tmp_path / "huge.json"],
        "outcome 5": [good, tmp_path / "five.json"],
        "records empty": [tmp_path / "empty.json", tmp_path / "empty2.json"],
        "seed a string": [good, tmp_path / "seed.json"],
        "no seed": [good, tmp_path / "noseed.json"],
        "same seed": [good, f"a={s0}", f"a={_write(tmp_path / 'twin.json', 0.5)}"],
        "same file": [good, f"again={good}"],
        "same file unnamed": [good, good],
        "same file name": [good, s0, s1],
        "bad name": [good, "=x.json"],
        "no match": [good, f"x={tmp_path}/seed*/eval.json"],
        "unnamed glob": [good, f"{tmp_path}/s*/eval.json"],
        "out is an input": [s0, good],
        "out is a pipe": [good, s0],
    }[case]
    out = {"out is an input": good, "out is a pipe": tmp_path / "fifo"}.get(case, tmp_path / "out.json")
    before = good.read_text()
    code, stdout, err = _run(capsys, *args, "--out", out)
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert message.format(tmp=tmp_path) in err and not (tmp_path / "out.json").exists() and good.read_text() == before


def test_names_with_brackets_print_as_given(tmp_path: Path, capsys) -> None:
    """A model's name is the user's text: `lora[r8]` printed as `lora`, and `x[/b]` crashed rich's markup parser."""
    before, after = _write(tmp_path / "before[v1].json", 0.40), _write(tmp_path / "after.json", 0.55, draw=1)
    code, out, err = _run(capsys, before, f"lora[r8]={after}", f"x[/b]={_write(tmp_path / 'x.json', 0.5, draw=2)}")
    assert code in (0, None) and not err
    text = " ".join(out.split())
    assert "lora[r8]" in text and "x[/b]" in text and "against before[v1]" in text


def test_a_named_file_with_brackets_is_that_file_not_a_pattern(tmp_path: Path, capsys) -> None:
    """`lora=after[1].json` read `after1.json` (the brackets a glob's character class), silently."""
    before = _write(tmp_path / "before.json", 0.40)
    bracketed, decoy = _write(tmp_path / "after[1].json", 0.55, draw=1), _write(tmp_path / "after1.json", 0.2, draw=2)
    code, _, err = _run(capsys, before, f"lora={bracketed}", "--out", tmp_path / "c.json")
    assert code in (0, None) and not err
    assert json.loads((tmp_path / "c.json").read_text())["reports"] == [["before", str(before)],
                                                                        ["lora", str(bracketed)]]
    assert str(decoy) not in (tmp_path / "c.json").read_text()


def test_a_metric_a_model_lacks_is_no_test_in_the_bonferroni_family(tmp_path: Path, capsys) -> None:
    """The judged metric exists in two reports but not the third: that model's row has no items and no p, and a
    test never performed must not make every other one stricter."""
    paths = []
    for name, rate, judged in (("before", 0.4, True), ("after", 0.6, True), ("other", 0.6, False)):
        report = json.loads(_write(tmp_path / f"{name}.json", rate, draw=len(paths)).read_text())
        if judged:
            report["config"]["judge"] = {"name": "clip:/m", "threshold": 0.3, "version": 1, "weights": "abc"}
        for r in report["records"]["generation"]:
            if judged:  # (a report made without --judge has no such key: it used to be called no eval report)
                r["judge_accepted"] = r["verified"]
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    code, _, _ = _run(capsys, *paths, "--out", tmp_path / "c.json")
    results = json.loads((tmp_path / "c.json").read_text())
    rows = [row for model in ("after", "other") for row in results["results"][model].values()]
    assert code in (0, None) and results["results"]["other"]["judged_generation.accuracy"]["p"] is None
    performed = sum(row["p"] is not None for row in rows)
    assert performed == len(rows) - 1 and results["bonferroni"]["tests"] == performed
    assert all(row["significant"] == (row["p"] is not None and row["p"] < 0.05 / performed) for row in rows)


def test_reports_of_other_data_are_warned_of(tmp_path: Path, capsys) -> None:
    """A report on users' prompts compared with one on the held-out items printed its Welch table silently: its Δ
    compares different items."""
    before, after = _write(tmp_path / "before.json", 0.40), _write(tmp_path / "after.json", 0.45, draw=1)
    report = json.loads(after.read_text())
    report["config"] |= {"prompts": "3 given", "split": "test"}
    after.write_text(json.dumps(report))
    with pytest.warns(UnigapWarning, match=r"after.json was evaluated on other data than .*before.json \(split None "
                                           r"→ 'test'; prompts None → '3 given'\): its Δ compares different items"):
        code, _, _ = _run(capsys, before, after)
    assert code in (0, None)
    with warnings.catch_warnings():  # (the same data: no warning)
        warnings.simplefilter("error", UnigapWarning)
        _run(capsys, before, _write(tmp_path / "again.json", 0.45, draw=2))
    report = json.loads((tmp_path / "again.json").read_text())  # a batch's sampling seed follows its index
    report["config"]["batch_size"] = 1 + (json.loads(before.read_text())["config"].get("batch_size") or 0)
    (tmp_path / "again.json").write_text(json.dumps(report))
    with pytest.warns(UnigapWarning, match=r"again.json was sampled under other seeds than .*before.json \(batch_size "
                                           r".*: its images are paired by prompt, not by sampling seed"):
        _run(capsys, before, tmp_path / "again.json")
