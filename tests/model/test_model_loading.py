"""Tokenizer, tiny config, checkpoint sidecar, loading errors and prompt templates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from unigap.errors import UserError
from unigap.model import build_word_tokenizer, load_model, loading, tiny_janus_config
from unigap.model.checkpoint import weights_fingerprint
from unigap.model.prompts import JANUS_PRO_TEMPLATE, PromptFormat, SpecialIds, janus_pro_system_prompt
from unigap.model.tokenizer import BOI, BOS, EOI, EOS, IMAGE, PAD, SPECIAL_TOKENS, UNK


def test_word_tokenizer_special_tokens_and_round_trip(tmp_path: Path) -> None:
    tok = build_word_tokenizer(["Red", "circle", "?", "red"])
    assert [tok.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS, UNK, IMAGE, BOI, EOI)] == list(range(7))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 10  # "red" is deduplicated after lowercasing
    ids = tok("RED circle?  zebra", add_special_tokens=False)["input_ids"]
    assert ids == [7, 8, 9, 3]  # lowercased, "?" split off, unknown word → <unk>
    # special tokens inside text stay single tokens (the image placeholder must never be split)
    assert tok(f"{BOI}{IMAGE}{IMAGE}{EOI} red", add_special_tokens=False)["input_ids"] == [5, 4, 4, 6, 7]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("RED circle? zebra", add_special_tokens=False)["input_ids"] == ids
    assert again.image_token == IMAGE and again.boi_token == BOI and again.eoi_token == EOI
    for entry in ("two words", ""):
        with pytest.raises(ValueError, match="single non-empty words"):
            build_word_tokenizer([entry])
    from unigap.errors import UnigapDeprecationWarning

    for entry in ("top-left", "yes."):  # ids no text can reach: given as before, with a warning, until refused
        with pytest.warns(UnigapDeprecationWarning, match=f"vocabulary entry '{entry}' is split by the tokenizer"):
            assert len(build_word_tokenizer([entry, "red"])) == len(SPECIAL_TOKENS) + 2


def test_tiny_config_obeys_janus_constraints() -> None:
    tok = build_word_tokenizer(["a"])
    cfg = tiny_janus_config(len(tok), tok)
    hidden = cfg.text_config.hidden_size
    vision = cfg.vision_config
    assert vision.num_image_tokens == 64 == (vision.image_size // vision.patch_size) ** 2
    assert cfg.vq_config.num_patches == 8
    assert 2 ** (len(cfg.vq_config.channel_multiplier) - 1) == cfg.vision_config.patch_size
    assert all(cfg.vq_config.base_channels * m % 32 == 0 for m in cfg.vq_config.channel_multiplier)
    assert cfg.vq_config.num_embeddings >= 256
    assert vision.projection_dim == cfg.vq_config.projection_dim == cfg.vq_config.image_token_embed_dim == hidden
    assert cfg.image_token_id == tok.convert_tokens_to_ids(IMAGE)
    assert (cfg.text_config.pad_token_id, cfg.text_config.bos_token_id, cfg.text_config.eos_token_id) == (0, 1, 2)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_janus_config(10, vq_base_channels=48)
    with pytest.raises(ValueError, match="power of two"):
        tiny_janus_config(10, image_size=60, patch_size=6)


def test_saved_checkpoint_has_sidecar_and_generation_config(tiny_dir: Path) -> None:
    assert json.loads((tiny_dir / "unigap.json").read_text())["template"] == "tiny"
    gen = GenerationConfig.from_pretrained(tiny_dir)
    assert gen.generation_kwargs["boi_token_id"] == 5 and gen.bos_token_id == 1 and gen.pad_token_id == 0


def test_load_model_rejects_bad_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path)
    adapter = tmp_path / "adapter"  # (an adapter given as --model: its base is what to load)
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/janus-pro-1b"}))
    with pytest.raises(UserError, match=f"is a LoRA adapter, not a checkpoint: pass its base, --model "
                                        f"/models/janus-pro-1b, with --adapter {adapter} where the command takes one "
                                        f"\\(`unigap merge"):
        load_model(adapter)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="not a Janus checkpoint"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))  # DeepSeek's release
    with pytest.raises(UserError, match="DeepSeek-format .*convert_janus_weights_to_hf.py"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(UserError, match="safetensors weights$"):
        load_model(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")  # the conversion script's default: pickled weights
    with pytest.raises(UserError, match=r"only pytorch_model\*.bin: run the conversion with --safe_serialization"):
        load_model(tmp_path)
    monkeypatch.setitem(loading.EMBEDDED, "tiny", tmp_path / "absent")
    with pytest.raises(UserError, match="embedded model 'tiny' is not present"):
        load_model("tiny")


def test_directory_without_sidecar_is_janus_pro(janus_pro_dir: Path) -> None:
    (janus_pro_dir / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": 0.25})
    )
    model = load_model(janus_pro_dir)
    assert model.prompts.template == JANUS_PRO_TEMPLATE
    assert model.vision.mean == (0.1, 0.2, 0.3) and model.vision.std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("sidecar, message", [
    ({"image_std": 0}, r"image_std must be 3 finite numbers, each > 0, got 0"),  # (NaN pixels: every P(yes) NaN)
    ({"image_mean": "abc"}, r"image_mean must be 3 finite numbers, got \"abc\""),  # (a ValueError from float())
    ({"image_std": [0.5, 0.5, None]}, r"image_std must be 3 finite numbers, each > 0, got \[0.5, 0.5, null\]"),
    ({"editing": "false"}, r"editing must be true or false, got \"false\""),  # (read as true)
])
def test_a_hand_edited_sidecar_is_one_clear_error(tiny_dir: Path, tmp_path: Path, sidecar: dict,
                                                   message: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    path = copy / "unigap.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | sidecar))
    with pytest.raises(UserError, match=message):
        load_model(copy)


def test_tiny_prompt_layout(um) -> None:
    ids = um.prompts.understanding_ids("does this image show a red circle?")
    n = um.num_image_tokens
    assert ids[:2] == [1, 5] and ids[2 : 2 + n] == [4] * n and ids[2 + n] == 6
    assert 4 not in ids[3 + n :]
    assert um.prompts.answer_ids("Yes")[-1] == 2
    gen = um.prompts.generation_ids("a red circle")
    assert gen[0] == 1 and gen[-1] == 5 and len(gen) == 5


def _byte_level_tokenizer(merged: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer whose decode returns the exact text: no merges but those spelling the
    `merged` words (with their leading space) as one token each."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for word in merged:
        piece = "Ġ"
        for ch in word:
            merges.append((piece, ch))
            piece += ch
            vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": [IMAGE, BOI, EOI]})
    return tok


def _janus_pro_format(tok: PreTrainedTokenizerFast) -> PromptFormat:
    ids = SpecialIds(bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id, image=tok.convert_tokens_to_ids(
        IMAGE), boi=tok.convert_tokens_to_ids(BOI), eoi=tok.convert_tokens_to_ids(EOI))
    return PromptFormat(JANUS_PRO_TEMPLATE, tok, ids, num_image_tokens=3, system_prompt=janus_pro_system_prompt(True))


def test_the_judge_reads_one_next_token_only_where_every_yes_and_no_is_one_token(um) -> None:
    """With " yes", " no" and " No" merged but " Yes" two tokens ("Ġ" + "Yes"), the first tokens shared none, so the
    judge summed P("Ġ"), every word starting with a space, into "yes"."""
    assert um.prompts.judges_by_first_token()  # (the shipped word-level tokenizer: one token each)
    assert _janus_pro_format(_byte_level_tokenizer(("yes", "Yes", "no", "No"))).judges_by_first_token()
    assert not _janus_pro_format(_byte_level_tokenizer(("yes", "no", "No"))).judges_by_first_token()
    assert not _janus_pro_format(_byte_level_tokenizer()).judges_by_first_token()  # (shared first token "Ġ")


def test_janus_pro_prompts_follow_the_chat_template() -> None:
    tok = _byte_level_tokenizer()
    ids = SpecialIds(
        bos=tok.bos_token_id,
        eos=tok.eos_token_id,
        pad=tok.pad_token_id,
        image=tok.convert_tokens_to_ids(IMAGE),
        boi=tok.convert_tokens_to_ids(BOI),
        eoi=tok.convert_tokens_to_ids(EOI),
    )
    fmt = PromptFormat(JANUS_PRO_TEMPLATE, tok, ids, num_image_tokens=3, system_prompt=janus_pro_system_prompt(True))
    text = tok.decode(fmt.understanding_ids(" What is it? "))
    block = BOI + IMAGE * 3 + EOI  # (trailing whitespace goes, a leading space stays: as JanusProcessor's template)
    assert text == f"<bos>{janus_pro_system_prompt(True)}<|User|>: {block}\n What is it?\n\n<|Assistant|>:"
    assert tok.decode(fmt.answer_ids("A dog.")) == " A dog.<eos>"
    assert tok.decode(fmt.answer_ids("  ")) == "<eos>"  # (as the template writes an empty answer: not " " + EOS)
    assert tok.decode(fmt.generation_ids("a cat")) == f"<bos><|User|>: a cat\n\n<|Assistant|>:{BOI}"
    assert fmt.judge_question("a red circle.") == "Does this image show a red circle?"
    with pytest.raises(ValueError, match="image placeholder"):
        fmt.understanding_ids(f"sneaky {IMAGE}")


def test_weights_fingerprint_tells_two_trainings_apart(tiny_dir: Path, tmp_path: Path) -> None:
    first = weights_fingerprint(tiny_dir)
    assert first == weights_fingerprint(tiny_dir) and len(first) == 16
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    assert weights_fingerprint(copy) == first  # a copy (new mtimes) is the same model
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 100] ^= 0xFF  # one byte of the first tensor
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(copy) != first


def test_a_local_folder_named_like_the_shipped_model_is_pointed_out(tmp_path: Path, monkeypatch) -> None:
    from unigap.model.loading import resolve_checkpoint

    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="'tiny' names the shipped model, not the directory tiny/ here"):
        assert resolve_checkpoint("tiny") != tmp_path / "tiny"


def test_a_device_torch_cannot_use_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="device 'cuda' asked for, but this torch sees no CUDA device"):
        loading.default_device_and_dtype("cuda", None)
    with pytest.raises(UserError, match="unknown device 'gpu'"):
        loading.default_device_and_dtype("gpu", None)
    with pytest.raises(UserError, match="unknown dtype 'fp16'"):
        loading.default_device_and_dtype("cpu", "fp16")
    for dtype, shown in (("int8", "int8"), ("float8_e4m3fn", "float8_e4m3fn"), (float, "<class 'float'>")):
        with pytest.raises(UserError, match=f"dtype must be one of float32, bfloat16, float16, float64 .*, got {shown}"):
            loading.default_device_and_dtype("cpu", dtype)  # (the library failed deep inside loading; float8 and
            # Python's float passed the floating-point check, to a storage or attribute error)
    assert loading.default_device_and_dtype("cpu", "bfloat16")[1] == torch.bfloat16
    with pytest.raises(UserError, match="device 'mps' asked for, but this torch cannot use it: "):
        loading.default_device_and_dtype("mps", None)
    assert loading.default_device_and_dtype(None, None) == (torch.device("cpu"), torch.float32)


def test_a_save_killed_midway_never_leaves_weights_without_their_sidecar(tmp_path: Path, monkeypatch) -> None:
    """Weights were written in place and the sidecar last: a kill between left a folder that loaded as a Janus-Pro
    checkpoint, under the wrong prompt template, with a warning about unknown words at most."""
    um = load_model("tiny")
    out = tmp_path / "saved"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(um.tokenizer), "save_pretrained", killed)  # after the weights, before the end
    with pytest.raises(KeyboardInterrupt):
        um.save(out)
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" not in names or "unigap.json" in names
    assert not [name for name in names if name.startswith(".")]  # no staging folder left behind
    monkeypatch.undo()
    assert load_model(um.save(out)).prompts.template == "tiny"


def test_check_texts_holds_a_prompt_to_the_context_its_image_tokens_are_fed_in() -> None:
    """A prompt is followed by N image tokens, of which N − 1 are fed back: 449 prompt ids + 63 fill the tiny model's
    512 positions (accepted), one more word passes them. A word the tokenizer does not know is said once, by the
    check (before a run that reads its texts a batch at a time, hours in), not again by the run."""
    import warnings

    from unigap.model import load_model

    fmt = load_model("tiny").prompts
    assert len(fmt.generation_ids("circle " * 447)) == 449
    with warnings.catch_warnings(record=True) as checked:
        warnings.simplefilter("always")
        fmt.check_texts(prompts=[("p", "circle " * 447), ("q", "a zebra circle")], questions=[("r", "is it a zebra")])
    assert [str(w.message) for w in checked] == ["the tokenizer does not know 'zebra': each reads as <unk>"]
    with warnings.catch_warnings(record=True) as run:
        warnings.simplefilter("always")
        fmt.generation_ids("two zebra circles")
    assert not run
    with pytest.raises(UserError, match="^x:2: 450 tokens and its image 63: 513 positions, more than the model's "
                                        "context of 512$"):
        fmt.check_texts(prompts=[("x:2", "circle " * 448)])


def test_a_sharded_checkpoint_loads_and_a_missing_shard_or_index_is_one_clear_error(tiny_dir: Path,
                                                                                     tmp_path: Path) -> None:
    """Janus-Pro-7B comes in shards; an interrupted download (a shard or the index missing) was a transformers
    traceback after the tokenizer loaded."""
    from transformers import JanusForConditionalGeneration

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_dir, sharded)
    (sharded / "model.safetensors").unlink()
    JanusForConditionalGeneration.from_pretrained(tiny_dir).save_pretrained(sharded, max_shard_size="2MB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    assert load_model(sharded).model.dtype.is_floating_point  # (all there: it loads)
    for broken, name in ((shards[1], shards[1].name), (sharded / "model.safetensors.index.json", None)):
        copy = tmp_path / f"without-{broken.name}"
        shutil.copytree(sharded, copy)
        (copy / broken.name).unlink()
        message = f"lacks 1 of the weight files .* \\(first: {name}\\)" if name else "nor the model.safetensors.index"
        with pytest.raises(UserError, match=message):
            load_model(copy)
    (tmp_path / f"without-{shards[1].name}" / "model.safetensors.index.json").write_text("[]")  # (was AttributeError)
    with pytest.raises(UserError, match="has no 'weight_map'"):
        load_model(tmp_path / f"without-{shards[1].name}")


def test_a_checkpoint_folder_holding_an_adapter_says_so_when_it_loads(tiny_dir: Path, tmp_path: Path) -> None:
    """transformers applies an adapter_config.json beside a checkpoint without a word: the model loaded was the
    checkpoint and that adapter (an adapter trained into its folder by an earlier `train --out`)."""
    from unigap.errors import UnigapWarning

    shutil.copytree(tiny_dir, tmp_path / "m")
    um = load_model(tmp_path / "m")
    um.add_lora(2, 4, 0.0)
    um.save_adapter(tmp_path / "m")
    with pytest.warns(UnigapWarning, match="holds a LoRA adapter .* which transformers loaded with it"):
        load_model(tmp_path / "m")
