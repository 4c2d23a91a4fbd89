"""VQ encode uses the same (normalised) codebook lookup as decode; images round-trip in shape."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unigap.model import UnifiedModel
from unigap.model.images import VQ_MEAN, VQ_STD, pixel_tensor, vq_latents


def test_encode_picks_the_code_decode_uses_nearest(um: UnifiedModel, images) -> None:
    vq = um.model.model.vqmodel
    ids = um.encode_images(images)
    assert ids.shape == (4, um.num_image_tokens) and ids.dtype == torch.long
    with torch.no_grad():
        latents = F.normalize(vq_latents(vq, pixel_tensor(images, 64, VQ_MEAN, VQ_STD)), dim=-1)  # [B, H, W, D]
        entries = vq.quantize.get_codebook_entry(ids).permute(0, 2, 3, 1)  # what decode feeds its decoder
        codebook = F.normalize(vq.quantize.embedding.weight, dim=-1)
    chosen = (latents - entries).norm(dim=-1)
    best = torch.cdist(latents.reshape(-1, latents.shape[-1]), codebook).min(dim=-1).values
    assert torch.allclose(chosen.reshape(-1), best, atol=1e-5)
    # row-major token order: token k is grid cell (k // W, k % W), as decode reshapes it
    grid = vq.quantize.quant_state_dims[1]
    assert torch.equal(entries[0, 1, 2], F.normalize(vq.quantize.embedding.weight[ids[0, grid + 2]], dim=-1))


def test_decode_returns_rgb_images_and_accepts_any_input(um: UnifiedModel, images) -> None:
    ids = um.encode_images([Image.fromarray(images[0]), images[1], np.zeros((30, 50, 3), np.uint8)])
    decoded = um.decode_tokens(ids)
    assert [im.size for im in decoded] == [(64, 64)] * 3 and all(im.mode == "RGB" for im in decoded)
    again = um.encode_images(decoded)
    assert again.shape == ids.shape
    assert um.decode_tokens(torch.zeros((0, um.num_image_tokens), dtype=torch.long)) == []


def test_a_batch_as_one_array_encodes_as_its_list(um: UnifiedModel, images) -> None:
    """A [B, H, W, 3] array, which `answer` and `judge` take, raised numpy's ambiguous-truth-value error."""
    stacked = np.stack([np.asarray(image) for image in images])
    assert torch.equal(um.encode_images(stacked), um.encode_images(list(stacked)))
    assert um.encode_images(stacked[:0]).shape == (0, um.num_image_tokens)


def test_transformers_raw_quantizer_would_disagree(um: UnifiedModel, images) -> None:
    """Why encode is ours: the unnormalised search of `JanusVQVAE.encode` picks other codes."""
    with torch.no_grad():
        raw = um.model.model.vqmodel.encode(pixel_tensor(images, 64, VQ_MEAN, VQ_STD)).image_tokens
    assert (raw.view(len(images), -1) != um.encode_images(images)).any()
