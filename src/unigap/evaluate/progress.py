"""Batches with a progress bar: model calls are batched, and long loops show how far they are.

`map_batches` is how every sampling and evaluation loop runs its batches: in one process, one after another; under
`accelerate launch`, shared between the processes (`unigap.distributed.ordered_rounds`), every process receiving
every batch's result in batch order. A batch's result depends only on the batch and its index (sampling seeds are
`batch_seed(seed, index)`), so the output is the one-process output whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from unigap import distributed
from unigap.progress import progress

T = TypeVar("T")
R = TypeVar("R")


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


def map_batches(items: Sequence[T], batch_size: int, fn: Callable[[int, list[T]], R], description: str,
                show: bool = True) -> list[R]:
    """`[fn(index, batch) for each consecutive batch of at most batch_size items]`, data-parallel under `accelerate
    launch` (module docstring), with progress counting items done on the main process. Results travel between
    processes pickled: return CPU tensors, images and plain values."""
    check_batch_size(batch_size)
    chunks = [list(items[start : start + batch_size]) for start in range(0, len(items), batch_size)]
    results: list[R] = []
    with progress(description, len(items), show and distributed.is_main()) as update:
        for done in distributed.ordered_rounds(list(enumerate(chunks)), lambda pair: fn(*pair)):
            results += done
            update(sum(len(chunk) for chunk in chunks[: len(results)]))
    return results


def map_items(items: Sequence[T], batch_size: int, fn: Callable[[int, list[T]], Sequence[R]], description: str,
              show: bool = True) -> list[R]:
    """`map_batches` for a batch function that returns one result per item: the results, one per item, in order."""
    return [result for chunk in map_batches(items, batch_size, fn, description, show) for result in chunk]
