"""A Janus-Pro-shaped checkpoint with tiny random weights, built in seconds: what a converted Janus-Pro-1B/7B
directory holds, at Janus-Pro's geometry, so the real path is tested without downloading weights.

Geometry and files as the conversion script writes them: 384 px images, downsample 16 (576 image tokens for
understanding and generation), codebook 16384, a byte-level BPE tokenizer with DeepSeek's special tokens, a chat
template, `preprocessor_config.json`, `processor_config.json`, `generation_config.json`, and no unigap sidecar
(which is what makes `load_model` treat it as Janus-Pro).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import GenerationConfig, JanusForConditionalGeneration, PreTrainedTokenizerFast

from unigap.model import tiny_janus_config
from unigap.model.tokenizer import BOI, EOI, IMAGE

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'].capitalize() + '|>: ' + message['content'] + '\n\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|Assistant|>:' }}{% endif %}"
)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE, BOI, EOI, "<|User|>", "<|Assistant|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_janus_pro_like(directory: Path, seed: int = 0) -> Path:
    tokenizer = byte_level_tokenizer()
    config = tiny_janus_config(len(tokenizer), None, hidden_size=64, num_layers=2, num_heads=2, image_size=384,
                               patch_size=16, codebook_size=16384, vision_hidden_size=32, vision_layers=1,
                               max_positions=2048)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           {"bos": BOS, "eos": EOS, "pad": PAD, "image": IMAGE, "boi": BOI}.items()}
    config.text_config.bos_token_id, config.text_config.eos_token_id = ids["bos"], ids["eos"]
    config.text_config.pad_token_id, config.image_token_id = ids["pad"], ids["image"]
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], boi_token_id=ids["boi"],
        generation_kwargs={"boi_token_id": ids["boi"]}, guidance_scale=5.0,
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "JanusImageProcessor", "image_size": 384, "image_mean": [0.5] * 3,
         "image_std": [0.5] * 3, "do_normalize": True, "do_resize": True}))
    (directory / "processor_config.json").write_text(json.dumps(
        {"processor_class": "JanusProcessor", "num_image_tokens": 576, "use_default_system_prompt": True}))
    return directory
