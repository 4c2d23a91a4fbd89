"""A word-level tokenizer for tiny models, with the special tokens Janus needs.

A word-level vocabulary keeps a tiny model's vocabulary (and so its embedding and LM head) small,
and makes every token a readable word, which helps when debugging what a from-scratch model says.
The image tokens mirror Janus-Pro's names, so the same code finds them in either tokenizer.
"""

from __future__ import annotations

import warnings

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from unigap.errors import UnigapDeprecationWarning, UserError

PAD = "<pad>"
BOS = "<bos>"
EOS = "<eos>"
UNK = "<unk>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE, BOI, EOI)


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Build a lowercase word-level tokenizer over `words` plus the Janus special tokens.

    Ids: the special tokens first (pad=0, bos=1, eos=2, unk=3, image placeholder=4, begin/end of image
    = 5/6), then the words in order of first appearance (lowercased, duplicates dropped). Text is split on
    whitespace and punctuation, so "show?" is two tokens; unknown words map to `<unk>`.
    """
    split = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in words:
        word = word.lower()
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"vocabulary entries must be single non-empty words, got {word!r}")
        if [piece for piece, _ in split.pre_tokenize_str(word)] != [word]:  # ("top-left", "yes.": never one token)
            warnings.warn(f"vocabulary entry {word!r} is split by the tokenizer, so no text reaches its id: give "
                          f"single words or single punctuation marks (such entries are refused in a later release)",
                          UnigapDeprecationWarning, stacklevel=2)
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = split
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def special_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of a special token the Janus code paths need; a tokenizer without it is unusable."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UserError(f"the tokenizer has no {token} token; is this a Janus tokenizer?")
    return int(token_id)
