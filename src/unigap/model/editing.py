"""Image + instruction → image: the editing prefix, sampled by the one image-token sampler.

The source image fills the prompt's image placeholders in one of two ways, the checkpoint's `edit_source`:
`vision`, as understanding sees it (vision tower + aligner features, `JanusModel.forward`'s rule), or `tokens`,
as generation writes it (its VQ ids through the generation embedding and aligner). Why `tokens`: an edit keeps
most of the picture, and with the source's own VQ ids in the prefix (on the tiny template, which puts the
instruction first) each output token sits at a fixed distance from the id it would copy; through the vision tower
the model must redraw every unchanged patch from features.
The instruction enters as text (`PromptFormat.edit_ids`), and the edited image is sampled as image tokens with
the generation head. Classifier-free guidance pairs
each row with its unconditional twin built exactly as for text-to-image (`generation.unconditional`: every
token but BOS and <begin_of_image> becomes PAD, so the twin sees neither the image nor the instruction);
pretraining drops prompts the same way, so guidance at inference sees what training saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformers import JanusForConditionalGeneration

from unigap.model.decoding import check_counts, left_pad
from unigap.model.decoding import token_logprobs
from unigap.model.generation import (
    check_dropped,
    guided,
    prefixed_image_token_states,
    sample_from_prefix,
    unconditional,
    uses_cfg,
)
from unigap.model.images import VQ_MEAN, VQ_STD, ImageInput, VisionPreprocessing, pixel_tensor, vq_encode, vq_image_size
from unigap.model.prompts import PromptFormat

EditSource = Literal["vision", "tokens"]
EDIT_SOURCES: tuple[EditSource, ...] = ("vision", "tokens")


def check_edit_source(source: str) -> EditSource:
    if source not in EDIT_SOURCES:
        raise ValueError(f"unknown edit source {source!r}; expected one of {', '.join(EDIT_SOURCES)}")
    return source  # type: ignore[return-value]


def source_features(model: JanusForConditionalGeneration, vision: VisionPreprocessing, images: Sequence[ImageInput],
                    source: EditSource) -> torch.Tensor:
    """The source images' prefix embeddings [B, N, D]: vision features, or generation embeddings of their VQ ids."""
    if source == "tokens":
        vq = model.model.vqmodel
        with torch.no_grad():
            ids = vq_encode(vq, pixel_tensor(images, vq_image_size(vq), VQ_MEAN, VQ_STD).to(model.device, model.dtype))
        features = model.prepare_embeddings_for_image_generation(ids.to(model.device))
    else:
        features = model.model.get_image_features(vision(images).to(model.device, model.dtype)).pooler_output
    placeholders = model.config.vision_config.num_image_tokens
    if features.shape[1] != placeholders:  # masked_scatter would silently misplace them
        raise ValueError(f"the {source} source gives {features.shape[1]} vectors per image for {placeholders} "
                         f"image placeholders")
    return features


def edit_prefix(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    instructions: Sequence[str],
    dropped: torch.Tensor | None = None,
    source: EditSource = "vision",
) -> tuple[torch.Tensor, torch.LongTensor]:
    """Left-padded editing prefixes → (embeddings [B, L, D], mask [B, L]); rows where `dropped` [B] is
    True are unconditional (no image features, every token but BOS/BOI padded)."""
    ids, mask = left_pad([fmt.edit_ids(text) for text in instructions], fmt.ids.pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    if dropped is not None:
        dropped = dropped.to(model.device)
        ids = unconditional(fmt, ids, dropped)
    embeds = model.get_input_embeddings()(ids)
    keep = torch.ones(len(ids), dtype=torch.bool, device=model.device) if dropped is None else ~dropped
    if bool(keep.any()):
        chosen = [image for image, k in zip(images, keep.tolist(), strict=True) if k]
        features = source_features(model, vision, chosen, source).to(embeds.dtype)  # [B', N, D]
        slots = (ids == model.config.image_token_id) & keep.unsqueeze(-1)
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), features)
    return embeds, mask


def edit_token_logprobs(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    instructions: Sequence[str],
    tokens: torch.Tensor,
    cfg_scale: float | None,
    dropped: torch.Tensor | None = None,
    source: EditSource = "vision",
) -> torch.Tensor:
    """Per-token log-probs [B, N] of edited images' tokens given image + instruction; differentiable (minus their
    mean is what editing trains on, and UniMRG's auxiliary loss, whose target is a map of the input image). With
    `cfg_scale`, under the CFG mixture edits are sampled from (each row's unconditional twin as `sample_edits`
    builds it); otherwise conditional, the `dropped` [B] rows made unconditional (prompt dropout in training)."""
    batch = check_counts(images=images, instructions=instructions, **{"image token rows": tokens})
    dropped = check_dropped(dropped, batch, uses_cfg(cfg_scale))
    tokens = tokens.to(model.device)
    fed = tokens
    if uses_cfg(cfg_scale):
        dropped = torch.tensor([False] * batch + [True] * batch)
        images, instructions, fed = [*images, *images], [*instructions, *instructions], tokens.repeat(2, 1)
    prefix, mask = edit_prefix(model, fmt, vision, images, instructions, dropped, source)
    logits = model.model.generation_head(prefixed_image_token_states(model, prefix, mask, fed))
    return token_logprobs(guided(logits.float(), cfg_scale), tokens)


@torch.no_grad()
def sample_edits(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    instructions: Sequence[str],
    cfg_scale: float | None,
    temperature: float,
    seed: int | None,
    source: EditSource = "vision",
) -> torch.LongTensor:
    """Edited images' token ids [B, N], one per (image, instruction)."""
    batch = check_counts(images=images, instructions=instructions)
    if batch == 0:
        return sample_from_prefix(model, fmt, None, None, 0, cfg_scale, temperature, seed)[0]
    if uses_cfg(cfg_scale):
        dropped = torch.tensor([False] * batch + [True] * batch)
        embeds, mask = edit_prefix(model, fmt, vision, [*images, *images], [*instructions, *instructions], dropped,
                                   source)
    else:
        embeds, mask = edit_prefix(model, fmt, vision, images, instructions, source=source)
    return sample_from_prefix(model, fmt, embeds, mask, batch, cfg_scale, temperature, seed)[0]
