"""`unigap prefs build`: rows loadable with HF datasets, reference log-probs right, filters honoured."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import unigap.prefs.build as build_module
from unigap.cli import main
from unigap.errors import UserError
from unigap.model import load_model
from unigap.prefs.build import BuildOptions, build_preferences
from unigap.prefs.rows import load_pairs, read_rows
from unigap.train.dpo import reference_logprobs
from unigap.world import render, sample_records


def run_main(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def build(capsys, tiny_dir: Path, out: Path, kind: str, *extra: str) -> tuple[int, str, str]:
    args = [
        "prefs",
        "build",
        "--model",
        str(tiny_dir),
        "--kind",
        kind,
        "--n",
        "3",
        "--seed",
        "5",
        "--out",
        str(out),
    ]
    return run_main(capsys, [*args, "--batch-size", "4", *extra])


def test_und_rows_load_with_datasets_and_store_the_reference(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "und.jsonl"
    code, stdout, _ = build(capsys, tiny_dir, out, "und", "--fallback-gt")
    assert code == 0 and "wrote 3 pairs" in stdout
    table = datasets.load_dataset("json", data_files=str(out), split="train")
    assert table.num_rows == 3 and table[0]["kind"] == "und" and table[0]["model"] == str(tiny_dir)
    rows = read_rows(out)
    for row in rows:
        assert row["chosen_score"] - row["rejected_score"] >= 0.5 and row["seed"] == 5
        if row["fallback"]:
            assert row["chosen"] == row["answer"] and row["chosen_score"] == 1.0
    pairs = load_pairs(out, "und")
    chosen, rejected, n_chosen, _ = reference_logprobs(load_model(tiny_dir), pairs)
    torch.testing.assert_close(chosen, torch.tensor([r["chosen_ref_logprob"] for r in rows]))
    torch.testing.assert_close(rejected, torch.tensor([r["rejected_ref_logprob"] for r in rows]))
    assert n_chosen.tolist() == [r["chosen_tokens"] for r in rows] == [len(r["chosen_ids"]) for r in rows]
    first = out.read_bytes()
    build(capsys, tiny_dir, out, "und", "--fallback-gt")
    assert out.read_bytes() == first  # same seed, same file


def test_gen_real_rows_are_real_vs_generated(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen.parquet"
    code, _, _ = build(capsys, tiny_dir, out, "gen-real")
    assert code == 0
    table = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert table.num_rows == 3 and set(table["kind"]) == {"gen-real"}
    um = load_model(tiny_dir)
    records = sample_records(12, 0, "train", draw_seed=5)  # the candidate stream (max candidates 4n): --seed 5 draws
    # from the train split of partition 0 (--data-seed's default), which eval holds its test split out of
    for row in read_rows(out):
        spec, scene = records[row["candidate"]]
        assert row["prompt"] == spec.text and row["chosen_score"] > row["rejected_score"]
        # (its encoding alone: on two threads, one code in a few hundred can flip with the batch at a near-tie)
        alone = um.encode_images([render(scene)])[0]
        assert len(row["chosen_ids"]) == len(alone) and (torch.tensor(row["chosen_ids"]) == alone).float().mean() > 0.98
        assert row["chosen_tokens"] == row["rejected_tokens"] == um.num_image_tokens


def _spread_score(image, spec, canvas) -> float:
    """A stand-in for the graded score that spreads a random model's images over 0, 0.5 and 1."""
    return float(int(np.asarray(image).sum()) % 3) / 2


def test_gen_model_keeps_the_better_sample_by_margin(tiny_dir: Path, monkeypatch) -> None:
    """A random model's images all score 0, so a stand-in score (from the pixels) exercises the filter."""
    monkeypatch.setattr(build_module, "image_score", _spread_score)
    um = load_model(tiny_dir)
    rows = build_preferences(
        um, BuildOptions("gen-model", n=4, seed=1, model_name="m", max_candidates=8, batch_size=8)
    )
    assert rows
    for row in rows:
        tokens = torch.tensor([row["chosen_ids"], row["rejected_ids"]])
        scores = [_spread_score(image, None, 64) for image in um.decode_tokens(tokens)]
        assert scores == [row["chosen_score"], row["rejected_score"]]
        assert row["chosen_score"] - row["rejected_score"] >= 0.5


def test_nothing_kept_is_a_user_error(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    """Without the ground-truth fallback a random model's two answers are both wrong: no pair survives."""
    code, _, err = build(capsys, tiny_dir, tmp_path / "und.jsonl", "und", "--max-candidates", "4")
    assert code == 2 and "unigap: error: no und pair passed the filters in 4 candidates; try --max-candidates, a " \
        "higher --temperature, a lower --margin or --fallback-gt" in err
    assert not (tmp_path / "und.jsonl").exists()


def test_the_advice_when_nothing_passes_names_what_can_help_that_kind() -> None:
    """It offered "a higher --temperature" to gen-model, which samples at fixed temperatures, and "more candidates"
    to a questions file that holds no more."""
    from unigap.prefs.build import BuildOptions, _what_helps

    options = dict(n=2, seed=0, model_name="tiny")
    assert _what_helps(BuildOptions("gen-model", **options)) == "--max-candidates or a lower --margin"
    assert _what_helps(BuildOptions("gen-model", **options, judge="clip:dir")) == "--max-candidates or another --judge"
    assert "--max-candidates" not in _what_helps(BuildOptions("und", **options, questions="q.jsonl"))


def test_bad_options(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = build(capsys, tiny_dir, tmp_path / "x.csv", "und")
    assert code == 2 and "must end in .jsonl or .parquet" in err
    with pytest.raises(UserError, match="temperature must be > 0"):
        BuildOptions("und", 1, 0, "m", temperature=0.0)
    with pytest.raises(UserError, match="unknown kind"):
        BuildOptions("gen", 1, 0, "m")
    with pytest.raises(UserError, match="--margin compares two samples' scores; a gen-real pair"):  # (was ignored)
        BuildOptions("gen-real", 1, 0, "m", margin=0.9)


def test_word_and_sentence_forms_ask_the_same_questions() -> None:
    """The answer-length comparison needs the same scenes and questions in both forms (equal seeds)."""
    from unigap.prefs.build import _question
    from unigap.world import random_train_scenes
    from unigap.world.questions import SENTENCE_REQUEST

    scenes = random_train_scenes(30, 0)
    word = [_question(s, np.random.default_rng(5), "word") for s in scenes]
    sentence = [_question(s, np.random.default_rng(5), "sentence") for s in scenes]
    for w, q in zip(word, sentence, strict=True):
        assert q.text == f"{w.text} {SENTENCE_REQUEST}" and q.word == w.answer and len(q.answer.split()) > 2
        assert w.kind == q.kind and w.kind not in ("describe", "judge")
    with pytest.raises(UserError, match="answer form"):
        BuildOptions("und", 4, 0, "tiny", answer_form="short")
    with pytest.raises(UserError, match="--margin compares the verifier's graded scores; clip:/x keeps a pair"):
        BuildOptions("gen-model", 4, 0, "tiny", margin=0.3, judge="clip:/x")  # (the Python API refuses it too)


def test_fewer_pairs_than_asked_is_said(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    """Three pairs asked for, one candidate to try: the file holds what passed, and stderr says it is short."""
    code, out, err = build(capsys, tiny_dir, tmp_path / "und.jsonl", "und", "--fallback-gt", "--max-candidates", "1")
    kept = len((tmp_path / "und.jsonl").read_text().splitlines())
    assert code in (0, None) and kept < 3 and f"wrote {kept} pairs" in out
    assert f"unigap: warning: {kept} of the 3 pairs asked for: the candidates tried gave no more (raise " \
           "--max-candidates, default 12; or lower --margin)" in err
    from unigap.prefs.build import shortfall  # (the flags that would give more, as they apply)

    assert shortfall(BuildOptions("gen-real", 3, 0, "m"), 12) == "the candidates tried gave no more (raise " \
                                                                 "--max-candidates, default 12)"
    assert shortfall(BuildOptions("und", 3, 0, "m", questions="q.jsonl"), 5) == \
        "every candidate in --questions was tried (lower --margin)"
    assert shortfall(BuildOptions("und", 3, 0, "m", questions="q.jsonl"), 12).startswith(  # (the file may hold more)
        "the candidates tried gave no more (raise --max-candidates")


def test_gen_model_pairs_from_a_prompt_file_by_a_local_judge(tiny_dir: Path, tmp_path: Path) -> None:
    """Free-text prompts (which the verifier cannot read) get pairs from a judge: kept where it accepts exactly one of
    the two images, that one chosen; an undecided image or two accepted ones drop the candidate."""
    from unigap.evaluate.judges import Judge
    from unigap.prefs.build import candidate_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat on a sofa\na red bicycle\na bowl of soup\na lighthouse at dusk\n")
    verdicts = iter([[0.9, 0.1, None, 0.8], [0.2, 0.7, 0.9, 0.6]])  # the first draw's images, then the second's
    calls: list[list[str]] = []

    def score(um, images, specs):
        calls.append([s.text for s in specs])
        return next(verdicts)

    judge = Judge("clip:fake", score, independent=True, threshold=0.5, directory="/fake")
    options = BuildOptions("gen-model", n=4, seed=0, model_name="m", batch_size=4, prompts=str(prompts),
                           judge="clip:/fake")
    specs = candidate_prompts(options)
    assert [s.category for s in specs] == ["free"] * 4
    rows = build_preferences(load_model(tiny_dir), options, prompts=specs, judge=judge)
    assert calls == [[s.text for s in specs]] * 2  # both draws, every prompt, in file order
    assert [row["candidate"] for row in rows] == [0, 1]
    assert [(row["chosen_score"], row["rejected_score"]) for row in rows] == [(0.9, 0.2), (0.7, 0.1)]
    assert all(row["prompt"] == specs[row["candidate"]].text and row["category"] == "free" for row in rows)
    assert rows[0]["judge"] == judge.describe()
    assert len(load_pairs(_written(tmp_path / "free.jsonl", rows), "gen")) == 2  # trainable as written


def test_a_judge_scores_shapeworld_train_prompts_too(tiny_dir: Path) -> None:
    """--judge without --prompts: the usual train-split candidates, kept by the judge's verdicts."""
    from unigap.evaluate.judges import Judge

    draws = iter([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])  # the first draw's verdicts, then the second's
    judge = Judge("vlm:fake", lambda um, images, specs: next(draws), independent=True, threshold=0.5)
    options = BuildOptions("gen-model", n=3, seed=1, model_name="m", batch_size=4, max_candidates=4, judge="vlm:DIR")
    rows = build_preferences(load_model(tiny_dir), options, judge=judge)
    expected = sample_records(4, 0, "train", canvas=64, draw_seed=1)
    assert [row["candidate"] for row in rows] == [0, 1, 2]  # every candidate: the two draws disagree on each
    assert all(row["prompt"] == expected[row["candidate"]][0].text and row["chosen_score"] == 1.0 for row in rows)


def _written(path: Path, rows: list[dict]) -> Path:
    from unigap.prefs.rows import write_rows

    return write_rows(path, rows)


def test_prompt_files_and_judges_are_checked_before_the_model_loads(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    from unigap.world import split_prompts

    free = tmp_path / "free.txt"
    free.write_text("a red circle\na cat on a sofa\n")
    code, _, err = build(capsys, tiny_dir, tmp_path / "a.jsonl", "gen-model", "--prompts", str(free))
    assert code == 2 and f"{free}:2:" in err and "free text needs --judge clip:DIR or vlm:DIR" in err
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(f"{split_prompts('test', 0)[0].text}\n")  # a test prompt of the partition eval uses (0):
    # refused under --seed 5 too, which used to fix the partition, so that other seeds trained on eval's test prompts
    code, _, err = build(capsys, tiny_dir, tmp_path / "b.jsonl", "gen-model", "--prompts", str(held_out))
    assert code == 2 and "is a test-split prompt; preference pairs are built from train-split prompts only" in err
    held_out.write_text(f"{split_prompts('test', 7)[0].text}\n")  # (--data-seed names another partition)
    code, _, err = build(capsys, tiny_dir, tmp_path / "b.jsonl", "gen-model", "--prompts", str(held_out),
                         "--data-seed", "7")
    assert code == 2 and "is a test-split prompt" in err
    code, _, err = build(capsys, tiny_dir, tmp_path / "c.jsonl", "gen-real", "--prompts", str(free))
    assert code == 2 and "gen-real pairs need a rendered scene of each prompt" in err
    code, _, err = build(capsys, tiny_dir, tmp_path / "d.jsonl", "gen-model", "--judge", f"clip:{tmp_path / 'none'}")
    assert code == 2 and "clip judge directory" in err and "Traceback" not in err
    code, _, err = build(capsys, tiny_dir, tmp_path / "e.jsonl", "gen-model", "--judge", "clip:DIR", "--margin", "0.3")
    assert code == 2 and "--margin compares the verifier's graded scores" in err
    assert not any(tmp_path.glob("*.jsonl"))


def test_train_split_prompts_from_a_file_keep_the_graded_rule(tiny_dir: Path, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    from unigap.world import split_prompts

    monkeypatch.setattr(build_module, "image_score", _spread_score)
    prompts = tmp_path / "train.txt"
    prompts.write_text("".join(f"{spec.text}\n" for spec in split_prompts("train", 0)[:12]))
    code, out, _ = build(capsys, tiny_dir, tmp_path / "gen.jsonl", "gen-model", "--prompts", str(prompts),
                         "--margin", "0.25")
    rows = read_rows(tmp_path / "gen.jsonl")
    assert code in (0, None) and rows and "judge" not in rows[0]
    assert all(row["chosen_score"] - row["rejected_score"] >= 0.25 for row in rows)
    assert {row["prompt"] for row in rows} <= set(prompts.read_text().splitlines())


@pytest.mark.parametrize(("references", "expected"), [
    (("2",) + ("3",) * 9, ("3", 1.0)),  # the majority answer, not the first annotator's odd one out
    (tuple("0123456789"), None),  # no reference beats the worse sample by the margin: dropped
])
def test_the_ground_truth_fallback_takes_the_best_reference_with_its_own_score(references, expected) -> None:
    """The fallback stored the first reference with score 1.0, though under the VQA soft score it may score 0.3,
    below the margin it was kept by."""
    from types import SimpleNamespace

    import numpy as np

    from unigap.data.understanding import UserQuestion
    from unigap.evaluate.vqa import vqa_score
    from unigap.prefs.build import BuildOptions, _answer_pairs

    samples = iter([["4"], ["5"]])  # two sampled answers, both wrong: no pair without the fallback
    um = SimpleNamespace(answer=lambda *args: next(samples), prompts=SimpleNamespace(answer_ids=lambda text: [1, 2]))
    options = BuildOptions("und", 1, 0, "m", fallback_gt=True, questions="q.jsonl")
    (out,) = _answer_pairs(um, [np.zeros((8, 8, 3), np.uint8)], [UserQuestion("count", "how many?", references)],
                           [{}], options, 0, lambda text, q: vqa_score(text, q.answers))
    assert (out if out is None else (out[0]["chosen"], out[0]["chosen_score"])) == expected
    if out is not None:
        assert out[0]["fallback"] and out[0]["chosen_score"] == vqa_score(out[0]["chosen"], references)


def test_a_gap_equal_to_the_margin_is_kept_whatever_its_rounding() -> None:
    """Scores are fractions: 1.0 − 0.9 computes as 0.0999…98, and a pair whose answers differ by exactly the margin
    was dropped (so were token-F1 gaps equal to the default 0.5 that computed as 0.4999…)."""
    from types import SimpleNamespace

    from unigap.data.understanding import UserQuestion
    from unigap.evaluate.vqa import vqa_score
    from unigap.prefs.build import _answer_pairs, clears

    assert 1.0 - 0.9 < 0.1 and clears(1.0 - 0.9, 0.1) and not clears(0.49, 0.5)
    assert clears(0.25, 1e-10) and not clears(0.0, 1e-10)  # a margin under the slack keeps no tie
    references = ("a",) * 3 + ("b",) * 7
    assert (vqa_score("b", references), vqa_score("a", references)) == (1.0, 0.9)
    samples = iter([["b"], ["a"]])
    um = SimpleNamespace(answer=lambda *args: next(samples), prompts=SimpleNamespace(answer_ids=lambda text: [1, 2]))
    options = BuildOptions("und", 1, 0, "m", margin=0.1, questions="q.jsonl")
    (out,) = _answer_pairs(um, [np.zeros((8, 8, 3), np.uint8)], [UserQuestion("other", "which?", references)],
                           [{}], options, 0, lambda text, q: vqa_score(text, q.answers))
    assert out is not None and (out[0]["chosen"], out[0]["rejected"]) == ("b", "a")


def test_out_that_holds_a_users_data_or_is_an_input_is_refused_before_any_work(tiny_dir: Path, tmp_path: Path,
                                                                               capsys) -> None:
    """`--out` onto the questions file replaced 40 questions with one pair; onto a world sample's samples.jsonl or a
    training log, it replaced them too (exit 0). An earlier pairs file is still rebuilt."""
    Image.new("RGB", (64, 64), "white").save(tmp_path / "white.png")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"image": "white.png", "question": "How many?", "answer": "zero"}) + "\n")
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n')
    for out, extra, message in ((questions, ["--questions", str(questions)], "is a file this command reads"),
                                (log, [], "exists and holds no preference pairs")):
        before = out.read_bytes()
        code, _, err = build(capsys, Path("MISSING"), out, "und", "--fallback-gt", *extra)
        assert code == 2 and message in err and out.read_bytes() == before, err
    pairs = tmp_path / "und.jsonl"
    assert build(capsys, tiny_dir, pairs, "und", "--fallback-gt")[0] in (0, None)
    assert build(capsys, tiny_dir, pairs, "und", "--fallback-gt", "--seed", "1")[0] in (0, None)  # (its own file)
