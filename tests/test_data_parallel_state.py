"""Data-parallel state, checked without processes: gradients summed over processes (`unigap.distributed.sum_tensors`)
keep each tensor's dtype (under bf16 weights the LoRA stays float32 beside the bf16 generation head, and one flat
all-reduce promotes them all to float32), and each process draws its own dropout masks."""

from __future__ import annotations

import pytest
import torch

from unigap import distributed
from unigap.errors import UserError


def test_summed_tensors_keep_their_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_sum", lambda value: value * 2)  # two processes holding the same values
    lora, head = torch.ones(3), torch.full((2, 1), 0.5, dtype=torch.bfloat16)
    summed = distributed.sum_tensors([lora, head])
    assert [t.dtype for t in summed] == [torch.float32, torch.bfloat16]
    assert summed[0].tolist() == [2.0] * 3 and summed[1].tolist() == [[1.0], [1.0]]


def test_each_process_but_the_first_draws_its_own_dropout_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same-shaped shards would otherwise get, row for row, the first process's dropout masks; the first keeps its
    stream, so a single process draws what it always drew; each checkpoint step gives the others a fresh one."""
    def draws(process: int, step: int) -> torch.Tensor:
        monkeypatch.setattr(distributed, "rank", lambda: process)
        torch.manual_seed(0)
        distributed.own_random_stream(seed=0, step=step)
        return torch.rand(4)

    torch.manual_seed(0)
    alone = torch.rand(4)
    assert torch.equal(draws(0, 0), alone) and torch.equal(draws(0, 6), alone)
    assert not torch.equal(draws(1, 0), alone) and not torch.equal(draws(2, 0), draws(1, 0))
    assert torch.equal(draws(1, 6), draws(1, 6)) and not torch.equal(draws(1, 6), draws(1, 0))


def test_a_checkpoint_from_more_gpus_restores_the_states_of_the_gpus_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    from unigap.train.checkpoint import set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    set_rng_state({"cpu": torch.get_rng_state(), "cuda": ["gpu0", "gpu1"]})  # saved where 2 GPUs were visible
    assert restored == [("gpu0", 0)]


@pytest.mark.parametrize(("error", "raised", "says"), [
    (UserError("--n must be positive"), UserError, "process 1 failed: --n must be positive"),
    (ValueError("bad item"), RuntimeError, "process 1 failed: ValueError: bad item"),
    (torch.OutOfMemoryError("CUDA out of memory"), torch.OutOfMemoryError, "process 1 failed: CUDA out of memory"),
])
def test_another_processs_user_error_is_a_user_error_here_too(monkeypatch: pytest.MonkeyPatch, error, raised,
                                                               says) -> None:
    """(Its RuntimeError printed a traceback on every other process, beside the failing one's one line.)"""
    sent = []

    def gathered(value):  # process 0's value, and what process 1 sent when `fn` raised there
        sent.append(value)
        return [value, sent[0]]

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "gather_objects", gathered)

    def fails():
        raise error

    with pytest.raises(type(error)):  # the failing process: its own error, once sent to the others
        distributed.gather_results(fails)
    with pytest.raises(raised) as caught:  # (here in place of the first process, which received it)
        distributed.gather_results(lambda: 1)
    assert str(caught.value) == says and type(caught.value) is raised
