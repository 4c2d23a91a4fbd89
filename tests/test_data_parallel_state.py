"""Gradients summed over processes (`unigap.distributed.sum_tensors`) keep each tensor's dtype: under bf16 weights the
LoRA stays float32 beside the bf16 generation head, and one flat all-reduce promotes them all to float32."""

from __future__ import annotations

import pytest
import torch

from unigap import distributed


def test_summed_tensors_keep_their_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_sum", lambda value: value * 2)  # two processes holding the same values
    lora, head = torch.ones(3), torch.full((2, 1), 0.5, dtype=torch.bfloat16)
    summed = distributed.sum_tensors([lora, head])
    assert [t.dtype for t in summed] == [torch.float32, torch.bfloat16]
    assert summed[0].tolist() == [2.0] * 3 and summed[1].tolist() == [[1.0], [1.0]]
