"""VQ fidelity: the share of held-out scenes whose VQ reconstruction the verifier still accepts.

Why it matters: generated images are VQ decodings, so a tokenizer that loses colours or small shapes caps
generation accuracy no matter how good the LLM is. This is the ceiling the generation metrics live under.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from PIL import Image

from unigap.evaluate.data import held_out_pairs
from unigap.evaluate.progress import map_items
from unigap.evaluate.stats import summarize, with_cis
from unigap.world import render, verify


class Tokenizer(Protocol):
    def encode_images(self, images: list) -> torch.Tensor: ...

    def decode_tokens(self, ids: torch.Tensor) -> list[Image.Image]: ...


def vq_fidelity(
    um: Tokenizer, n: int = 200, seed: int = 0, data_seed: int = 0, batch_size: int = 64, progress: bool = True,
    split: str = "test",
) -> dict[str, Any]:
    """`{"accuracy", "n", "stderr"}`: verifier acceptance of decode(encode(render)) on n held-out scenes."""
    def batch(_: int, chunk: list) -> list[bool]:
        decoded = um.decode_tokens(um.encode_images([render(scene) for _, scene in chunk]))
        return [verify(image, spec, canvas=image.size[0]).satisfied
                for (spec, _), image in zip(chunk, decoded, strict=True)]

    pairs = held_out_pairs(n, seed, data_seed, split=split)
    return with_cis(summarize(map_items(pairs, batch_size, batch, "VQ reconstructions", progress), "accuracy"))
