"""Tiny Janus configurations built from the real transformers classes.

A tiny model exercises exactly the code paths of Janus-Pro (same modules, same generate, same VQ) at a
size that trains and runs on a laptop CPU. The sizes obey the constraints of transformers' Janus code
(SPEC §6): GroupNorm(32) in the VQ needs channel counts that are multiples of 32, the VQ downsample
factor must equal the vision patch size (so one image token per vision patch), and every projection
into the LLM must have the LLM's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from transformers import (
    GenerationConfig,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
    PreTrainedTokenizerBase,
)

from unigap.model.checkpoint import save_checkpoint
from unigap.model.generation import CFG_SCALE
from unigap.model.prompts import TINY_TEMPLATE
from unigap.model.tokenizer import BOI, BOS, EOS, IMAGE, PAD, build_word_tokenizer, special_token_id

TINY_IMAGE_SIZE = 64  # ShapeWorld's canvas
TINY_PATCH_SIZE = 8  # pixels per image token side, for the vision tower and the VQ alike
MIN_CODEBOOK = 256  # VQ codes at least
VISION_HEAD_SIZE = 32  # the vision tower's dimensions per attention head


def vision_heads(vision_hidden_size: int) -> int:
    """The tiny vision tower's attention heads: one per `VISION_HEAD_SIZE` dimensions, at least one."""
    return max(1, vision_hidden_size // VISION_HEAD_SIZE)


def tiny_janus_config(
    vocab_size: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    image_size: int = TINY_IMAGE_SIZE,
    patch_size: int = TINY_PATCH_SIZE,
    codebook_size: int = 256,
    vq_base_channels: int = 32,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    max_positions: int = 512,
) -> JanusConfig:
    """A small `JanusConfig` (default: 64×64 images, 8×8 = 64 image tokens, codebook 256, 4×256 Llama).

    Special-token ids come from `tokenizer` when given (a `build_word_tokenizer` tokenizer); otherwise
    the fixed ids that `build_word_tokenizer` assigns are assumed.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    levels = patch_size.bit_length()  # 2**(levels-1) == patch_size for a power of two
    if 2 ** (levels - 1) != patch_size:
        raise ValueError(f"patch_size must be a power of two (the VQ downsamples by 2 per level), got {patch_size}")
    if vq_base_channels % 32:
        raise ValueError(f"vq_base_channels must be a multiple of 32 (GroupNorm(32)), got {vq_base_channels}")
    if codebook_size < MIN_CODEBOOK:
        raise ValueError(f"codebook_size must be at least {MIN_CODEBOOK}, got {codebook_size}")
    tokens = {"pad": PAD, "bos": BOS, "eos": EOS, "image": IMAGE}
    ids = (
        {name: special_token_id(tokenizer, token) for name, token in tokens.items()}
        if tokenizer is not None
        else {"pad": 0, "bos": 1, "eos": 2, "image": 4}
    )
    grid = image_size // patch_size
    text_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        tie_word_embeddings=False,
    )
    vision_config = JanusVisionConfig(
        hidden_size=vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads(vision_hidden_size),
        image_size=image_size,
        patch_size=patch_size,
        mlp_ratio=2.0,
        projection_dim=hidden_size,
        depth=2,
        num_image_tokens=grid * grid,
    )
    # Channel multipliers (1, 1, 2, 2, ...): one per resolution level, the last level at 1/patch_size.
    multipliers = [min(2, 1 + i // 2) for i in range(levels)]
    vq_config = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=codebook_size,
        latent_channels=64,
        base_channels=vq_base_channels,
        channel_multiplier=multipliers,
        num_res_blocks=1,
        projection_dim=hidden_size,
        image_token_embed_dim=hidden_size,
        num_hidden_layers=2,
    )
    return JanusConfig(
        text_config=text_config,
        vision_config=vision_config,
        vq_config=vq_config,
        image_token_id=ids["image"],
        tie_word_embeddings=False,
    )


def image_generation_config(bos: int, eos: int, pad: int, boi: int) -> GenerationConfig:
    """What transformers' image `generate` reads: bos/pad (unconditional prompt), boi (kept in it), eos."""
    return GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, boi_token_id=boi,
                            generation_kwargs={"boi_token_id": boi}, guidance_scale=CFG_SCALE)


def tiny_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """`image_generation_config` with the ids of a `build_word_tokenizer` tokenizer."""
    return image_generation_config(*(special_token_id(tokenizer, token) for token in (BOS, EOS, PAD, BOI)))


def save_tiny(
    model: JanusForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, directory: str | Path, editing: bool = False,
    edit_source: str = "vision",
) -> Path:
    """Write a tiny model as a `load_model`-able checkpoint (tiny prompt template, mean/std 0.5)."""
    model.generation_config = tiny_generation_config(tokenizer)
    return save_checkpoint(
        model, tokenizer, directory, template=TINY_TEMPLATE, image_mean=0.5, image_std=0.5, editing=editing,
        edit_source=edit_source,
    )


def save_random_tiny(
    directory: str | Path, words: Sequence[str], seed: int = 0, editing: bool = False, edit_source: str = "vision",
    **sizes: int,
) -> Path:
    """A randomly initialised tiny Janus over `words` (sizes as in `tiny_janus_config`), saved as a checkpoint:
    the model tests and benchmarks run on, since no trained weights can be downloaded."""
    tokenizer = build_word_tokenizer(list(words))
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(tiny_janus_config(len(tokenizer), tokenizer, **sizes))
    return save_tiny(model, tokenizer, directory, editing=editing, edit_source=edit_source)
