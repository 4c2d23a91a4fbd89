"""Batches with a progress bar: model calls are batched, and long loops show how far they are."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def batches(items: Sequence[T], batch_size: int, description: str, show: bool = True) -> Iterator[list[T]]:
    """Consecutive slices of at most `batch_size` items; a transient bar on stderr counts items done."""
    check_batch_size(batch_size)
    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task(description, total=len(items))
        for start in range(0, len(items), batch_size):
            chunk = list(items[start : start + batch_size])
            yield chunk
            bar.advance(task, len(chunk))
