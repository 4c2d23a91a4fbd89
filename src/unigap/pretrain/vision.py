"""Stage 2: pretrain the vision tower to say, for every patch, what object covers it.

Why: Janus-Pro's understanding encoder is a pretrained SigLIP; ours starts from random weights. Learned
only through the LLM's answers, seeing is slow to come: after 1500 joint steps the v4 model named the
shape of a lone object correctly 12% of the time. A per-patch label (shape, colour and size of the object
whose bounding box holds the patch centre, or background) gives every patch of every image a target, so
the tower learns shapes in about a minute. The three linear heads are dropped afterwards; the joint stage
keeps the tower frozen unless `joint_trains_vision`. Images are renders or VQ reconstructions, as in the
joint stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.janus.modeling_janus import JanusVisionModel

from unigap.pretrain.corpus import UnderstandingCorpus
from unigap.pretrain.labels import ATTRIBUTES, grid_side, patch_labels
from unigap.pretrain.vq import to_pixels


@dataclass
class VisionStep:
    """One step's numbers, for the log."""

    loss: float
    shape_accuracy: float  # on patches that hold an object, this batch


def train_vision(
    tower: JanusVisionModel,
    corpus: UnderstandingCorpus,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    reconstructed: float,
    on_step: Callable[[int, VisionStep], None] | None = None,
) -> None:
    """Train `tower` in place on per-patch labels of `corpus` (renders, or reconstructions with probability
    `reconstructed`), with one-cycle AdamW; deterministic in `seed`."""
    assert corpus.reconstructions is not None
    grid = grid_side(tower.config.num_image_tokens)
    labels = torch.from_numpy(np.stack([patch_labels(scene, grid) for scene in corpus.scenes]))
    torch.manual_seed(seed)
    device = next(tower.parameters()).device
    heads = torch.nn.ModuleList(torch.nn.Linear(tower.config.hidden_size, len(v) + 1) for v in ATTRIBUTES).to(device)
    labels = labels.to(device)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    rng = np.random.default_rng([seed, 4])
    tower.train()
    for step in range(steps):
        rows = rng.integers(len(corpus), size=batch)
        use_recon = rng.random(batch) < reconstructed
        images = np.where(use_recon[:, None, None, None], corpus.reconstructions[rows], corpus.renders[rows])
        hidden = tower(pixel_values=to_pixels(images).to(device)).last_hidden_state  # [B, grid², D]
        target = labels[torch.from_numpy(rows).to(device)]
        logits = [head(hidden) for head in heads]
        loss = sum(F.cross_entropy(lg.flatten(0, 1), target[:, k].flatten()) for k, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_object = target[:, 0] > 0
            hits = (logits[0].argmax(-1) == target[:, 0])[on_object].float()
            on_step(step, VisionStep(loss.item(), hits.mean().item() if len(hits) else 0.0))
    tower.eval()
