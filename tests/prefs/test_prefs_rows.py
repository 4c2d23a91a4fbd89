"""The row format: round trips through JSONL and Parquet, and malformed rows name their file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unigap.errors import UserError
from unigap.prefs.rows import load_pairs, read_rows, write_rows
from unigap.train.dpo import GenerationPair, UnderstandingPair
from unigap.world import render, sample_records
from unigap.world.dataset import scene_json

COMMON = {
    "model": "m",
    "seed": 0,
    "fallback": False,
    "chosen_score": 1.0,
    "rejected_score": 0.0,
    "chosen_ref_logprob": -1.5,
    "rejected_ref_logprob": -3.0,
}


def und_row(i: int) -> dict:
    _, scene = sample_records(i + 1, 0, "train")[i]
    return COMMON | {
        "kind": "und",
        "candidate": i,
        "question": "Describe the image.",
        "question_kind": "describe",
        "answer": "x",
        "scene": scene_json(scene),
        "chosen": "red",
        "rejected": "blue",
        "chosen_ids": [9, 2],
        "rejected_ids": [10, 2],
        "chosen_tokens": 2,
        "rejected_tokens": 2,
    }


def gen_row(i: int) -> dict:
    return COMMON | {
        "kind": "gen-real",
        "candidate": i,
        "prompt": "a circle",
        "category": "single_object",
        "chosen_ids": [1, 2, 3],
        "rejected_ids": [3, 2, 1],
        "chosen_tokens": 3,
        "rejected_tokens": 3,
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_to_pairs(tmp_path: Path, suffix: str) -> None:
    und = write_rows(tmp_path / f"und{suffix}", [und_row(0), und_row(1)])
    gen = write_rows(tmp_path / f"gen{suffix}", [gen_row(0)])
    assert read_rows(und) == [und_row(0), und_row(1)]
    pair = load_pairs(und, "und")[1]
    assert isinstance(pair, UnderstandingPair) and (pair.chosen, pair.ref_rejected, pair.chosen_tokens) == (
        "red",
        -3.0,
        2,
    )
    np.testing.assert_array_equal(pair.image, render(sample_records(2, 0, "train")[1][1]))  # re-rendered scene
    assert load_pairs(gen, "gen") == [GenerationPair("a circle", (1, 2, 3), (3, 2, 1), -1.5, -3.0)]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_malformed_jsonl_row_names_file_and_line(tmp_path: Path) -> None:
    bad = und_row(1)
    del bad["chosen_ids"]
    path = _jsonl(tmp_path / "p.jsonl", [json.dumps(und_row(0)), json.dumps(bad)])
    with pytest.raises(UserError, match=rf"^{path}:2: malformed preference row: missing 'chosen_ids'$"):
        read_rows(path)
    path = _jsonl(tmp_path / "q.jsonl", [json.dumps(gen_row(0)), "", "{not json"])
    with pytest.raises(UserError, match=rf"^{path}:3: malformed preference row: invalid JSON"):
        load_pairs(path, "gen")
    path = _jsonl(tmp_path / "same.jsonl", [json.dumps(gen_row(0) | {"rejected_ids": gen_row(0)["chosen_ids"]})])
    with pytest.raises(UserError, match=rf"^{path}:1: malformed preference row: chosen and rejected are the same \("):
        read_rows(path)  # (a DPO gradient of zero up to rounding: diagnose divided by its norm)
    cases = {"chosen_ref_logprob": float("nan"), "rejected_ids": [], "seed": "0", "fallback": 1, "kind": "rl"}
    for key, value in cases.items():
        path = _jsonl(tmp_path / f"{key}.jsonl", [json.dumps(gen_row(0) | {key: value})])
        with pytest.raises(UserError, match=rf"^{path}:1: malformed preference row: .*"):
            read_rows(path)


def test_malformed_parquet_row_names_the_row(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "p.parquet", [gen_row(0), gen_row(1) | {"chosen_ids": None}])
    with pytest.raises(UserError, match=rf"^{path}:row 2: malformed preference row: missing 'chosen_ids'$"):
        read_rows(path)


def test_scene_errors_and_task_mismatch_name_the_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "u.jsonl", [json.dumps(und_row(0)), json.dumps(und_row(1) | {"scene": "[]"})])
    with pytest.raises(UserError, match=rf"^{path}:2: malformed preference row: malformed scene"):
        load_pairs(path, "und")
    path = _jsonl(tmp_path / "g.jsonl", [json.dumps(gen_row(0))])
    with pytest.raises(UserError, match=rf"^{path}:1: a 'gen-real' pair, but this file was given as und data"):
        load_pairs(path, "und")


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="must end in .jsonl or .parquet"):
        write_rows(tmp_path / "p.csv", [gen_row(0)])
    with pytest.raises(UserError, match="not found"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="no preference rows"):
        read_rows(_jsonl(tmp_path / "empty.jsonl", []))


def test_rewriting_a_jsonl_with_fewer_rows_removes_the_images_it_no_longer_names(tmp_path: Path) -> None:
    png = b"\x89PNG stand-in"  # stored as given; only the file names matter here
    path = tmp_path / "und.jsonl"
    write_rows(path, [und_row(i) | {"images": [png]} for i in range(3)])
    folder = tmp_path / "und_images"
    (folder / "000009_images_0.png").write_bytes(b"a user's own file, named like a pair's image")
    write_rows(path, [und_row(0) | {"images": [png]}])
    assert sorted(p.name for p in folder.iterdir()) == ["000000_images_0.png", "000009_images_0.png"]
    assert read_rows(path)[0]["images"] == ["und_images/000000_images_0.png"]
    own = tmp_path / "mine.jsonl"  # a user's own file, overwritten by mistake: the images it named are theirs
    (tmp_path / "photo.png").write_bytes(png)
    own.write_text(json.dumps({"images": ["photo.png"]}) + "\n")
    write_rows(own, [und_row(0)])
    assert (tmp_path / "photo.png").is_file()


def test_a_failed_rewrite_of_a_jsonl_leaves_the_earlier_file_and_its_images(tmp_path: Path) -> None:
    path = tmp_path / "und.jsonl"
    write_rows(path, [und_row(i) | {"images": [b"first %d" % i]} for i in range(2)])
    before = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    broken = [und_row(0) | {"images": [b"second"]}, und_row(1) | {"images": [b"second"], "note": {1, 2}}]
    with pytest.raises(TypeError, match="not JSON serializable"):  # its images were written before its index failed
        write_rows(path, broken)
    after = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["und.jsonl", "und_images"]


ONE_IMAGE = r"an und row needs its 'scene' \(ShapeWorld\) or its 'images' \(a list of one image\)"


@pytest.mark.parametrize(("change", "message"), [
    ({"scene": "{bad"}, "malformed scene: invalid JSON"),
    ({"scene": '{"canvas": ' + "9" * 5000 + "}"}, "malformed scene: invalid JSON"),  # (ValueError: over 4300 digits)
    ({"scene": None, "images": []}, ONE_IMAGE),
    ({"scene": None, "images": ["a.png", "b.png"]}, ONE_IMAGE),
    ({"scene": '{"canvas": -64, "objects": []}'}, "canvas size must be an integer from 32 to 8192, got -64"),
    ({"scene": '{"canvas": 100000, "objects": []}'}, "canvas size must be an integer from 32 to 8192"),  # (24 GB)
    ({"chosen_ref_logprob": 10**400}, "'chosen_ref_logprob' is not finite"),  # (OverflowError)
    ({"chosen_tokens": -100000}, "'chosen_tokens' must be a positive count of tokens, got -100000"),  # (w_und < 0)
    ({"rejected_tokens": 0}, "'rejected_tokens' must be a positive count of tokens, got 0"),
])
def test_an_und_rows_image_is_checked_when_the_file_is_read(tmp_path: Path, change: dict, message: str) -> None:
    """An empty image list passed the check and raised IndexError on use (a traceback after the model loaded); a
    second image was dropped silently; a scene that is no JSON raised JSONDecodeError in `prefs export`."""
    path = _jsonl(tmp_path / "u.jsonl", [json.dumps(und_row(0)), json.dumps({**und_row(1), **change})])
    with pytest.raises(UserError, match=rf"^{path}:2: malformed preference row: {message}"):
        read_rows(path)
