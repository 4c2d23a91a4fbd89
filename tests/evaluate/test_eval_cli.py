"""`unigap eval/generate/ask` on a random tiny model, and user mistakes: one stderr line, exit 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from unigap.cli import main
from unigap.evaluate import layouts

REQUIRED = {
    "understanding": ("accuracy", "by_kind"),
    "generation": ("accuracy", "by_category"),
    "nonunification": ("score", "by_category"),
    "weak_generation": ("rate", "by_category"),
    "judge": ("accuracy", "by_category"),
}


def run_main(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_eval_writes_the_report(tiny_dir, tmp_path, capsys):
    out = tmp_path / "reports" / "eval.json"
    code, stdout, _ = run_main(
        capsys, ["eval", "--model", tiny_dir, "--n", 4, "--seed", 3, "--out", out, "--batch-size", 3]
    )
    assert code == 0 and f"wrote {out}" in stdout and "understanding.accuracy" in stdout
    report = json.loads(out.read_text())
    for name, (key, breakdown) in REQUIRED.items():
        assert {key, "n", "stderr", breakdown} <= set(report[name]), name
    assert report["understanding"]["n"] == 4 and report["config"]["model"] == str(tiny_dir)
    assert len(report["records"]["generation"]) == 4
    assert report["vq_reconstruction"]["n"] == 4 and 0 <= report["vq_reconstruction"]["accuracy"] <= 1
    low, high = report["vq_reconstruction"]["ci95"]  # (Wilson's: every metric of a report has its interval)
    assert low <= report["vq_reconstruction"]["accuracy"] <= high
    assert "vq_reconstruction.accuracy" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]  # no temporary file left


def test_eval_generates_a_users_prompt_file(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n{"prompt": "two blue squares"}\n{"prompt": "a green triangle"}\n')
    out = tmp_path / "eval.json"
    code, _, _ = run_main(capsys, ["eval", "--model", tiny_dir, "--n", 2, "--prompts", prompts, "--out", out])
    report = json.loads(out.read_text())
    assert code == 0 and [r["prompt"] for r in report["records"]["generation"]] == ["a red circle", "two blue squares"]
    assert report["understanding"]["n"] == 2 and report["config"]["prompts"] == "2 given"
    bad = tmp_path / "bad.txt"
    bad.write_text("a red circle\n\ntwo blue squares\n")
    code, _, err = run_main(capsys, ["eval", "--model", tiny_dir, "--prompts", bad, "--out", tmp_path / "b.json"])
    assert code == 2 and err.strip() == f"unigap: error: {bad}:2: empty line" and not (tmp_path / "b.json").exists()


def test_generate_writes_one_png_per_prompt_of_a_file(tiny_dir, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red circle\n{"prompt": "free text is fine here"}\n')
    out = tmp_path / "images"
    code, stdout, stderr = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--out", out])
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "metadata.jsonl"]
    assert stdout.strip() == f"wrote 2 images, one per prompt, and metadata.jsonl to {out}/"
    assert "generate: 2/2" in stderr  # (progress, as the geneval layout shows it: it showed nothing)
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded["prompt"] == ["a red circle", "free text is fine here"] and loaded[0]["image"].size == (64, 64)
    (out / "2024.png").write_text("a user's own file, named like an image")
    prompts.write_text("a blue square\n")  # a rerun with fewer prompts leaves no earlier image behind
    code, stdout, _ = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--out", out])
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["0000.png", "2024.png", "metadata.jsonl"]
    assert stdout.strip() == f"wrote 1 image, one per prompt, and metadata.jsonl to {out}/"  # (was "an image to")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    prompts.write_text("a red circle\na green triangle\n")  # a rerun stopped at its second image changes nothing
    sheets, real_grid = [], layouts.grid

    def grid_then_stop(images):  # ^C as the second prompt's image is laid out
        sheets.append(real_grid(images) if not sheets else None)
        if len(sheets) == 2:
            raise KeyboardInterrupt
        return sheets[0]

    with monkeypatch.context() as patched:
        patched.setattr("unigap.evaluate.layouts.grid", grid_then_stop)
        code, _, err = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--out", out])
    assert code == 130 and {p.name: p.read_bytes() for p in out.iterdir()} == before, err
    code, _, err = run_main(capsys, ["generate", "--model", tiny_dir, "--out", tmp_path / "x.png"])
    assert code == 2 and err.strip() == "unigap: error: give exactly one of --prompt and --prompts"
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code, _, err = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--out", blocker / "sub"])
    assert code == 2 and err.strip() == f"unigap: error: cannot create {blocker / 'sub'}: {blocker} is a file"


@pytest.mark.parametrize("n, size", [(1, (64, 64)), (3, (128, 128))])
def test_generate_writes_one_png_or_a_grid(tiny_dir, tmp_path, capsys, n, size):
    out = tmp_path / "img.png"
    args = ["generate", "--model", tiny_dir, "--prompt", "a red circle", "--n", n, "--seed", 1, "--out", out]
    code, stdout, _ = run_main(capsys, args)
    assert code == 0 and stdout.strip() == f"wrote {'an image' if n == 1 else f'a grid of {n} images'} to {out}"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == size
    first = out.read_bytes()
    run_main(capsys, args)
    assert out.read_bytes() == first  # seeded


def test_ask_prints_an_answer(tiny_dir, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(image)
    args = ["ask", "--model", tiny_dir, "--image", image, "--question", "What color is the circle?"]
    code, stdout, _ = run_main(capsys, [*args, "--max-new-tokens", 3])
    assert code == 0 and 1 <= len(stdout.split()) <= 3


@pytest.fixture
def paths(tmp_path, tiny_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "FILE").write_text("not an image")
    Image.new("RGB", (64, 64), (0, 200, 0)).save(tmp_path / "ok.png")
    return {"MODEL": tiny_dir, "TMP": tmp_path}


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--model", "TMP/missing", "--n", 2, "--out", "TMP/o.json"], "does not exist"),
        (["eval", "--model", "TMP/empty", "--n", 2, "--out", "TMP/o.json"], "no config.json"),
        (["eval", "--model", "MODEL", "--n", 0, "--out", "TMP/o.json"], "--n must be positive"),
        (["eval", "--model", "MODEL", "--n", 2, "--out", "TMP/o.json", "--batch-size", 0], "--batch-size must be"),
        (["eval", "--model", "MODEL", "--n", 2, "--out", "TMP"], "is a directory"),
        (["eval", "--model", "MODEL", "--n", 2, "--out", "TMP/FILE/o.json"], "is a file"),
        (["eval", "--model", "MODEL", "--n", 2, "--out", "TMP/o.png"], "this writes JSON; give a file name ending"),
        (["eval", "--model", "MODEL", "--split", "x", "--out", "TMP/eval_lam0.5"], "--split must be"),  # (a name)
        (["eval", "--model", "MODEL", "--adapter", "TMP/none", "--n", 2, "--out", "TMP/o.json"], "does not exist"),
        (["eval", "--model", "MODEL", "--adapter", "TMP/empty", "--n", 2, "--out", "TMP/o.json"], "no PEFT adapter"),
        (["generate", "--model", "MODEL", "--prompt", "a circle", "--n", -1, "--out", "TMP/i.png"], "--n must be"),
        (["generate", "--model", "MODEL", "--prompt", " ", "--out", "TMP/i.png"], "--prompt must not be empty"),
        (["generate", "--model", "MODEL", "--prompt", "a circle", "--temperature", -1, "--out", "TMP/i.png"],
         "--temperature must be >= 0"),
        (["generate", "--model", "MODEL", "--prompt", "a circle", "--temperature", 1e-38, "--out", "TMP/i.png"],
         "(a positive one from 1e-06 to 1e+06), got 1e-38"),  # (logits / T overflowed: every probability NaN)
        (["eval", "--model", "MODEL", "--cfg", 1e38, "--n", 2, "--out", "TMP/o.json"],
         "--cfg must be a number from 0 to 1e+06, got 1e+38"),
        (["generate", "--model", "MODEL", "--prompt", "a circle", "--n", 1_000_000, "--out", "TMP/i.png"],
         "--n must be from 1 to 256"),  # (sampled in one call: killed by the kernel, out of memory)
        (["ask", "--model", "MODEL", "--image", "TMP/ok.png", "--question", "What?", "--max-new-tokens", 1000],
         "--max-new-tokens 1000: with the question and its image"),  # (answered past the model's context)
        (["generate", "--model", "MODEL", "--prompt", "a circle", "--out", "TMP"], "is a directory"),
        (["ask", "--model", "MODEL", "--image", "TMP/FILE", "--question", "What?"], "cannot read"),
        (["ask", "--model", "MODEL", "--image", "TMP/nope.png", "--question", "What?"], "image file not found"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(paths, capsys, args, message):
    def fill(arg):
        text = str(arg)
        for name, value in paths.items():
            text = text.replace(name, str(value), 1) if text.startswith(name) else text
        return text

    code, _, err = run_main(capsys, [fill(a) for a in args])
    assert code == 2
    assert err.startswith("unigap: error: ") and err.count("\n") == 1 and message in err, err
    assert not (paths["TMP"] / "o.json").exists()


def test_an_adapter_of_another_base_model_names_the_first_mismatch(tiny_dir, tmp_path, capsys):
    """One line naming the first tensor that does not fit (the adapter is checked before PEFT wraps the model)."""
    from unigap.model import load_model
    from unigap.model.tiny import save_random_tiny
    from unigap.world import vocabulary

    other = load_model(save_random_tiny(tmp_path / "other", vocabulary(), 0, hidden_size=32, num_layers=2,
                                        num_heads=2))
    other.add_lora(rank=4, alpha=8, dropout=0.0)
    other.save_adapter(tmp_path / "adapter")
    capsys.readouterr()
    code, _, err = run_main(capsys, ["eval", "--model", str(tiny_dir), "--adapter", str(tmp_path / "adapter"),
                                     "--n", "2", "--out", str(tmp_path / "o.json")])
    assert code == 2 and err.count("\n") == 1, err
    assert f"the adapter in {tmp_path / 'adapter'} does not fit this model: " in err
    assert "in the adapter and is [" in err and "(an adapter of another base model?)" in err
    assert not (tmp_path / "o.json").exists()
