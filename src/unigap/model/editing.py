"""Image + instruction → image: the editing prefix, sampled by the one image-token sampler.

The source image fills the prompt's image placeholders in one of two ways, the checkpoint's `edit_source`:
`vision`, as understanding sees it (vision tower + aligner features, `JanusModel.forward`'s rule), or `tokens`,
as generation writes it (its VQ ids through the generation embedding and aligner). Why `tokens`: an edit keeps
most of the picture, and with the source's own VQ ids in the prefix (on the tiny template, which puts the
instruction first) each output token sits at a fixed distance from the id it would copy; through the vision tower
the model must redraw every unchanged patch from features.
The instruction enters as text (`PromptFormat.edit_ids`), and the edited image is sampled as image tokens with
the generation head.

Guidance is InstructPix2Pix's, with its two scales (`EditGuidance`): logits = u + t·(c − s) + i·(s − u), where c
sees source and instruction, s the source alone (the instruction's tokens PAD), u neither (every token but BOS
and <begin_of_image> PAD, `generation.unconditional`, as text-to-image's twin). t scales what the instruction
changes against the source alone, so guidance no longer amplifies the copy (i = 1 drops the u rows). Measured on
the shipped model (docs/experiments.md), a twin without the source (i = t, the earlier rule) turns small copying
errors into stray objects: val edit accuracy 0.28 at t = i = 5 against 0.53 at the defaults t = 2, i = 1.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import JanusForConditionalGeneration

from unigap.model.decoding import check_counts, left_pad
from unigap.model.decoding import token_logprobs
from unigap.model.generation import (
    check_dropped,
    check_image_tokens,
    check_guidance_scale,
    guided,
    prefixed_image_token_states,
    sample_from_prefix,
    unconditional,
)
from unigap.model.images import VQ_MEAN, VQ_STD, ImageInput, VisionPreprocessing, pixel_tensor, vq_encode, vq_image_size
from unigap.model.prompts import PromptFormat

EditSource = Literal["vision", "tokens"]
EDIT_SOURCES: tuple[EditSource, ...] = ("vision", "tokens")
EDIT_CFG_SCALE = 2.0  # the instruction's guidance scale by default; tuned on val scenes (docs/experiments.md)
EDIT_IMAGE_CFG_SCALE = 1.5  # the source's, as diffusers' InstructPix2Pix pipeline defaults it
# the configs' names for the two scales; a run saved before they existed edited under plain CFG at its cfg_scale, so
# where such a run edited, their absence is not their defaults and a resume under them is refused
EDIT_SETTINGS = ("edit_cfg_scale", "edit_image_cfg_scale")


@dataclass(frozen=True)
class EditGuidance:
    """InstructPix2Pix's guidance: `text` (the instruction's scale t) and `image` (the source's scale i). `text`
    None means no guidance at all (as `cfg_scale=None` always has; `image` is then unused); `image` None means 1.
    The row groups each item needs, in order: "full" (source + instruction), "source" (instruction dropped),
    "blank" (both dropped)."""

    text: float | None = EDIT_CFG_SCALE
    image: float | None = EDIT_IMAGE_CFG_SCALE

    def __post_init__(self) -> None:
        for name, scale in (("cfg_scale", self.text), ("image_cfg_scale", self.image)):
            check_guidance_scale(name, scale)

    @property
    def scales(self) -> tuple[float, float]:
        """(t, i) as numbers: (1, 1) without guidance."""
        if self.text is None:
            return 1.0, 1.0
        return self.text, 1.0 if self.image is None else self.image

    @property
    def groups(self) -> tuple[str, ...]:
        t, i = self.scales
        if i == 1.0:
            return ("full",) if t == 1.0 else ("full", "source")
        return ("full", "blank") if i == t else ("full", "source", "blank")  # i == t: plain CFG on a blank twin

    def mix(self, logits: torch.Tensor) -> torch.Tensor:
        """[k·B, V] logits in `groups` order → the guided [B, V]."""
        (t, i), groups = self.scales, self.groups
        if len(groups) == 1:
            return logits
        if len(groups) == 2:
            return guided(logits, t)  # the second group is the twin: "source" (i = 1), or "blank" (i = t)
        full, source, blank = logits.chunk(3, dim=0)
        return blank + (full - source) * t + (source - blank) * i

    def rows(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(dropped, instruction_dropped) [k·B] bool for `edit_prefix`, one group of `batch` rows after another."""
        groups = [group for group in self.groups for _ in range(batch)]
        return (torch.tensor([g == "blank" for g in groups], dtype=torch.bool),
                torch.tensor([g != "full" for g in groups], dtype=torch.bool))


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
    instruction_dropped: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.LongTensor]:
    """Left-padded editing prefixes → (embeddings [B, L, D], mask [B, L]); rows where `dropped` [B] is
    True are unconditional (no image features, every token but BOS/BOI padded); rows where
    `instruction_dropped` [B] is True keep the source and pad the instruction (guidance's "source" twin).
    `features` [B', N, D]: the kept rows' `source_features`, when the caller already has them."""
    ids, mask = left_pad([fmt.edit_ids(text) for text in instructions], fmt.ids.pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    placeholder = model.config.image_token_id
    if instruction_dropped is not None:
        ids = torch.where((ids == placeholder).logical_not() & instruction_dropped.to(model.device).unsqueeze(-1),
                          unconditional(fmt, ids), ids)
    if dropped is not None:
        dropped = dropped.to(model.device)
        ids = unconditional(fmt, ids, dropped)
    embeds = model.get_input_embeddings()(ids)
    keep = torch.ones(len(ids), dtype=torch.bool, device=model.device) if dropped is None else ~dropped
    if bool(keep.any()):
        if features is None:
            chosen = [image for image, k in zip(images, keep.tolist(), strict=True) if k]
            features = source_features(model, vision, chosen, source)  # [B', N, D]
        features = features.to(embeds.dtype)
        slots = (ids == placeholder) & keep.unsqueeze(-1)
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), features)
    return embeds, mask


def guidance_prefix(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    instructions: Sequence[str],
    guidance: EditGuidance,
    source: EditSource,
) -> tuple[torch.Tensor, torch.LongTensor]:
    """`edit_prefix` for every row group `guidance` needs: [k·B, L, D] embeddings and their mask. The source's
    features are computed once and shared by the groups that see it."""
    k, seen = len(guidance.groups), sum(group != "blank" for group in guidance.groups)
    dropped, instruction_dropped = guidance.rows(len(images))
    features = source_features(model, vision, images, source).repeat(seen, 1, 1) if len(images) else None
    return edit_prefix(model, fmt, vision, list(images) * k, list(instructions) * k, dropped, source,
                       instruction_dropped, features)


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
    image_cfg_scale: float | None = EDIT_IMAGE_CFG_SCALE,
    instruction_dropped: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs [B, N] of edited images' tokens given image + instruction, at a sampling `temperature`;
    differentiable (minus their mean is what editing trains on, and UniMRG's auxiliary loss, whose target is a map
    of the input image). Under guidance (`cfg_scale`, `image_cfg_scale`: `EditGuidance`), the mixture edits are
    sampled from; without it, conditional, the `dropped` [B] rows made unconditional and the `instruction_dropped`
    [B] rows source-only (the prompt dropouts of training)."""
    tokens = check_image_tokens(tokens, fmt.num_image_tokens, model.config.vq_config.num_embeddings)
    batch = check_counts(images=images, instructions=instructions, **{"image token rows": tokens})
    if batch == 0:
        return torch.zeros(tokens.shape, device=model.device)
    guidance = EditGuidance(cfg_scale, image_cfg_scale)
    k = len(guidance.groups)
    dropped = check_dropped(dropped, batch, k > 1)
    instruction_dropped = check_dropped(instruction_dropped, batch, k > 1)
    tokens = tokens.to(model.device)
    if k > 1:
        prefix, mask = guidance_prefix(model, fmt, vision, images, instructions, guidance, source)
    else:
        prefix, mask = edit_prefix(model, fmt, vision, images, instructions, dropped, source, instruction_dropped)
    logits = model.model.generation_head(prefixed_image_token_states(model, prefix, mask, tokens.repeat(k, 1)))
    return token_logprobs(guidance.mix(logits.float()), tokens, temperature)


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
    image_cfg_scale: float | None = EDIT_IMAGE_CFG_SCALE,
) -> torch.LongTensor:
    """Edited images' token ids [B, N], one per (image, instruction), under `EditGuidance(cfg_scale,
    image_cfg_scale)`."""
    batch = check_counts(images=images, instructions=instructions)
    guidance = EditGuidance(cfg_scale, image_cfg_scale)
    if batch == 0:
        return sample_from_prefix(model, fmt, None, None, 0, None, temperature, seed)[0]
    embeds, mask = guidance_prefix(model, fmt, vision, images, instructions, guidance, source)
    return sample_from_prefix(model, fmt, embeds, mask, batch, None, temperature, seed, mix=guidance.mix)[0]
