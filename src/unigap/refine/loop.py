"""Reason → reflect → refine at inference (R3, arXiv 2602.15772), on image tokens.

Round 0 generates one image per prompt. Each later round asks the reflector about every prompt still running,
in a fresh context holding only the current image and the target prompt: an answer containing `no further edit`
stops that prompt (its last image carries forward), anything else is an instruction and the refiner makes the next image
from it: `edit` (the current image + the instruction, on models that can edit) or `regenerate` (a new sample
from the prompt refined by the instruction, R3's fallback for models that cannot; the instruction is free text
there). With `edit`, an instruction outside the grammar is a *format failure* (with `regenerate`, an empty one):
the image is kept, the prompt stops, and the failure is counted. Nothing else happens inside the loop — no
self-judge gating, no retries, no best-so-far selection — so any gain is the loop's own.

The `oracle` reflector answers with the exact first edit of the diff between the verifier's parse of the
image and the prompt (`unigap.world.reflection_answer`), which splits a shortfall into reflection errors and
refinement errors; it stops free-text prompts at once. Every image is judged by the verifier (the independent
judge) as it is made; a free-text prompt (a real checkpoint's), which the verifier cannot read, gets None, and
another judge reads its images afterwards (`unigap.refine.metrics.judged_part`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from unigap.errors import UserError
from unigap.evaluate.data import FreePrompt
from unigap.evaluate.generation import stream_seed
from unigap.evaluate.judges import JUDGES
from unigap.evaluate.progress import map_items
from unigap.model.editing import EditGuidance
from unigap.model.generation import CFG_SCALE
from unigap.world import Geometry, PromptSpec, parse_reflection, reflection_answer, verify

REFLECTORS: tuple[str, ...] = ("self", "oracle")
REFINERS: tuple[str, ...] = ("auto", "edit", "regenerate")
ROUND_STREAM = 9  # sampling seeds of round r come from stream_seed(seed, ROUND_STREAM, batch, r)


class Refinable(Protocol):
    supports_editing: bool

    def generate_images(self, prompts: Sequence[str], n_per_prompt: int, cfg_scale: float | None,
                        temperature: float, seed: int | None) -> torch.Tensor: ...

    def edit(self, images: Sequence[Image.Image], instructions: Sequence[str], cfg_scale: float | None,
             temperature: float, seed: int | None, image_cfg_scale: float | None) -> torch.Tensor: ...

    def reflect(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]: ...

    def judge(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor: ...

    # optional: `fingerprint() -> str` (`UnifiedModel.fingerprint`), which a resumed run compares

    def decode_tokens(self, ids: torch.Tensor) -> list[Image.Image]: ...


@dataclass
class Trajectory:
    """One prompt through the loop: the image, verdict and reflection of every round it ran."""

    spec: PromptSpec | FreePrompt
    images: list[Image.Image] = field(default_factory=list)
    verified: list[bool | None] = field(default_factory=list)  # None: free text, which the verifier cannot read
    reflections: list[str] = field(default_factory=list)  # reflections[r - 1] was asked in round r
    stop_round: int | None = None  # the round whose reflection said stop
    format_failure_round: int | None = None

    @property
    def running(self) -> bool:
        return self.stop_round is None and self.format_failure_round is None

    def verdict_after(self, round_: int) -> bool | None:
        """The verifier's verdict on the prompt's image after `round_` (stopped prompts carry theirs forward)."""
        return verdict_after(self.verified, round_)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.spec.text, "category": self.spec.category, "verified": self.verified,
                "reflections": self.reflections, "stop_round": self.stop_round,
                "format_failure_round": self.format_failure_round}


def verdict_after(verdicts: Sequence[bool | None], round_: int) -> bool | None:
    """A prompt's verdict after `round_`, from one verdict per image it has (a stopped prompt's last carries on)."""
    return verdicts[min(round_, len(verdicts) - 1)]


def check_loop(rounds: int, reflector: str, refiner: str) -> None:
    """`UserError` for settings the loop cannot run: read as the model's reflector, as a refiner, or as no round, a
    misspelt one ran another loop than the one asked for, in silence."""
    if rounds < 0:
        raise UserError(f"--rounds must be >= 0, got {rounds}")
    if reflector not in REFLECTORS:
        raise UserError(f"--reflector must be one of {', '.join(REFLECTORS)}, got {reflector!r}")
    if refiner not in REFINERS:
        raise UserError(f"--refiner must be one of {', '.join(REFINERS)}, got {refiner!r}")


def refiner_for(um: Refinable, refiner: str) -> str:
    """`auto` picks `edit` on models that can edit, else `regenerate`."""
    return ("edit" if um.supports_editing else "regenerate") if refiner == "auto" else refiner


def oracle_reflection(image: Image.Image, spec: PromptSpec | FreePrompt) -> str:
    """The exact instruction for the verifier's parse of the image (stop when it passes, and at once on free text,
    which the verifier cannot parse)."""
    if isinstance(spec, FreePrompt):
        return "no further edit needed"
    canvas = image.size[0]
    answer = reflection_answer(verify(image, spec, canvas=canvas).objects, spec, Geometry.for_canvas(canvas).margin)
    return answer or "no further edit needed"  # no single edit helps: the oracle cannot instruct either


def acted_on(note: str, edit: bool) -> bool:
    """Whether a reflection that does not stop can be acted on: within the edit grammar for an editor, any text but
    none for a regenerator (an empty one would redraw the prompt as it was). The loop and its GRPO rollouts agree:
    a reflection training rewards as a format failure is one here too."""
    return parse_reflection(note).format_ok if edit else bool(note.strip())


def refined_prompt(prompt: str, instruction: str) -> str:
    """R3's regenerate fallback: the target prompt refined by the instruction, as free text."""
    return f"{prompt.strip().rstrip('.')}. {instruction.strip()}"


def run_loop(
    um: Refinable,
    specs: Sequence[PromptSpec | FreePrompt],
    rounds: int,
    reflector: str,
    refiner: str,
    seed: int,
    cfg_scale: float | None = CFG_SCALE,
    temperature: float = 1.0,
    batch_size: int = 32,
    progress: bool = True,
    edit_guidance: EditGuidance = EditGuidance(),
    first: Sequence[Image.Image] | None = None,
) -> list[Trajectory]:
    """Every prompt through round 0 and up to `rounds` reflect/refine rounds (module docstring). `cfg_scale` guides
    generation and regeneration, `edit_guidance` the edits. Progress lines name the oracle's rounds as its own.
    `first`, where given, is round 0 (one image per prompt): the one-shot images an evaluation of the same prompts
    sampled, so that the loop's change is measured against those very images, not against another draw."""
    check_loop(rounds, reflector, refiner)
    mode = refiner_for(um, refiner)
    trajectories = [Trajectory(spec) for spec in specs]
    stage = "oracle round" if reflector == "oracle" else "round"
    if first is None:
        _generate(um, trajectories, seed, 0, cfg_scale, temperature, batch_size, progress, f"{stage} 0: generate")
    else:
        _record(trajectories, list(first))
    for round_ in range(1, rounds + 1):
        active = [t for t in trajectories if t.running]
        if not active:
            break
        notes = _reflect(um, active, reflector, batch_size, progress, f"{stage} {round_}: reflect")
        refining: list[tuple[Trajectory, str]] = []
        for trajectory, note in zip(active, notes, strict=True):
            trajectory.reflections.append(note)
            if parse_reflection(note).stop:
                trajectory.stop_round = round_
            elif not acted_on(note, mode == "edit"):
                trajectory.format_failure_round = round_
            else:
                refining.append((trajectory, note))
        _refine(um, refining, mode, seed, round_, cfg_scale, temperature, batch_size, progress, edit_guidance,
                f"{stage} {round_}: {mode}")
    return trajectories


def _generate(um: Refinable, trajectories: Sequence[Trajectory], seed: int, round_: int, cfg_scale: float | None,
              temperature: float, batch_size: int, progress: bool, name: str) -> None:
    def batch(index: int, chunk: list[Trajectory]) -> list[Image.Image]:
        return um.decode_tokens(um.generate_images([t.spec.text for t in chunk], 1, cfg_scale, temperature,
                                                   stream_seed(seed, ROUND_STREAM, index, round_)))

    _record(trajectories, map_items(trajectories, batch_size, batch, name, progress))


def _reflect(um: Refinable, active: Sequence[Trajectory], reflector: str, batch_size: int, progress: bool,
             name: str) -> list[str]:
    if reflector == "oracle":
        return [oracle_reflection(t.images[-1], t.spec) for t in active]
    return map_items(active, batch_size, lambda _, chunk: um.reflect([t.images[-1] for t in chunk],
                                                                    [t.spec.text for t in chunk]),
                     name, progress)


def _refine(um: Refinable, refining: Sequence[tuple[Trajectory, str]], mode: str, seed: int, round_: int,
            cfg_scale: float | None, temperature: float, batch_size: int, progress: bool,
            edit_guidance: EditGuidance, name: str) -> None:
    def batch(index: int, chunk: list[tuple[Trajectory, str]]) -> list[Image.Image]:
        sample_seed = stream_seed(seed, ROUND_STREAM, index, round_)
        if mode == "edit":
            tokens = um.edit([t.images[-1] for t, _ in chunk], [note for _, note in chunk], edit_guidance.text,
                             temperature, sample_seed, edit_guidance.image)
        else:
            tokens = um.generate_images([refined_prompt(t.spec.text, note) for t, note in chunk], 1, cfg_scale,
                                        temperature, sample_seed)
        return um.decode_tokens(tokens)

    images = map_items(refining, batch_size, batch, name, progress)
    _record([t for t, _ in refining], images)


def _record(trajectories: Sequence[Trajectory], images: Sequence[Image.Image]) -> None:
    verdicts = JUDGES["verifier"].verdicts(None, images, [t.spec for t in trajectories])
    for trajectory, image, verdict in zip(trajectories, images, verdicts, strict=True):
        trajectory.images.append(image)
        trajectory.verified.append(verdict)
