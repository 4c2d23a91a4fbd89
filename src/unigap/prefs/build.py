"""Build preference pairs from a model's own samples, scored exactly on train-split ShapeWorld scenes.

Kinds (SPEC §1 "Preference data", with ShapeWorld's exact scores standing in for the judges):

* `und`: a train-split scene and a sampled question (`sample_question`); two answers sampled at
  `temperature` > 0; each scored against the exact answer (`answer_score`); kept when the scores differ
  by >= `margin` (0.5), the better one chosen. With `fallback_gt`, a dropped candidate whose ground-truth
  answer (of a user's references, the one that scores best) beats the worse sample by >= `margin` becomes (ground
  truth, worse sample), flagged `fallback`, with the ground truth's own score.
* `gen-real`: chosen = the VQ tokens of the rendered scene (a scene satisfying the prompt); rejected = the
  model's own generation (CFG `cfg_scale`, `temperature`); kept only if the verifier prefers the real
  image (graded `image_score` of the rendered scene > that of the decoded generation).
* `gen-model`: two generations at temperatures 0.6 and 1.2; kept when their graded scores differ by
  >= `margin`, the better one chosen.

With `questions` (a file of your own understanding data: `unigap.data.understanding`), the `und` candidates are its
first rows instead, and answers are scored by the VQA soft score against the row's reference answers.

With `prompts` (a prompt file: `unigap.evaluate.data.prompt_specs`), the `gen-model` candidates are its first lines
instead (a held-out ShapeWorld prompt is refused: it would leak into the evaluation). With `judge` naming a local
judge (`clip:DIR`, `vlm:DIR`) the two images are scored by it and a pair is kept when it accepts exactly one of them
(its calibrated threshold; `margin` does not apply, as its scores have their own scale), which is how free-text
prompts, which the verifier cannot read, get pairs; each such row records the judge.

Candidates are (prompt spec, scene) records of the train split of partition `data_seed` (eval's), drawn by `seed`
(`sample_records(·, data_seed, "train", draw_seed=seed)`) at the model's VQ image size, taken in order until `n`
pairs are kept or `max_candidates` (default 4n) were tried, so the same arguments give the same file. Reference
log-probs (base model, conditional-only for images) are computed once here and stored in the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from unigap.data.understanding import UserItem, read_understanding_data
from unigap.errors import UserError
from unigap.evaluate.data import FREE_TEXT_HINT, FreePrompt, prompt_lines, training_prompt_specs
from unigap.evaluate.judges import VERIFIER, Judge, check_judge_name, get_judge
from unigap.evaluate.vqa import vqa_score
from unigap.model.checkpoint import model_identity
from unigap.model.decoding import check_temperature
from unigap.model.generation import CFG_SCALE, check_guidance_scale
from unigap.model.images import vq_image_size
from unigap.model.unified import UnifiedModel
from unigap.prefs.kinds import KINDS, MARGIN
from unigap.world.scoring import answer_score, image_score
from unigap.prefs.trl import png_bytes
from unigap import distributed
from unigap.train.dpo import GenerationPair, Pair, UnderstandingPair, with_reference
from unigap.world.dataset import sample_records, scene_json
from unigap.world.prompts import PromptSpec
from unigap.world.questions import SENTENCE_REQUEST, Question, sample_question
from unigap.world.render import render
from unigap.world.scene import Scene

ANSWER_FORMS = ("any", "word", "sentence")
MODEL_TEMPERATURES = (0.6, 1.2)  # gen-model: the two sampling temperatures
MAX_ANSWER_TOKENS = 64  # a four-object description is ~40 word tokens

Progress = Callable[[int, int], None]
Candidate = tuple[dict[str, Any], Pair]  # the row so far, and the pair whose reference log-probs it needs


@dataclass(frozen=True)
class BuildOptions:
    """What to build; see the module docstring for each kind's rule."""

    kind: str
    n: int
    seed: int
    model_name: str
    temperature: float = 1.0
    margin: float = MARGIN
    fallback_gt: bool = False
    cfg_scale: float | None = CFG_SCALE
    max_candidates: int | None = None
    batch_size: int = 8
    # und: "any" (every question kind, one-word form), or the same questions of the kinds that have a sentence form,
    # answered in one "word" or in a full "sentence" (equal seeds give equal scenes and questions in both forms)
    answer_form: str = "any"
    questions: str | None = None  # und: a file of your own questions (image, question, answer(s)) as candidates
    prompts: str | None = None  # gen-model: a prompt file as candidates
    judge: str = VERIFIER  # gen-model: who scores the images (verifier: graded, with the margin; else accept/reject)
    data_seed: int = 0  # the partition into splits (eval's --data-seed); `seed` draws within its train split

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        sizes = (("--n", self.n), ("--batch-size", self.batch_size), ("--max-candidates", self.max_candidates))
        for flag, value in sizes:
            if value is not None and value <= 0:
                raise UserError(f"{flag} must be positive, got {value}")
        if self.seed < 0 or self.data_seed < 0:
            raise UserError(f"seed and data seed must be >= 0, got {self.seed} and {self.data_seed}")
        if self.answer_form not in ANSWER_FORMS:
            raise UserError(f"answer form must be one of {', '.join(ANSWER_FORMS)}, got {self.answer_form!r}")
        if self.answer_form != "any" and self.kind != "und":
            raise UserError(f"--answer-form applies to und pairs; {self.kind} pairs have no answers")
        if self.answer_form != "any" and self.questions is not None:
            raise UserError("--answer-form picks ShapeWorld's questions; with --questions your own are asked as written")
        if not 0 < self.margin <= 1:
            raise UserError(f"margin must be in (0, 1] (scores lie in [0, 1]; 0 would keep ties), got {self.margin}")
        if self.questions is not None and self.kind != "und":
            raise UserError(f"--questions gives understanding candidates; it cannot build {self.kind} pairs")
        if self.kind != "gen-model" and (self.prompts is not None or self.judge != VERIFIER):
            raise UserError(f"--prompts and --judge choose gen-model pairs; {self.kind} pairs "
                            + ("need a rendered scene of each prompt" if self.kind == "gen-real"
                               else "take your questions with --questions"))
        check_judge_name(self.judge, independent=True)
        if self.margin != MARGIN and self.kind == "gen-real":
            raise UserError("--margin compares two samples' scores; a gen-real pair is kept when the rendered scene "
                            "scores above the sample")
        if self.margin != MARGIN and self.judge != VERIFIER:
            raise UserError(f"--margin compares the verifier's graded scores; {self.judge} keeps a pair where it "
                            "accepts exactly one image of two")
        check_temperature(self.temperature)
        check_guidance_scale("cfg scale", self.cfg_scale)
        if self.kind == "und" and not self.temperature > 0:
            raise UserError(
                f"und pairs need two *different* samples: temperature must be > 0, got {self.temperature}"
            )


def candidate_limit(options: BuildOptions) -> int:
    """How many candidates a build tries at most (of a --questions or --prompts file: its first so many rows)."""
    return options.max_candidates or 4 * options.n


def shortfall(options: BuildOptions, candidates: int) -> str:
    """Why a build of `candidates` kept fewer pairs than asked, and the flags that would give it more candidates or
    keep more of them (the margin only where it filters: not gen-real's pairs, not a local judge's)."""
    if (options.questions is not None or options.prompts is not None) and candidates < candidate_limit(options):
        told, hints = f"every candidate in --{'questions' if options.questions else 'prompts'} was tried", []
    else:
        told, hints = "the candidates tried gave no more", [f"raise --max-candidates, default {4 * options.n}"]
    if options.kind != "gen-real" and options.judge == VERIFIER:
        hints.append("lower --margin")
    return told + (f" ({'; or '.join(hints)})" if hints else "")


MARGIN_SLACK = 1e-9  # scores are fractions: a gap equal to the margin exactly (1.0 − 0.9) computes as 0.0999…98


def clears(gap: float, margin: float) -> bool:
    """Whether two scores differ by at least the margin (equal to it kept, as the SPEC keeps it), up to the rounding
    of their difference; never a tie, whatever the margin (one under the slack kept them, and a pair of the same
    answer twice, which training refuses)."""
    return gap > 0 and gap >= margin - MARGIN_SLACK


def _seed(options: BuildOptions, batch: int, draw: int) -> int:
    """A sampling seed per (build seed, batch, draw), independent across all three."""
    return int(np.random.default_rng([options.seed, batch, draw]).integers(2**31))


def _ranked(a: Any, score_a: float, b: Any, score_b: float) -> tuple[Any, float, Any, float]:
    return (a, score_a, b, score_b) if score_a >= score_b else (b, score_b, a, score_a)


def _question(scene: Scene, rng: np.random.Generator, form: str) -> Question:
    """A question of the answer form (see `BuildOptions.answer_form`); "word" strips a sentence-form question back
    to its one-word form, so "word" and "sentence" ask the same questions."""
    if form == "any":
        return sample_question(scene, rng)
    question = sample_question(scene, rng, form="sentence")
    if form == "sentence":
        return question
    return Question(question.kind, question.text.removesuffix(SENTENCE_REQUEST).strip(), question.word)


def _und_batch(
    um: UnifiedModel, records: Sequence[tuple[PromptSpec, Scene]], options: BuildOptions, batch: int
) -> list[Candidate | None]:
    rng = np.random.default_rng([options.seed, batch, 2])
    questions = [_question(scene, rng, options.answer_form) for _, scene in records]
    extras = [{"scene": scene_json(scene)} for _, scene in records]
    return _answer_pairs(um, [render(scene) for _, scene in records], questions, extras, options, batch,
                         lambda text, q: answer_score(text, q.answer, q.kind))


def _user_und_batch(um: UnifiedModel, items: Sequence[UserItem], options: BuildOptions, batch: int
                    ) -> list[Candidate | None]:
    """Users' questions (`--questions FILE`): answers scored by the VQA soft score against the references; the
    image is stored in the row (`images`), as there is no scene to render it from."""
    images = [item.image for item in items]  # this batch's, decoded once
    extras = [{"images": [png_bytes(image)]} for image in images]
    return _answer_pairs(um, images, [item.question for item in items], extras, options, batch,
                         lambda text, q: vqa_score(text, q.answers))


def _answer_pairs(um: UnifiedModel, images: Sequence[np.ndarray], questions: Sequence[Any],
                  extras: Sequence[dict[str, Any]], options: BuildOptions, batch: int,
                  score: Callable[[str, Any], float]) -> list[Candidate | None]:
    """Two sampled answers per question, scored; kept when they differ by the margin (or, with `fallback_gt`, the
    reference answer against the worse sample), the better one chosen."""
    texts = [q.text for q in questions]
    samples = [
        um.answer(images, texts, MAX_ANSWER_TOKENS, options.temperature, _seed(options, batch, draw))
        for draw in (0, 1)
    ]
    out: list[Candidate | None] = []
    for extra, question, image, a, b in zip(extras, questions, images, *samples, strict=True):
        score_a, score_b = (score(text, question) for text in (a, b))
        chosen, chosen_score, rejected, rejected_score = _ranked(a, score_a, b, score_b)
        if not clears(chosen_score - rejected_score, options.margin):  # no pair of samples: the ground truth,
            # where allowed: the best reference by the same score (a ShapeWorld answer scores 1; under the VQA soft
            # score the first of a user's ten references may score 0.3 where the majority answer scores 1)
            truth, truth_score = max(((r, score(r, question)) for r in getattr(question, "answers", (question.answer,))),
                                     key=lambda pair: pair[1])
            if not options.fallback_gt or not clears(truth_score - rejected_score, options.margin):
                out.append(None)
                continue
            chosen, chosen_score, fallback = truth, truth_score, True
        else:
            fallback = False
        row = {
            "question": question.text,
            "question_kind": question.kind,
            "answer": question.answer,
            **extra,
            "chosen": chosen,
            "rejected": rejected,
            "chosen_ids": um.prompts.answer_ids(chosen),
            "rejected_ids": um.prompts.answer_ids(rejected),
            "chosen_score": chosen_score,
            "rejected_score": rejected_score,
            "fallback": fallback,
        }
        out.append((row, UnderstandingPair(image, question.text, chosen, rejected, 0.0, 0.0, 0, 0)))
    return out


def _scored_images(um: UnifiedModel, specs: Sequence[PromptSpec | FreePrompt], tokens: Any, canvas: int,
                   judge: Judge | None) -> list[float | None]:
    """The verifier's graded score of each image, or `judge`'s score (None where it cannot decide)."""
    images = um.decode_tokens(tokens)
    if judge is not None:
        return judge.fn(um, images, specs)
    return [image_score(np.asarray(img), spec, canvas) for img, spec in zip(images, specs, strict=True)]


def _kept_by_judge(judge: Judge, score_a: float | None, score_b: float | None) -> bool:
    """A judge's pair: it accepts exactly one of the two images (undecided ones are dropped)."""
    verdicts = judge.accepts(score_a), judge.accepts(score_b)
    return None not in verdicts and verdicts[0] != verdicts[1]


def _gen_batch(
    um: UnifiedModel, records: Sequence[tuple[PromptSpec | FreePrompt, Scene | None]], options: BuildOptions,
    batch: int, judge: Judge | None = None,
) -> list[Candidate | None]:
    specs = [spec for spec, _ in records]
    prompts = [spec.text for spec in specs]
    canvas = vq_image_size(um.model.model.vqmodel)
    temperatures = (options.temperature,) if options.kind == "gen-real" else MODEL_TEMPERATURES
    draws = [
        um.generate_images(prompts, 1, options.cfg_scale, temperature, _seed(options, batch, draw))
        for draw, temperature in enumerate(temperatures)
    ]
    scores = [_scored_images(um, specs, tokens, canvas, judge) for tokens in draws]
    if options.kind == "gen-real":
        real = [render(scene) for _, scene in records]
        draws.insert(0, um.encode_images(real))
        scores.insert(0, [image_score(image, spec, canvas) for image, spec in zip(real, specs, strict=True)])
    out: list[Candidate | None] = []
    for i, spec in enumerate(specs):
        a, score_a, b, score_b = draws[0][i].tolist(), scores[0][i], draws[1][i].tolist(), scores[1][i]
        if options.kind == "gen-real":  # the real image is chosen, or the pair is dropped
            chosen, chosen_score, rejected, rejected_score = a, score_a, b, score_b
            keep = chosen_score > rejected_score
        else:  # the better image chosen, if the judge's verdicts differ or the graded scores by the margin
            keep = (_kept_by_judge(judge, score_a, score_b) if judge is not None
                    else clears(abs(score_a - score_b), options.margin))
            if keep:
                chosen, chosen_score, rejected, rejected_score = _ranked(a, score_a, b, score_b)
        if not keep:
            out.append(None)
            continue
        row = {
            "prompt": spec.text,
            "category": spec.category,
            "chosen_ids": chosen,
            "rejected_ids": rejected,
            "chosen_score": chosen_score,
            "rejected_score": rejected_score,
            "fallback": False,
            **({} if judge is None else {"judge": judge.describe()}),
        }
        out.append((row, GenerationPair(spec.text, tuple(chosen), tuple(rejected), 0.0, 0.0)))
    return out


def candidate_questions(options: BuildOptions) -> list[UserItem]:
    """The rows of `options.questions` that may become candidates (a bad row fails here, naming its line)."""
    return read_understanding_data(options.questions, candidate_limit(options))


def candidate_prompts(options: BuildOptions) -> list[PromptSpec | FreePrompt]:
    """The lines of `options.prompts` that may become candidates: free text only where a judge reads it; a bad line
    or a held-out ShapeWorld prompt (of the partition `data_seed` fixes) fails here."""
    return training_prompt_specs(options.prompts, candidate_limit(options), options.seed, options.data_seed,
                                 options.judge != VERIFIER, FREE_TEXT_HINT, "preference pairs are built from")


def _what_helps(options: BuildOptions) -> str:
    """The knobs that can let a kind's candidates pass (more candidates only where more can be drawn)."""
    more = [] if options.questions is not None or options.prompts is not None else ["--max-candidates"]
    knobs = {"und": ["a higher --temperature", "a lower --margin", "--fallback-gt"],
             "gen-model": ["a lower --margin"] if options.judge == VERIFIER else ["another --judge"],
             "gen-real": ["a higher --temperature"]}.get(options.kind, [])
    choices = [*more, *knobs] or ["other settings"]
    return ", ".join(choices[:-1]) + (" or " if len(choices) > 1 else "") + choices[-1]


def build_preferences(
    um: UnifiedModel, options: BuildOptions, progress: Progress | None = None,
    questions: Sequence[UserItem] | None = None, prompts: Sequence[PromptSpec | FreePrompt] | None = None,
    judge: Judge | None = None,
) -> list[dict[str, Any]]:
    """Up to `options.n` preference rows (fewer if `max_candidates` run out), reference log-probs included;
    `UserError` when no candidate passes the filters (an empty file would only fail later, in training).
    `questions`, `prompts`, `judge`: what `candidate_questions`, `candidate_prompts` and `get_judge` give for
    `options`, when the caller has them already (so that a bad file or judge fails before the model loads)."""
    if um.peft is not None:
        raise UserError(
            "build preference pairs with the base model (reference log-probs come from it), not an adapter"
        )
    canvas = vq_image_size(um.model.model.vqmodel)
    limit = candidate_limit(options)
    records: Sequence[Any]
    if options.questions is not None:
        records = candidate_questions(options) if questions is None else questions
    elif options.prompts is not None:
        records = [(spec, None) for spec in (candidate_prompts(options) if prompts is None else prompts)]
    else:
        records = sample_records(limit, options.data_seed, "train", canvas=canvas, draw_seed=options.seed)
    limit = len(records)
    asked = [(item.where, item.question.text) for item in records if isinstance(item, UserItem)]
    um.prompts.check_texts(prompts=prompt_lines(options.prompts), questions=asked)  # (not at the batch drawing one)
    score_batch: Callable[..., list[Candidate | None]] = _und_batch if options.kind == "und" else _gen_batch
    if options.questions is not None:
        score_batch = _user_und_batch
    elif options.judge != VERIFIER:
        score_batch = partial(_gen_batch, judge=judge or get_judge(options.judge, independent=True))
    kept: list[tuple[int, dict[str, Any], Pair]] = []
    starts = list(range(0, limit, options.batch_size))
    scored = distributed.ordered_rounds(  # data-parallel under `accelerate launch`: batches shared, results in order
        list(enumerate(starts)),
        lambda item: score_batch(um, records[item[1] : item[1] + options.batch_size], options, item[0]))
    for round_start, results in zip(range(0, len(starts), distributed.world_size()), scored):
        for start, candidates in zip(starts[round_start:], results):
            kept += [(start + offset, *c) for offset, c in enumerate(candidates) if c is not None][
                : options.n - len(kept)]
            if progress is not None:
                progress(len(kept), min(start + options.batch_size, limit))
        if len(kept) >= options.n:
            break
    if not kept:
        raise UserError(f"no {options.kind} pair passed the filters in {limit} candidates; try {_what_helps(options)}")
    rows, identity = [], model_identity(um)  # (which model's references the rows store: `fit_references`)
    referenced = with_reference(um, [pair for _, _, pair in kept], batch=options.batch_size, shared=True)
    for (candidate, row, _), pair in zip(kept, referenced, strict=True):
        rows.append(
            {
                "kind": options.kind,
                "model": options.model_name,
                "model_fingerprint": identity["model"],
                "model_dtype": identity["model_dtype"],
                "seed": options.seed,
                "data_seed": options.data_seed,
                "candidate": candidate,
                **row,
                "chosen_ref_logprob": pair.ref_chosen,
                "rejected_ref_logprob": pair.ref_rejected,
                "chosen_tokens": pair.chosen_tokens,
                "rejected_tokens": pair.rejected_tokens,
            }
        )
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """One line for the CLI (rows non-empty): mean scores, and how many fell back to the ground truth."""
    chosen = sum(row["chosen_score"] for row in rows) / len(rows)
    rejected = sum(row["rejected_score"] for row in rows) / len(rows)
    fallback = sum(row["fallback"] for row in rows)
    return f"mean score chosen {chosen:.3f}, rejected {rejected:.3f}; {fallback} ground-truth fallbacks"
