"""Pixels in and out: vision-tower inputs, and VQ encode/decode that agree with each other.

Pixel tensors are built here directly (PIL + numpy) because transformers' default Janus image
processor needs torchvision and `JanusProcessor` hard-codes 576 image tokens. The transform follows
`JanusImageProcessor`: resize the longest side to the target size (bicubic), pad to a square with the
mean colour, rescale to [0, 1], normalise with the checkpoint's mean/std.

The VQ side works in [-1, 1] (mean = std = 0.5), the range Janus's VQ decoder produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.models.janus.modeling_janus import JanusVQVAE

from unigap.pixels import rgb_pixels


@runtime_checkable
class StoredPixels(Protocol):
    """An image decoded when used (`unigap.data.tables.StoredImage`): how a user's large data file's images are held.
    (A method, not a property: `isinstance` on a protocol reads its attributes, which would decode.)"""

    def to_pixels(self) -> np.ndarray: ...


ImageInput = Image.Image | np.ndarray | StoredPixels

VQ_MEAN = (0.5, 0.5, 0.5)
VQ_STD = (0.5, 0.5, 0.5)


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """A PIL image (any mode; transparency on white), a uint8 HxWx3 array or a stored image, as a uint8 HxWx3
    array."""
    if isinstance(image, StoredPixels):
        image = image.to_pixels()
    if isinstance(image, Image.Image):
        image = rgb_pixels(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image arrays must be uint8 of shape HxWx3, got {image.dtype} {image.shape}")
        if not image.shape[0] or not image.shape[1]:
            raise ValueError(f"an image must have pixels, got shape {image.shape}")
        return image
    raise ValueError(f"images must be PIL images or uint8 HxWx3 numpy arrays (or stored images), got "
                     f"{type(image).__name__}")


MIN_SIDE = 14  # JanusImageProcessor's `min_size`: a very wide or tall image's short side is scaled to no less


def _fit_square(image: np.ndarray, size: int, background: tuple[int, int, int]) -> np.ndarray:
    """Resize the longest side to `size` (bicubic; the other side at least MIN_SIDE) and pad to a centred square,
    like JanusImageProcessor."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = (max(MIN_SIDE, round(side * scale)) for side in (height, width))
    pil = Image.fromarray(image)
    if (new_h, new_w) != (height, width):
        pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if new_h == new_w == size:
        return np.asarray(pil)
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(pil, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)


def pixel_tensor(images: Sequence[ImageInput], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Images → float32 tensor [B, 3, size, size], squared, rescaled and normalised by mean/std."""
    background = tuple(int(m * 255) for m in mean)
    arrays = [_fit_square(to_rgb_array(image), size, background) for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


@dataclass(frozen=True)
class VisionPreprocessing:
    """How one checkpoint's understanding tower wants its pixels."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: Sequence[ImageInput]) -> torch.Tensor:
        return pixel_tensor(images, self.size, self.mean, self.std)


def vq_image_size(vqmodel: JanusVQVAE) -> int:
    """Pixel size the VQ works at: token grid × downsample factor (2 per resolution level)."""
    grid = vqmodel.quantize.quant_state_dims[0]
    return grid * 2 ** (len(vqmodel.config.channel_multiplier) - 1)


def normalized_codebook(vqmodel: JanusVQVAE) -> torch.Tensor:
    """Codebook vectors with unit L2 norm — the vectors `get_codebook_entry` (hence `decode`) uses."""
    return F.normalize(vqmodel.quantize.embedding.weight, p=2, dim=-1)


def vq_latents(vqmodel: JanusVQVAE, pixels: torch.Tensor) -> torch.Tensor:
    """Pre-quantisation latents [B, H, W, D] for pixels in [-1, 1]."""
    hidden = vqmodel.quant_conv(vqmodel.encoder(pixels))
    return hidden.permute(0, 2, 3, 1)


def vq_encode(vqmodel: JanusVQVAE, pixels: torch.Tensor) -> torch.LongTensor:
    """Pixels in [-1, 1] → token ids [B, H·W] (row-major), by the nearest *normalised* code.

    transformers' quantizer `forward` compares raw latents with raw codebook vectors, while
    `get_codebook_entry` (what `decode` and so image generation use) L2-normalises the codebook.
    Janus's original VQ (LlamaGen) normalises both sides before the nearest-neighbour search. We do
    the same, so an encoded id always names the code whose *decoded* vector is closest to the latent
    direction: encode and decode then agree, and a real image's ids mean what generated ids mean.
    """
    latents = F.normalize(vq_latents(vqmodel, pixels).float(), p=2, dim=-1)
    codebook = normalized_codebook(vqmodel).float()
    # For unit vectors, the smallest L2 distance is the largest dot product.
    ids = torch.einsum("bhwd,nd->bhwn", latents, codebook).argmax(dim=-1)
    rows, inverse = torch.unique(codebook, dim=0, return_inverse=True)
    if len(rows) < len(codebook):  # merged codes (`unigap.pretrain.vq.merge_similar_codes`): one id per vector
        every = torch.arange(len(codebook), device=ids.device)
        lowest = torch.full((len(rows),), len(codebook), device=ids.device).scatter_reduce(0, inverse, every, "amin")
        ids = lowest[inverse[ids]]
    return ids.flatten(1)


def vq_decode(vqmodel: JanusVQVAE, ids: torch.LongTensor) -> list[Image.Image]:
    """Token ids [B, N] → RGB PIL images, mapping the decoder's [-1, 1] output to [0, 255]."""
    pixels = vqmodel.decode(ids).float().clamp(-1.0, 1.0)
    arrays = ((pixels + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array) for array in arrays]
