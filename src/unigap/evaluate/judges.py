"""Judges by name: who decides whether an image shows its prompt.

Contract of a judge: `judge(um, images, specs) -> list[float | None]`, one score in [0, 1] per image in the same
order, higher = better match; `None` = cannot decide (left out and counted). `independent` says whether the judge
is separate from the model under study: only an independent judge can check a self-judge (co-degradation).

Names: the fixed judges of the `JUDGES` registry (`verifier`, `self-pyes`, `base-pyes`), or `KIND:DIR` for a
kind of the `LOCAL_JUDGES` registry (`clip:DIR`, `vlm:DIR`: a checkpoint in a local directory, see
`unigap.evaluate.local_judges`). A new judge, or a new kind, is one registration. `Judge.describe()` is what
reports record about the judge that decided.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from unigap.errors import UnigapWarning, UserError
from unigap.evaluate.generation import ACCEPT_THRESHOLD, self_p_yes
from unigap.model.checkpoint import weights_fingerprint
from unigap.registry import Registry
from unigap.world import PromptSpec, verify

VERIFIER = "verifier"  # ShapeWorld's exact verifier: the default judge
JudgeFn = Callable[[Any, Sequence[Image.Image], Sequence[PromptSpec]], list[float | None]]


@dataclass(frozen=True)
class Judge:
    name: str
    fn: JudgeFn
    independent: bool
    threshold: float  # accept when score >= threshold
    directory: str | None = None  # a local judge's checkpoint
    calibration: dict[str, Any] | None = None  # how its threshold was chosen, and how well it separates
    scaled_scores: tuple[tuple[str, float], ...] = ()  # (name, factor): the judge's native scores = factor · score
    # bump when the judge's question, parsing or calibration changes: reports record it, and `unigap compare`
    # compares only the verdicts of judges alike (kind, weights, threshold, version)
    version: int = 1
    weights: str | None = None  # a local judge's weights fingerprint (`weights_fingerprint`): which model it is

    def accepts(self, score: float | None) -> bool | None:
        """The judge's verdict on one score: accept at or above its threshold; None where it could not decide."""
        return None if score is None else score >= self.threshold

    def verdicts(self, um: Any, images: Sequence[Image.Image], specs: Sequence[PromptSpec]) -> list[bool | None]:
        """The judge's verdict on each image (None where it cannot decide)."""
        return [self.accepts(score) for score in self.fn(um, images, specs)]

    def describe(self) -> dict[str, Any]:
        """The JSON-able record a report keeps: which judge decided, from where, and where it accepts."""
        out: dict[str, Any] = {"name": self.name, "directory": self.directory, "threshold": self.threshold,
                               "version": self.version}
        if self.weights is not None:
            out["weights"] = self.weights
        if self.calibration is not None:
            out["calibration"] = self.calibration
        return out


def _verifier(um: Any, images: Sequence[Image.Image], specs: Sequence[PromptSpec]) -> list[float | None]:
    """1 or 0 by the exact verifier; None for a free-text prompt, which it cannot read."""
    return [float(verify(image, spec, canvas=image.size[0]).satisfied) if isinstance(spec, PromptSpec) else None
            for image, spec in zip(images, specs, strict=True)]


def _self_pyes(um: Any, images: Sequence[Image.Image], specs: Sequence[PromptSpec]) -> list[float | None]:
    return list(self_p_yes(um, images, [s.text for s in specs]))


def _base_pyes(um: Any, images: Sequence[Image.Image], specs: Sequence[PromptSpec]) -> list[float | None]:
    """The judge of the model before its adapter (frozen while the adapter trains; the same as self-pyes without)."""
    with um.adapters_disabled():
        return _self_pyes(um, images, specs)


JUDGES: Registry[Judge] = Registry("judge")
for _judge in (
    Judge(VERIFIER, _verifier, independent=True, threshold=0.5),
    Judge("self-pyes", _self_pyes, independent=False, threshold=ACCEPT_THRESHOLD),
    Judge("base-pyes", _base_pyes, independent=False, threshold=ACCEPT_THRESHOLD),
):
    JUDGES.register(_judge.name, _judge)


CHANCE_AUC = 0.55  # a calibrated CLIP judge below this on the near-miss pairs is warned about


def _clip_judge(name: str, path: Path) -> Judge:
    """CLIPScore / 2.5 of a local CLIP or SigLIP, its threshold calibrated on ShapeWorld near misses."""
    from unigap.evaluate.local_judges import (CLIPSCORE_WEIGHT, PAPER_CLIPSCORE_WEIGHT, ClipScorer, calibrate,
                                              prompt_texts)

    scorer = ClipScorer(path)
    calibration = calibrate(scorer)
    if calibration["auc"] is None or calibration["auc"] < CHANCE_AUC:  # (e.g. random weights: every score alike)
        auc = "undefined" if calibration["auc"] is None else f"{calibration['auc']:.2f}"
        warnings.warn(UnigapWarning(
            f"{name} tells ShapeWorld renders' prompts from their near misses no better than chance (AUC {auc} over "
            f"{calibration['pairs']} pairs): its verdicts, and any accuracy it reports, mean little"), stacklevel=2)
    return Judge(name, lambda um, images, specs: scorer.scores(images, prompt_texts(specs)), independent=True,
                 threshold=calibration.pop("threshold"), directory=str(path.resolve()),
                 calibration=calibration, weights=_weights(path),
                 scaled_scores=(("clipscore", CLIPSCORE_WEIGHT), ("clipscore_100", PAPER_CLIPSCORE_WEIGHT)))


def _vlm_judge(name: str, path: Path) -> Judge:
    """P(yes) of the judge question under a local image-text-to-text model."""
    from unigap.evaluate.local_judges import VlmJudge, prompt_texts

    vlm = VlmJudge(path)
    return Judge(name, lambda um, images, specs: vlm.p_yes(images, prompt_texts(specs)), independent=True,
                 threshold=0.5, directory=str(path.resolve()), weights=_weights(path))


def _weights(path: Path) -> str | None:
    """The fingerprint of a local judge's safetensors weights (None for other formats: its directory names it)."""
    return weights_fingerprint(path) if any(path.glob("*.safetensors")) else None


# kind -> factory(name, checked directory); every local judge is independent of the model under study
LOCAL_JUDGES: Registry[Callable[[str, Path], Judge]] = Registry("judge kind")
LOCAL_JUDGES.register("clip", _clip_judge)
LOCAL_JUDGES.register("vlm", _vlm_judge)


def check_judge_name(name: str, independent: bool = False) -> None:
    """`UserError` unless `name` can name a judge; cheap (a local judge's directory is checked when it loads)."""
    kind, sep, _ = name.partition(":")
    if sep and kind in LOCAL_JUDGES:
        return
    fixed = [key for key, j in JUDGES.items() if j.independent or not independent]  # (by key: a user's judge may
    # name itself otherwise)
    choices = [*fixed, *(f"{kind}:DIR" for kind in LOCAL_JUDGES)]
    if name in JUDGES and name not in fixed:  # (registered, but the model's own: it cannot check the model)
        raise UserError(f"{name} is the model's own judge, not an independent one; expected one of {', '.join(choices)}")
    JUDGES.lookup(name, choices)


@lru_cache(maxsize=4)
def _local_judge(kind: str, directory: str) -> Judge:
    """Loaded (and calibrated) once per process: the self-improvement audit asks for its judge every round."""
    from unigap.evaluate.local_judges import model_directory

    return LOCAL_JUDGES[kind](f"{kind}:{directory}", model_directory(kind, directory))


def get_judge(name: str, independent: bool = False) -> Judge:
    """The judge `name`; with `independent`, only judges separate from the model qualify. A `KIND:DIR` judge is
    loaded here, so a missing or wrong directory is a `UserError` before any work."""
    check_judge_name(name, independent)
    kind, sep, directory = name.partition(":")
    return _local_judge(kind, directory) if sep else JUDGES[name]
