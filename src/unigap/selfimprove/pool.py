"""One labelling round of self-improvement: N images per prompt, a label for each, an audit of the labels.

Labellers (`--labels`):
* `self`: the model's own judge, accept when P(yes) of the judge question >= 0.5 (the method, SPEC §2);
* `verifier`: the independent judge labels (`--judge`, the verifier by default: the upper bound, the paper's
  external-judge variant);
* `poor`: the self-judge inverted (accepts what it rejects): deliberately bad self-supervision, to reproduce
  co-degradation.

A round is stored as `pool/round{r}.jsonl` (one row per image: prompt, category, image file, P(yes), accepted,
audit verdict where audited; loadable with `datasets.load_dataset("json", ...)`), the images as PNGs under
`pool/images/` and their VQ tokens in `pool/round{r}.safetensors`. The JSONL is written last: it marks the round
done, so a resumed run reloads it instead of sampling again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unigap import distributed
from unigap.atomic import write_atomically, write_text_atomically
from unigap.evaluate.data import FreePrompt
from unigap.evaluate.generation import ACCEPT_THRESHOLD, stream_seed
from unigap.evaluate.judges import get_judge
from unigap.evaluate.progress import map_batches
from unigap.evaluate.stats import summarize
from unigap.metrics_log import read_log
from unigap.selfimprove.config import SelfImproveConfig, labeller
from unigap.world import PromptSpec

POOL_STREAM = 5  # sampling seeds of round r come from stream_seed(seed, POOL_STREAM, batch, r)
AUDIT_STREAM = 6


@dataclass(frozen=True)
class Sample:
    """One sampled image with its label."""

    prompt_index: int  # index into the run's prompt list
    spec: PromptSpec | FreePrompt
    tokens: tuple[int, ...]
    p_yes: float
    accepted: bool
    audit: bool | None  # the independent judge's verdict, where audited


def _labels(config: SelfImproveConfig, um: Any, images: list, specs: list[PromptSpec | FreePrompt],
            p_yes: list[float]) -> list[bool]:
    if config.labels == "verifier":
        judge = get_judge(labeller(config), independent=True)
        return [judge.accepts(score) is True for score in judge.fn(um, images, specs)]  # (undecided: not accepted)
    accepted = [p >= ACCEPT_THRESHOLD for p in p_yes]
    return [not a for a in accepted] if config.labels == "poor" else accepted


def label_round(
    um: Any, specs: Sequence[PromptSpec | FreePrompt], indices: Sequence[int], config: SelfImproveConfig, round_: int,
    out: Path, progress: bool = True,
) -> list[Sample]:
    """Sample `config.samples` images for each prompt `specs[i]`, i in `indices`, label and audit them; the round's
    files under `out/pool` (reloaded when the round is already done)."""
    rows_file = out / "pool" / f"round{round_}.jsonl"
    if rows_file.is_file():
        return load_round(specs, out, round_)
    n = config.samples

    def batch(index: int, chunk: list[int]) -> tuple[list[Sample], list[Any]]:
        chunk_specs = [specs[i] for i in chunk for _ in range(n)]
        tokens = um.generate_images([specs[i].text for i in chunk], n, config.cfg_scale, config.temperature,
                                    stream_seed(config.seed, POOL_STREAM, index, round_))
        images = um.decode_tokens(tokens)
        p_yes = get_judge("self-pyes").fn(um, images, chunk_specs)
        labels = _labels(config, um, images, chunk_specs, p_yes)
        rows = zip(tokens.tolist(), p_yes, labels, strict=True)
        return [Sample(chunk[row // n], chunk_specs[row], tuple(ids), float(p), label, None)
                for row, (ids, p, label) in enumerate(rows)], images

    done = map_batches(list(indices), max(1, config.sample_batch // n), batch, f"sampling round {round_}", progress)
    images = [image for _, chunk in done for image in chunk]
    samples = audit([s for chunk, _ in done for s in chunk], images, config, round_)
    if distributed.is_main():
        _save_round(samples, images, out, round_)
    return samples


def audit(samples: list[Sample], images: list, config: SelfImproveConfig, round_: int) -> list[Sample]:
    """The samples with the independent judge's verdict (score >= its threshold) on a seeded random `audit_size`
    of them."""
    if config.audit == "none" or not samples:
        return samples
    rng = np.random.default_rng([config.seed, AUDIT_STREAM, round_])
    chosen = sorted(rng.choice(len(samples), size=min(config.audit_size, len(samples)), replace=False).tolist())
    judge = get_judge(config.audit, independent=True)
    verdicts = judge.fn(None, [images[i] for i in chosen], [samples[i].spec for i in chosen])
    verdicts = distributed.gather_objects(verdicts)[0]  # the main process's: the guard must decide alike everywhere
    out = list(samples)
    for i, verdict in zip(chosen, verdicts, strict=True):
        out[i] = Sample(**{**samples[i].__dict__, "audit": judge.accepts(verdict)})
    return out


def audit_metrics(samples: Sequence[Sample]) -> dict[str, Any]:
    """Label precision (the independent judge agrees with an accept), recall (an image it accepts was accepted),
    agreement, and the base rate (the share of all audited images it accepts), over the audited samples; each a
    metric object with n and stderr."""
    audited = [s for s in samples if s.audit is not None]
    return {
        "audited": len(audited),
        "base_rate": summarize([s.audit for s in audited], "value"),
        "precision": summarize([s.audit for s in audited if s.accepted], "value"),
        "recall": summarize([s.accepted for s in audited if s.audit], "value"),
        "agreement": summarize([s.accepted == s.audit for s in audited], "value"),
    }


def _image_name(round_: int, number: int) -> str:
    return f"images/r{round_}_{number:05d}.png"


def _save_round(samples: Sequence[Sample], images: Sequence[Any], out: Path, round_: int) -> None:
    pool = out / "pool"
    for number, image in enumerate(images):
        write_atomically(pool / _image_name(round_, number), lambda tmp, im=image: im.save(tmp, format="PNG"))
    tokens = torch.tensor([s.tokens for s in samples], dtype=torch.int64).reshape(len(samples), -1 if samples else 0)
    write_atomically(pool / f"round{round_}.safetensors", lambda tmp: save_file({"tokens": tokens}, str(tmp)))
    rows = [
        {"prompt": s.spec.text, "category": s.spec.category, "prompt_index": s.prompt_index,
         "image": _image_name(round_, number), "p_yes": s.p_yes, "accepted": s.accepted, "audit": s.audit,
         "round": round_}
        for number, s in enumerate(samples)
    ]
    write_text_atomically(pool / f"round{round_}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def load_round(specs: Sequence[PromptSpec | FreePrompt], out: Path, round_: int) -> list[Sample]:
    """A finished round's samples, as `label_round` returned them."""
    pool = out / "pool"
    rows = read_log(pool / f"round{round_}.jsonl")
    tokens = load_file(str(pool / f"round{round_}.safetensors"))["tokens"].tolist()
    return [
        Sample(row["prompt_index"], specs[row["prompt_index"]], tuple(ids), row["p_yes"], row["accepted"],
               row["audit"])
        for row, ids in zip(rows, tokens, strict=True)
    ]
