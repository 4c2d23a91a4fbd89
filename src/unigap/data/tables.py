"""Users' data files as rows: JSONL, CSV, Parquet, or a dataset saved by `datasets.save_to_disk`, each row with
the place it came from, so that one malformed row is one error naming `FILE:LINE` (or `FILE:row N`).

Why one reader: understanding and caption data and preference pairs all arrive in these formats (prompt lists are
text or JSONL: `unigap.evaluate.data`), and every command must fail the same way, before anything is written. Image
cells are read by `image_cell`: a path (relative to the data file's folder), raw bytes, a `{"bytes", "path"}`
struct (how `datasets` stores an `Image` column in Parquet) or an already decoded image. Where many rows are kept
(understanding and caption data), `stored_image` checks a cell by decoding it once and keeps it as stored (a path, or
encoded bytes): a user's file of 100,000 photos decoded at once would need about 100 GB, so they are decoded as they
are used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unigap.atomic import file_fingerprint
from unigap.errors import UserError
from unigap.pixels import UNREADABLE_IMAGE, rgb_pixels

TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
Row = tuple[str, dict[str, Any]]  # (location, row)


def read_table(path: str | Path, what: str = "row") -> list[Row]:
    """Every row of a data file (or `save_to_disk` folder) with its location; blank JSONL lines are skipped.
    `UserError` for a missing or unreadable file, an unknown format, a row that is not an object ("FILE:LINE:
    malformed {what}: ..."), or no rows."""
    path = Path(path)
    if path.is_dir():
        rows = _dataset_rows(path)
    elif not path.is_file():
        raise UserError(f"data file not found: {path}")
    elif path.suffix.lower() == ".jsonl":  # (data.CSV as data.csv, as prompt files are read)
        rows = _jsonl_rows(path, what)
    elif path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    elif path.suffix.lower() == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise UserError(f"{path}: unknown data format; expected {', '.join(TABLE_SUFFIXES)} or a save_to_disk folder")
    if not rows:
        raise UserError(f"{path}: no {what}s")
    return rows


def text_lines(path: Path, what: str = "") -> list[str]:
    """A text file's lines (a byte-order mark dropped), split at line ends only: `str.splitlines` also splits at
    U+2028, U+0085 and form feeds, which JSON written with `ensure_ascii=False` holds unescaped inside a string.
    `UserError` naming the file (and `what` it is) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # (\r\n and \r read as \n)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what}{' ' if what else ''}{path}: {exc}") from None
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _jsonl_rows(path: Path, what: str) -> list[Row]:
    out = []
    lines = text_lines(path)
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:  # (a JSONDecodeError, or an integer of more digits than Python converts)
            raise UserError(f"{path}:{line_no}: malformed {what}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: malformed {what}: not a JSON object")
        out.append((f"{path}:{line_no}", row))
    return out


def _csv_rows(path: Path) -> list[Row]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, strict=True)  # (a file cut inside a quoted cell: an error, not a row)
            names = [name for name in reader.fieldnames or () if name]  # (a spreadsheet's trailing empty columns)
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:  # DictReader would keep the last such column's cells, silently
                raise UserError(f"{path}: the header names {', '.join(map(repr, repeated))} more than once")
            out = []
            try:
                for row in reader:  # located at the line it starts on: `line_num` is its last (a cell may span lines)
                    cells = [cell for cell in (*row.values(), *row.get(None, ())) if isinstance(cell, str)]
                    spanned = sum(cell.count("\n") for cell in cells)
                    where = f"{path}:{reader.line_num - spanned}"
                    if None in row or None in row.values():
                        raise UserError(f"{where}: expected {len(reader.fieldnames or [])} columns")
                    out.append((where, dict(row)))
            except csv.Error as exc:  # (strict: a stray quote, or a file cut inside a quoted cell)
                raise UserError(f"{path}:{reader.line_num + 1}: malformed CSV: {exc}") from None  # (the record's start)
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _parquet_rows(path: Path) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: cannot read Parquet: {exc}") from None
    rows = [(f"{path}:row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]
    return _class_names(rows, _parquet_features(table.schema.metadata or {}))


def _parquet_features(metadata: dict[bytes, bytes]) -> dict[str, Any]:
    """The `datasets` features a Parquet file written by `datasets` (`to_parquet`, the Hub's files) keeps in its
    schema, as `Features.to_dict()` gives them; none for any other file."""
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
    except (KeyError, TypeError, ValueError):
        return {}
    return features if isinstance(features, dict) else {}


def _dataset_rows(path: Path) -> list[Row]:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / name).is_file() for name in markers):
        raise UserError(f"{path} is a folder but not a dataset saved by datasets.save_to_disk")
    try:
        import datasets
    except ImportError:
        raise UserError(f"{path}: reading a save_to_disk folder needs the datasets package (pip install "
                        "datasets)") from None
    try:
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            raise UserError(f"{path} holds several splits ({', '.join(dataset)}); pass one split's folder")
        # the stored rows, images still encoded ({"bytes", "path"}: decoded as they are used), read as they are: a cast
        # of a list-of-images column (TRL's `images`) would write a cache file into the user's folder
        rows = [(f"{path}:row {i}", row) for i, row in enumerate(dataset.data.to_pylist(), start=1)]
        return _class_names(rows, dataset.features.to_dict())
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged folder fails inside datasets in many ways (KeyError, ...)
        raise UserError(f"{path}: cannot load the dataset: {type(exc).__name__}: {exc}") from None


def _class_names(rows: list[Row], features: dict[str, Any]) -> list[Row]:
    """The rows with each `ClassLabel` column (or list of them) as its class names, from `datasets` features in
    their `to_dict()` form: read raw, a labelled answer or kind column held the integer codes ("1" where the dataset
    says "yes"), and -1, no label, is None."""

    def labels(feature: Any) -> list[str] | None:
        is_label = isinstance(feature, dict) and feature.get("_type") == "ClassLabel"
        return feature.get("names") if is_label and isinstance(feature.get("names"), list) else None

    def name(names: list[str], value: Any) -> Any:
        if isinstance(value, int) and 0 <= value < len(names):
            return names[value]
        return None if value == -1 else value

    for column, feature in features.items():
        names, listed = labels(feature), isinstance(feature, dict) and labels(feature.get("feature"))
        for _, row in rows:
            if column in row and names is not None:
                row[column] = name(names, row[column])
            elif listed and isinstance(row.get(column), list):
                row[column] = [name(listed, value) for value in row[column]]
    return rows


def text_cell(row: dict[str, Any], name: str, where: str) -> str:
    """A non-empty string column; `UserError` naming the row otherwise."""
    if name not in row:  # (a CSV header without the column, a JSONL row without the key)
        raise UserError(f"{where}: no {name!r} column (it has {', '.join(map(repr, row)) or 'none'})")
    value = row[name]
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: {name!r} must be a non-empty string")
    return value


def _stored(value: Any, base: Path) -> tuple[Any, str]:
    """An image cell's content as stored: bytes, a file (a relative path from `base`), or a PIL image as given; and
    how an error names it (the path as written). A `datasets` struct's relative path is the one its writer gave
    (`Dataset.to_parquet` keeps it, from the writer's working directory, as `datasets` reads it): from `base` where
    that file exists, else as given."""
    struct = isinstance(value, dict)
    if struct:
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str) and value:
        path = Path(value)
        if not path.is_absolute():
            as_written = struct and path.exists() and not (base / path).exists()
            path = path if as_written else base / path
        return path, value
    return value, "bytes"


def image_cell(row: dict[str, Any], base: Path, where: str, name: str = "image") -> np.ndarray:
    """An image column as an RGB uint8 array: a path (relative paths from `base`, the data file's folder), bytes,
    a `{"bytes", "path"}` struct, or a PIL image. `UserError` naming the row when it is missing or unreadable."""
    if name not in row:
        raise UserError(f"{where}: missing {name!r} column")
    if row[name] is None:  # (the column is there: "missing column" sent the user to its header)
        raise UserError(f"{where}: {name!r} is empty (null)")
    value, shown = _stored(row[name], base)
    if isinstance(value, str) and not value:
        raise UserError(f"{where}: {name!r} is an empty path")
    if not isinstance(value, (Image.Image, bytes, Path)):  # (before the reading, whose errors name the image)
        raise UserError(f"{where}: {name!r} must be a path, bytes or an image, got {type(value).__name__}")
    if shown.startswith(_NOT_FETCHED):  # (read as a path, the error printed a data URI's whole image, twice)
        raise UserError(f"{where}: {name!r} is a URL or data URI ({shown[:40]}...), which unigap does not fetch: "
                        "give a path, bytes or an image")
    try:
        if isinstance(value, Image.Image):
            return rgb_pixels(value)
        with Image.open(io.BytesIO(value) if isinstance(value, bytes) else value) as image:  # (a GIF stays open)
            return rgb_pixels(image)
    except UNREADABLE_IMAGE as exc:
        raise UserError(f"{where}: cannot read image {shown}: {exc}") from None


_NOT_FETCHED = ("data:", "http://", "https://", "s3://", "gs://", "hf://")


@dataclass(frozen=True)
class StoredImage:
    """An image cell as it is stored, decoded on use (`to_pixels`; the model takes it as an image): the row's value (a
    path, bytes or a `{"bytes", "path"}` struct), the folder relative paths start from, and where the row is."""

    value: Any
    base: Path
    where: str
    name: str = "image"

    def to_pixels(self) -> np.ndarray:
        return image_cell({self.name: self.value}, self.base, self.where, self.name)

    @cached_property
    def digest(self) -> str:
        """sha256 of what is stored (the file's bytes for a path), so a cache keyed on it notices an image edited in
        place; a PIL image is hashed by its pixels. Read once: a run's input claim and its token cache key see the same
        content, and a large file is not read twice for them."""
        value = _stored(self.value, self.base)[0]
        if isinstance(value, Path):
            return file_fingerprint(value)
        return hashlib.sha256(value if isinstance(value, bytes) else self.to_pixels().tobytes()).hexdigest()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """`np.asarray(stored)` gives the pixels, as it did when rows held arrays (always a fresh array)."""
        return self.to_pixels() if dtype is None else self.to_pixels().astype(dtype)


def stored_image(row: dict[str, Any], base: Path, where: str, name: str = "image") -> StoredImage:
    """`image_cell`'s check (the cell decodes; `UserError` naming the row otherwise), the pixels then dropped."""
    image_cell(row, base, where, name)
    return StoredImage(row[name], base, where, name)


def base_folder(path: str | Path) -> Path:
    """Where relative image paths of a data file start: its folder (a dataset folder itself)."""
    path = Path(path)
    return path if path.is_dir() else path.parent
