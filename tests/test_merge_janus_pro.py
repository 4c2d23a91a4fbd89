"""`unigap merge --model --adapter` on a Janus-Pro-shaped checkpoint (no sidecar, processor files, byte-level BPE):
the standalone checkpoint stays a Janus-Pro one and computes what base + adapter computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import JanusForConditionalGeneration

from unigap.cli import main
from unigap.model import load_model, save_random_janus_pro


def test_merge_on_janus_pro_geometry(tmp_path: Path) -> None:
    base = save_random_janus_pro(tmp_path / "janus-pro")
    um = load_model(base)
    um.add_lora(rank=2, alpha=4, dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in um.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    adapter = um.save_adapter(tmp_path / "adapter")
    out = tmp_path / "merged"
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out)])
    assert exit_info.value.code == 0

    assert not (out / "unigap.json").exists()  # still read as Janus-Pro: no sidecar appears
    for name in ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
    JanusForConditionalGeneration.from_pretrained(out)
    merged = load_model(out)
    assert merged.prompts.template == um.prompts.template and merged.num_image_tokens == 576
    image = np.random.default_rng(0).integers(0, 256, size=(384, 384, 3), dtype=np.uint8)
    tokens = torch.randint(0, merged.codebook_size, (1, 576), generator=generator)

    @torch.no_grad()
    def scores(model) -> tuple[torch.Tensor, torch.Tensor]:
        return (model.image_token_logprobs(["a red circle"], tokens, cfg_scale=5.0),
                model.answer_logprobs([image], ["What color is it?"], ["red"])[0])

    torch.testing.assert_close(scores(merged), scores(um), rtol=1e-4, atol=1e-4)  # um: base + adapter, in memory
