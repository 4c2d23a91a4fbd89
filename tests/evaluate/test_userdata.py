"""Users' understanding data in every format, one error per malformed row, the VQA soft score, and `eval --questions`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from unigap.errors import UserError
from unigap.data.understanding import kinds_of, read_understanding_data
from unigap.evaluate.vqa import normalize_vqa, vqa_score
from unigap.data.tables import image_cell, read_table
from test_eval_cli import run_main

RED = (255, 0, 0)


def _png(color=RED) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png())
    return "imgs/a.png"


def _check(items, n=2):
    assert len(items) == n
    assert items[0].image.shape == (8, 8, 3) and tuple(items[0].image[0, 0]) == RED
    assert items[0].question.text == "What color?" and items[0].question.answer == "red"


def test_jsonl_with_relative_paths_and_answer_lists(tmp_path, image_file):
    path = tmp_path / "und.jsonl"
    rows = [{"image": image_file, "question": "What color?", "answers": ["red", "red", "crimson"], "kind": "color"},
            {"image": image_file, "question": "How many?", "answer": "one"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    items = read_understanding_data(path)
    _check(items)
    assert items[0].question.answers == ("red", "red", "crimson") and items[1].question.answers == ("one",)
    assert kinds_of(items) == ["color", "all"]
    assert len(read_understanding_data(path, n=1)) == 1 and len(read_understanding_data(path, n=9)) == 2


def test_csv_with_json_answer_lists(tmp_path, image_file):
    path = tmp_path / "und.csv"
    path.write_text(f'image,question,answers\n{image_file},What color?,"[""red"", ""dark red""]"\n'
                    f'{image_file},How many?,"[""1""]"\n')
    items = read_understanding_data(path)
    _check(items)
    assert items[0].question.answers == ("red", "dark red")


def test_parquet_with_embedded_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "und.parquet"
    image = {"bytes": _png(), "path": None}  # how `datasets` stores an Image column
    pq.write_table(pa.Table.from_pylist([{"image": image, "question": "What color?", "answer": "red"}] * 2), path)
    _check(read_understanding_data(path))


def test_a_datasets_parquet_image_path_is_read_as_datasets_reads_it(tmp_path, monkeypatch, image_file):
    """`Dataset.to_parquet` keeps an Image column's path as given, relative to the writer's working directory, where
    `datasets` reads it: unigap joined it to the file's folder (no such file)."""
    import datasets

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    dataset = datasets.Dataset.from_dict({"image": [image_file], "question": ["Q?"], "answer": ["red"]})
    dataset.cast_column("image", datasets.Image()).to_parquet("data/und.parquet")
    item, = read_understanding_data("data/und.parquet")
    assert tuple(item.image[0, 0]) == RED


def test_whole_number_answers_stored_as_floats_are_read_and_a_missing_one_is_named(tmp_path):
    """pandas writes an integer column with a missing value as floats: 1.0 is the answer 1; NaN is its row's error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = {"bytes": _png(), "path": None}
    rows = [{"image": image, "question": "How many?", "answer": 1.0}, {"image": image, "question": "How many?",
                                                                       "answer": float("nan")}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "counts.parquet")
    with pytest.raises(UserError, match=r"counts.parquet:row 2: 'answer' must be"):
        read_understanding_data(tmp_path / "counts.parquet")
    assert read_understanding_data(tmp_path / "counts.parquet", n=1)[0].question.answers == ("1",)


def test_a_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")  # a dev dependency: installed by `make setup`
    rows = {"image": [Image.new("RGB", (8, 8), RED)] * 2, "question": ["What color?"] * 2, "answer": ["red"] * 2}
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    items = read_understanding_data(tmp_path / "ds")
    _check(items)
    assert isinstance(items[0].stored.value["bytes"], bytes)  # kept encoded, not as a decoded PIL image
    images = datasets.Features({"images": datasets.Sequence(datasets.Image()), "question": datasets.Value("string"),
                                "answer": datasets.Value("string")})  # TRL's column: a list of images
    datasets.Dataset.from_dict({"images": [[Image.new("RGB", (8, 8), RED)]] * 2, "question": ["What color?"] * 2,
                                "answer": ["red"] * 2}, features=images).save_to_disk(str(tmp_path / "trl"))
    saved = sorted(p.name for p in (tmp_path / "trl").iterdir())
    from unigap.data.tables import read_table

    [(_, row), _] = read_table(tmp_path / "trl")
    assert isinstance(row["images"][0]["bytes"], bytes)
    assert sorted(p.name for p in (tmp_path / "trl").iterdir()) == saved  # read, and nothing written there


def test_a_dataset_keeps_lists_of_images_encoded(tmp_path):
    """TRL's `images` column (a list of images) is read undecoded as well."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()), "prompt": datasets.Value("string")})
    rows = {"images": [[Image.new("RGB", (8, 8), RED)]] * 2, "prompt": ["What color?"] * 2}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    [(_, row), _] = read_table(tmp_path / "ds")
    assert isinstance(row["images"][0]["bytes"], bytes) and row["prompt"] == "What color?"


@pytest.mark.parametrize("saved", ["ds", "data.parquet"])
def test_a_datasets_class_labels_are_read_as_their_names(tmp_path, saved):
    """Read raw, a `ClassLabel` answer or kind column held its integer codes: every "yes" reference was "1", and a
    model answering "yes" scored 0. The same in a save_to_disk folder and in a Parquet file `datasets` wrote (the
    Hub's files), whose schema keeps the labels."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.ClassLabel(names=["no", "yes"]),
                                  "kind": datasets.ClassLabel(names=["colour", "count"]),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))})
    rows = {"image": [Image.new("RGB", (8, 8), RED)] * 2, "question": ["Red?"] * 2, "answer": [1, 0],
            "kind": [0, 1], "tags": [[1, 0], []]}
    dataset = datasets.Dataset.from_dict(rows, features=features)
    dataset.save_to_disk(str(tmp_path / saved)) if saved == "ds" else dataset.to_parquet(str(tmp_path / saved))
    assert [row["tags"] for _, row in read_table(tmp_path / saved)] == [["b", "a"], []]
    items = read_understanding_data(tmp_path / saved)
    assert [(item.question.answers, item.question.kind) for item in items] == [(("yes",), "colour"),
                                                                               (("no",), "count")]


def test_images_are_kept_as_stored_and_decoded_when_used(tmp_path, image_file):
    """A user's file of many photos is checked once, then held as paths or bytes, not as pixel arrays."""
    path = tmp_path / "und.jsonl"
    path.write_text("".join(json.dumps({"image": image_file, "question": "What color?", "answer": "red"}) + "\n"
                            for _ in range(3)))
    items = read_understanding_data(path)
    assert all(item.stored.value == image_file for item in items)
    assert tuple(items[1].image[0, 0]) == RED and tuple(np.asarray(items[1].stored)[0, 0]) == RED
    (tmp_path / image_file).unlink()  # gone between the check and the use: the error still names the row
    with pytest.raises(UserError, match=rf"{path}:2: cannot read image {image_file}"):
        items[1].image


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"image": "imgs/a.png", "question": "Q?", "answer": "red"}\n{"image": "imgs/a.png", "answer": "x"}\n',
         ":2: no 'question' column (it has 'image', 'answer')"),
        ('{"image": "imgs/a.png", "question": "", "answer": "x"}\n', ":1: 'question' must be a non-empty string"),
        ('{"image": "imgs/a.png", "question": "Q?", "answers": [{"answer_id": 1}]}\n', ":1: 'answers' must be a"),
        ('{"image": "imgs/a.png", "question": "Q?", "answer": true}\n', ":1: 'answer' must be a non-empty string"),
        ('{"image": "imgs/a.png", "question": "Q?"}\n', ":1: needs an 'answer' or an 'answers' column"),
        ('{"image": "imgs/missing.png", "question": "Q?", "answer": "x"}\n', ":1: cannot read image imgs/missing.png"),
        ('{"question": "Q?", "answer": "x"}\n', ":1: missing 'image' column"),
        ('{"image": null, "question": "Q?", "answer": "x"}\n', ":1: 'image' is empty (null)"),
        ('{"image": "imgs/a.png", "question": "Q?", "answers": null}\n', ":1: its 'answers' is empty and it has no "
                                                                          "'answer' column"),
        ('{"image": "imgs/a.png", "question": "Q?", "answers": []}\n', ":1: 'answers' must be a non-empty list"),
        ("\n{not json\n", ":2: malformed row: invalid JSON"),
        ("[1, 2]\n", ":1: malformed row: not a JSON object"),
    ],
)
def test_a_malformed_row_names_file_and_line(tmp_path, image_file, text, message):
    path = tmp_path / "und.jsonl"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        read_understanding_data(path)
    assert str(exc.value).startswith(f"{path}:") and message in str(exc.value), str(exc.value)


@pytest.mark.parametrize(("cell", "says"), [
    ('""', "'image' is an empty path"), ("5", "'image' must be a path, bytes or an image, got int"),
    ("[1, 2]", "'image' must be a path, bytes or an image, got list"),
    ('{"bytes": null, "path": null}', "'image' must be a path, bytes or an image, got NoneType"),
])
def test_an_image_cell_of_the_wrong_kind_is_named_once(tmp_path, cell: str, says: str) -> None:
    """(It used to be wrapped in a second error claiming image bytes were read, the row named twice.)"""
    path = tmp_path / "und.jsonl"
    path.write_text(f'{{"image": {cell}, "question": "Q?", "answer": "x"}}\n')
    with pytest.raises(UserError) as exc:
        read_understanding_data(path)
    assert str(exc.value) == f"{path}:1: {says}"


def test_whole_number_answers_and_vqav2_answer_records_are_read(tmp_path, image_file):
    """VQA sets store counts as integers, and VQAv2 keeps each annotator's answer in a record."""
    path = tmp_path / "und.jsonl"
    rows = [{"image": "imgs/a.png", "question": "How many?", "answer": 2},
            {"image": "imgs/a.png", "question": "What color?",
             "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": 1}, {"answer": "pink"}, 3]}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second = read_understanding_data(path)
    assert first.question.answers == ("2",) and second.question.answers == ("red", "pink", "3")


def test_a_csv_header_without_a_column_says_so(tmp_path, image_file):
    path = tmp_path / "und.csv"
    path.write_text("image,query,answer\nimgs/a.png,Q?,x\n")
    with pytest.raises(UserError, match=r":2: no 'question' column \(it has 'image', 'query', 'answer'\)"):
        read_understanding_data(path)


def test_table_errors(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("image,question,answer\na.png,Q?,x\na.png,Q?\n")
    with pytest.raises(UserError, match=rf"^{csv_path}:3: expected 3 columns"):
        read_table(csv_path)
    csv_path.write_text("image,question,answer,question\na.png,Q?,x,Another?\n")  # not the last one's, silently
    with pytest.raises(UserError, match=rf"^{csv_path}: the header names 'question' more than once$"):
        read_table(csv_path)
    csv_path.write_text("image,question,answer,,\na.png,Q?,x,,\n")  # a spreadsheet's trailing empty columns
    assert read_table(csv_path)[0][1] | {"": None} == {"image": "a.png", "question": "Q?", "answer": "x", "": None}
    for name, message in (("x.txt", "unknown data format"), ("none.jsonl", "data file not found")):
        (tmp_path / "x.txt").write_text("hi")
        with pytest.raises(UserError, match=message):
            read_table(tmp_path / name)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="not a dataset saved by datasets.save_to_disk"):
        read_table(tmp_path / "folder")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no rows"):
        read_table(tmp_path / "empty.jsonl")


def test_vqa_normalisation_and_soft_score():
    assert normalize_vqa("Two dogs.") == "2 dogs" and normalize_vqa("the  Red") == "red"
    assert normalize_vqa("dont") == "don't" and normalize_vqa("3.5") == "3.5"
    assert vqa_score("dont", ["don't"] * 10) == vqa_score("don't", ["dont"] * 10) == 1.0  # the apostrophe is kept
    assert normalize_vqa("Im") == "im"  # (as the official script: its key "Im" never meets a lower-cased word)
    assert [normalize_vqa(a) for a in ("U.S.", "10:30", "50%", "1,000", "red-ish", "yes !")] == [
        "us", "10:30", "50%", "1000", "red ish", "yes"]  # as the official script gives them
    assert vqa_score("2", ["two"] * 3 + ["three"] * 7) == pytest.approx(0.9)  # (3 · 2/3 + 7 · 1) / 10
    assert vqa_score("three", ["two"] * 3 + ["three"] * 7) == 1.0
    assert vqa_score("four", ["two"] * 10) == 0.0
    assert vqa_score("red", ["red"]) == 1.0 and vqa_score("blue", ["red"]) == 0.0
    with pytest.raises(ValueError):
        vqa_score("x", [])


@pytest.mark.parametrize("answer", ["", "?", "The", "an"])
def test_an_answer_of_nothing_is_no_match_for_a_letter_choice(answer):
    """The letter "A" of a multiple-choice reference normalises, as an article, to nothing, as do these answers: each
    scored 1 against it."""
    assert normalize_vqa(answer) == normalize_vqa("A") == ""
    assert vqa_score(answer, ["A"]) == 0.0 and vqa_score(answer, ["A"] * 10) == 0.0
    assert vqa_score("a.", ["A"]) == vqa_score("A", ["A"] * 10) == 1.0 and vqa_score("B", ["A"]) == 0.0


def test_eval_scores_a_users_questions(tiny_dir, tmp_path, capsys, image_file):
    path = tmp_path / "und.jsonl"
    rows = [{"image": image_file, "question": "What color is the circle?", "answers": ["red"] * 3, "kind": "color"},
            {"image": image_file, "question": "How many objects are there?", "answer": "one", "kind": "count"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval.json"
    code, stdout, _ = run_main(capsys, ["eval", "--model", tiny_dir, "--n", 2, "--questions", path, "--out", out])
    assert code == 0 and "understanding.vqa_score" in stdout
    report = json.loads(out.read_text())
    records = report["records"]["understanding"]
    assert [r["question"] for r in records] == [r["question"] for r in rows]
    for record in records:
        assert record["vqa_score"] == vqa_score(record["answer"], record["answers"])
    assert set(report["understanding"]["by_kind"]) == {"color", "count"}
    assert report["understanding"]["vqa_score"]["n"] == 2 and report["config"]["questions"] == "2 given"
    vqa = report["understanding"]["vqa_score"]
    assert vqa["ci95"][0] <= vqa["vqa_score"] <= vqa["ci95"][1]  # the headline has its interval, as every metric
    assert all("ci95" in kind for kind in vqa["by_kind"].values())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"image": image_file}) + "\n")
    code, _, err = run_main(capsys, ["eval", "--model", tiny_dir, "--questions", bad, "--out", tmp_path / "b.json"])
    assert code == 2 and err.strip() == f"unigap: error: {bad}:2: no 'question' column (it has 'image')"
    assert not (tmp_path / "b.json").exists()


def test_a_damaged_or_split_dataset_folder_is_one_clear_error(tmp_path):
    import datasets

    one = datasets.Dataset.from_dict({"image": ["a.png"], "question": ["Q?"], "answer": ["red"]})
    datasets.DatasetDict({"train": one, "test": one}).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(UserError, match=r"holds several splits \(train, test\); pass one split's folder"):
        read_table(tmp_path / "splits")
    one.save_to_disk(str(tmp_path / "damaged"))
    state = tmp_path / "damaged" / "state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "_data_files"}))
    with pytest.raises(UserError, match=rf"^{tmp_path / 'damaged'}: cannot load the dataset: KeyError"):
        read_table(tmp_path / "damaged")


def test_the_model_decodes_a_stored_image_once() -> None:
    """`to_rgb_array` (every image the model takes) reads a stored image with one decode."""
    from unigap.model.images import to_rgb_array

    class Counting:
        calls = 0

        def to_pixels(self):
            Counting.calls += 1
            return np.zeros((4, 4, 3), dtype=np.uint8)

    assert to_rgb_array(Counting()).shape == (4, 4, 3) and Counting.calls == 1


def test_an_image_over_pils_bomb_limit_is_one_line_naming_its_row(tmp_path) -> None:
    """PIL refuses an image over twice its pixel limit with an error that is not an OSError."""
    from unigap.world import load_image

    Image.new("1", (14000, 14000)).save(tmp_path / "big.png")  # 196 M pixels, 24 kB
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "big.png", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(UserError, match=r"data.jsonl:1: cannot read image big.png: .*decompression bomb"):
        read_understanding_data(tmp_path / "data.jsonl")
    with pytest.raises(UserError, match=r"big.png as an image: .*decompression bomb"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize(("offset", "byte"), [(11, 0), (36, 0)])  # damaged chunks: ValueError, SyntaxError
def test_a_damaged_image_file_is_one_line_naming_its_row(tmp_path, offset: int, byte: int) -> None:
    from unigap.world import load_image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "bad.png")
    data = bytearray((tmp_path / "bad.png").read_bytes())
    data[offset] = byte
    (tmp_path / "bad.png").write_bytes(bytes(data))
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "bad.png", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(UserError, match=r"data.jsonl:1: cannot read image bad.png: "):
        read_understanding_data(tmp_path / "data.jsonl")
    with pytest.raises(UserError, match=r"bad.png as an image: "):
        load_image(tmp_path / "bad.png")


def test_rows_are_lines_split_at_line_ends_only_and_mixed_answer_columns_are_read(tmp_path, image_file):
    """JSON written with ensure_ascii=False keeps U+2028 and U+0085 unescaped in its strings: still one row each. A
    CSV row that fills only `answer` beside an `answers` column, and datasets' column-wise answer records, are read."""
    from unigap.evaluate.data import read_prompt_file

    path = tmp_path / "und.jsonl"
    rows = [{"image": image_file, "question": "What\u2028color?", "answer": "red"},
            {"image": image_file, "question": "How\x85many?", "answer": "one"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [item.question.text for item in read_understanding_data(path)] == ["What\u2028color?", "How\x85many?"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\x0con a mat\na red circle\n", encoding="utf-8")
    assert read_prompt_file(prompts) == [(1, "a cat\x0con a mat"), (2, "a red circle")]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(f'image,question,answer,answers\n{image_file},What color?,red,\n'
                     f'{image_file},How many?,,"[""1"", ""one""]"\n')
    assert [item.question.answers for item in read_understanding_data(mixed)] == [("red",), ("1", "one")]
    from unigap.data.understanding import _answers

    columnwise = {"answers": {"answer": ["red", "pink"], "answer_id": [1, 2]}}  # datasets.Sequence({"answer": ...})
    assert _answers(columnwise, "ds:row 1") == ("red", "pink")


def test_the_majority_of_a_rows_answers_is_the_one_exact_match_and_sft_use() -> None:
    """VQAv2's ten answers in annotator order: exact match compared with, and SFT trained on, the first annotator's
    ("pink"), where the dataset's own `multiple_choice_answer` is the majority's."""
    from unigap.data.understanding import _answers

    assert _answers({"answers": ["pink", "red", "Red ", "blue", "red"]}, "x") == ("red", "pink", "Red ", "blue", "red")
    assert _answers({"answers": ["pink", "red"]}, "x") == ("pink", "red")  # (a tie: the earliest)
    assert _answers({"answers": ["pink", "red", "red"], "answer": "PINK"}, "x")[0] == "pink"  # (given: kept)


def test_the_eval_table_prints_a_users_kind_names_as_written() -> None:
    """Question kinds are the user's `kind` column: `lora[r8]` printed as `lora`, and `x[/b]` raised MarkupError."""
    from rich.console import Console

    from unigap.evaluate.report import summary_table

    from pathlib import Path

    report = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results" / "tiny_eval.json").read_text())
    kinds = report["understanding"]["by_kind"]
    report["understanding"]["by_kind"] = {"x[/b]": next(iter(kinds.values())), "lora[r8]": next(iter(kinds.values()))}
    console = Console(record=True, width=200)
    console.print(summary_table(report))
    text = console.export_text()
    assert "x[/b]" in text and "lora[r8]" in text


def test_an_integer_too_long_for_python_is_a_malformed_row_not_a_traceback(tmp_path, image_file, capsys):
    """json.loads raises a plain ValueError for an integer of over 4300 digits, past `except JSONDecodeError`."""
    from unigap.evaluate.data import read_prompt_file

    huge = "9" * 5000
    path = tmp_path / "und.jsonl"
    path.write_text(f'{{"image": "{image_file}", "question": "How many?", "answer": {huge}}}\n')
    with pytest.raises(UserError, match=rf"^{path}:1: malformed row: invalid JSON \(Exceeds the limit"):
        read_understanding_data(path)
    cell = tmp_path / "und.csv"
    cell.write_text(f'image,question,answers\n{image_file},How many?,"[{huge}]"\n')
    with pytest.raises(UserError, match=rf"^{cell}:2: 'answers' must be a list"):
        read_understanding_data(cell)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(f'{{"prompt": "a red circle", "n": {huge}}}\n')
    with pytest.raises(UserError, match=rf"^{prompts}:1: not valid JSON \(Exceeds the limit"):
        read_prompt_file(prompts)


def test_csv_rows_are_located_where_they_start_and_suffixes_in_any_case_are_read(tmp_path, image_file):
    path = tmp_path / "und.CSV"  # (refused as an unknown format)
    path.write_text(f'image,question,answer\n{image_file},"What\ncolor?",red\n\n{image_file},How many?,one\n'
                    f'{image_file},"a\nb\nc",x,extra\n')
    with pytest.raises(UserError, match=rf"^{path}:6: expected 3 columns"):  # (was the record's last line, 8)
        read_table(path)
    path.write_text(path.read_text().rsplit(f"{image_file},\"a", 1)[0])
    assert [where for where, _ in read_table(path)] == [f"{path}:2", f"{path}:5"]  # (was :3, the quoted cell's end)
    path.write_text(f'image,question,answers\n{image_file},How many?,"[1,\n')  # cut inside a quoted cell
    with pytest.raises(UserError, match=rf"^{path}:2: malformed CSV: unexpected end of data"):  # (a row: '[1,\n')
        read_table(path)


def test_answers_read_alike_from_every_format_and_a_given_answer_is_the_one_matched(tmp_path, image_file):
    """pandas writes an int column with a gap as floats, "3.0" in its CSV: read as 3 there too (it scored 0 against
    "3"). Where a row gives `answer` beside `answers`, exact match compared with the first of `answers` instead."""
    from unigap.data.understanding import _answers

    csv = tmp_path / "und.csv"
    csv.write_text(f"image,question,answer,kind\n{image_file},How many?,3.0,\n{image_file},How many?,2.5,count\n")
    jsonl = tmp_path / "und.jsonl"
    jsonl.write_text(json.dumps({"image": image_file, "question": "How many?", "answer": 3.0, "kind": float("nan")})
                     + "\n" + json.dumps({"image": image_file, "question": "How many?", "answer": "2.5",
                                          "kind": "count"}) + "\n")
    read = [[(item.question.answers, item.question.kind) for item in read_understanding_data(p)] for p in (csv, jsonl)]
    assert read[0] == read[1] == [(("3",), "all"), (("2.5",), "count")]  # (a NaN kind was the group "nan")
    # an answer written with a decimal point is kept as written, in a column of words (a price, a version)
    csv.write_text(f"image,question,answer\n{image_file},Price?,10.00\n{image_file},Version?,3.0\n"
                   f"{image_file},Colour?,red\n")
    jsonl.write_text(json.dumps({"image": image_file, "question": "Price?", "answer": "10.00"}) + "\n")
    assert [item.question.answers for item in read_understanding_data(csv)] == [("10.00",), ("3.0",), ("red",)]
    assert read_understanding_data(jsonl)[0].question.answers == ("10.00",)  # (was "10": "10.00" scored 0)
    assert _answers({"answer": "blue", "answers": ["navy", "blue", "blue"]}, "r") == ("blue", "navy", "blue")
    assert _answers({"answer": "Yes ", "answers": ["no", "yes"]}, "r") == ("yes", "no")  # (as the scorer reads it)
    assert _answers({"answer": float("nan"), "answers": ["a", "b"]}, "r") == ("a", "b")  # (a gap in the column)
    with pytest.raises(UserError, match="^r: its 'answer' 'red' is not one of its 'answers'"):
        _answers({"answer": "red", "answers": ["navy", "blue"]}, "r")


def test_an_integer_coded_kind_of_zero_is_a_kind_not_all(tmp_path, image_file):
    """`not kind` folded the type column's class 0 (and 0.0, pandas' float of it) into "all", the rows with none."""
    path = tmp_path / "und.jsonl"
    kinds = [0, 1, 0.0, 2.0, "", None, "colour"]
    path.write_text("".join(json.dumps({"image": image_file, "question": "Q?", "answer": "a", "kind": kind}) + "\n"
                            for kind in kinds))
    assert [item.question.kind for item in read_understanding_data(path)] == ["0", "1", "0", "2", "all", "all",
                                                                             "colour"]
    csv = tmp_path / "und.csv"  # (pandas writes an integer column with a gap as floats: "0.0" in its CSV)
    csv.write_text("image,question,answer,kind\n" + "".join(f"{image_file},Q?,a,{kind}\n"
                                                         for kind in ("0.0", "", "1.0")))
    assert [item.question.kind for item in read_understanding_data(csv)] == ["0", "all", "1"]
    path.write_text(json.dumps({"image": image_file, "question": "Q?", "answer": "a", "kind": ["x"]}) + "\n")
    with pytest.raises(UserError, match=r":1: 'kind' must be text or a number, got \['x'\]"):
        read_understanding_data(path)


def test_images_are_read_upright_and_16_bit_by_their_depth_not_their_values(tmp_path):
    """A camera's JPEG is stored sideways with an EXIF orientation, which `datasets` and transformers apply; a 16-bit
    PGM opens as mode I, and a dark one (no value over 255) was read as 8-bit, near white."""
    from unigap.pixels import rgb_pixels

    image = Image.new("RGB", (6, 4), RED)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    image.save(tmp_path / "photo.jpg", exif=exif)
    assert rgb_pixels(Image.open(tmp_path / "photo.jpg")).shape == (6, 4, 3)
    for values, expected in (([200] * 4, [0] * 4), ([200, 200, 200, 300], [0, 0, 0, 1]), ([40000] * 4, [156] * 4)):
        (tmp_path / "grey.pgm").write_bytes(b"P5\n2 2\n65535\n" + np.array(values, ">u2").tobytes())
        assert rgb_pixels(Image.open(tmp_path / "grey.pgm"))[..., 0].ravel().tolist() == expected
    assert rgb_pixels(Image.fromarray(np.full((2, 2), 200, np.int32)))[0, 0, 0] == 200  # (in memory: by its values)


def test_a_float_image_is_read_by_its_range_not_cast_to_black(tmp_path):
    """A float TIFF (mode F) of 0-1 values converted to all-black pixels."""
    from unigap.pixels import rgb_pixels

    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(tmp_path / "unit.tiff")
    assert rgb_pixels(Image.open(tmp_path / "unit.tiff"))[..., 0].tolist() == [[0, 128], [255, 64]]
    wide = Image.fromarray(np.array([[0.0, 100.0], [300.0, -5.0]], np.float32))  # (not 0-1: 0-255, clipped)
    assert rgb_pixels(wide)[..., 0].tolist() == [[0, 100], [255, 0]]


def test_a_multi_frame_image_file_is_closed_once_read(tmp_path):
    """Pillow keeps a GIF, a multi-page TIFF or a phone's MPO JPEG open after loading: one handle per row, left to
    the garbage collector (a ResourceWarning)."""
    import gc
    import warnings

    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tuple(image_cell({"image": "a.gif"}, tmp_path, "x")[0, 0]) == RED
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_data_uri_or_url_is_refused_in_one_short_line(tmp_path):
    """(Read as a path, a data URI's error line printed the whole image twice: 33,228 characters for a 12 KB PNG.)"""
    uri = "data:image/png;base64," + "A" * 20_000
    for cell in (uri, "https://example.com/a.png"):
        with pytest.raises(UserError, match="URL or data URI") as caught:
            image_cell({"image": cell}, tmp_path, "x.jsonl:1")
        assert len(str(caught.value)) < 200
