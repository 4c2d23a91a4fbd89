"""Training the VQ tokenizer, consistent with how transformers' Janus decodes.

transformers builds `JanusVQVAE` as a frozen tokenizer: its `forward` reconstructs through
`decode(indices)`, so no gradient reaches the encoder. We train the same modules with the loop below:
encoder → quant_conv → nearest *L2-normalised* code (straight-through) → post_quant_conv → decoder.
`decode` (via `get_codebook_entry`) L2-normalises codebook vectors, and `unigap.model.images.vq_encode`
picks codes by normalised similarity, so training, encoding and decoding all see the same vectors.
Losses: L1 + MSE reconstruction, codebook and commitment terms (β = 0.25) on the normalised vectors,
and unused codes are restarted on current latents so the whole codebook stays in use. Shapes cover a
small share of a ShapeWorld canvas, so a plain pixel loss is met by a blank canvas with blurred blobs;
pixels that differ from the background, and the background pixels within `OBJECT_MARGIN` of them, therefore
weigh `OBJECT_WEIGHT` times more. The margin makes the weighting symmetric: without it, colour spilling
into the background beside an object (a small circle bulging into a square, the commonest way a
reconstruction fails the verifier) cost a tenth of the object losing the same pixels. The encoder and
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

from unigap.model.images import VQ_MEAN, VQ_STD, normalized_codebook, pixel_tensor, vq_encode, vq_latents

COMMITMENT = 0.25
OBJECT_WEIGHT = 10.0
OBJECT_MARGIN = 2  # background pixels this close (Chebyshev, px) to an object weigh as object pixels
CROP_FOREGROUND = 12  # uint8 distance from the background that makes a pixel part of an object, for crops
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
    near = (pixels - background).abs().amax(dim=1, keepdim=True).gt(0.05).float()
    near = F.max_pool2d(near, 2 * OBJECT_MARGIN + 1, stride=1, padding=OBJECT_MARGIN)  # grow by the margin
    weight = 1.0 + (OBJECT_WEIGHT - 1.0) * near
    error = recon - pixels
    return ((error.abs() + error.square()) * weight).mean() / weight.mean()


def grid_crops(
    images: np.ndarray, size: int, cell: int, generator: torch.Generator, empty_weight: float = 1.0
) -> np.ndarray:
    """One random `size`×`size` crop per image, its corner on the `cell`-pixel token grid.

    Small objects are what the VQ loses, and many crops of a ShapeWorld canvas are plain background, so a
    crop with no object pixel is drawn with weight `empty_weight` against 1 for one with some (1.0: uniform).
    """
    height, width = images.shape[1:3]
    if size >= min(height, width):
        return images
    n_rows, n_cols = (height - size) // cell + 1, (width - size) // cell + 1
    if empty_weight == 1.0:
        rows = torch.randint(n_rows, (len(images),), generator=generator).numpy() * cell
        cols = torch.randint(n_cols, (len(images),), generator=generator).numpy() * cell
    else:
        foreground = np.abs(images.astype(np.int16) - images[:, :1, :1].astype(np.int16)).max(-1) > CROP_FOREGROUND
        table = np.pad(foreground.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))  # summed-area table
        r, c = np.arange(n_rows)[:, None] * cell, np.arange(n_cols)[None] * cell
        counts = table[:, r + size, c + size] - table[:, r, c + size] - table[:, r + size, c] + table[:, r, c]
        weights = torch.from_numpy(np.where(counts > 0, 1.0, empty_weight).reshape(len(images), -1).astype(np.float32))
        pick = torch.multinomial(weights, 1, generator=generator).squeeze(1).numpy()
        rows, cols = (pick // n_cols) * cell, (pick % n_cols) * cell
    return np.stack([image[r : r + size, c : c + size] for image, r, c in zip(images, rows, cols, strict=True)])


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] → float [B, 3, H, W] in [-1, 1] (the VQ's range), as the model's `encode_images`
    normalises them."""
    return pixel_tensor(images, images.shape[1], VQ_MEAN, VQ_STD)


def train_vq(
    vq: JanusVQVAE,
    images: np.ndarray,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    on_step: Callable[[int, VQStep], None] | None = None,
    crop: int | None = None,
    empty_crop_weight: float = 1.0,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 100,
    resume: dict | None = None,
) -> None:
    """Train `vq` in place on uint8 renders [S, H, W, 3] (or grid-aligned crops of them); leaves it in eval mode.

    Every `checkpoint_every` steps `checkpoint` gets the whole training state (weights, optimiser, schedule,
    sampler, code usage); passing that dict back as `resume` continues to the same weights as an unbroken run.
    """
    generator = torch.Generator().manual_seed(seed)  # (on the CPU whatever the device: the same draws everywhere)
    device = vq.quantize.embedding.weight.device
    optimizer = torch.optim.AdamW(vq.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    used = torch.zeros(vq.config.num_embeddings, dtype=torch.bool, device=device)
    first = 0
    if resume is not None:
        vq.load_state_dict(resume["vq"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        used, first = resume["used"].to(device, copy=True), resume["step"]
    cell = 2 ** (len(vq.config.channel_multiplier) - 1)  # pixels per token side
    vq.train()
    for step in range(first, steps):
        rows = torch.randint(len(images), (batch,), generator=generator).numpy()
        pixels = to_pixels(grid_crops(images[rows], crop or images.shape[1], cell, generator, empty_crop_weight))
        pixels = pixels.to(device)
        recon, quant_loss, ids = vq_reconstruct(vq, pixels)
        reconstruction = reconstruction_loss(recon, pixels)
        loss = reconstruction + quant_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        used[ids.unique()] = True
        codes_used = int(used.sum())  # (since the last restart: counted before this step's restart clears it)
        if (step + 1) % RESTART_EVERY == 0 and step + 1 < steps:
            _restart_unused(vq, pixels, used, generator)
            used.zero_()
        if on_step is not None:
            on_step(step, VQStep(loss.item(), reconstruction.item(), codes_used))
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint({"vq": vq.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "generator": generator.get_state(), "used": used.cpu(), "step": step + 1})
    vq.eval()


@torch.no_grad()
def _restart_unused(vq: JanusVQVAE, pixels: torch.Tensor, used: torch.Tensor, generator: torch.Generator) -> None:
    """Move every code unused since the last restart onto a random current latent (plus a little noise)."""
    dead = (~used).nonzero().flatten()
    if len(dead) == 0:
        return
    latents = vq_latents(vq, pixels).reshape(-1, vq.config.embed_dim)
    picks = latents[torch.randint(len(latents), (len(dead),), generator=generator).to(latents.device)]
    noise = 0.01 * torch.randn(picks.shape, generator=generator).to(picks.device)
    vq.quantize.embedding.weight[dead] = F.normalize(picks + noise, p=2, dim=-1)


@torch.no_grad()
def merge_similar_codes(vq: JanusVQVAE, pixels: torch.Tensor, similarity: float) -> int:
    """Merge codes greedily: from the most used (on `pixels`) down, each code not yet merged claims every unclaimed
    code within cosine `similarity` of it, which takes its vector; returns how many distinct vectors remain. Equal
    vectors encode to the lowest of their ids (`vq_encode`) and decode alike, so each group becomes one token.

    Why: `_restart_unused` moves dead codes onto random latents, which are mostly background, so the shipped
    VQ spends about half its codebook on plain white: 245 of 512 codes encode blank patches, and a patch that an
    edit leaves pixel-identical keeps its code only 53% of the time (`benchmarks/vq_codes.py`). The LLM must
    then spread its probability over equivalent codes, and an edit cannot copy what it keeps."""
    weight = vq.quantize.embedding.weight
    codebook = normalized_codebook(vq).float()
    usage = torch.bincount(vq_encode(vq, pixels.to(weight.device, weight.dtype)).flatten().cpu(),
                           minlength=len(codebook))
    owner = torch.full((len(codebook),), -1, device=codebook.device)
    for code in torch.argsort(usage, descending=True, stable=True).tolist():
        if owner[code] < 0:
            group = ((codebook @ codebook[code]) >= similarity) & (owner < 0)
            group[code] = True  # (a code is its own group whatever the threshold)
            owner[group] = code
    weight.copy_(weight[owner])
    return int(owner.unique().numel())
