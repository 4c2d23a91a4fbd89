"""The real path: every generate-side command on a Janus-Pro-shaped checkpoint (384 px, 576 tokens, codebook 16384,
byte-level BPE, chat template, processor files, no sidecar), as a user would run them. Slow: 576-token images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigap.cli import main
from unigap.model import save_random_janus_pro

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def janus_pro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_janus_pro(tmp_path_factory.mktemp("janus-pro"))


def _run(*args: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None)


def test_eval_writes_a_report_on_janus_pro_geometry(janus_pro: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    _run("eval", "--model", str(janus_pro), "--n", "2", "--batch-size", "2", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["generation"]["n"] == 2 and report["understanding"]["n"] == 2
    assert report["vq_reconstruction"]["n"] == 2  # the verifier reads 384 px reconstructions (was: a crash)
    assert report["edit"] is None and "cannot edit" in report["edit_skipped"]
    (tmp_path / "again.json").write_text(out.read_text())  # a second model evaluated on the same items
    _run("compare", str(out), str(tmp_path / "again.json"), "--by-category", "--out", str(tmp_path / "cmp.json"))
    compared = json.loads((tmp_path / "cmp.json").read_text())
    generation = compared["results"]["again"]["generation.accuracy"]
    assert generation["n"] == 2 and generation["delta"] == 0 and compared["methods"] == ["eval", "again"]


def test_generate_and_ask(janus_pro: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    image = tmp_path / "image.png"
    _run("generate", "--model", str(janus_pro), "--prompt", "a red circle", "--out", str(image))
    assert Image.open(image).size == (384, 384)
    _run("ask", "--model", str(janus_pro), "--image", str(image), "--question", "What color is it?",
         "--max-new-tokens", "3")


def test_generate_a_prompt_file_writes_384_px_pngs_and_their_index(janus_pro: Path, tmp_path: Path) -> None:
    from PIL import Image

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na photo of a cat on a sofa\n")  # free text: a real checkpoint's prompts
    out = tmp_path / "images"
    _run("generate", "--model", str(janus_pro), "--prompts", str(prompts), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "metadata.jsonl"]
    assert {Image.open(out / name).size for name in ("0000.png", "0001.png")} == {(384, 384)}
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["file_name"], r["prompt"]) for r in rows] == [("0000.png", "a red circle"),
                                                              ("0001.png", "a photo of a cat on a sofa")]


def test_refine_falls_back_to_regenerating(janus_pro: Path, tmp_path: Path) -> None:
    out = tmp_path / "refine"
    _run("refine", "--model", str(janus_pro), "--n", "2", "--rounds", "1", "--out", str(out))
    report = json.loads((out / "refine.json").read_text())
    assert report["config"]["refiner_used"] == "regenerate"
    assert [row["round"] for row in report["rounds"]] == [0, 1]
    assert report["best_of_n"]["n_samples"] == 2 and "accuracy" in report["oracle"]
    assert (out / "strips" / "000.png").is_file()


def test_refine_edit_on_a_model_that_cannot_edit_is_one_line(janus_pro: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "--model", str(janus_pro), "--refiner", "edit", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("unigap: error: --refiner edit needs")


def test_selfimprove_runs_on_janus_pro(janus_pro: Path, tmp_path: Path) -> None:
    out = tmp_path / "si"
    _run("selfimprove", "--model", str(janus_pro), "--method", "sft", "--n-prompts", "2", "--samples", "2",
         "--epochs", "1", "--eval-n", "2", "--no-guard", "--out", str(out))
    result = json.loads((out / "selfimprove.json").read_text())
    assert result["after"]["generation_accuracy"]["n"] == 2
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_unimrg_trains_on_janus_pro_geometry(janus_pro: Path, tmp_path: Path) -> None:
    """The maps' targets are 576-token images of the BPE model's own VQ; the instructions tokenize apart."""
    config = tmp_path / "unimrg.toml"
    config.write_text("n_scenes = 4\nbatch_size = 1\nquestions_per_image = 1\nsteps = 1\nlora_rank = 4\n")
    out = tmp_path / "unimrg"
    _run("train", "--model", str(janus_pro), "--objective", "unimrg", "--config", str(config), "--out", str(out))
    [row] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"und/loss", "reconstruction/loss", "segmentation/loss", "depth/loss"} <= set(row)
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("reward", ["verifier", "verifier-binary"])
def test_refine_train_regenerates_on_janus_pro(janus_pro: Path, tmp_path: Path, reward: str) -> None:
    """GRPO's refine stage on a model that cannot edit: free-text reflections, images regenerated from the refined
    prompt and scored at 384 px (the verifier's graded score, or its verdict)."""
    config = tmp_path / "grpo.toml"
    config.write_text("steps = 2\nprompts_per_step = 1\nnum_generations = 2\neval_n = 0\nlora_rank = 4\n"
                      "max_completion_length = 4\n")
    out = tmp_path / "grpo"
    _run("refine", "train", "--model", str(janus_pro), "--config", str(config), "--reward", reward, "--out", str(out))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["stage"] for row in rows] == ["generate", "refine"]
    key = "image_score" if reward == "verifier" else reward  # the reward's column, named after it
    assert f"generate/rewards/{key}/mean" in rows[0]
    assert (out / "adapter_model.safetensors").is_file() and (out / "grpo.json").is_file()


def test_refine_train_self_rewarded_generation_on_janus_pro(janus_pro: Path, tmp_path: Path) -> None:
    """The generation stage alone, rewarded by the frozen base judge at 384 px, the verifier's audit beside it."""
    config = tmp_path / "grpo.toml"
    config.write_text("steps = 2\nprompts_per_step = 1\nnum_generations = 2\neval_n = 0\nlora_rank = 4\n")
    out = tmp_path / "grpo"
    _run("refine", "train", "--model", str(janus_pro), "--config", str(config), "--stages", "generate",
         "--reward", "base-pyes", "--out", str(out))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["stage"] for row in rows] == ["generate", "generate"]
    assert all(0 <= row["generate/audit/verifier_accuracy"] <= 1 for row in rows)
    report = json.loads((out / "grpo.json").read_text())
    assert report["config"]["reward"] == "base-pyes" and report["guard"]["stopped"] is False
    assert report["guard"]["alarm"] is None  # two generation steps: fewer than two audit windows
    assert (out / "adapter_model.safetensors").is_file()


def test_prefs_build_sentence_answers_on_janus_pro(janus_pro: Path, tmp_path: Path) -> None:
    """Understanding pairs in the full-sentence form, with the BPE tokenizer's answer ids and reference log-probs."""
    out = tmp_path / "und.jsonl"
    _run("prefs", "build", "--model", str(janus_pro), "--kind", "und", "--answer-form", "sentence", "--n", "1",
         "--fallback-gt", "--max-candidates", "4", "--batch-size", "2", "--out", str(out))
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["question"].endswith("Answer in a full sentence.") and row["chosen_ids"]
    trl = tmp_path / "und-trl.parquet"
    _run("prefs", "export", str(out), "--out", str(trl))  # TRL's columns, and back into training
    _run("train", "--model", str(janus_pro), "--strategy", "und-only", "--und", str(trl), "--steps", "1",
         "--out", str(tmp_path / "dpo"))
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()


def test_eval_scores_your_questions_and_generate_writes_geneval_folders(janus_pro: Path, tmp_path: Path) -> None:
    from unigap.world.dataset import write_dataset

    write_dataset(tmp_path / "data", 2, 0, "test", questions=1)
    out = tmp_path / "eval.json"
    _run("eval", "--model", str(janus_pro), "--questions", str(tmp_path / "data" / "questions.jsonl"), "--n", "2",
         "--batch-size", "2", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["understanding"]["vqa_score"]["n"] == 2 and report["config"]["questions"] == "2 given"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle", "tag": "single_object"}\n')
    _run("generate", "--model", str(janus_pro), "--prompts", str(prompts), "--layout", "geneval", "--n", "2",
         "--out", str(tmp_path / "geneval"))
    assert sorted(p.name for p in (tmp_path / "geneval" / "00000" / "samples").iterdir()) == ["00000.png", "00001.png"]


def test_sft_with_both_tasks(janus_pro: Path, tmp_path: Path) -> None:
    from unigap.world.dataset import write_dataset

    data = tmp_path / "data"
    write_dataset(data, 4, 0, "train", questions=1)
    out = tmp_path / "sft"
    _run("train", "--model", str(janus_pro), "--objective", "sft", "--und-data", str(data / "questions.jsonl"),
         "--gen-data", str(data / "samples.jsonl"), "--steps", "2", "--out", str(out))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and {"und/loss", "gen/loss"} <= set(rows[0])
    assert (out / "adapter_model.safetensors").is_file()


def test_tune_runs_on_janus_pro_geometry(janus_pro: Path, tmp_path: Path) -> None:
    """`unigap tune` on 576-token images: rendered-scene pairs (a random model's two samples score alike, so no
    gen-model pair), checkpoints judged at 384 px against the base; the loss also scored under CFG."""
    out = tmp_path / "tune"
    _run("tune", "--model", str(janus_pro), "--kinds", "gen-real", "--lrs", "1e-3", "--nll-weights", "0", "--steps",
         "2", "--eval-every", "1", "--n", "2", "--pairs", "1", "--cfg-scales", "0,5", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert results["base"]["n"] == 2 and [p["step"] for p in results["runs"][0]["points"]] == [1, 2]
    assert results["chosen"] is not None and results["chosen"]["step"] in (1, 2)
    assert [run["name"] for run in results["runs"]] == ["gen-real_lr0.001_beta0.1_nll0", "gen-real_lr0.001_beta0.1_nll0_cfg5"]
    cfg_run = out / "runs" / results["runs"][1]["name"]
    assert json.loads((cfg_run / "train_config.json").read_text())["gen_cfg_scale"] == 5.0
    assert [p["step"] for p in results["runs"][1]["points"]] == [1, 2]


def test_diagnose_on_janus_pro_geometry(janus_pro: Path, tmp_path: Path) -> None:
    for kind, extra in (("und", ["--fallback-gt"]), ("gen-real", [])):
        _run("prefs", "build", "--model", str(janus_pro), "--kind", kind, "--n", "4", "--batch-size", "4", *extra,
             "--out", str(tmp_path / f"{kind}.jsonl"))
    _run("diagnose", "--model", str(janus_pro), "--und", str(tmp_path / "und.jsonl"), "--gen",
         str(tmp_path / "gen-real.jsonl"), "--pairs", "4", "--out", str(tmp_path / "diag"))
    report = json.loads((tmp_path / "diag" / "diagnostics.json").read_text())
    assert report["n"] == 4 and (tmp_path / "diag" / "manifest.json").is_file()


def test_the_study_runs_on_janus_pro_geometry(janus_pro: Path, tmp_path: Path) -> None:
    """The main command on a converted checkpoint: an inference-time arm (no pairs to build at 576 tokens)."""
    out = tmp_path / "study"
    _run("study", "--model", str(janus_pro), "--quick", "--methods", "refine", "--seeds", "2", "--n", "2",
         "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["base", "refine"] and (out / "report.html").is_file()
    assert len(list((out / "base" / "seed0" / "images").glob("*.png"))) == 2  # kept for the trained arms' win rate
