"""The study's arms, one registry: every method the study can run, by family, in report order.

An arm declares its family (p1 multi-task DPO, p2 self-improvement, p3 reason-reflect-refine, p4
multi-representation generation), its kind (trained,
post-hoc, inference-time), the arms it needs first (soups need `und-only` and `gen-only`), whether the default
study runs it, and its builder: `"module:function"`, called as `builder(runner, name, seed)`, which must write
`<name>/seed<k>/eval.json` last (that file marks the job done), with the builder's `options` (a DPO strategy, a
self-improvement method and labels, a UniMRG objective: `unigap.study.builders`). Adding an arm is one `register`
call, here or in a user's script before the study runs. Kept free of torch so `unigap study --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unigap.errors import UserError
from unigap.registry import Registry, load
from unigap.train.names import SOUP_LAMBDAS, SPEC_STRATEGIES, STRATEGIES

FAMILIES: dict[str, str] = {
    "p1": "multi-task DPO (arXiv 2603.17044)",
    "p2": "self-improvement (arXiv 2507.16663)",
    "p3": "reason-reflect-refine (arXiv 2602.15772)",
    "p4": "multi-representation generation (arXiv 2601.21406)",
}
KINDS = ("trained", "post-hoc", "inference-time")


@dataclass(frozen=True)
class Arm:
    name: str
    family: str
    kind: str
    builder: str  # "module:function"
    requires: tuple[str, ...] = ()
    default: bool = True
    baseline: str | None = None  # an arm this one must beat, compared directly when both ran (report: comparisons)
    needs_pairs: bool = False  # trains by DPO on the study's preference pairs: the study builds them (and diagnoses
    # their gradients) when a selected arm needs them, and the report shows its DPO losses
    # its builder's settings, checked before any job runs (not hashed: an arm hashes as it did before it had them)
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def build(self) -> Callable[..., None]:
        return load(self.builder)


ARMS: Registry[Arm] = Registry("arm")


RESERVED = ("base", "prefs", "answer-length")  # the study folder's own entries: an arm's folder beside them


def register(arm: Arm) -> Arm:
    if arm.name in RESERVED:
        raise ValueError(f"arm name {arm.name!r} is the study's own (reserved: {', '.join(RESERVED)})")
    if arm.name in FAMILIES:  # (`--methods` reads a family's name first: the arm could never be chosen alone)
        raise ValueError(f"arm name {arm.name!r} is a family's ({', '.join(FAMILIES)})")
    if arm.family not in FAMILIES or arm.kind not in KINDS:
        raise ValueError(f"arm {arm.name!r}: unknown family {arm.family!r} or kind {arm.kind!r}")
    if not set(arm.requires) <= set(ARMS):
        raise ValueError(f"arm {arm.name!r} requires arms registered before it, got {arm.requires}")
    return ARMS.register(arm.name, arm)


_P1, _P2 = "unigap.study.builders:train_strategy", "unigap.study.builders:self_improve"
for _strategy in STRATEGIES:
    register(Arm(_strategy, "p1", "trained", _P1, default=_strategy in SPEC_STRATEGIES,  # torchjd's: opt-in
                 needs_pairs=True, options={"strategy": _strategy}))
for _lam in SOUP_LAMBDAS:
    register(Arm(f"soup-{_lam:g}", "p1", "post-hoc", "unigap.study.builders:soup", ("und-only", "gen-only")))
register(Arm("oracle", "p1", "post-hoc", "unigap.study.builders:oracle", ("und-only", "gen-only")))
# self-improvement: method and labels per arm; off by default: each samples ten images per training prompt, several
# times the cost of a DPO arm
for _name, _options in {
    "self-sft": {"method": "sft"},
    "self-dpo": {"method": "dpo"},
    "self-curriculum-sft": {"method": "curriculum-sft"},
    "self-curriculum-dpo": {"method": "curriculum-dpo"},
    "self-verifier": {"method": "curriculum-sft", "labels": "verifier"},
    "self-poor": {"method": "curriculum-sft", "labels": "poor", "guard": False},
}.items():
    register(Arm(_name, "p2", "trained", _P2, default=False, options=_options))
# the supervised reference for self-improvement: SFT on rendered train scenes (ground-truth images, not the model's)
register(Arm("sft", "p2", "trained", "unigap.study.builders:sft", default=False))
# reason-reflect-refine at inference: the base model's final images after the loop replace its one-shot ones
register(Arm("refine", "p3", "inference-time", "unigap.study.builders:refine", default=False,
             baseline="best-of-n"))  # the loop must beat best-of-N at the same sampling budget
register(Arm("refine-oracle", "p3", "inference-time", "unigap.study.builders:refine", default=False))
register(Arm("best-of-n", "p3", "inference-time", "unigap.study.builders:best_of_n", default=False))
# the loop after R3's GRPO training, against the loop before it
register(Arm("refine-grpo", "p3", "trained", "unigap.study.builders:refine_grpo", default=False, baseline="refine"))
# UniMRG: understanding SFT with the auxiliary maps, and its baseline without them
for _name in ("unimrg", "und-sft"):  # UniMRG's claim: the maps help beyond the same understanding SFT alone
    register(Arm(_name, "p4", "trained", "unigap.study.builders:unimrg", default=False,
                 baseline="und-sft" if _name == "unimrg" else None, options={"objective": _name}))


def arm_order() -> tuple[str, ...]:
    """Every registered arm, in report order."""
    return tuple(ARMS)


def select(names: str | None) -> tuple[str, ...]:
    """The arms a comma-separated list of names and families (`p1`, `p2`, ...) selects, in registry order, with
    the arms they require; None = the default arms."""
    if names is None:
        chosen = {name for name, arm in ARMS.items() if arm.default}
    else:
        chosen = set()
        for item in (part.strip() for part in names.split(",")):
            if item in FAMILIES:
                chosen |= {name for name, arm in ARMS.items() if arm.family == item}
            elif item in ARMS:
                chosen.add(item)
            else:
                raise ARMS.unknown(item, [*FAMILIES, *ARMS], label="arm or family")
    while (required := {r for name in chosen for r in ARMS[name].requires} - chosen):  # (requirements' too)
        chosen |= required
    if not chosen:
        raise UserError("--methods selects no arm")
    return tuple(name for name in ARMS if name in chosen)
