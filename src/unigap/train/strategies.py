"""How the two tasks' gradients become one update: the seven SPEC §1 strategies plus torchjd aggregators.

Why one interface: every step the trainer computes both tasks' gradients anyway (it logs their norms and
cosine), so a strategy only maps (g_U, g_G) on the *shared* LoRA parameters to the update direction and
says which weights the task-specific parameters (the generation head) get. For the weighting strategies
w_U·g_U + w_G·g_G is exactly the gradient of w_U·L_U + w_G·L_G, so nothing is lost by combining after
the fact.

* und-only / gen-only: (1, 0) / (0, 1).
* joint: (α, 1−α); length-norm: w_U = N/(N+T) from the data; fixed: w_U = 0.93.
* grad-weighted: w_U = ‖g_G‖/(‖g_U‖+‖g_G‖), w_G = ‖g_U‖/(‖g_U‖+‖g_G‖), recomputed at steps K, 2K, …
  from that step's per-task gradients (the "two extra backward passes": same batch, before the optimizer
  step) and held fixed in between; (0.5, 0.5) before the first refresh (SPEC: "0.5 → ≈0.8 at step 50").
* pcgrad: if cos(g_U, g_G) < 0 each gradient is projected onto the other's normal plane (both projections
  use the original gradients), then summed; otherwise plain sum. The generation head gets g_G.
* torchjd (upgrad, mgda, dualproj, imtl-g, aligned-mtl): the aggregator's weighting of the 2×P Jacobian
  [g_U; g_G] (what `Aggregator(J)` computes: weights @ J), with the weights logged; the generation head gets
  g_G, as in `torchjd.autojac.mtl_backward`, where task-specific parameters get their own task's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unigap.registry import load
from unigap.train.names import SINGLE_TASK, STRATEGIES, TORCHJD


@dataclass(frozen=True)
class Combination:
    """The update on the shared parameters, the logged task weights, and the task-specific weights."""

    shared: torch.Tensor
    w_und: float
    w_gen: float
    specific_und: float
    specific_gen: float


class Strategy:
    """Static weights (w_U, 1 − w_U): und-only, gen-only, joint, length-norm, fixed."""

    def __init__(self, w_und: float) -> None:
        self.w_und = w_und

    @property
    def weights(self) -> tuple[float, float]:
        return self.w_und, 1.0 - self.w_und

    def combine(self, g_und: torch.Tensor, g_gen: torch.Tensor, step: int) -> Combination:
        w_und, w_gen = self.weights
        return Combination(w_und * g_und + w_gen * g_gen, w_und, w_gen, w_und, w_gen)

    def state_dict(self) -> dict[str, float]:
        return {"w_und": self.w_und}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.w_und = float(state["w_und"])


class GradWeighted(Strategy):
    """Inverse-norm weights, refreshed every `every` steps and held fixed in between."""

    def __init__(self, every: int) -> None:
        super().__init__(0.5)
        self.every = every

    def combine(self, g_und: torch.Tensor, g_gen: torch.Tensor, step: int) -> Combination:
        if step > 0 and step % self.every == 0:
            n_und, n_gen = float(g_und.norm()), float(g_gen.norm())
            if n_und + n_gen > 0:
                self.w_und = n_gen / (n_und + n_gen)
        return super().combine(g_und, g_gen, step)


class PCGrad(Strategy):
    """Projected conflicting gradients (Yu et al. 2020), two tasks."""

    def __init__(self) -> None:
        super().__init__(0.5)

    def combine(self, g_und: torch.Tensor, g_gen: torch.Tensor, step: int) -> Combination:
        dot = torch.dot(g_und, g_gen)
        shared = g_und + g_gen
        if dot < 0:
            shared = shared - dot / torch.dot(g_gen, g_gen) * g_gen - dot / torch.dot(g_und, g_und) * g_und
        return Combination(shared, 1.0, 1.0, 1.0, 1.0)


class TorchJD(Strategy):
    """A torchjd weighted aggregator applied to the Jacobian [g_U; g_G]."""

    def __init__(self, aggregator_name: str) -> None:
        super().__init__(0.5)
        from torchjd import aggregation  # optional heavy import, only for these strategies

        self.aggregator = getattr(aggregation, aggregator_name)()

    def combine(self, g_und: torch.Tensor, g_gen: torch.Tensor, step: int) -> Combination:
        jacobian = torch.stack([g_und, g_gen])
        weights = self.aggregator.weighting(jacobian)
        w_und, w_gen = (float(w) for w in weights)
        return Combination(weights.to(jacobian) @ jacobian, w_und, w_gen, 1.0, 1.0)


def length_norm_weight(image_tokens: float, answer_tokens: float) -> float:
    """w_U = N / (N + T): N image tokens per image, T mean answer tokens (SPEC §1, ≈0.92 on Janus-Pro)."""
    return image_tokens / (image_tokens + answer_tokens)


@dataclass(frozen=True)
class StrategySettings:
    """What a strategy's factory may read: `TrainConfig`'s strategy fields, and the length-norm weight, computed
    only when that strategy asks (it needs both datasets)."""

    joint_alpha: float
    fixed_w_und: float
    reweight_every: int
    length_w_und: Callable[[], float]


# the factories the `STRATEGIES` registry names, each `factory(name, settings) -> Strategy`
def single_task(name: str, settings: StrategySettings) -> Strategy:
    return Strategy(1.0 if SINGLE_TASK[name] == "und" else 0.0)


def joint(name: str, settings: StrategySettings) -> Strategy:
    return Strategy(settings.joint_alpha)


def fixed(name: str, settings: StrategySettings) -> Strategy:
    return Strategy(settings.fixed_w_und)


def length_norm(name: str, settings: StrategySettings) -> Strategy:
    return Strategy(settings.length_w_und())


def grad_weighted(name: str, settings: StrategySettings) -> Strategy:
    return GradWeighted(settings.reweight_every)


def pcgrad(name: str, settings: StrategySettings) -> Strategy:
    return PCGrad()


def torchjd(name: str, settings: StrategySettings) -> Strategy:
    return TorchJD(TORCHJD[name])


def build_strategy(
    name: str, *, joint_alpha: float, fixed_w_und: float, reweight_every: int, length_w_und: Callable[[], float]
) -> Strategy:
    """A fresh strategy by name (`UserError` for an unknown one); `length_w_und` is only called for length-norm."""
    return load(STRATEGIES.lookup(name))(name, StrategySettings(joint_alpha, fixed_w_und, reweight_every, length_w_und))
