"""The VQA soft score (Antol et al. 2015; the official VQA v2 evaluation), for users' own understanding data.

Why it and not exact match alone: VQA-style data has several human answers per question (ten in VQA v2), and
"two" against annotators who said "2" or "two" is right. The official rule: an answer is scored against each
subset of all-but-one reference answers as min(1, matches / 3), and those scores are averaged; with a single
reference answer it is exact match of the normalised answers (the accuracy beside it compares the answers' words,
lower-cased, instead: "two" against "2" scores 1 here and is not correct there). Answers are normalised as the official
script does: its punctuation marks removed where one touches a space or the answer holds a thousands comma, else made
a space (apostrophes, colons, per cent signs kept: "don't", "10:30", "50%"), a full stop removed unless a digit
follows, lower case, number words to digits, articles dropped, the commonest contractions given their apostrophe (17
of the official table's ~110: "theres" and "oclock", which it reads as "there's" and "o'clock", are left as written;
"im" stays "im" there too, its keys "Im" and "Ive" never matching a lower-cased word). Unlike the official script,
which normalises only where the references disagree, every answer is normalised (as LLaVA's and lmms-eval's scorers
do): "Yes." against ten "yes" scores 1, not 0. Where both normalise to nothing (the articles of a letter choice
"A", an empty or "?" answer), they match only as the same words, lower-cased without punctuation: "a." matches "A",
and "" or "The" no longer does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "wasnt": "wasn't", "werent": "weren't", "didnt": "didn't", "hasnt": "hasn't",
                 "havent": "haven't", "shouldnt": "shouldn't", "couldnt": "couldn't", "wouldnt": "wouldn't",
                 "youre": "you're", "thats": "that's", "whats": "what's"}  # (each as in the official table)
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!")
_THOUSANDS = re.compile(r"(\d)(,)(\d)")
_FULL_STOP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # (the official pattern: a full stop not followed by a digit)


def normalize_vqa(text: str) -> str:
    """The official VQA answer normalisation (see module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for mark in _PUNCTUATION:
        joined = f"{mark} " in text or f" {mark}" in text or _THOUSANDS.search(text) is not None
        out = out.replace(mark, "" if joined else " ")
    words = [_NUMBERS.get(word, word) for word in _FULL_STOP.sub("", out).lower().split() if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def vqa_score(answer: str, references: Sequence[str]) -> float:
    """min(1, matches / 3) averaged over the leave-one-out subsets of `references` (exact match for one)."""
    if not references:
        raise ValueError("vqa_score needs at least one reference answer")
    given = normalize_vqa(answer)
    hits = [_matches(answer, given, ref) for ref in references]
    if len(hits) == 1:
        return float(hits[0])
    total = sum(hits)
    return sum(min(1.0, (total - hit) / 3) for hit in hits) / len(hits)


def _matches(answer: str, given: str, reference: str) -> bool:
    """`given` (the normalised answer) against the reference; the bare words where both normalise to nothing."""
    normalised = normalize_vqa(reference)
    return given == normalised if given or normalised else _bare(answer) == _bare(reference)


def _bare(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())
