"""Batches with a progress bar: model calls are batched, and long loops show how far they are."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from unigap.progress import progress

T = TypeVar("T")


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def batches(items: Sequence[T], batch_size: int, description: str, show: bool = True) -> Iterator[list[T]]:
    """Consecutive slices of at most `batch_size` items, with progress (`unigap.progress`) counting items done."""
    check_batch_size(batch_size)
    with progress(description, len(items), show) as update:
        for start in range(0, len(items), batch_size):
            chunk = list(items[start : start + batch_size])
            yield chunk
            update(start + len(chunk))
