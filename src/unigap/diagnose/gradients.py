"""Per-task gradients on the shared parameters, reduced on the fly to per-tensor dot products.

Why per-tensor dot products: every statistic the diagnostics report — the global cosine and norm ratio,
and the same restricted to a layer, to lora_A/lora_B, or to attention/MLP — is a sum of per-tensor
⟨g_U, g_G⟩, ‖g_U‖², ‖g_G‖² over some set of tensors. Storing those few numbers per batch instead of the
flattened gradients keeps memory at four gradient copies (the current and the previous batch's, per task)
whatever the number of batches, which matters on a 7B model.

Intra-task calibration pairs batches (0, 1), (2, 3), …: each batch is in exactly one couple, so the intra
cosines are independent samples, as the Welch test assumes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unigap.model import UnifiedModel

LossFn = Callable[[UnifiedModel, Any], torch.Tensor]
"""`loss_fn(um, pair) -> scalar tensor`: one task's loss on a single-pair batch."""

_LAYER = re.compile(r"language_model\.layers\.(\d+)\.")
_FACTOR = re.compile(r"\.(lora_A|lora_B)\.")
FULL = "full"  # the factor label of a plain (non-LoRA) weight


def module_kind(name: str) -> str:
    """attention (q/k/v/o), mlp (gate/up/down) or other (norms, embeddings)."""
    if ".self_attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "other"


@dataclass(frozen=True)
class ParameterSet:
    """The shared tensors the gradients are taken on, with each one's layer, factor and module kind."""

    names: tuple[str, ...]
    parameters: tuple[nn.Parameter, ...]
    layers: tuple[int | None, ...]
    factors: tuple[str, ...]
    modules: tuple[str, ...]

    @classmethod
    def from_named(cls, named: Sequence[tuple[str, nn.Parameter]]) -> ParameterSet:
        if not named:
            raise ValueError("no trainable shared parameters to take gradients on")
        names = tuple(name for name, _ in named)
        layers = tuple(int(m.group(1)) if (m := _LAYER.search(n)) else None for n in names)
        factors = tuple(m.group(1) if (m := _FACTOR.search(n)) else FULL for n in names)
        return cls(names, tuple(p for _, p in named), layers, factors, tuple(map(module_kind, names)))

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.parameters)


def lora_parameter_set(um: UnifiedModel) -> ParameterSet:
    """The shared LoRA tensors of the LLM (the generation head is not shared, so it is left out).
    They are marked trainable first: an adapter loaded for inference has them frozen."""
    for name, param in um.model.named_parameters():
        if _LAYER.search(name) and _FACTOR.search(name):
            param.requires_grad_(True)
    groups = um.shared_lora_parameters()
    return ParameterSet.from_named(list(zip(groups.names, groups.parameters, strict=True)))


def full_parameter_set(um: UnifiedModel) -> ParameterSet:
    """Every weight of the LLM itself; marks them trainable and freezes the rest of the model, so
    backward builds no graph for the vision tower, the heads or the VQ."""
    if um.peft is not None:
        raise ValueError("full-parameter gradients are taken on the base model; this one carries a LoRA adapter")
    um.model.requires_grad_(False)
    um.model.model.language_model.requires_grad_(True)
    return ParameterSet.from_named(
        [(n, p) for n, p in um.model.named_parameters() if p.requires_grad and ".language_model." in f".{n}"]
    )


def task_gradient(loss: torch.Tensor, params: ParameterSet) -> list[torch.Tensor]:
    """d loss / d params, one tensor per parameter (zeros where the loss does not reach it)."""
    if loss.dim() != 0:
        raise ValueError(f"the task loss must be a scalar, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError("the task loss does not depend on any trainable parameter")
    return list(torch.autograd.grad(loss, params.parameters, allow_unused=True, materialize_grads=True))


def pairwise(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> np.ndarray:
    """Per tensor [‖a‖², ‖b‖², ⟨a, b⟩] in float64 → array [tensors, 3]."""
    rows = []
    for x, y in zip(a, b, strict=True):
        x64, y64 = x.detach().flatten().double(), y.detach().flatten().double()
        rows.append(torch.stack([x64 @ x64, y64 @ y64, x64 @ y64]))
    return torch.stack(rows).cpu().numpy()


@dataclass
class GradientLog:
    """What the statistics need, per batch i and tensor t.

    `inter[i, t]` = [‖g_U‖², ‖g_G‖², ⟨g_U, g_G⟩]; `intra_und[k, t]` / `intra_gen[k, t]` = the same triple for
    the k-th couple of batches of one task; `und_index` / `gen_index` = which pair each batch used.
    """

    params: ParameterSet
    inter: list[np.ndarray] = field(default_factory=list)
    intra_und: list[np.ndarray] = field(default_factory=list)
    intra_gen: list[np.ndarray] = field(default_factory=list)
    und_index: list[int] = field(default_factory=list)
    gen_index: list[int] = field(default_factory=list)
    und_loss: list[float] = field(default_factory=list)
    gen_loss: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inter)

    def array(self, which: str) -> np.ndarray:
        """`inter`, `intra_und` or `intra_gen` as one array [batches or couples, tensors, 3]."""
        rows = getattr(self, which)
        return np.stack(rows) if rows else np.zeros((0, len(self.params.names), 3))


class GradientCollector:
    """Feeds single-pair batches (one understanding + one generation pair) and logs their gradients."""

    def __init__(self, um: UnifiedModel, params: ParameterSet, und_loss: LossFn, gen_loss: LossFn) -> None:
        self.um, self.params = um, params
        self.und_loss, self.gen_loss = und_loss, gen_loss
        self.log = GradientLog(params)
        self._previous: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def gradient(self, loss_fn: LossFn, pair: Any) -> tuple[list[torch.Tensor], float]:
        loss = loss_fn(self.um, pair)
        return task_gradient(loss, self.params), float(loss.detach())

    def add(self, und_pair: Any, gen_pair: Any, und_index: int, gen_index: int) -> None:
        """One batch: both task gradients, their dot products, and the intra couple it closes (if any)."""
        g_und, und_loss = self.gradient(self.und_loss, und_pair)
        g_gen, gen_loss = self.gradient(self.gen_loss, gen_pair)
        log = self.log
        log.inter.append(pairwise(g_und, g_gen))
        if self._previous is None:
            self._previous = (g_und, g_gen)
        else:
            prev_und, prev_gen = self._previous
            if log.und_index[-1] != und_index:  # two draws of the same pair would give cos = 1
                log.intra_und.append(pairwise(prev_und, g_und))
            if log.gen_index[-1] != gen_index:
                log.intra_gen.append(pairwise(prev_gen, g_gen))
            self._previous = None
        log.und_index.append(und_index)
        log.gen_index.append(gen_index)
        log.und_loss.append(und_loss)
        log.gen_loss.append(gen_loss)


def draw_order(rng: np.random.Generator, n_pairs: int, n_batches: int) -> list[int]:
    """Pair indices for `n_batches` batches: back-to-back random permutations, so every pair is used
    once before any is used twice."""
    if n_pairs < 1:
        raise ValueError("no pairs to draw from")
    order: list[int] = []
    while len(order) < n_batches:
        order.extend(rng.permutation(n_pairs).tolist())
    return order[:n_batches]


def collect(
    um: UnifiedModel,
    params: ParameterSet,
    und_pairs: Sequence[Any],
    gen_pairs: Sequence[Any],
    und_loss: LossFn,
    gen_loss: LossFn,
    n_batches: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> GradientLog:
    """Gradients of `n_batches` seeded single-pair batches; `progress(k)` after each batch."""
    rng = np.random.default_rng(seed)
    und_order, gen_order = draw_order(rng, len(und_pairs), n_batches), draw_order(rng, len(gen_pairs), n_batches)
    collector = GradientCollector(um, params, und_loss, gen_loss)
    for k, (i, j) in enumerate(zip(und_order, gen_order, strict=True)):
        collector.add(und_pairs[i], gen_pairs[j], i, j)
        if progress is not None:
            progress(k + 1)
    return collector.log
