"""Datasets: byte-identical for a seed, disjoint splits, loadable back, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unigap.errors import UserError
from unigap.world import (
    CATEGORIES,
    SPLITS,
    Scene,
    all_specs,
    load_dataset,
    parse_prompt,
    random_train_scenes,
    render,
    sample_records,
    satisfies,
    scene_split,
    split_prompts,
    train_questions,
    write_dataset,
)


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_dataset(a, 40, seed=3)
    write_dataset(b, 40, seed=3)
    write_dataset(c, 40, seed=4)
    files = tree_bytes(a)
    assert len(files) == 41 and "samples.jsonl" in files and "images/000039.png" in files
    assert files == tree_bytes(b)
    assert files["samples.jsonl"] != tree_bytes(c)["samples.jsonl"]


def test_draw_seed_draws_other_scenes_of_the_same_partition(tmp_path):
    # fine-tuning data new to a model pretrained on draw seed = seed: same split, same prompts, other scenes
    base = sample_records(200, seed=0, split="train")
    assert sample_records(200, seed=0, split="train", draw_seed=0) == base
    fresh = sample_records(200, seed=0, split="train", draw_seed=1)
    allowed = {s.text for s in split_prompts("train", 0)}
    assert all(spec.text in allowed and scene_split(scene, 0) == "train" and satisfies(scene, spec)
               for spec, scene in fresh)
    assert not {scene for _, scene in base} & {scene for _, scene in fresh}
    write_dataset(tmp_path, 3, seed=0, draw_seed=1)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["scene"] for r in rows] == [scene.to_dict() for _, scene in fresh[:3]]
    assert {(r["seed"], r["draw_seed"]) for r in rows} == {(0, 1)}


def test_prompt_splits_partition_every_category():
    for category in CATEGORIES:
        shares = [{s.text for s in split_prompts(split, 9, category)} for split in SPLITS]
        assert all(shares)  # every category appears in every split
        assert sum(map(len, shares)) == len(all_specs(category)) == len(set().union(*shares))
    assert len(split_prompts("test", 9)) < len(split_prompts("train", 9)) / 5
    assert split_prompts("test", 9) != split_prompts("test", 10)


def test_splits_share_no_prompt_text_nor_scene():
    records = {split: sample_records(600, seed=11, split=split) for split in SPLITS}
    prompts = {split: {spec.text for spec, _ in recs} for split, recs in records.items()}
    scenes = {split: {scene for _, scene in recs} for split, recs in records.items()}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            assert not prompts[first] & prompts[second]
            assert not scenes[first] & scenes[second]
    for split, recs in records.items():
        allowed = {s.text for s in split_prompts(split, 11)}
        for spec, scene in recs:
            assert spec.text in allowed and scene_split(scene, 11) == split and satisfies(scene, spec)


def test_load_dataset_round_trips(tmp_path):
    path = write_dataset(tmp_path, 12, seed=5, split="val", category="position")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["category"] for r in rows} == {"position"} and {r["split"] for r in rows} == {"val"}
    assert set(rows[0]) >= {"image", "prompt", "category", "spec", "scene"}
    records = load_dataset(tmp_path)
    assert [r.index for r in records] == list(range(12))
    for record, row in zip(records, rows):
        assert record.prompt == row["prompt"] and record.spec.category == "position"
        assert np.array_equal(np.asarray(Image.open(record.image_path)), render(record.scene))
    assert not list(tmp_path.glob(".samples.*"))  # the temp file was renamed away
    path.write_text(path.read_text() + "\n  \n", encoding="utf-8")  # (a blank line, as `cat` of two files leaves)
    assert [r.index for r in load_dataset(tmp_path)] == list(range(12))


def test_user_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        write_dataset(tmp_path / "file", 3, seed=0)
    with pytest.raises(UserError, match="n must be an integer >= 1, got 0"):
        sample_records(0, seed=0)
    with pytest.raises(UserError, match="unknown split"):
        sample_records(3, seed=0, split="dev")
    with pytest.raises(UserError, match="unknown category"):
        sample_records(3, seed=0, category="shapes")
    with pytest.raises(UserError, match=r"no samples\.jsonl"):
        load_dataset(tmp_path)
    (tmp_path / "samples.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(UserError, match="malformed record"):
        load_dataset(tmp_path)
    (tmp_path / "samples.jsonl").write_text("[" * 100_000 + "\n")  # (was a RecursionError's traceback)
    with pytest.raises(UserError, match=":1: malformed record"):
        load_dataset(tmp_path)
    (tmp_path / "samples.jsonl").write_bytes(b"\xff\xfe garbage\n")  # (was a UnicodeDecodeError)
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_dataset(tmp_path)


def test_samples_jsonl_is_written_last_as_the_mark_of_a_complete_dataset(tmp_path, monkeypatch) -> None:
    """A study takes a present samples.jsonl for complete data (its questions too)."""
    import os

    from unigap.world.dataset import QUESTIONS_FILE, SAMPLES_FILE, write_dataset

    renamed, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (renamed.append(Path(target)),
                                                                real_replace(source, target)))
    write_dataset(tmp_path, 2, 0, questions=1)
    placed = [path.name for path in renamed if path.parent in (tmp_path, tmp_path / "images")
              and not path.name.endswith(".tmp")]  # (not staged ones, nor the swap's own list)
    assert placed == ["000000.png", "000001.png", QUESTIONS_FILE, SAMPLES_FILE]


def test_the_documented_split_hash_is_the_one_used():
    """The module docstring is how users re-derive the partition: its formula must give `scene_split`'s split."""
    import hashlib

    from unigap.world.dataset import scene_json

    for seed, (_, scene) in enumerate(sample_records(40, 0, "test", draw_seed=3)):
        digest = hashlib.sha256(f"{seed}:scene:{scene_json(scene)}".encode()).digest()
        assert scene_split(scene, seed) == SPLITS[int.from_bytes(digest[:8], "big") % 3]


@pytest.mark.parametrize(("call", "says"), [
    (lambda: sample_records(2.5, 0), "n must be an integer >= 1, got 2.5"),
    (lambda: random_train_scenes(2.5, 0), "n must be an integer >= 0, got 2.5"),  # (it drew 3)
    (lambda: train_questions([], 0, -1), "per_scene must be an integer >= 0, got -1"),
    (lambda: train_questions([], 0, 1, sentence_fraction=1.5), "sentence_fraction must be a share from 0 to 1"),
    (lambda: parse_prompt(None), "a prompt must be text, got NoneType"),
    (lambda: satisfies(Scene(64, ()), None), "expected a PromptSpec or a ShapeWorld prompt, got NoneType"),
    (lambda: satisfies(Scene(64, ()), 5), "expected a PromptSpec or a ShapeWorld prompt, got int"),
])
def test_the_world_api_refuses_a_bad_count_or_text_in_one_line(call, says: str) -> None:
    """These failed inside numpy (TypeError, "negative dimensions"), or went on with a rounded-up count."""
    with pytest.raises(UserError, match=re.escape(says)):
        call()


def test_write_dataset_refuses_a_bad_question_count_before_writing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape("questions must be an integer >= 0, got -1")):
        write_dataset(tmp_path / "d", 2, 0, questions=-1)  # (it wrote the images and no questions)
    assert not (tmp_path / "d").exists()
