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
    directory = save_random_janus_pro(tmp_path / "ckpt")
    assert json.loads((directory / "processor_config.json").read_text())["num_image_tokens"] == 576
    assert not (directory / "unigap.json").exists()
    um = load_model(directory)
    assert um.num_image_tokens == 576 and um.codebook_size == 16384
