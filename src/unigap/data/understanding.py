"""Users' own understanding data: image + question + answer(s), from any table `unigap.data.tables` reads.

Columns: `image` (a path relative to the file's folder, bytes, or an image), `question`, and `answer` (one
string) or `answers` (several reference answers, VQA-style; in CSV a JSON list) or both (`answer` one of `answers`,
the one exact match compares with), optionally `kind` (a question type, for the per-kind breakdown; "all" when
absent). The items look like ShapeWorld's `UnderstandingItem`s to
`answer_items`, so one scorer serves both: normalised exact match against the first reference (`answer`, or the
majority of `answers`), plus the VQA soft score against all of them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unigap.errors import UserError
from unigap.data.tables import StoredImage, base_folder, read_table, stored_image, text_cell

DEFAULT_KIND = "all"


@dataclass(frozen=True)
class UserQuestion:
    kind: str
    text: str
    answers: tuple[str, ...]

    @property
    def answer(self) -> str:
        """The reference exact match compares against and SFT trains on: the first one (see `_answers`)."""
        return self.answers[0]


@dataclass(frozen=True)
class UserItem:
    index: int
    stored: StoredImage  # checked when read, decoded when used
    question: UserQuestion
    where: str

    @property
    def image(self) -> np.ndarray:
        return self.stored.to_pixels()


FLOAT_CELL = re.compile(r"[+-]?\d+\.\d+([eE][+-]?\d+)?")  # a float as pandas writes it in CSV ("3.0", "2.5")
WHOLE_FLOAT = re.compile(r"[+-]?\d{1,15}\.0")  # pandas' whole number of a float column (exact as a float)


def _a_float_column(rows: list[tuple[str, dict[str, Any]]], column: str) -> bool:
    """Whether a CSV column is what pandas writes of a float column (every filled cell a float's repr, a missing
    value having made a column of counts float): only there is "3.0" the count 3, not an answer written "3.0"."""
    cells = [row[column].strip() for _, row in rows if isinstance(row.get(column), str) and row[column].strip()]
    return bool(cells) and all(FLOAT_CELL.fullmatch(cell) for cell in cells)


def _whole(value: Any, whole_floats: bool) -> Any:
    """A whole float as the integer it stands for (pandas' float of an integer column with a gap: 3.0, or "3.0" in a
    CSV column that `whole_floats` says pandas wrote of floats); any other value as it is."""
    if whole_floats and isinstance(value, str) and WHOLE_FLOAT.fullmatch(value.strip()):
        value = float(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _answer_text(value: Any, whole_floats: bool = False) -> str | None:
    """An answer as text: a string (as written: "10.00" is a price, not 10), a whole number (VQA's counts, often
    stored as integers, or as floats: `_whole`), or VQAv2's `{"answer": ...}` record; None for anything else (NaN
    too)."""
    if isinstance(value, dict):
        value = value.get("answer")
    value = _whole(value, whole_floats)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value.strip() else None


def _answers(row: dict[str, Any], where: str, whole_floats: bool = False) -> tuple[str, ...]:
    """The row's reference answers, first the one exact match compares with and SFT trains on (the soft score does
    not depend on their order): its `answer` where it gives both, else the majority answer (VQAv2's
    `multiple_choice_answer`; the earliest on a tie), not whichever annotator came first. `whole_floats`: its
    `answer` cell is pandas' float (`_answer_text`)."""
    if row.get("answers") not in (None, ""):  # (a CSV row that fills only `answer` leaves `answers` empty)
        answers = _references(row, where)
        answer = _answer_text(row.get("answer"), whole_floats)  # (None where absent, blank or NaN: a pandas gap)
        folded = [" ".join(a.lower().split()) for a in answers]  # ("Yes" is "yes"; "yes " is "yes")
        if answer is None:
            same = max(range(len(answers)), key=lambda i: (folded.count(folded[i]), -i))
        elif (given := " ".join(answer.lower().split())) in folded:
            same = folded.index(given)
        else:
            raise UserError(f"{where}: its 'answer' {row['answer']!r} is not one of its 'answers'; give one of them, "
                            "or leave one column out")
        return (answers[same], *answers[:same], *answers[same + 1:])
    if "answer" not in row:
        if "answers" in row:  # (its cell null or blank)
            raise UserError(f"{where}: its 'answers' is empty and it has no 'answer' column")
        raise UserError(f"{where}: needs an 'answer' or an 'answers' column (it has {', '.join(map(repr, row))})")
    answer = _answer_text(row["answer"], whole_floats)
    if answer is None:
        raise UserError(f"{where}: 'answer' must be a non-empty string or a whole number")
    return (answer,)


def _references(row: dict[str, Any], where: str) -> tuple[str, ...]:
    """The `answers` column as answer texts."""
    value = row["answers"]
    if isinstance(value, dict) and isinstance(value.get("answer"), list):  # datasets' Sequence of records
        value = value["answer"]
    if isinstance(value, str):  # CSV: a JSON list in one cell
        try:
            value = json.loads(value)
        except ValueError:  # (a JSONDecodeError, or an integer of more digits than Python converts)
            raise UserError(f"{where}: 'answers' must be a list of strings (in CSV, a JSON list)") from None
    answers = [_answer_text(a) for a in value] if isinstance(value, list | tuple) else []
    if not answers or None in answers:
        raise UserError(f"{where}: 'answers' must be a non-empty list of answers (non-empty strings, whole "
                        "numbers, or VQAv2's {\"answer\": ...} records)")
    return tuple(answers)


def _kind(value: Any, where: str, whole_floats: bool = False) -> str:
    """A row's question kind as a group name: text, or a number (an integer-coded type column: 0 is a kind too, not
    "all"); `DEFAULT_KIND` where the cell is absent, blank or NaN (a gap in a pandas column). `whole_floats`: the cell
    is in a CSV column pandas wrote of floats ("0.0" is kind 0 there, as 0.0 is in Parquet or JSONL)."""
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float)
                                                                           and math.isnan(value)):
        return DEFAULT_KIND
    value = _whole(value, whole_floats)  # (0.0 is kind 0)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UserError(f"{where}: 'kind' must be text or a number, got {value!r}")
    return str(value)


def read_understanding_data(path: str | Path, n: int | None = None) -> list[UserItem]:
    """The first n items (all when n is None or the file has fewer); every row up to them checked, each image
    decoded once, so a bad row fails here, naming `FILE:LINE`, before a model is loaded or anything is written (the
    images are kept as stored and decoded again when used)."""
    if n is not None and n < 1:
        raise UserError(f"--n must be positive, got {n}")
    base = base_folder(path)
    rows = read_table(path)
    csv = Path(path).suffix.lower() == ".csv"
    floats = {column: csv and _a_float_column(rows, column) for column in ("answer", "kind")}  # (whole columns')
    items = []
    for index, (where, row) in enumerate(rows[:n]):
        question = UserQuestion(_kind(row.get("kind"), where, floats["kind"]), text_cell(row, "question", where),
                                _answers(row, where, floats["answer"]))
        items.append(UserItem(index, stored_image(row, base, where), question, where))
    return items


def kinds_of(items: list[UserItem]) -> list[str]:
    """The question kinds present, in first-seen order (the per-kind breakdown's groups)."""
    return list(dict.fromkeys(item.question.kind for item in items))
