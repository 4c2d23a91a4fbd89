"""Janus-Pro-shaped checkpoints with random weights: what a converted Janus-Pro-1B/7B directory holds, so the real
path can be tested (and benchmarked at full size) on machines that cannot download weights.

Files and conventions as the conversion script writes them: 384 px images, downsample 16 (576 image tokens for
understanding and generation), codebook 16384, a byte-level BPE tokenizer with DeepSeek's special tokens, a chat
template, `preprocessor_config.json`, `processor_config.json`, `generation_config.json`, and no unigap sidecar
(which is what makes `load_model` treat it as Janus-Pro). `size` picks the networks: "tiny" (a 2-layer 64-wide
LLM, built in seconds on a CPU, for tests) or the published "1b" / "7b" shapes (for speed and memory benchmarks).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil  # (no torchvision needed)

from unigap.model.tiny import image_generation_config, tiny_janus_config
from unigap.model.tokenizer import BOI, EOI, IMAGE

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# The chat template of transformers' Janus conversion script, in its semantics (written here, not copied): messages
# with content lists; an image part is `<image_placeholder>` on its own line; a user turn ends in a blank line, an
# assistant turn in EOS; the generation prompt is `<|Assistant|>:`.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% set role = message['role'] | lower %}"
    "{% if role == 'user' %}<|User|>: {% elif role == 'assistant' %}<|Assistant|>:"
    "{% if not (loop.last and not add_generation_prompt and message['content'][0]['type'] == 'text'"
    " and message['content'][0]['text'] == '') %} {% endif %}{% else %}{{ message['role'].capitalize() }}: {% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}<image_placeholder>{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% elif part['type'] == 'text' %}{% set text = part['text'] %}"
    "{% if loop.first %}{% set text = text.lstrip() %}{% endif %}{% if loop.last %}{% set text = text.rstrip() %}{% endif %}"
    "{% if not loop.first and message['content'][loop.index0 - 1]['type'] == 'text' %} {% endif %}{{ text }}"
    "{% endif %}{% endfor %}{% if not loop.last or add_generation_prompt %}"
    "{% if role == 'user' %}{{ '\\n\\n' }}{% else %}" + EOS + "{% endif %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)
# The language models of the published checkpoints (DeepSeek-LLM 1.5B and 7B); their vision encoder (SigLIP-L,
# 384 px) and VQ tokenizer are transformers' Janus defaults.
LLM_SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30, "num_attention_heads": 32},
}
SIZES = ("tiny", *LLM_SHAPES)
VOCAB_SIZE = 102400


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (no merges) with Janus-Pro's special tokens and chat template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|User|>", "<|Assistant|>"]})
    bos = tokenizer.convert_tokens_to_ids(BOS)  # BOS first, as DeepSeek's Llama tokenizer adds it
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos)])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def janus_pro_config(size: str, vocab_size: int) -> JanusConfig:
    """The `JanusConfig` of a Janus-Pro-shaped model of `size` (see the module docstring)."""
    if size == "tiny":
        return tiny_janus_config(vocab_size, None, hidden_size=64, num_layers=2, num_heads=2, image_size=384,
                                 patch_size=16, codebook_size=16384, vision_hidden_size=32, vision_layers=1,
                                 max_positions=2048)
    if size not in LLM_SHAPES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    shape = LLM_SHAPES[size]
    text = LlamaConfig(vocab_size=max(vocab_size, VOCAB_SIZE), num_key_value_heads=shape["num_attention_heads"],
                       max_position_embeddings=16384, tie_word_embeddings=False, **shape)
    projection = {"projection_dim": shape["hidden_size"]}
    return JanusConfig(text_config=text, vision_config=JanusVisionConfig(**projection),
                       vq_config=JanusVQVAEConfig(**projection, image_token_embed_dim=shape["hidden_size"]),
                       tie_word_embeddings=False)


def save_random_janus_pro(
    directory: str | Path,
    size: str = "tiny",
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a randomly initialised Janus-Pro-shaped checkpoint of `size` to `directory` (initialised on `device`
    in `dtype`: a 1B model initialises in seconds on a GPU, in minutes on a CPU)."""
    tokenizer = byte_level_tokenizer()
    config = janus_pro_config(size, len(tokenizer))
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           {"bos": BOS, "eos": EOS, "pad": PAD, "image": IMAGE, "boi": BOI}.items()}
    config.text_config.bos_token_id, config.text_config.eos_token_id = ids["bos"], ids["eos"]
    config.text_config.pad_token_id, config.image_token_id = ids["pad"], ids["image"]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []  # manual_seed seeds them all
    with torch.random.fork_rng(devices=devices), torch.device(device):  # the caller's random streams stay as they were
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = image_generation_config(ids["bos"], ids["eos"], ids["pad"], ids["boi"])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    pixels = JanusImageProcessorPil(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    JanusProcessor(image_processor=pixels, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                   use_default_system_prompt=True).save_pretrained(directory)
    # as the converted checkpoints lay it out: the image processor in its own file, beside the processor's settings
    processor = json.loads((directory / "processor_config.json").read_text())
    image_processor = processor.pop("image_processor") | {"image_processor_type": "JanusImageProcessor",
                                                          "processor_class": "JanusProcessor"}
    (directory / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    (directory / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return directory
