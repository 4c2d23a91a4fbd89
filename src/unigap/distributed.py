"""Data parallelism across processes started by `accelerate launch` (or `torchrun`): training and sampling.

Why by hand and not `Accelerator.prepare(model)`: unigap calls the model's parts (vision encoder, LLM, generation
head) separately, which a DDP wrapper does not see. Each process instead takes every `world`-th example of the
step's global batch (`shard`); a task's loss is its summed token loss over the *global* token (or row) count, so
the gradients summed over processes (`sum_gradients`) are exactly the one-process gradients of the same global
batch, up to float summation order. Every process holds the same parameters (same seed, same summed gradients,
same optimizer step), and each draws its own dropout masks (`own_random_stream`); only the main one writes logs,
checkpoints and the adapter. On CPU the processes talk over gloo; a single process needs no launcher and no process
group.

Sampling commands split their batches instead (`ordered_rounds`, and `unigap.evaluate.progress.map_batches` on it):
each process takes one batch per round, and every process receives the round's results in batch order, so the
output is the one-process output (every batch's seed is a function of its index, not of the process) and all
processes agree on when to stop. Every process then holds the same results; the main one writes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from unigap.errors import UserError

T = TypeVar("T")


def world_size() -> int:
    """Processes in this run (the launcher's WORLD_SIZE; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index; the process group is joined on first use (gloo on CPU, NCCL on GPUs)."""
    if world_size() == 1:
        return 0
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).process_index


def is_main() -> bool:
    return rank() == 0


def wait_for_everyone() -> None:
    """Block until every process gets here (at once with one process). Commands call it after checking their output
    folder, so no process reads a file another has already written in this run."""
    if world_size() > 1:
        rank()  # joins the group
        torch.distributed.barrier()


def close() -> None:
    """Leave the process group, if this process joined one. A process that exits with the group open can abort
    at interpreter exit (gloo's worker threads still hold tensors: SIGABRT, "terminate called without an active
    exception"), turning a finished run into a failed one; torch asks for `destroy_process_group` before exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def own_random_stream(seed: int, step: int) -> None:
    """Give every process but the first its own stream of torch's global generator (the LoRA dropout masks) from
    `step` on: called once the state every process must share is drawn (a LoRA's initialisation), and again at each
    checkpoint, so a resumed run, whose checkpoint holds the first process's stream, continues every stream as the
    unbroken run does. The first process keeps its stream (one process runs as it always has); without this the
    others would draw, row for row, its masks."""
    if rank() > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank(), step]).generate_state(1)[0]))


def shard(rows: np.ndarray) -> np.ndarray:
    """This process's share of a global batch: every `world_size()`-th row from its rank."""
    return rows[rank() :: world_size()]


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over every process (a detached copy, on `value`'s device; the value itself with one process).
    NCCL reduces GPU tensors only, so a CPU value travels through this process's GPU there."""
    if world_size() == 1:
        return value
    rank()  # joins the group
    nccl = torch.distributed.get_backend() == "nccl"
    total = value.detach().to(torch.device("cuda", torch.cuda.current_device()) if nccl else value.device, copy=True)
    torch.distributed.all_reduce(total)
    return total.to(value.device)


def sum_tensors(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over processes, in one flat all-reduce, and in its own dtype (the flat one takes the widest:
    a bf16 model's float32 LoRA beside its bf16 generation head); the tensors themselves with one process."""
    if world_size() == 1:
        return list(tensors)
    flat = all_sum(torch.cat([t.reshape(-1) for t in tensors]))
    return [chunk.view_as(t).to(t.dtype) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors,
                                                             strict=True)]


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Each gradient replaced by its sum over processes; a parameter no process gave a gradient keeps none (as with
    one process, so the optimiser skips it)."""
    if world_size() == 1 or not params:
        return
    given = all_sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device))
    live = [p for p, count in zip(params, given.tolist(), strict=True) if count > 0]
    if not live:
        return
    grads = sum_tensors([p.grad if p.grad is not None else torch.zeros_like(p) for p in live])
    for p, g in zip(live, grads, strict=True):
        p.grad = g.to(p.dtype)


def gather_objects(value: Any) -> list[Any]:
    """`value` of every process, in rank order (picklable objects; `[value]` with one process)."""
    if world_size() == 1:
        return [value]
    rank()  # joins the group
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def gather_results(fn: Callable[[], Any]) -> list[Any]:
    """`fn()` on every process, gathered in rank order; when it raises on any process, every process raises (the
    failing one its own error), instead of the others waiting for it in the next collective: a `UserError` or a GPU's
    out-of-memory error where it was one (the CLI's one line, not a traceback from every other process), else a
    RuntimeError naming it."""
    try:
        mine: tuple[bool, Any, str] = (True, fn(), "")
    except Exception as exc:
        if world_size() == 1:
            raise
        kind = next((name for name, kind in _PASSED_ON.items() if isinstance(exc, kind)), "")
        gather_objects((False, str(exc) if kind else f"{type(exc).__name__}: {exc}", kind))
        raise
    results = gather_objects(mine)
    failed = [(index, message, kind) for index, (ok, message, kind) in enumerate(results) if not ok]
    if failed:
        index, message, kind = failed[0]
        raise _PASSED_ON.get(kind, RuntimeError)(f"process {index} failed: {message}")
    return [value for _, value, _ in results]


# the errors another process raises as they were (by name: a pickled exception may not unpickle), so that the CLI
# treats them alike on every process
_PASSED_ON: dict[str, type[Exception]] = {"user": UserError, "memory": torch.OutOfMemoryError}


def ordered_rounds(items: Sequence[T], fn: Callable[[T], Any]) -> Iterator[list[Any]]:
    """`fn` over `items`, `world_size()` at a time (item i on process i mod world); yields each round's results in
    item order, the same on every process, so a caller may stop after any round."""
    world, me = world_size(), rank()
    for start in range(0, len(items), world):
        mine = gather_results(lambda: fn(items[start + me]) if start + me < len(items) else None)
        yield mine[: len(items) - start]
