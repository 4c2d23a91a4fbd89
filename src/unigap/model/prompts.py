"""Prompt conventions: how a question, an answer and a generation prompt become token ids.

A model only behaves well on the prompt format it was trained on, so each checkpoint records its
convention (`template` in the `unigap.json` sidecar; absent means Janus-Pro). Every function here
returns plain token-id lists that begin with BOS, so batching and padding live in one place elsewhere.

Janus-Pro follows transformers' Janus chat template and processor (the conversion script's
CHAT_TEMPLATE plus `JanusProcessor`):

- understanding:
  ``[system prompt]<|User|>: <begin_of_image><image_placeholder>×N<end_of_image>\\n{question}\\n\\n<|Assistant|>:``
  (the system prompt is used when the processor's ``use_default_system_prompt`` is set, as in the
  converted checkpoints); the answer follows as `` {answer}`` and ends with EOS;
- generation: ``<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>`` (no system prompt, as
  `JanusProcessor(generation_mode="image")` builds it).

The tiny convention is the same skeleton without chat markup (word-level vocabularies have no room
for it): ``<bos><begin_of_image><image_placeholder>×N<end_of_image> {question}`` → ``{answer}<eos>``
and ``<bos>{prompt}<begin_of_image>``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from transformers import PreTrainedTokenizerBase
from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

from unigap.errors import UnigapWarning, UserError
from unigap.world.edits import REFLECT_QUESTION
from unigap.world.questions import TEMPLATES as QUESTION_TEMPLATES

JANUS_PRO_TEMPLATE = "janus-pro"
TINY_TEMPLATE = "tiny"
TEMPLATES = (JANUS_PRO_TEMPLATE, TINY_TEMPLATE)

JUDGE_QUESTION = QUESTION_TEMPLATES["judge"]  # the world's own wording, which its question corpus trains
YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the prompts and the image sampler rely on, resolved once from the checkpoint."""

    bos: int
    eos: int
    pad: int
    image: int
    boi: int
    eoi: int


@dataclass(frozen=True)
class PromptFormat:
    """One checkpoint's prompt convention bound to its tokenizer."""

    template: str
    tokenizer: PreTrainedTokenizerBase
    ids: SpecialIds
    num_image_tokens: int
    system_prompt: str = ""
    max_positions: int | None = None  # the LLM's context (`max_position_embeddings`): what `check_texts` holds to
    # the words a warning has named: each unknown word is said once per model (`check_texts`, then the run itself)
    warned: set[str] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise UserError(f"unknown prompt template {self.template!r}; expected one of {', '.join(TEMPLATES)}")

    def _encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.tokenizer.unk_token_id in ids:  # a word-level vocabulary (the shipped model's) reads them as nothing
            unknown = [word for word in dict.fromkeys(text.split()) if word not in self.warned and
                       self.tokenizer.unk_token_id in self.tokenizer(word, add_special_tokens=False)["input_ids"]]
            if unknown:
                self.warned.update(unknown)
                warnings.warn(f"the tokenizer does not know {', '.join(map(repr, unknown))}: each reads as "
                              f"{self.tokenizer.unk_token}", UnigapWarning, stacklevel=3)
        return ids

    def check_room(self, asked: int, more: int, what: str) -> None:
        """`UserError` naming `what` where `more` tokens after a question of `asked` positions (its image's
        included) would run past the LLM's context: decoded or scored at positions the model never saw."""
        if self.max_positions is not None and asked + more > self.max_positions:
            raise UserError(f"{what}: with the question and its image ({asked} positions) more than the model's "
                            f"context of {self.max_positions}; at most {self.max_positions - asked}")

    def _fits(self, ids: list[int], fed: int) -> list[int]:
        """`ids`, where they and the `fed` image tokens fed back after them fit the LLM's context; else a `UserError`
        (past it a prompt was sampled on all the same, at positions the model never saw: silent nonsense)."""
        total = len(ids) + fed
        if self.max_positions is not None and total > self.max_positions:
            what = f"{len(ids)} tokens and its image {fed}" if fed else "with its image"
            raise UserError(f"{what}: {total} positions, more than the model's context of {self.max_positions}")
        return ids

    def _with_image(self, tiny_text: str, chat_text: str, what: str) -> list[int]:
        """BOS + one of the two texts (by template), whose `{block}` is the image block written as token strings
        and tokenised with the rest, exactly as JanusProcessor expands `<image_placeholder>`; the placeholder
        count is then checked."""
        boi, image, eoi = self.tokenizer.convert_ids_to_tokens([self.ids.boi, self.ids.image, self.ids.eoi])
        block = boi + image * self.num_image_tokens + eoi
        text = (tiny_text if self.template == TINY_TEMPLATE else chat_text).format(block=block)
        ids = [self.ids.bos] + self._encode(text)
        found = ids.count(self.ids.image)
        if found != self.num_image_tokens:  # (a user's text holding an image token's string: a `UserError`)
            raise UserError(
                f"the {what} prompt holds {found} image placeholder tokens, expected {self.num_image_tokens} "
                "(does the text contain image tokens, or does the tokenizer split the placeholder?)"
            )
        return self._fits(ids, 0)

    def check_texts(self, prompts: Iterable[tuple[str, str]] = (), questions: Iterable[tuple[str, str]] = ()) -> None:
        """Every (where, text) prompt and question tokenised as the model will, once it is loaded and before anything
        is written: one it cannot take (the text of an image token in it, or too long for its context with the image
        it comes with: a prompt's N image tokens, of which N − 1 are fed back) is one `UserError` naming where it came
        from, not a failure or silent nonsense midway through a run. (An answer's tokens, and the judge and
        reflection questions built around a prompt, are not counted: a few dozen tokens, against Janus-Pro's 16k.)"""
        for texts, encode in ((prompts, self.generation_ids), (questions, self.understanding_ids)):
            for where, text in texts:
                try:
                    encode(text)  # (a word the tokenizer does not know is said here, once)
                except UserError as exc:
                    raise UserError(f"{where}: {exc}") from None

    def understanding_ids(self, question: str) -> list[int]:
        """BOS + prompt with one image (N placeholders) and the question, ready for the answer."""
        question = _braces(_text(question, "question").rstrip())  # (as the chat template: a leading space stays)
        chat = f"{_braces(self.system_prompt)}<|User|>: {{block}}\n{question}\n\n<|Assistant|>:"
        return self._with_image(f"{{block}} {question}", chat, "understanding")

    def answer_ids(self, answer: str) -> list[int]:
        """The answer as the model should produce it after the understanding prompt, EOS included."""
        return self._answer_text_ids(_text(answer, "answer").strip()) + [self.ids.eos]

    def _answer_text_ids(self, answer: str) -> list[int]:
        """The answer's tokens after the prompt: in the chat template's convention, after a space (none for an empty
        answer, which the template writes as "<|Assistant|>:" straight followed by EOS)."""
        return self._encode(answer if self.template == TINY_TEMPLATE or not answer else f" {answer}")

    def generation_ids(self, prompt: str) -> list[int]:
        """BOS + generation prompt ending in <begin_of_image>; the image tokens follow it."""
        prompt = _text(prompt, "prompt").strip()
        text = prompt if self.template == TINY_TEMPLATE else f"<|User|>: {prompt}\n\n<|Assistant|>:"
        ids = self._encode(text)
        if {self.ids.image, self.ids.boi, self.ids.eoi} & set(ids):
            raise UserError(f"generation prompts must not contain image tokens, got {prompt!r}")
        return self._fits([self.ids.bos] + ids + [self.ids.boi], self.num_image_tokens - 1)

    def edit_ids(self, instruction: str) -> list[int]:
        """BOS + an editing prompt (the source image's N placeholders and the instruction) ending in
        <begin_of_image>; the edited image's tokens follow it.

        The tiny convention puts the instruction *before* the image, so every output token sits at the
        same distance from the source patch it mostly copies, whatever the instruction's length; Janus-Pro's
        chat convention has the image first, as its understanding prompts do.
        """
        instruction = _braces(_text(instruction, "instruction").strip())
        chat = f"<|User|>: {{block}}\n{instruction}\n\n<|Assistant|>:"
        return self._fits(self._with_image(f"{instruction} {{block}}", chat, "editing") + [self.ids.boi],
                          self.num_image_tokens - 1)

    def judge_question(self, prompt: str) -> str:
        """The self-judging question for a generation prompt."""
        return judge_question(prompt)

    def reflect_question(self, prompt: str) -> str:
        """R3's reflection question for a generation prompt (asked in a fresh context with the image)."""
        return REFLECT_QUESTION.format(prompt=_bare(prompt))

    @cached_property
    def _yes_no(self) -> tuple[list[int], list[int], bool]:
        """The yes and the no first tokens, and `judges_by_first_token`: the tokenizer's, worked out once (the judge
        asks on every batch)."""
        yes, no = self.first_answer_token_ids(YES_WORDS), self.first_answer_token_ids(NO_WORDS)
        single = all(len(self._answer_text_ids(word)) == 1 for word in YES_WORDS + NO_WORDS)
        return yes, no, not set(yes) & set(no) and single

    def judges_by_first_token(self) -> bool:
        """Whether P(yes) can be read off one next-token distribution: every yes and no spelling a single token, the
        yes ones distinct from the no ones. Otherwise the words' whole token sequences are scored: a first token
        shared by both ("Ġ" alone), or one that begins other words too (" Yes" as "Ġ" + "Yes" beside a merged
        " yes"), would count every word starting like it as the answer."""
        return self._yes_no[2]

    def yes_no_token_ids(self) -> tuple[list[int], list[int]]:
        """`first_answer_token_ids` of the yes and of the no words, whose next-token odds the judge reads."""
        return self._yes_no[0], self._yes_no[1]

    def first_answer_token_ids(self, words: tuple[str, ...]) -> list[int]:
        """Distinct first tokens of the given answer words (e.g. " yes"/" Yes"), for yes/no scoring."""
        unk = self.tokenizer.unk_token_id
        ids = {self._answer_text_ids(word)[0] for word in words}
        ids.discard(unk)
        if not ids:
            raise UserError(f"the tokenizer cannot express any of {words}; it cannot be used as a judge")
        return sorted(ids)


def judge_question(prompt: str) -> str:
    """"Does this image show <prompt>?", asked of the model itself and of a local VLM judge alike."""
    return JUDGE_QUESTION.format(prompt=_bare(prompt))


def _text(value: object, what: str) -> str:
    """`value`, which must be a string: None or a number would fail deep in the tokenizer, naming nothing."""
    if not isinstance(value, str):
        raise ValueError(f"each {what} must be a string, got {value!r:.60}")
    return value


def _braces(text: str) -> str:
    """Text to embed in a `str.format` template as it is."""
    return text.replace("{", "{{").replace("}", "}}")


def _bare(prompt: str) -> str:
    """A prompt without surrounding space or end punctuation, to embed in a question."""
    return _text(prompt, "prompt").strip().rstrip(".!?").strip()


def janus_pro_system_prompt(use_default_system_prompt: bool) -> str:
    """The understanding system prompt JanusProcessor prepends when `use_default_system_prompt` is set."""
    return DEFAULT_SYSTEM_PROMPT if use_default_system_prompt else ""
