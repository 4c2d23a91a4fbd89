"""Text-to-image: batched CFG sampling with a KV cache, and teacher-forced scoring of image tokens.

Both follow transformers' `JanusForConditionalGeneration.generate(generation_mode="image")`:
the prompt ends in <begin_of_image>; image tokens are fed back through `generation_embeddings` +
`generation_aligner`; logits come from `generation_head`; with CFG the batch is doubled with an
unconditional prompt in which every token except BOS and <begin_of_image> is replaced by PAD (same
attention mask), and logits are mixed as ``uncond + (cond - uncond) * scale``.

One difference, on purpose: position ids count real tokens only, so left padding does not shift a
prompt's positions (transformers' image generate numbers pads too, so its output for a prompt can
change with the other prompts' lengths). For equal-length prompts the two are identical.

The sampler's log-probs are those of the untempered policy (softmax of the — possibly CFG-mixed — logits): the
quantity DPO needs; sampling temperature only changes which tokens are drawn. The scorer takes a temperature for
those who need the sampling distribution itself (GRPO's ratio, as TRL computes it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from transformers import JanusForConditionalGeneration

from unigap.errors import UserError
from unigap.model.decoding import (
    MAX_GUIDANCE,
    keeps_caches,
    check_counts,
    check_temperature,
    choose,
    is_number,
    left_pad,
    make_generator,
    positions,
    token_logprobs,
)
from unigap.model.prompts import PromptFormat
from unigap.model.sampler import GraphedStep, StaticCache, cuda_graphs_enabled, image_step
from unigap.world.scene import check_integer

CFG_SCALE = 5.0  # text-to-image guidance everywhere by default: images are sampled, and scored, under this mix


def check_guidance_scale(name: str, scale: float | None) -> None:
    """A guidance scale is None (no guidance) or a number from 0 to `MAX_GUIDANCE` (an infinite one, or one near
    float32's limit, makes every probability NaN); a `UserError`, as `check_temperature`'s."""
    if scale is not None and not (is_number(scale) and 0 <= scale <= MAX_GUIDANCE):
        none = "" if name.startswith("--") else " (or None: no guidance)"  # (a flag cannot be None)
        raise UserError(f"{name} must be a number from 0 to {MAX_GUIDANCE:g}{none}, got {scale!r}")


def uses_cfg(cfg_scale: float | None) -> bool:
    """CFG needs the unconditional pass unless the scale is None or 1 (where the mix equals cond)."""
    check_guidance_scale("cfg_scale", cfg_scale)
    return cfg_scale is not None and cfg_scale != 1.0


def unconditional(fmt: PromptFormat, ids: torch.LongTensor, rows: torch.Tensor | None = None) -> torch.LongTensor:
    """The unconditional version of prompt rows: every token but BOS and <begin_of_image> becomes PAD
    (the attention mask is kept), as transformers' image generate builds it — and as prompt dropout
    must build it in training, so that CFG at inference sees what the model was trained on. With `rows` [B]
    (bool), only those rows: prompt dropout."""
    blank = (ids != fmt.ids.bos) & (ids != fmt.ids.boi)
    if rows is not None:
        blank &= rows.to(ids.device).unsqueeze(-1)
    uncond = ids.clone()
    uncond[blank] = fmt.ids.pad
    return uncond


def prompt_batch(
    fmt: PromptFormat, prompts: Sequence[str], cfg: bool, device: torch.device
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Left-padded generation prompts [B or 2B, L] and mask; with CFG the unconditional half follows."""
    ids, mask = left_pad([fmt.generation_ids(prompt) for prompt in prompts], fmt.ids.pad)
    if cfg:
        ids, mask = torch.cat([ids, unconditional(fmt, ids)]), torch.cat([mask, mask])
    return ids.to(device), mask.to(device)


def guided(logits: torch.Tensor, cfg_scale: float | None) -> torch.Tensor:
    """Mix conditional (first half) and unconditional (second half) logits, as transformers does
    (callers pass fp32 logits, so in bf16 the mix is not rounded again)."""
    if not uses_cfg(cfg_scale):
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg_scale


def _generation_states(
    model: JanusForConditionalGeneration,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: object | None,
    use_cache: bool,
    last: int,
) -> tuple[torch.Tensor, object]:
    """Run the LLM on embeddings; its last hidden states at the last `last` positions, and the cache."""
    out = model.model.language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=use_cache,
    )
    return out.last_hidden_state[:, -last:], out.past_key_values


@torch.no_grad()
def sample_image_tokens(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    prompts: Sequence[str],
    n_per_prompt: int,
    cfg_scale: float | None,
    temperature: float,
    seed: int | None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Sample `n_per_prompt` images per prompt → (ids [B·n, N], per-step log-probs [B·n, N]).

    Rows are prompt-major (all samples of prompt 0, then prompt 1, ...), like `num_return_sequences`.
    """
    check_counts(prompts=prompts)
    check_integer("n_per_prompt", n_per_prompt)
    expanded = [prompt for prompt in prompts for _ in range(n_per_prompt)]
    if not expanded:
        return sample_from_prefix(model, fmt, None, None, 0, cfg_scale, temperature, seed)
    ids, mask = prompt_batch(fmt, expanded, uses_cfg(cfg_scale), model.device)
    return sample_from_prefix(model, fmt, model.get_input_embeddings()(ids), mask, len(expanded), cfg_scale, temperature, seed)


@torch.no_grad()
@keeps_caches
def sample_from_prefix(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    embeds: torch.Tensor | None,
    mask: torch.LongTensor | None,
    batch: int,
    cfg_scale: float | None,
    temperature: float,
    seed: int | None,
    cuda_graphs: bool | None = None,
    mix: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """The one image-token sampler: N tokens after left-padded prefix embeddings [R, L, D] that end in
    <begin_of_image> → (ids [batch, N], per-step log-probs [batch, N]). With CFG, R = 2·batch: the
    conditional rows, then their unconditional twins. Text-to-image and editing build their own prefixes;
    `mix` replaces CFG's two-group mix for prefixes of R = k·batch rows in k groups (editing's guidance,
    `editing.EditGuidance`), `cfg_scale` then unused.
    `cuda_graphs` (default: on CUDA unless `UNIGAP_CUDA_GRAPHS=0`) replays each step as a CUDA graph
    (`unigap.model.sampler`); True off CUDA runs the graph's fixed-shape step eagerly."""
    check_temperature(temperature)
    device, num_tokens = model.device, fmt.num_image_tokens
    tokens = torch.zeros((batch, num_tokens), dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, num_tokens), dtype=torch.float32, device=device)
    if batch == 0:
        return tokens, logprobs
    mix = partial(guided, cfg_scale=cfg_scale) if mix is None else mix
    groups = embeds.shape[0] // batch
    if groups * batch != embeds.shape[0]:
        raise ValueError(f"{embeds.shape[0]} prefix rows do not make whole groups of {batch}")
    generator = make_generator(seed, device)
    position_ids = positions(mask)
    states, prefilled = _generation_states(model, embeds, mask, position_ids, None, use_cache=True, last=1)
    head, position = model.model.generation_head(states[:, -1]).float(), position_ids[:, -1]
    cache = StaticCache.from_prefill(prefilled, mask, num_tokens - 1)
    graphs = (cuda_graphs_enabled(device) if cuda_graphs is None else cuda_graphs) and num_tokens > 1
    step_fn = GraphedStep(model, cache, capture=device.type == "cuda") if graphs else partial(
        image_step, model, cache=cache)
    for step in range(num_tokens):
        logits = mix(head)
        token = choose(logits, temperature, generator)
        tokens[:, step] = token
        logprobs[:, step] = token_logprobs(logits, token)
        if step + 1 == num_tokens:
            break
        position = position + 1
        head = step_fn(token.repeat(groups), position, slot=mask.shape[1] + step)
    return tokens, logprobs


def check_image_tokens(image_tokens: torch.Tensor, num_tokens: int, codebook_size: int) -> torch.LongTensor:
    """Validate a [B, N] batch of image-token ids (integer dtype, N tokens, ids inside the codebook)."""
    if not isinstance(image_tokens, torch.Tensor):  # (an empty list: no rows, not float32's "non-integer ids")
        image_tokens = (torch.as_tensor(image_tokens) if len(image_tokens)
                        else torch.zeros((0, num_tokens), dtype=torch.long))
    if image_tokens.dtype.is_floating_point or image_tokens.dtype == torch.bool:
        raise ValueError(f"image tokens must be integer ids, got dtype {image_tokens.dtype}")
    if image_tokens.ndim != 2 or image_tokens.shape[1] != num_tokens:
        raise ValueError(
            f"image tokens must have shape [batch, {num_tokens}] for this model, got {tuple(image_tokens.shape)}"
        )
    image_tokens = image_tokens.long()  # (compared as uint8, `max() >= 512` wrapped the bound and was always true)
    if image_tokens.numel() and (image_tokens.min() < 0 or image_tokens.max() >= codebook_size):
        raise ValueError(
            f"image token ids must lie in [0, {codebook_size}), got range "
            f"[{int(image_tokens.min())}, {int(image_tokens.max())}]"
        )
    return image_tokens


def score_image_tokens(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    prompts: Sequence[str],
    image_tokens: torch.Tensor,
    cfg_scale: float | None,
) -> tuple[torch.Tensor, torch.LongTensor]:
    """Teacher-forced log p(image tokens | prompt) through the generation head → (sum [B], count [B]).

    Differentiable (DPO trains through it). See `image_token_logits` for the layout.
    """
    logprobs = image_token_logprobs(model, fmt, prompts, image_tokens, cfg_scale)
    return logprobs.sum(dim=-1), torch.full((len(logprobs),), fmt.num_image_tokens, dtype=torch.long,
                                            device=logprobs.device)


def image_token_logprobs(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    prompts: Sequence[str],
    image_tokens: torch.Tensor,
    cfg_scale: float | None,
    dropped: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token teacher-forced log-probs [B, N] of image tokens given each prompt, under CFG-mixed logits when
    `cfg_scale` is given (with `temperature`, the distribution images are sampled from); otherwise conditional, the
    `dropped` [B] rows given the unconditional prompt (prompt dropout in training, which keeps CFG's unconditional
    branch on the data). Differentiable."""
    num_tokens = fmt.num_image_tokens
    image_tokens = check_image_tokens(image_tokens, num_tokens, model.config.vq_config.num_embeddings)
    batch = check_counts(prompts=prompts, **{"image token rows": image_tokens})
    device = model.device
    if batch == 0:
        return torch.zeros((0, num_tokens), device=device)
    cfg = uses_cfg(cfg_scale)
    dropped = check_dropped(dropped, batch, cfg)
    ids, mask = prompt_batch(fmt, prompts, cfg, device)
    if dropped is not None:
        ids = unconditional(fmt, ids, dropped)
    fed = image_tokens.to(device)
    logits = image_token_logits(model, ids, mask, fed.repeat(2, 1) if cfg else fed)
    return token_logprobs(guided(logits.float(), cfg_scale), fed, temperature)


def check_dropped(dropped: torch.Tensor | None, batch: int, cfg: bool) -> torch.Tensor | None:
    """A prompt-dropout mask as bool [batch], refused under CFG (whose unconditional rows are its own) or at another
    length (a short mask would broadcast over every row)."""
    if dropped is None:
        return None
    if cfg:
        raise ValueError("dropout masks are for conditional scoring; under guidance every row has its own twins")
    dropped = torch.as_tensor(dropped)
    if dropped.is_floating_point() or dropped.is_complex() or not bool(((dropped == 0) | (dropped == 1)).all()):
        raise ValueError("dropped must hold flags (bools, or 0 and 1), not probabilities")
    dropped = dropped.bool()
    if dropped.shape != (batch,):
        raise ValueError(f"dropped must hold one flag per row ({batch}), got shape {tuple(dropped.shape)}")
    return dropped


def image_token_logits(
    model: JanusForConditionalGeneration, ids: torch.LongTensor, mask: torch.LongTensor, image_tokens: torch.LongTensor
) -> torch.Tensor:
    """Generation-head logits [B, N, codebook] predicting each of the N image tokens, teacher-forced.

    `ids`/`mask` are left-padded prompt rows ending in <begin_of_image>. The hidden state at
    <begin_of_image> predicts token 0 and the one at token i predicts token i+1, so the LLM sees the
    prompt plus all image tokens but the last.
    """
    return model.model.generation_head(image_token_states(model, ids, mask, image_tokens))


def image_token_states(
    model: JanusForConditionalGeneration, ids: torch.LongTensor, mask: torch.LongTensor, image_tokens: torch.LongTensor
) -> torch.Tensor:
    """The LLM's last hidden states [B, N, hidden] that predict each image token (see `image_token_logits`),
    for objectives that read them besides the generation head."""
    return prefixed_image_token_states(model, model.get_input_embeddings()(ids), mask, image_tokens)


def prefixed_image_token_states(
    model: JanusForConditionalGeneration, prefix: torch.Tensor, mask: torch.LongTensor, image_tokens: torch.LongTensor
) -> torch.Tensor:
    """`image_token_states` after any prefix embeddings [B, L, D] ending in <begin_of_image> (editing
    puts the source image's features in its prefix)."""
    num_tokens = image_tokens.shape[1]
    embeds = torch.cat([prefix, model.prepare_embeddings_for_image_generation(image_tokens[:, :-1])], dim=1)
    mask = torch.cat([mask, mask.new_ones((mask.shape[0], num_tokens - 1))], dim=1)
    states, _ = _generation_states(model, embeds, mask, positions(mask), None, use_cache=False, last=num_tokens)
    return states
