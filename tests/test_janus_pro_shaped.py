"""The random Janus-Pro-shaped checkpoints: about 2.1B and 7.4B parameters at full size (the published
checkpoints' totals), and the files a converted checkpoint has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import JanusForConditionalGeneration

from unigap.model import load_model, save_random_janus_pro
from unigap.model.janus_pro_shaped import janus_pro_config


@pytest.mark.parametrize(("size", "billions"), [("1b", 2.08), ("7b", 7.41)])
def test_full_sizes_have_the_published_parameter_counts(size: str, billions: float) -> None:
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = JanusForConditionalGeneration(janus_pro_config(size, 300))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.01)
    assert model.config.vq_config.num_embeddings == 16384 and model.config.vision_config.image_size == 384


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size must be one of tiny, 1b, 7b"):
        janus_pro_config("3b", 300)


def test_tiny_checkpoint_loads_as_janus_pro(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    directory = save_random_janus_pro(tmp_path / "ckpt")  # seeded on its own: the caller's stream goes on as it was
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(load_model(directory).model.lm_head.weight,
                       load_model(save_random_janus_pro(tmp_path / "again")).model.lm_head.weight)
    assert json.loads((directory / "processor_config.json").read_text())["num_image_tokens"] == 576
    assert not (directory / "unigap.json").exists()
    um = load_model(directory)
    assert um.num_image_tokens == 576 and um.codebook_size == 16384


def test_the_processor_loads_and_unigaps_prompt_ids_are_janusprocessors(tmp_path: Path) -> None:
    """The fixture's files are read by transformers as a converted checkpoint's are (named image tokens, a chat
    template over content lists, the image processor's own file), and unigap's prompts are token for token what
    `JanusProcessor` builds from them: understanding with its system prompt, generation in image mode."""
    from PIL import Image
    from transformers import AutoProcessor

    directory = save_random_janus_pro(tmp_path / "ckpt")
    processor, um = AutoProcessor.from_pretrained(directory), load_model(directory)
    question = "What color is the circle?"
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                          "text": question}]}],
                                         add_generation_prompt=True)
    assert text == "<|User|>: <image_placeholder>\nWhat color is the circle?\n\n<|Assistant|>:"
    ids = processor(text=text, images=[Image.new("RGB", (64, 64), "white")])["input_ids"][0]
    assert um.prompts.understanding_ids(question) == list(ids)
    for spaced in (f" {question}", f"{question} \n"):  # the template keeps a leading space, drops trailing ones
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                              "text": spaced}]}],
                                             add_generation_prompt=True)
        ids = processor(text=text, images=[Image.new("RGB", (64, 64), "white")])["input_ids"][0]
        assert um.prompts.understanding_ids(spaced) == list(ids), repr(spaced)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "a red circle"}]}],
                                         add_generation_prompt=True)
    ids = processor(text=text, generation_mode="image")["input_ids"][0]
    assert um.prompts.generation_ids("a red circle") == list(ids)
    saved = json.loads((directory / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 384, "width": 384} and saved["image_processor_type"] == "JanusImageProcessor"


def test_pixel_statistics_are_read_from_either_processor_layout(tmp_path: Path) -> None:
    """Converted checkpoints keep the image processor in `preprocessor_config.json`; transformers 5 saves it inside
    `processor_config.json`."""
    from unigap.model.loading import pixel_stats

    stats = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": stats}))
    assert pixel_stats(tmp_path, {}) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": 0.25, "image_std": 0.75}))
    assert pixel_stats(tmp_path, {}) == ((0.25,) * 3, (0.75,) * 3)
    assert pixel_stats(tmp_path, {"image_mean": 0.5})[0] == (0.5,) * 3  # a unigap sidecar's own, first


def test_the_judge_scores_whole_words_where_yes_and_no_begin_alike(tmp_path: Path) -> None:
    """The fixture's byte-level tokenizer has no merge for " yes" or " no": both begin with " " alone, and P(yes)
    over first tokens was exactly 0.5 for every image."""
    import numpy as np

    from unigap.model.prompts import NO_WORDS, YES_WORDS

    um = load_model(save_random_janus_pro(tmp_path / "ckpt"))
    assert set(um.prompts.first_answer_token_ids(YES_WORDS)) & set(um.prompts.first_answer_token_ids(NO_WORDS))
    images = [np.zeros((384, 384, 3), np.uint8), np.full((384, 384, 3), 255, np.uint8)]
    prompts = ["a red circle", "a blue square"]
    questions = [um.prompts.judge_question(p) for p in prompts]

    def words(group: tuple[str, ...]) -> torch.Tensor:  # each word's tokens, its EOS (the last column) left out
        return torch.logsumexp(torch.stack([um.answer_token_logprobs(images, questions, [w] * 2)[0][:, :-1].sum(-1)
                                            for w in group]), dim=0)

    p_yes = um.judge(images, prompts)
    assert not torch.allclose(p_yes, torch.full_like(p_yes, 0.5))
    assert torch.allclose(p_yes, torch.sigmoid(words(YES_WORDS) - words(NO_WORDS)), atol=1e-5)


@pytest.mark.parametrize("use_default", [True, False])
def test_a_saved_model_keeps_its_system_prompt_setting(tmp_path: Path, use_default: bool) -> None:
    """`save()` writes no processor_config.json, where the setting was read from: a checkpoint converted without the
    default system prompt came back with it, and every understanding prompt changed."""
    directory = save_random_janus_pro(tmp_path / "ckpt")
    config = json.loads((directory / "processor_config.json").read_text())
    (directory / "processor_config.json").write_text(json.dumps(config | {"use_default_system_prompt": use_default}))
    um = load_model(directory)
    saved = load_model(um.save(tmp_path / "saved"))
    assert saved.prompts.system_prompt == um.prompts.system_prompt and bool(um.prompts.system_prompt) == use_default
    assert saved.prompts.understanding_ids("What is it?") == um.prompts.understanding_ids("What is it?")
