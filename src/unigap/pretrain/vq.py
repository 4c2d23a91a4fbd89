"""Training the VQ tokenizer, consistent with how transformers' Janus decodes.

transformers builds `JanusVQVAE` as a frozen tokenizer: its `forward` reconstructs through
`decode(indices)`, so no gradient reaches the encoder. We train the same modules with the loop below:
encoder → quant_conv → nearest *L2-normalised* code (straight-through) → post_quant_conv → decoder.
`decode` (via `get_codebook_entry`) L2-normalises codebook vectors, and `unigap.model.images.vq_encode`
picks codes by normalised similarity, so training, encoding and decoding all see the same vectors.
Losses: L1 + MSE reconstruction, codebook and commitment terms (β = 0.25) on the normalised vectors,
and unused codes are restarted on current latents so the whole codebook stays in use. Shapes cover a
small share of a ShapeWorld canvas, so a plain pixel loss is met by a blank canvas with blurred blobs;
pixels that differ from the background therefore weigh `OBJECT_WEIGHT` times more. The encoder and
decoder are convolutional, so they train on random crops aligned to the token grid (a 32×32 crop costs a
quarter of a 64×64 image) and still encode and decode whole images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.janus.modeling_janus import JanusVQVAE

from unigap.model.images import normalized_codebook, vq_latents

COMMITMENT = 0.25
OBJECT_WEIGHT = 10.0
RESTART_EVERY = 100  # steps between restarts of codes unused since the last restart


@dataclass
class VQStep:
    """One step's numbers, for the log."""

    loss: float
    reconstruction: float
    codes_used: int


def vq_reconstruct(vq: JanusVQVAE, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels in [-1, 1] → (reconstruction, quantisation loss, ids [B, H·W]), differentiable end to end."""
    latents = F.normalize(vq_latents(vq, pixels), p=2, dim=-1)  # [B, H, W, D]
    codebook = normalized_codebook(vq)
    ids = torch.einsum("bhwd,nd->bhwn", latents.detach(), codebook.detach()).argmax(dim=-1)
    codes = codebook[ids]
    quant_loss = F.mse_loss(codes, latents.detach()) + COMMITMENT * F.mse_loss(latents, codes.detach())
    straight = latents + (codes - latents).detach()
    recon = vq.decoder(vq.post_quant_conv(straight.permute(0, 3, 1, 2)))
    return recon, quant_loss, ids.flatten(1)


def reconstruction_loss(recon: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Object-weighted L1 + MSE; the background is the top-left pixel's colour (ShapeWorld's white)."""
    background = pixels[:, :, :1, :1]
    weight = 1.0 + (OBJECT_WEIGHT - 1.0) * (pixels - background).abs().amax(dim=1, keepdim=True).gt(0.05).float()
    error = recon - pixels
    return ((error.abs() + error.square()) * weight).mean() / weight.mean()


def grid_crops(images: np.ndarray, size: int, cell: int, generator: torch.Generator) -> np.ndarray:
    """One random `size`×`size` crop per image, its corner on the `cell`-pixel token grid."""
    height, width = images.shape[1:3]
    if size >= min(height, width):
        return images
    rows = torch.randint((height - size) // cell + 1, (len(images),), generator=generator).numpy() * cell
    cols = torch.randint((width - size) // cell + 1, (len(images),), generator=generator).numpy() * cell
    return np.stack([image[r : r + size, c : c + size] for image, r, c in zip(images, rows, cols, strict=True)])


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] → float [B, 3, H, W] in [-1, 1] (the VQ's range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vq(
    vq: JanusVQVAE,
    images: np.ndarray,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    on_step: Callable[[int, VQStep], None] | None = None,
    crop: int | None = None,
) -> None:
    """Train `vq` in place on uint8 renders [S, H, W, 3] (or grid-aligned crops of them); leaves it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vq.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    used = torch.zeros(vq.config.num_embeddings, dtype=torch.bool)
    cell = 2 ** (len(vq.config.channel_multiplier) - 1)  # pixels per token side
    vq.train()
    for step in range(steps):
        rows = torch.randint(len(images), (batch,), generator=generator).numpy()
        pixels = to_pixels(grid_crops(images[rows], crop or images.shape[1], cell, generator))
        recon, quant_loss, ids = vq_reconstruct(vq, pixels)
        reconstruction = reconstruction_loss(recon, pixels)
        loss = reconstruction + quant_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        used[ids.unique()] = True
        if (step + 1) % RESTART_EVERY == 0 and step + 1 < steps:
            _restart_unused(vq, pixels, used, generator)
            used.zero_()
        if on_step is not None:
            on_step(step, VQStep(loss.item(), reconstruction.item(), int(used.sum())))
    vq.eval()


@torch.no_grad()
def _restart_unused(vq: JanusVQVAE, pixels: torch.Tensor, used: torch.Tensor, generator: torch.Generator) -> None:
    """Move every code unused since the last restart onto a random current latent (plus a little noise)."""
    dead = (~used).nonzero().flatten()
    if len(dead) == 0:
        return
    latents = vq_latents(vq, pixels).reshape(-1, vq.config.embed_dim)
    picks = latents[torch.randint(len(latents), (len(dead),), generator=generator)]
    noise = 0.01 * torch.randn(picks.shape, generator=generator)
    vq.quantize.embedding.weight[dead] = F.normalize(picks + noise, p=2, dim=-1)
