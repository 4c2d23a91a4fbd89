"""Prompt sources shared by generate-side commands: splits and users' prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigap.errors import UserError
from unigap.evaluate.data import prompt_specs, read_prompt_file
from unigap.world import CATEGORIES, split_prompts


def test_training_prompts_are_distinct_train_split_prompts_of_every_category() -> None:
    specs = prompt_specs("train", 60, seed=0)
    assert len({s.text for s in specs}) == 60
    assert {s.text for s in specs} <= {s.text for s in split_prompts("train", 0)}
    assert {s.category for s in specs} == set(CATEGORIES)
    assert prompt_specs("train", 60, seed=0) == specs and prompt_specs("train", 60, seed=1) != specs
    assert len(prompt_specs("train", 10**6, seed=0)) == len(split_prompts("train", 0))


def test_prompt_files_in_text_jsonl_and_geneval_shape(tmp_path: Path) -> None:
    text = tmp_path / "prompts.txt"
    text.write_text("a red circle\na blue square\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in (
        {"prompt": "a red circle"}, {"tag": "colors", "include": [{"class": "square", "count": 1}],
                                     "prompt": "a blue square"})) + "\n")
    assert [s.text for s in prompt_specs(str(text), 5, 0)] == ["a red circle", "a blue square"]
    assert [s.text for s in prompt_specs(str(jsonl), 1, 0)] == ["a red circle"]  # at most n


def test_every_line_of_a_jsonl_prompt_file_is_json(tmp_path: Path) -> None:
    """A quoted string in a .jsonl file is not a prompt with quotes in it; in a .txt file it is text."""
    for name, expected in (("prompts.jsonl", None), ("prompts.JSONL", None), ("prompts.json", None),
                           ("prompts.txt", '"a red circle"')):  # (.json and .JSONL were read as text)
        path = tmp_path / name
        path.write_text('"a red circle"\n')
        if expected is None:
            with pytest.raises(UserError, match=f'{name}:1: a JSON line needs a string "prompt" field'):
                read_prompt_file(path)
        else:
            assert read_prompt_file(path) == [(1, expected)]


def test_blank_lines_at_the_end_of_a_prompt_file_are_not_prompts(tmp_path: Path) -> None:
    """(An editor's or printf's trailing blank lines were refused as "empty line"; no other line moves.)"""
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\ntwo blue squares\n\n  \n")
    assert read_prompt_file(path) == [(1, "a red circle"), (2, "two blue squares")]
    path.write_text("\n\n")
    with pytest.raises(UserError, match="holds no prompts"):
        read_prompt_file(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("a red circle\n\ntwo blue squares\n", "prompts.txt:2: empty line"),
        ("a red circle\n{not json\n", "prompts.txt:2: not valid JSON"),
        ('{"text": "a red circle"}\n', 'prompts.txt:1: a JSON line needs a string "prompt" field'),
        ('{"prompt": "  "}\n', 'prompts.txt:1: empty "prompt" field'),
        ("a purple dragon\n", "prompts.txt:1:"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        prompt_specs(str(path), 10, 0)


def test_unknown_source_and_bad_n() -> None:
    with pytest.raises(UserError, match="neither"):
        prompt_specs("no/such/file.txt", 10, 0)
    with pytest.raises(UserError, match="--n must be positive"):
        prompt_specs("test", 0, 0)


def test_a_table_is_no_prompt_file(tmp_path: Path) -> None:
    """Read as text, a CSV's header would be the first prompt and its quotes part of each."""
    path = tmp_path / "prompts.csv"
    path.write_text('prompt\n"a red circle"\n')
    with pytest.raises(UserError, match=r"prompts.csv: a prompt file is plain text .* or JSONL .*not \.csv$"):
        read_prompt_file(path)
