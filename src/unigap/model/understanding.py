"""Image + question → text: decoding, teacher-forced answer scoring, and the yes/no self-judge.

Everything runs through `JanusModel.forward` (SigLIP features scattered into the image placeholders,
then the LLM) and the LM head. Prompt and answer are concatenated per example and left-padded, so
answers end at the last column: the scorer only runs the LM head on the last T columns.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import DynamicCache, JanusForConditionalGeneration

from unigap.model.decoding import (
    keeps_caches,
    check_counts,
    check_temperature,
    choose,
    extend,
    left_pad,
    make_generator,
    positions,
    token_logprobs,
)
from unigap.model.images import ImageInput, VisionPreprocessing
from unigap.model.prompts import NO_WORDS, YES_WORDS, PromptFormat
from unigap.world.scene import check_integer


@dataclass
class _Batch:
    ids: torch.LongTensor
    mask: torch.LongTensor
    pixel_values: torch.Tensor


def _batch(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    sequences: Sequence[list[int]],
) -> _Batch:
    ids, mask = left_pad(sequences, fmt.ids.pad)
    pixels = vision(images).to(model.device, model.dtype)
    return _Batch(ids.to(model.device), mask.to(model.device), pixels)


def _hidden(
    model: JanusForConditionalGeneration, batch: _Batch, cache: object | None = None, use_cache: bool = False
) -> tuple[torch.Tensor, object]:
    out = model.model(
        input_ids=batch.ids,
        pixel_values=batch.pixel_values,
        attention_mask=batch.mask,
        position_ids=positions(batch.mask),
        past_key_values=cache,
        use_cache=use_cache,
    )
    return out.last_hidden_state, out.past_key_values


def answer_logprobs(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    questions: Sequence[str],
    answers: Sequence[str],
) -> tuple[torch.Tensor, torch.LongTensor]:
    """Teacher-forced log p(answer + EOS | image, question) → (sum [B], token count [B]); differentiable."""
    logprobs, mask = answer_token_logprobs(model, fmt, vision, images, questions, answers)
    return logprobs.sum(dim=-1), mask.sum(dim=-1)


def answer_targets(fmt: PromptFormat, answers: Sequence[str | Sequence[int]], vocab_size: int) -> list[list[int]]:
    """The token ids each answer is scored as: a text is tokenised with EOS appended (`PromptFormat.answer_ids`); ids
    (a sampled completion, `Completions.ids`) are taken as they are, EOS only where they end in one. Why both:
    decoding sampled ids and tokenising the text again need not give the ids back (a byte-level BPE merges
    differently; the answer's leading space), and a completion cut off before its EOS never sampled one."""
    targets = []
    for index, answer in enumerate(answers):
        if isinstance(answer, str):
            targets.append(fmt.answer_ids(answer))
            continue
        must = (f"answers[{index}] must be a text or a non-empty list of token ids in [0, {vocab_size}) without the "
                f"image placeholder {fmt.ids.image}")
        try:
            ids = [operator.index(i) for i in answer]  # integral only: 7.9 or "red" is no token id
        except TypeError:
            raise ValueError(f"{must}, got {answer!r:.80}") from None
        if not ids or not all(0 <= i < vocab_size and i != fmt.ids.image for i in ids):
            raise ValueError(f"{must}, got {list(answer)!r:.80}")
        targets.append(ids)
    return targets


def answer_token_logprobs(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    questions: Sequence[str],
    answers: Sequence[str | Sequence[int]],
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token teacher-forced log-probs of each answer → (log-probs [B, W], mask [B, W]), right-aligned (row b's
    answer is its last mask[b].sum() columns; padded columns hold 0), at a sampling `temperature`; differentiable.
    An answer is a text (scored with EOS appended) or token ids (scored as they are: `answer_targets`)."""
    batch_size = check_counts(images=images, questions=questions, answers=answers)
    if batch_size == 0:
        empty = torch.zeros((0, 0), device=model.device)
        return empty, empty.bool()
    targets = answer_targets(fmt, answers, model.lm_head.weight.shape[0])
    asked = [fmt.understanding_ids(q) for q in questions]
    for row, (ids, target) in enumerate(zip(asked, targets, strict=True)):
        fmt.check_room(len(ids), len(target), f"answers[{row}] ({len(target)} tokens)")
    batch = _batch(model, fmt, vision, images, [ids + t for ids, t in zip(asked, targets, strict=True)])
    hidden, _ = _hidden(model, batch)
    return _score_endings(model, hidden, batch.ids, targets, temperature)


def _score_endings(
    model: JanusForConditionalGeneration, hidden: torch.Tensor, ids: torch.LongTensor, targets: Sequence[list[int]],
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, W] of each row's last len(target) tokens (left-padded rows end with them), and the
    mask [B, W] of those tokens; padded columns hold 0."""
    width = max(len(t) for t in targets)
    target_mask = torch.zeros((len(targets), width), dtype=torch.bool, device=model.device)
    for row, target in enumerate(targets):
        target_mask[row, width - len(target) :] = True
    logits = model.lm_head(hidden[:, -width - 1 : -1])
    logprobs = token_logprobs(logits, ids[:, -width:], temperature)
    # `where`, not a product: a padded column's value is never read, even if it is not finite
    return torch.where(target_mask, logprobs, 0.0), target_mask


def length_buckets(lengths: Sequence[int], max_buckets: int = 3) -> list[list[int]]:
    """Indices grouped into at most `max_buckets` runs of similar length, minimising the padded size.

    Why: left padding costs every row the longest row's length. A few long answers (full-sentence
    descriptions) among many one-word ones would otherwise make most of a batch padding. Rows are sorted
    by length and cut where the total `rows × longest` is smallest (exact, by dynamic programming).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    # cost[k][j]: least padded size of the first j sorted rows in k runs; cut[k][j]: where the last run starts
    cost = [[0.0] + [float("inf")] * n for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(j):
                value = cost[k - 1][i] + (j - i) * sizes[j - 1]
                if value < cost[k][j]:
                    cost[k][j], cut[k][j] = value, i
    k = min(range(1, max_buckets + 1), key=lambda b: cost[b][n]) if n else 0
    buckets, j = [], n
    while j > 0:
        i = cut[k][j]
        buckets.append(order[i:j])
        j, k = i, k - 1
    return buckets[::-1]


def grouped_answer_logprobs(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    questions: Sequence[Sequence[str]],
    answers: Sequence[Sequence[str]],
    max_buckets: int = 3,
) -> tuple[torch.Tensor, torch.LongTensor]:
    """`answer_logprobs` for several questions per image, flattened in order; the image is run once.

    Why: the image block comes before the question, so in a causal LLM its keys and values do not depend
    on the question. They are computed once per image and shared by its questions, giving the same
    numbers as one sequence per question for a fraction of the cost (the image is most of the sequence).
    The question + answer rows run in a few length buckets (`length_buckets`), so a long description
    does not pad every one-word answer to its length. Pretraining uses this to learn from several
    questions per image view. Under activation checkpointing in training, whose layers keep no cache, each question
    runs with its own copy of the image instead (the same numbers, more compute).
    """
    check_counts(images=images, questions=questions, answers=answers)
    owner, flat_questions, flat_answers = [], [], []
    for index, (qs, ans) in enumerate(zip(questions, answers, strict=True)):
        for name, values in ((f"questions[{index}]", qs), (f"answers[{index}]", ans)):
            check_counts(**{name: values})  # a list per image: one string would be read per character
        if len(qs) != len(ans):
            raise ValueError(f"image {index} has {len(qs)} questions but {len(ans)} answers")
        owner += [index] * len(qs)
        flat_questions += list(qs)
        flat_answers += list(ans)
    if not flat_questions:
        return torch.zeros(0, device=model.device), torch.zeros(0, dtype=torch.long, device=model.device)
    if model.training and model.is_activation_checkpointing:  # checkpointed layers drop caches: one row per question
        return answer_logprobs(model, fmt, vision, [images[i] for i in owner], flat_questions, flat_answers)
    prompts = [fmt.understanding_ids(q) for q in flat_questions]
    split = prompts[0].index(fmt.ids.eoi) + 1
    if any(len(p) == split for p in prompts):  # an empty question: its rows start at <end_of_image>, whose state
        split -= 1  # predicts the answer's first token (in the shared prefix it sat in the cache, unscored)
    prefix = prompts[0][:split]
    if any(p[:split] != prefix for p in prompts):
        raise ValueError("the prompt template puts question-dependent text before the image; cannot share it")
    _, cache = _hidden(model, _batch(model, fmt, vision, images, [prefix] * len(images)), use_cache=True)
    targets = [fmt.answer_ids(answer) for answer in flat_answers]
    rows = [p[split:] + t for p, t in zip(prompts, targets, strict=True)]
    buckets = length_buckets([len(row) for row in rows], max_buckets)
    totals, counts = [], []
    for bucket in buckets:
        select = torch.tensor([owner[i] for i in bucket], device=model.device)
        shared = DynamicCache([(layer.keys[select], layer.values[select]) for layer in cache.layers])
        ids, mask = left_pad([rows[i] for i in bucket], fmt.ids.pad)
        ids, mask = ids.to(model.device), mask.to(model.device)
        hidden = model.model(
            input_ids=ids,
            attention_mask=torch.cat([mask.new_ones((len(ids), split)), mask], dim=1),
            position_ids=split + positions(mask),
            past_key_values=shared,
        ).last_hidden_state
        logprobs, mask = _score_endings(model, hidden, ids, [targets[i] for i in bucket])
        totals.append(logprobs.sum(dim=-1))
        counts.append(mask.sum(dim=-1))
    order = torch.tensor([i for bucket in buckets for i in bucket], device=model.device)
    restore = torch.empty_like(order)
    restore[order] = torch.arange(len(order), device=model.device)
    return torch.cat(totals)[restore], torch.cat(counts)[restore]


class Completions(NamedTuple):
    """Sampled answers: their texts, the token ids sampled (EOS last where the answer ended in one) and whether each
    ended in EOS (False where `max_new_tokens` cut it off: TRL's truncated completions)."""

    texts: list[str]
    ids: list[list[int]]
    finished: list[bool]


@torch.no_grad()
@keeps_caches
def generate_answers(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    questions: Sequence[str],
    max_new_tokens: int,
    temperature: float,
    seed: int | None,
) -> Completions:
    """Decode answers with a KV cache until EOS or `max_new_tokens` (temperature 0 = greedy), never the image
    placeholder: it is input only, and an answer holding it could not be scored (`answer_token_logprobs`)."""
    batch_size = check_counts(images=images, questions=questions)
    check_temperature(temperature)
    check_integer("max_new_tokens", max_new_tokens)
    if batch_size == 0:
        return Completions([], [], [])
    asked = [fmt.understanding_ids(q) for q in questions]
    fmt.check_room(max(map(len, asked)), max_new_tokens, f"max_new_tokens {max_new_tokens}")
    generator = make_generator(seed, model.device)
    batch = _batch(model, fmt, vision, images, asked)
    hidden, cache = _hidden(model, batch, use_cache=True)
    mask, position_ids = batch.mask, positions(batch.mask)
    done = torch.zeros(batch_size, dtype=torch.bool, device=model.device)
    produced: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = model.lm_head(hidden[:, -1])
        token = choose(logits, temperature, generator)
        drawn = token == fmt.ids.image  # input only (its position takes image features): drawn again from the rest,
        if bool(drawn.any()):  # the distribution with it masked, every other draw as it was
            token[drawn] = choose(logits[drawn].index_fill(-1, torch.tensor([fmt.ids.image], device=logits.device),
                                                           float("-inf")), temperature, generator)
        token = token.masked_fill(done, fmt.ids.pad)
        produced.append(token)
        done |= token == fmt.ids.eos
        if bool(done.all()):
            break
        mask, position_ids = extend(mask, position_ids)
        out = model.model(
            input_ids=token.unsqueeze(-1),
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        hidden, cache = out.last_hidden_state, out.past_key_values
    rows = [row[: row.index(fmt.ids.eos) + 1] if fmt.ids.eos in row else row
            for row in torch.stack(produced, dim=1).tolist()]
    texts = [fmt.tokenizer.decode(row[:-1] if row[-1] == fmt.ids.eos else row, skip_special_tokens=True).strip()
             for row in rows]
    return Completions(texts, rows, done.tolist())


@torch.no_grad()
def judge_yes_probability(
    model: JanusForConditionalGeneration,
    fmt: PromptFormat,
    vision: VisionPreprocessing,
    images: Sequence[ImageInput],
    prompts: Sequence[str],
) -> torch.Tensor:
    """P(yes) for "Does this image show {prompt}?", normalised over the yes and no first tokens.

    Several spellings ("yes"/"Yes") may map to different first tokens; their probabilities are summed. Where a
    spelling is more than one token (`PromptFormat.judges_by_first_token`: a byte-level tokenizer without merges
    for them), the words' whole token sequences are scored instead (the first token alone gave exactly 0.5 where a
    yes and a no word began alike).
    """
    batch_size = check_counts(images=images, prompts=prompts)
    if batch_size == 0:
        return torch.zeros(0, device=model.device)
    if not fmt.judges_by_first_token():  # each word's tokens decide, EOS left out
        questions = [fmt.judge_question(p) for p in prompts]

        def words(group: tuple[str, ...]) -> torch.Tensor:
            scored = [answer_token_logprobs(model, fmt, vision, images, questions, [word] * batch_size)[0]
                      for word in group]  # right-aligned, one length per word: its last column is the EOS
            return torch.logsumexp(torch.stack([s[:, :-1].sum(dim=-1) for s in scored]), dim=0)

        return torch.sigmoid(words(YES_WORDS) - words(NO_WORDS))
    batch = _batch(model, fmt, vision, images, [fmt.understanding_ids(fmt.judge_question(p)) for p in prompts])
    hidden, _ = _hidden(model, batch)
    logprobs = torch.log_softmax(model.lm_head(hidden[:, -1]).float(), dim=-1)
    yes_ids, no_ids = fmt.yes_no_token_ids()
    yes = torch.logsumexp(logprobs[:, yes_ids], dim=-1)
    no = torch.logsumexp(logprobs[:, no_ids], dim=-1)
    return torch.sigmoid(yes - no)


_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> int | None:
    """1 for a yes, 0 for a no (the first one said wins), None when the answer holds neither."""
    match = _VERDICT.search(text)
    if match is None:
        return None
    return 1 if match.group(1).lower() == "yes" else 0
