"""Pieces shared by the text decoder, the image sampler and the teacher-forced scorers.

Batches are left-padded, with an attention mask and position ids counted over real tokens only, so a
sequence's numbers do not depend on what else is in its batch (batched == unbatched).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import torch

from unigap.errors import UserError

T = TypeVar("T")
_ENTROPY_RECORDERS: list[list[torch.Tensor]] = []  # the open `token_entropies` blocks, innermost last


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Token-id lists → (ids [B, L], attention mask [B, L]), padded on the left."""
    length = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.LongTensor:
    """Position ids that start at 0 on each row's first real token (pads get 0; they are masked)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def extend(mask: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
    """Mask and position ids for one more (real) token per row after a cached step."""
    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return mask, position_ids[:, -1:] + 1


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A private RNG for sampling, so that a seeded call depends on `seed` alone, never on the global RNG state or on
    other calls. `seed=None` seeds it from the global torch RNG, so that `torch.manual_seed` makes unseeded calls
    reproducible too, as it does transformers' `generate`."""
    if isinstance(seed, bool) or (seed is not None and not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    if seed is not None and not -(2**63) <= seed < 2**64:  # what torch.Generator takes
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch.randint(2**63 - 1, (1,)).item()) if seed is None else int(seed))
    return generator


def choose(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.LongTensor:
    """Next tokens: argmax at temperature 0, else a draw from softmax(logits / temperature)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@contextmanager
def token_entropies() -> Iterator[list[torch.Tensor]]:
    """Inside the block, every `token_logprobs` call also appends the entropy (nats, detached) of each distribution
    it scores to the yielded list, shaped as its log-probs: the policy entropy TRL's GRPO logs (of the distribution
    at the scorer's temperature, as TRL's), from the log-softmax the scorer computes anyway, with no second forward
    pass and no entropy argument threaded through every scorer."""
    seen: list[torch.Tensor] = []
    _ENTROPY_RECORDERS.append(seen)
    try:
        yield seen
    finally:
        assert _ENTROPY_RECORDERS[-1] is seen, "token_entropies blocks must nest"
        _ENTROPY_RECORDERS.pop()


ENTROPY_CHUNK = 1024  # distributions per step of the entropy: its temporaries stay [1024, V], not [B, T, V]


def _entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """−Σ p log p over the last axis, a chunk of distributions at a time (no gradient)."""
    flat = logprobs.detach().reshape(-1, logprobs.shape[-1])
    parts = [-(chunk.exp() * chunk).sum(dim=-1) for chunk in flat.split(ENTROPY_CHUNK)]
    return torch.cat(parts).reshape(logprobs.shape[:-1]) if parts else flat.new_zeros(logprobs.shape[:-1])


def token_logprobs(logits: torch.Tensor, tokens: torch.LongTensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature), the distribution `choose` samples at that temperature,
    computed in fp32 whatever the model dtype (and, inside `token_entropies`, each distribution's entropy recorded).
    GRPO scores its samples at the temperature they were drawn at, as TRL does."""
    check_temperature(temperature, positive=True)
    logits = logits.float()
    logprobs = torch.log_softmax(logits if temperature == 1 else logits / temperature, dim=-1)
    if _ENTROPY_RECORDERS:
        with torch.no_grad():
            _ENTROPY_RECORDERS[-1].append(_entropy(logprobs))
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def is_number(value: object) -> bool:
    """A real number, not a bool (True would read as 1) nor a string ("5": a TypeError in the comparison after)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# Temperatures below this (but above greedy's 0) and guidance scales above `MAX_GUIDANCE` overflow float32 logits to
# inf, and every probability to NaN: torch's "probability tensor contains either inf, nan or element < 0" after the
# model loaded. Far past any use (T = 1e-6 is greedy already).
MIN_TEMPERATURE = 1e-6
MAX_GUIDANCE = MAX_TEMPERATURE = 1e6  # (past ~3e38 a temperature is float32's inf, and logits / T NaN)


def check_temperature(temperature: float, positive: bool = False, name: str = "temperature") -> None:
    """0 (greedy) or a number from `MIN_TEMPERATURE` to `MAX_TEMPERATURE`, or no 0 where log-probs are taken at
    it (not a bool, not "1", not None, which would fail inside the comparison with a TypeError). A `UserError` (a
    ValueError), so that the CLI, checking a flag `name` before the model loads, says it in one line."""
    greedy = temperature == 0 and not positive
    if not (is_number(temperature) and (greedy or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE)):
        raise UserError(f"{name} must be {'> 0' if positive else '>= 0 (0 = greedy)'} and finite (a positive one "
                        f"from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}), got {temperature!r}")


def check_counts(**named: Sequence[object]) -> int:
    """The common length of several per-example lists; a mismatch is an error, never a broadcast, and so is a single
    string or image where a list is meant (a string would be read as one example per character)."""
    for name, values in named.items():
        if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
            raise ValueError(f"{name} must be a list with one item per example, got a single {type(values).__name__}: "
                             f"{values!r:.60}")
        if getattr(values, "ndim", None) == 3:  # one H × W × C image (an array or a tensor), not a batch of them
            raise ValueError(f"{name} must be a list with one item per example, got a single "
                             f"{type(values).__name__} of shape {tuple(values.shape)}")
    lengths = {name: len(values) for name, values in named.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{count} {name}" for name, count in lengths.items())
        raise ValueError(f"mismatched batch: got {detail}; pass one of each per example")
    return next(iter(lengths.values()))


def keeps_caches(sampler: Callable[..., T]) -> Callable[..., T]:
    """A no-grad sampler `sampler(model, ...)` run with activation checkpointing off, restored after: transformers'
    checkpointed layers drop the KV cache whenever the model is in train mode, so sampling from a model trained with
    `add_lora(gradient_checkpointing=True)` decoded each answer token without its context, and image sampling
    failed. Dropout stays as the mode sets it."""

    @wraps(sampler)
    def run(model: torch.nn.Module, *args: Any, **kwargs: Any) -> T:
        layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
        for layer in layers:
            layer.gradient_checkpointing = False
        try:
            return sampler(model, *args, **kwargs)
        finally:
            for layer in layers:
                layer.gradient_checkpointing = True

    return run
