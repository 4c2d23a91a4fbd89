"""Preference pairs in TRL's column convention: `prefs export` out, `train`/`load_pairs` in, the same pairs back."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unigap.atomic import file_fingerprint
from unigap.data.tables import StoredImage

from test_prefs_build import run_main
from unigap.errors import UnigapWarning, UserError
from unigap.model import load_model
from unigap.prefs.build import BuildOptions, build_preferences
from unigap.prefs.rows import check_pair_file, load_pairs, read_rows, stored_images, write_rows
from unigap.train.dpo import with_reference


@pytest.fixture(scope="module")
def built(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trl")
    um = load_model(tiny_dir)
    und = build_preferences(um, BuildOptions("und", 2, 0, str(tiny_dir), fallback_gt=True))
    gen = build_preferences(um, BuildOptions("gen-real", 2, 0, str(tiny_dir)))
    return {"und": write_rows(root / "und.jsonl", und), "gen": write_rows(root / "gen.jsonl", gen)}


def _same(a, b) -> None:
    assert type(a) is type(b)
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, np.asarray(y)), name
        elif isinstance(x, float):
            assert x == pytest.approx(y, abs=1e-4), name
        else:
            assert x == y, name


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_then_load_gives_the_same_pairs(tiny_dir: Path, built, tmp_path: Path, capsys, suffix: str) -> None:
    um = load_model(tiny_dir)
    for task, source in built.items():
        out = tmp_path / f"{task}-trl{suffix}"
        model = ["--model", str(tiny_dir)] if task == "gen" else []
        code, stdout, err = run_main(capsys, ["prefs", "export", str(source), "--out", str(out), *model])
        assert code == 0 and "TRL's convention" in stdout, err
        rows = read_rows(out)
        assert (rows[0]["seed"], rows[0]["data_seed"]) == (0, 0)  # (their provenance: the draw and the partition)
        if task == "und":
            assert {"prompt", "chosen", "rejected", "images", "ref_chosen_logps"} <= set(rows[0])
            assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
        else:
            assert {"prompt", "chosen_image", "rejected_image", "chosen_ids"} <= set(rows[0])
        for original, back in zip(load_pairs(source, task), load_pairs(out, task, um), strict=True):
            _same(original, back)
            if task == "und":  # kept encoded until scored: a large file is not held as pixels
                assert isinstance(back.image, StoredImage)
    if suffix == ".jsonl":
        assert len(list((tmp_path / "und-trl_images").glob("*.png"))) == 2
    else:  # `datasets` reads the image columns as images, as TRL's trainers take them
        from datasets import load_dataset

        und = load_dataset("parquet", data_files=str(tmp_path / "und-trl.parquet"), split="train")
        gen = load_dataset("parquet", data_files=str(tmp_path / "gen-trl.parquet"), split="train")
        assert isinstance(und[0]["images"][0], Image.Image) and isinstance(gen[0]["chosen_image"], Image.Image)


def test_trl_generation_rows_claim_their_images_unless_they_give_ids(built, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), "white").save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), "black").save(tmp_path / "b.png")
    path = tmp_path / "gen.jsonl"
    by_image = {"prompt": "a red circle", "chosen_image": "a.png", "rejected_image": "b.png"}
    by_ids = by_image | {"chosen_ids": [1] * 64, "rejected_ids": [2] * 64}
    path.write_text(json.dumps(by_image) + "\n" + json.dumps(by_ids) + "\n")
    stored = stored_images(check_pair_file(path, "gen"), path)
    assert [image.digest for image in stored] == [file_fingerprint(tmp_path / name) for name in ("a.png", "b.png")]
    assert stored_images(check_pair_file(built["gen"], "gen"), built["gen"]) == []


def test_a_handwritten_trl_file_trains(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    Image.new("RGB", (64, 64), "white").save(tmp_path / "white.png")
    rows = [{"prompt": "What color is the background?", "chosen": "white", "rejected": "black", "image": "white.png"},
            {"prompt": [{"role": "user", "content": "How many objects are there?"}], "chosen": "zero",
             "rejected": "two", "images": ["white.png"]}]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(path, "und", load_model(tiny_dir))
    assert [p.question for p in pairs] == ["What color is the background?", "How many objects are there?"]
    assert all(math.isfinite(p.ref_chosen) and p.chosen_tokens > 0 for p in pairs)
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_dir), "--strategy", "und-only", "--und", str(path), "--out", str(out)]
    code, _, err = run_main(capsys, [*args, "--steps", "2"])
    assert code == 0 and (out / "adapter_model.safetensors").is_file(), err
    # the file's own hash misses its image edited in place: a resume would train on another picture than before
    Image.new("RGB", (64, 64), "black").save(tmp_path / "white.png")
    code, _, err = run_main(capsys, [*args, "--steps", "4", "--resume"])
    assert code == 2 and "under other inputs (compared by file name and content) (images: " in err, err


def test_a_missing_image_fails_before_anything_is_written_and_the_fixed_file_then_trains(
    tiny_dir: Path, tmp_path: Path, capsys
) -> None:
    """The image is only read with the model; the run must not have claimed OUT by then, or the fixed file is
    refused as "other inputs"."""
    Image.new("RGB", (64, 64), "white").save(tmp_path / "white.png")
    row = {"prompt": "What color is the circle?", "chosen": "white", "rejected": "black", "image": "white.png"}
    path, out = tmp_path / "mine.jsonl", tmp_path / "run"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row | {"image": "gone.png"}) + "\n")
    args = ["train", "--model", str(tiny_dir), "--strategy", "und-only", "--und", str(path), "--steps", "1",
            "--out", str(out)]
    code, _, err = run_main(capsys, args)
    [line] = [line for line in err.splitlines() if line.startswith("unigap:")]  # (the rest: transformers' load bar)
    assert code == 2 and line.startswith(f"unigap: error: {path}:2:") and "gone.png" in line, err
    assert not out.exists()
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    code, _, err = run_main(capsys, args)
    assert code == 0 and (out / "adapter_model.safetensors").is_file(), err


@pytest.mark.parametrize("ids", [[1, 2, 3], [99999] * 64])
def test_image_ids_that_do_not_fit_the_model_name_their_row(built, tiny_dir: Path, tmp_path: Path, capsys,
                                                            ids: list[int]) -> None:
    for trl in (False, True):
        rows = read_rows(built["gen"])
        if trl:
            rows = [{"prompt": r["prompt"], "chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
                    for r in rows]
        rows[1]["rejected_ids"] = ids
        path, out = tmp_path / f"gen-{trl}.jsonl", tmp_path / f"run-{trl}"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        code, _, err = run_main(capsys, ["train", "--model", str(tiny_dir), "--strategy", "gen-only", "--gen",
                                         str(path), "--steps", "1", "--out", str(out)])
        assert code == 2 and f"{path}:2: rejected_ids does not fit this model" in err and not out.exists(), err


def test_diagnose_reads_pairs_in_trls_convention(built, tiny_dir: Path, tmp_path: Path, capsys) -> None:
    files = []
    for task, source in built.items():
        files.append(tmp_path / f"{task}-trl.jsonl")
        code, _, err = run_main(capsys, ["prefs", "export", str(source), "--out", str(files[-1]),
                                         *(["--model", str(tiny_dir)] if task == "gen" else [])])
        assert code == 0, err
    code, _, err = run_main(capsys, ["diagnose", "--model", str(tiny_dir), "--und", str(files[0]), "--gen",
                                     str(files[1]), "--pairs", "4", "--out", str(tmp_path / "d")])
    assert code == 0 and (tmp_path / "d" / "diagnostics.json").is_file(), err
    um = load_model(tiny_dir)
    for task, path in zip(("und", "gen"), files, strict=True):  # diagnose converts each drawn row when drawn
        on_use, eager = load_pairs(path, task, um, on_use=True), load_pairs(path, task, um)
        assert len(on_use) == len(eager) == 2 and not on_use.converted
        _same(eager[1], on_use[1])
        assert list(on_use.converted) == [1] and on_use[1] is on_use[1]  # converted once


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "", "chosen": "a", "rejected": "b", "image": "x.png"}, "'prompt' holds no text"),
        ({"prompt": "Q?", "chosen": "a", "rejected": [], "image": "x.png"}, "'rejected' holds no text"),
        ({"prompt": "Q?", "chosen": "a", "rejected": "b"}, "an understanding row needs one image"),
        ({"prompt": "a red circle", "chosen_image": "x.png"}, "a generation row needs chosen_image and rejected_image"),
        ({"prompt": "a red circle", "chosen_ids": [1, 2], "rejected_ids": [1, 2.5]},
         "'rejected_ids' must be a non-empty list of integer token ids"),
        ({"prompt": "a red circle", "chosen_ids": [True], "rejected_ids": [1]}, "'chosen_ids' must be a non-empty"),
        ({"prompt": "Q?", "chosen": "a", "rejected": [{"role": "assistant", "content": "a"}], "image": "x.png"},
         "chosen and rejected are the same"),
        ({"prompt": "a red circle", "chosen_ids": [1, 2], "rejected_ids": [1, 2]}, "chosen and rejected are the same"),
        ({"prompt": "a red circle", "chosen_image": "x.png", "rejected_image": "x.png"}, "chosen and rejected are the"),
        # plain strings were compared as written (a conversation's parts are stripped): these loaded
        ({"prompt": "Q?", "chosen": "triangle", "rejected": " triangle ", "image": "x.png"}, "chosen and rejected are"),
        ({"prompt": "Q?", "chosen": "   ", "rejected": "b", "image": "x.png"}, "'chosen' holds no text"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b", "image": "x.png"}, "'prompt' holds no text"),
        ({"chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "a"}], "rejected": "b"},
         "a row in TRL's convention needs its 'prompt' column"),  # (was "kind must be one of ..., got None")
    ],
)
def test_a_malformed_trl_row_names_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "Q?", "chosen": "a", "rejected": "b", "image": "x.png"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError, match=rf"^{path}:2: malformed preference row: {message}"):
        read_rows(path)


def test_wrong_task_and_export_without_model(built, tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="given as gen data"):
        check_pair_file(built["und"], "gen")
    code, _, err = run_main(capsys, ["prefs", "export", str(built["gen"]), "--out", str(tmp_path / "g.jsonl")])
    assert code == 2 and "pass --model" in err and not (tmp_path / "g.jsonl").exists()
    code, _, err = run_main(capsys, ["prefs", "export", str(built["und"]), "--out", str(tmp_path / "u.jsonl"),
                                     "--model", "tiny"])
    assert code == 2 and "these are understanding pairs" in err and not (tmp_path / "u.jsonl").exists()
    both = tmp_path / "both.jsonl"  # (to Parquet: pyarrow's "cannot mix list and non-list" traceback, exit 1)
    both.write_text(built["und"].read_text() + built["gen"].read_text())
    code, _, err = run_main(capsys, ["prefs", "export", str(both), "--out", str(tmp_path / "b.parquet"),
                                     "--model", "tiny"])
    assert code == 2 and "mixes understanding and generation pairs" in err and not (tmp_path / "b.parquet").exists()


def test_pairs_from_your_own_questions_store_their_images(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    Image.new("RGB", (64, 64), "white").save(tmp_path / "white.png")
    rows = [{"image": "white.png", "question": "How many objects are there?", "answers": ["zero", "0", "none"]}] * 6
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs" / "und.jsonl"
    code, stdout, err = run_main(capsys, ["prefs", "build", "--model", str(tiny_dir), "--kind", "und", "--n", "2",
                                          "--questions", str(questions), "--fallback-gt", "--out", str(out)])
    assert code == 0, err
    built = read_rows(out)
    assert built and all("scene" not in r and r["images"][0].startswith("und_images/") for r in built)
    pairs = load_pairs(out, "und")
    assert np.array_equal(pairs[0].image, np.asarray(Image.open(tmp_path / "white.png")))
    assert all(p.question == "How many objects are there?" for p in pairs)
    stored = stored_images(check_pair_file(out, "und"), out)  # what a resumed `train` claims by content
    assert [image.digest for image in stored] == [file_fingerprint(out.parent / r["images"][0]) for r in built]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"image": "white.png", "question": "Q?"}) + "\n")
    code, _, err = run_main(capsys, ["prefs", "build", "--model", "MISSING", "--kind", "und", "--n", "2",
                                     "--questions", str(bad), "--out", str(tmp_path / "b.jsonl")])
    assert code == 2 and f"{bad}:2: needs an 'answer'" in err and not (tmp_path / "b.jsonl").exists()


def test_export_refuses_image_ids_another_model_made(built, tiny_dir: Path, tmp_path: Path, capsys) -> None:
    rows = read_rows(built["gen"])
    rows[1]["chosen_ids"] = [99999] * 64
    path, out = tmp_path / "gen.jsonl", tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_main(capsys, ["prefs", "export", str(path), "--model", str(tiny_dir), "--out", str(out)])
    assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("unigap: error:"), err
    assert f"{path}:2: chosen_ids does not fit this model" in err and not out.exists()


def test_pairs_another_model_built_train_against_this_models_reference(built, tiny_dir: Path, tmp_path: Path,
                                                                      capsys) -> None:
    """A row keeps its builder's reference log-probs: DPO of another model against them started at a loss far from
    ln 2 with no warning. Now a few rows are rescored, and a mismatch rescores every pair, with one warning line."""
    out = tmp_path / "run"
    with pytest.warns(UnigapWarning) as caught:
        code, _, err = run_main(capsys, ["train", "--model", "tiny", "--strategy", "und-only", "--und",
                                         str(built["und"]), "--steps", "1", "--out", str(out)])
    assert code == 0 and "Traceback" not in err, err
    said = [str(w.message) for w in caught if issubclass(w.category, UnigapWarning)]
    assert len(said) == 1 and said[0].startswith(f"{built['und']}:1: built by another model ({tiny_dir}, "), said
    assert said[0].endswith("every pair's reference is recomputed with this model")
    first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["und_dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference

    pairs = load_pairs(built["und"], "und")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the builder itself: its stored numbers stand, no warning
        for stored, checked in zip(pairs, load_pairs(built["und"], "und", load_model(tiny_dir)), strict=True):
            assert stored.ref_chosen == checked.ref_chosen and stored.ref_rejected == checked.ref_rejected
    rows = read_rows(built["und"])
    rows[-1]["rejected_ref_logprob"] -= 50.0  # a reference no model here computed, on the last row
    edited = tmp_path / "und.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UnigapWarning, match=rf"und.jsonl:{len(rows)}: rejected_ref_logprob .* is not this model's"):
        fixed = load_pairs(edited, "und", load_model(tiny_dir))
    for side in ("ref_chosen", "ref_rejected"):  # every pair rescored: the builder's own numbers come back
        assert [getattr(p, side) for p in fixed] == pytest.approx([getattr(p, side) for p in pairs], abs=1e-4)


def test_pairs_a_slightly_different_model_built_are_rescored_too(built, tiny_dir: Path) -> None:
    """A fine-tuned model's references differ from its base's by less than the numeric check's allowance on short
    answers (0.5 nats + 0.02 per token): the rows name their builder, and any other model rescores them."""
    tuned = load_model(tiny_dir)
    with torch.no_grad():
        tuned.model.model.language_model.layers[0].mlp.down_proj.weight.mul_(1.001)
    with pytest.warns(UnigapWarning, match=r"und.jsonl:1: built by another model .* than this one \(\w+\): every"):
        fixed = load_pairs(built["und"], "und", tuned)
    fresh = with_reference(tuned, load_pairs(built["und"], "und"))
    assert [p.ref_chosen for p in fixed] == pytest.approx([p.ref_chosen for p in fresh], abs=1e-5)
    assert fixed[0].ref_chosen != load_pairs(built["und"], "und")[0].ref_chosen
    with warnings.catch_warnings():  # the builder in another dtype: the numbers decide (rounding, not another model)
        warnings.simplefilter("error", UnigapWarning)
        load_pairs(built["und"], "und", load_model(tiny_dir, dtype="bfloat16"))


def test_export_names_the_line_of_a_bad_row_and_refuses_a_mixed_file(built, tmp_path: Path, capsys) -> None:
    """Export checked only the first row's convention (a TRL row further down raised KeyError: 'kind') and read a
    stored image without its row's place ("row: cannot read image …")."""
    trl = tmp_path / "trl.jsonl"
    assert run_main(capsys, ["prefs", "export", str(built["und"]), "--out", str(trl)])[0] == 0
    rows = read_rows(built["und"])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(rows[0]) + "\n" + trl.read_text().splitlines()[0] + "\n")
    code, _, err = run_main(capsys, ["prefs", "export", str(mixed), "--out", str(tmp_path / "m.jsonl")])
    assert code == 2 and f"{mixed} mixes unigap and TRL rows" in err and not (tmp_path / "m.jsonl").exists()
    missing = tmp_path / "missing.jsonl"
    stored = {key: value for key, value in rows[1].items() if key != "scene"} | {"images": ["nope.png"]}
    missing.write_text(json.dumps(rows[0]) + "\n" + json.dumps(stored) + "\n")
    code, _, err = run_main(capsys, ["prefs", "export", str(missing), "--out", str(tmp_path / "n.jsonl")])
    assert code == 2 and f"{missing}:2: cannot read image nope.png" in err and not (tmp_path / "n.jsonl").exists()


def test_a_generation_row_whose_two_images_are_one_picture_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    """Images were compared as cells: "a.png" and "./a.png", or two files of one picture, trained as a pair."""
    Image.new("RGB", (64, 64), "white").save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), "white").save(tmp_path / "b.png")
    path = tmp_path / "gen.jsonl"
    for rejected in ("./a.png", "b.png"):
        path.write_text(json.dumps({"prompt": "a red circle", "chosen_image": "a.png", "rejected_image": rejected})
                        + "\n")
        with pytest.raises(UserError, match=rf"{path}:1: chosen and rejected are the same .*encode to the same image"):
            load_pairs(path, "gen", load_model(tiny_dir))
