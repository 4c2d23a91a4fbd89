"""`unigap generate --layout geneval`: GenEval's folders, read the way GenEval's scorer reads them; batched sampling;
atomic prompt folders and --resume; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from unigap.cli import main
from unigap.errors import UnigapWarning
from unigap.evaluate.layouts import write_geneval_layout
from unigap.model import UnifiedModel

GENEVAL_LINE = ('{"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "cat", "count": 1}], '
                '"prompt": "a photo of a bench and a cat"}')
LINES = [GENEVAL_LINE, "a red circle", '{"prompt": "a blue square", "tag": "colors"}']


def run_main(capsys: pytest.CaptureFixture[str], args: list) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def scorer_view(imagedir: Path) -> list[tuple[dict, str]]:
    """(metadata, image path) pairs, found as GenEval's evaluation/evaluate_images.py finds them."""
    found = []
    for subfolder in sorted(os.listdir(imagedir)):
        folder = imagedir / subfolder
        if not folder.is_dir() or not subfolder.isdigit():
            continue
        with open(folder / "metadata.jsonl") as fp:
            metadata = json.load(fp)
        for name in sorted(os.listdir(folder / "samples")):
            if (folder / "samples" / name).is_file() and re.match(r"\d+\.png", name):
                found.append((metadata, f"{subfolder}/samples/{name}"))
    return found


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The prompts of each model call."""
    seen: list[list[str]] = []
    original = UnifiedModel.generate_images

    def spy(self, prompts, *args, **kwargs):
        seen.append(list(prompts))
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(UnifiedModel, "generate_images", spy)
    return seen


def test_geneval_layout_is_what_genevals_scorer_reads(tiny_dir, prompts, tmp_path, capsys, calls) -> None:
    out = tmp_path / "images"
    args = ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", "geneval", "--n", 2, "--batch-size", 2,
            "--out", out]
    with pytest.warns(UnigapWarning, match=r"evaluation_metadata.jsonl:2: 1 of 3 prompt\(s\) without GenEval's "
                                           r"metadata \(tag, include\): its scorer stops at their folders"):
        code, stdout, _ = run_main(capsys, args)  # (GenEval's scorer reads every folder's tag: a KeyError there)
    assert code == 0 and "wrote 3 of 3 prompt folder(s)" in stdout
    assert calls == [["a photo of a bench and a cat", "a red circle"], ["a blue square"]]  # batched
    expected = [json.loads(LINES[0]), {"prompt": "a red circle"}, json.loads(LINES[2])]
    assert scorer_view(out) == [(meta, f"{i:05d}/samples/{k:05d}.png") for i, meta in enumerate(expected)
                                for k in range(2)]
    assert (out / "00000" / "metadata.jsonl").read_text() == json.dumps(json.loads(GENEVAL_LINE))  # as GenEval's
    for folder in ("00000", "00001", "00002"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["grid.png", "metadata.jsonl", "samples"]
        with Image.open(out / folder / "samples" / "00001.png") as image:
            assert image.format == "PNG" and image.size == (64, 64)
        with Image.open(out / folder / "grid.png") as sheet:
            assert sheet.size == (128, 64)
    assert sorted(p.name for p in out.iterdir() if not p.is_dir()) == ["inputs.json", "manifest.json", "settings.json"]

    code, _, err = run_main(capsys, args)  # a second run must not mix into the first
    assert code == 2 and "pass --resume" in err


def test_resume_writes_only_the_missing_folders_and_the_same_images(tiny_dir, prompts, tmp_path, capsys,
                                                                    calls) -> None:
    out = tmp_path / "images"
    args = ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", "geneval", "--batch-size", 2,
            "--out", out]
    assert run_main(capsys, args)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    kept = (out / "00000" / "samples" / "00000.png").stat().st_mtime_ns
    for png in (out / "00002" / "samples").iterdir():
        png.unlink()
    (out / "00002").rename(out / ".00002.killed.tmp")  # what a killed writer leaves: a temporary folder
    calls.clear()
    code, stdout, _ = run_main(capsys, [*args, "--resume"])
    assert code == 0 and "wrote 1 of 3" in stdout
    assert calls == [["a blue square"]]  # the finished batch is skipped
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before  # the very images of an uninterrupted run
    assert (out / "00000" / "samples" / "00000.png").stat().st_mtime_ns == kept
    assert not list(out.glob(".*"))
    code, _, err = run_main(capsys, [*args, "--resume", "--seed", 1])
    assert code == 2 and "other settings" in err


def test_a_run_killed_while_its_model_loaded_starts_again(tiny_dir, prompts, tmp_path, capsys) -> None:
    """A hard kill between the inputs record and settings.json left an --out that a rerun refused as begun and
    --resume as holding no run."""
    out = tmp_path / "images"
    args = ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", "geneval", "--batch-size", 2,
            "--out", out]
    assert run_main(capsys, args)[0] == 0
    for entry in out.iterdir():  # all but what the kill leaves: the claimed inputs
        if entry.name != "inputs.json":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    code, stdout, err = run_main(capsys, args)
    assert code == 0 and (out / "settings.json").is_file() and len(list(out.glob("0000*"))) == 3, err


def test_resume_compares_the_weights_not_their_paths_and_where_the_images_were_drawn(tiny_dir, prompts, tmp_path,
                                                                                      capsys) -> None:
    """The model's path spelled otherwise (a job resumed from another folder) reads the same weights: resumed. A run
    begun in another dtype or on another device drew other images for the same seeds: refused. A run recorded
    before these were kept resumes as it did, and one without the weights' record is held to its model's path."""
    out = tmp_path / "images"
    args = ["generate", "--prompts", prompts, "--layout", "geneval", "--max-prompts", 1, "--out", out]
    assert run_main(capsys, [*args, "--model", tiny_dir])[0] == 0
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["model_dtype"], settings["device"]) == ("float32", "cpu")
    code, stdout, err = run_main(capsys, [*args, "--model", f"{tiny_dir}{os.sep}", "--resume"])
    assert code == 0 and "wrote 0 of 1" in stdout, err
    for key, value in (("model_dtype", "bfloat16"), ("device", "cuda")):
        (out / "settings.json").write_text(json.dumps(settings | {key: value}))
        code, _, err = run_main(capsys, [*args, "--model", tiny_dir, "--resume"])
        assert code == 2 and f'{key}: "{value}" →' in err, err
    (out / "settings.json").write_text(json.dumps({k: v for k, v in settings.items()
                                                   if k not in ("model_dtype", "device")}))
    assert run_main(capsys, [*args, "--model", tiny_dir, "--resume"])[0] == 0
    (out / "inputs.json").unlink()  # a run begun before the weights' record: nothing but the path names its model
    code, _, err = run_main(capsys, [*args, "--model", f"{tiny_dir}{os.sep}", "--resume"])
    assert code == 2 and "model: " in err, err


def test_resume_refuses_an_adapter_retrained_in_place(tiny_dir, prompts, tmp_path, capsys) -> None:
    """The adapter is compared by content, not by its path: resuming would mix two models' images."""
    import torch

    from unigap.model import load_model

    def make_adapter(seed: int) -> None:
        um = load_model(tiny_dir)
        um.add_lora(rank=4, alpha=8, dropout=0.0)
        with torch.no_grad():
            for param in um.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
        um.save_adapter(adapter)

    adapter = tmp_path / "adapter"
    out = adapter / "geneval"  # the run's outputs inside the adapter's folder: they are not the adapter
    make_adapter(0)
    args = ["generate", "--model", tiny_dir, "--adapter", adapter, "--prompts", prompts, "--layout", "geneval",
            "--max-prompts", 1, "--out", out]
    assert run_main(capsys, args)[0] == 0
    code, stdout, _ = run_main(capsys, [*args, "--resume"])
    assert code == 0 and "wrote 0 of 1" in stdout
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    make_adapter(1)
    code, _, err = run_main(capsys, [*args, "--resume"])
    assert code == 2 and "under other inputs (compared by file name and content) (adapter_files:" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_an_interrupted_run_leaves_only_complete_folders(um, tmp_path, monkeypatch) -> None:
    import unigap.evaluate.layouts as layouts

    tiles = []

    def grid_then_interrupt(images):
        if tiles:
            raise KeyboardInterrupt
        tiles.append(images)
        return Image.new("RGB", (64, 64))

    monkeypatch.setattr(layouts, "grid", grid_then_interrupt)
    rows = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]
    with pytest.raises(KeyboardInterrupt):
        write_geneval_layout(um, rows, tmp_path / "out", n=1, seed=0, cfg_scale=2.0, temperature=1.0, batch_size=2,
                             progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000"]  # 00001 was half-written: gone
    assert (tmp_path / "out" / "00000" / "samples" / "00000.png").is_file()


@pytest.mark.parametrize(
    "extra, lines, message",
    [
        ([], ["a red circle", "{not json"], "evaluation_metadata.jsonl:2: not valid JSON"),
        ([], ["a red circle", '{"tag": "colors"}'], 'evaluation_metadata.jsonl:2: a JSON line needs a string "prompt"'),
        ([], ["a red circle", "", "a blue square"], "evaluation_metadata.jsonl:2: empty line"),
        # (a traceback once the model had loaded, leaving a folder neither a rerun nor --resume would take)
        ([], ["a red circle", "a blue square <begin_of_image>"],
         "evaluation_metadata.jsonl:2: generation prompts must not contain image tokens"),
        ([], None, "cannot read prompt file"),
        (["--batch-size", 0], ["a red circle"], "--batch-size must be positive"),
        (["--layout", "mosaic"], ["a red circle"], "--layout must be one of grid, geneval"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_dir, tmp_path, capsys, extra, lines, message) -> None:
    prompts = tmp_path / "evaluation_metadata.jsonl"
    if lines is not None:
        prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "images"
    code, _, err = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", "geneval",
                                     "--out", out, *extra])
    assert code == 2 and err.startswith("unigap: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "a red circle", "--layout", "geneval", "--out", "OUT"], "--layout geneval needs --prompts"),
        (["--prompt", "a red circle", "--resume", "--out", "OUT/x.png"], "apply to --layout geneval only"),
        (["--prompt", "a red circle", "--batch-size", 4, "--out", "OUT/x.png"], "apply to --layout geneval only"),
        (["--prompt", "a red circle", "--max-prompts", 2, "--out", "OUT/x.png"], "--max-prompts limits a --prompts"),
    ],
)
def test_geneval_only_flags(tiny_dir, tmp_path, capsys, args, message) -> None:
    args = [str(a).replace("OUT", str(tmp_path / "o")) for a in args]
    code, _, err = run_main(capsys, ["generate", "--model", tiny_dir, *args])
    assert code == 2 and message in err and not (tmp_path / "o").exists()


def test_resume_refuses_a_directory_of_something_else(tiny_dir, prompts, tmp_path, capsys) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    code, _, err = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", "geneval",
                                     "--resume", "--out", tmp_path / "o"])
    assert code == 2 and "holds no generate run" in err


@pytest.mark.parametrize("layout", ["geneval", "grid"])
def test_max_prompts_takes_the_files_first_lines(tiny_dir, prompts, tmp_path, capsys, calls, layout) -> None:
    out = tmp_path / layout
    code, stdout, err = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", layout,
                                          "--max-prompts", 2, "--out", out])
    assert code == 0, err
    assert [p for call in calls for p in call] == ["a photo of a bench and a cat", "a red circle"]
    if layout == "geneval":
        assert "wrote 2 of 2 prompt folder(s)" in stdout and sorted(p.name for p in out.iterdir() if p.is_dir()) == [
            "00000", "00001"]
        code, _, err = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", layout,
                                         "--max-prompts", 3, "--out", out, "--resume"])
        assert code == 2 and "max_prompts" in err  # a resumed run writes the same prompts' folders
        assert run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", layout,
                                 "--max-prompts", 3, "--out", tmp_path / "all"])[0] == 0
        code, stdout, _ = run_main(capsys, ["generate", "--model", tiny_dir, "--prompts", prompts, "--layout", layout,
                                            "--out", tmp_path / "all", "--resume"])  # all 3 either way: the same run
        assert code == 0 and "wrote 0 of 3" in stdout
    else:
        assert len((out / "metadata.jsonl").read_text().splitlines()) == 2
