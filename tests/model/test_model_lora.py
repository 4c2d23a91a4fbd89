"""LoRA on the shared LLM only: placement, training, reference (disabled) outputs, save/load, grouping."""

from __future__ import annotations

import re
import json
import pickle
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from peft.utils.other import ModulesToSaveWrapper

from unigap.errors import UserError
from unigap.model import UnifiedModel, load_model

PROMPTS = ["a red circle", "the big blue square"]
QUESTIONS = ["shape ?", "what color is the star ?"]
ANSWERS = ["a circle", "blue"]


def _outputs(um: UnifiedModel, images, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        text, _ = um.answer_logprobs(images[:2], QUESTIONS, ANSWERS)
        image, _ = um.image_logprobs(PROMPTS, tokens)
        mixed, _ = um.image_logprobs(PROMPTS, tokens, cfg_scale=3.0)
    return text, image, mixed, um.judge(images[:2], PROMPTS)


def _train_step(um: UnifiedModel, images, tokens: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(um.trainable_parameters(), lr=0.5)
    text, _ = um.answer_logprobs(images[:2], QUESTIONS, ANSWERS)
    image, _ = um.image_logprobs(PROMPTS, tokens)
    (-(text.sum() + image.sum())).backward()
    optimizer.step()


def test_lora_sits_on_the_language_model_only(fresh: UnifiedModel) -> None:
    fresh.add_lora(rank=4, alpha=8, dropout=0.0)
    lora_modules = [name for name, module in fresh.model.named_modules() if hasattr(module, "lora_A")]
    assert len(lora_modules) == 4 * 7  # 4 layers × q,k,v,o,gate,up,down
    assert all(".language_model.layers." in name for name in lora_modules)
    assert not [n for n, _ in fresh.model.named_parameters() if "lora" in n and ("vision_model" in n or "vqmodel" in n)]
    assert isinstance(fresh.model.model.generation_head, ModulesToSaveWrapper)
    trainable = {n for n, p in fresh.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "generation_head.modules_to_save" in n for n in trainable)


def test_training_changes_only_lora_and_generation_head_and_disable_gives_base(fresh: UnifiedModel, images) -> None:
    tokens = fresh.generate_images(PROMPTS, cfg_scale=2.0, temperature=1.0, seed=0)
    base = _outputs(fresh, images, tokens)
    fresh.add_lora(rank=4, alpha=8, dropout=0.0)
    before = {n: p.detach().clone() for n, p in fresh.model.named_parameters()}
    assert all(torch.allclose(a, b) for a, b in zip(_outputs(fresh, images, tokens), base, strict=True))
    _train_step(fresh, images, tokens)
    changed = {n for n, p in fresh.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the training step changed nothing"
    allowed = re.compile(r"\.language_model\.layers\.\d+\..*\.lora_B\.|generation_head\.modules_to_save\.")
    assert all(allowed.search(n) for n in changed), changed
    assert any("lora_B" in n for n in changed) and any("generation_head" in n for n in changed)
    # lora_A gets exactly zero gradient while B = 0 (PEFT's init), so one plain SGD step leaves it alone
    assert not any("lora_A" in n for n in changed)
    adapted = _outputs(fresh, images, tokens)
    assert all(not torch.allclose(a, b) for a, b in zip(adapted, base, strict=True))
    with fresh.adapters_disabled() as reference:
        disabled = _outputs(reference, images, tokens)
        greedy_ref = reference.generate_images(PROMPTS, cfg_scale=2.0, temperature=0.0)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(disabled, base, strict=True))
    assert all(torch.allclose(a, b) for a, b in zip(_outputs(fresh, images, tokens), adapted, strict=True))
    assert greedy_ref.shape == tokens.shape


def test_adapter_save_load_round_trip(tiny_dir: Path, fresh: UnifiedModel, images, tmp_path: Path) -> None:
    tokens = fresh.generate_images(PROMPTS, cfg_scale=None, temperature=1.0, seed=1)
    fresh.add_lora(rank=4, alpha=8, dropout=0.0)
    _train_step(fresh, images, tokens)
    _train_step(fresh, images, tokens)  # the second step moves lora_A too
    fresh.model.eval()
    trained = _outputs(fresh, images, tokens)
    greedy = fresh.generate_images(PROMPTS, cfg_scale=2.0, temperature=0.0)
    answers = fresh.answer(images[:2], QUESTIONS, max_new_tokens=4)
    fresh.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    loaded = load_model(tiny_dir)
    loaded.load_adapter(tmp_path / "adapter")
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, images, tokens), trained, strict=True))
    assert torch.equal(loaded.generate_images(PROMPTS, cfg_scale=2.0, temperature=0.0), greedy)
    assert loaded.answer(images[:2], QUESTIONS, max_new_tokens=4) == answers
    assert not any(p.requires_grad for p in loaded.model.parameters())  # loaded for inference by default
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        loaded.add_lora()
    with pytest.raises(UserError, match="no PEFT adapter"):
        load_model(tiny_dir).load_adapter(tmp_path)


@pytest.mark.parametrize("trainable", [False, True])
def test_a_bf16_adapter_reloads_to_the_outputs_it_was_saved_with(tiny_dir: Path, images, tmp_path: Path,
                                                                 trainable: bool) -> None:
    """Over bfloat16 weights the generation head trains in float32; loaded into PEFT's bfloat16 copy it was rounded,
    and the reloaded adapter computed other log-probs (a GPU's `eval --adapter`, soups) than the one saved."""
    trained = load_model(tiny_dir, dtype=torch.bfloat16)
    trained.add_lora(rank=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trained.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    trained.save_adapter(tmp_path / "adapter")
    tokens = trained.generate_images(PROMPTS, cfg_scale=5.0, temperature=1.0, seed=3)
    loaded = load_model(tiny_dir, dtype=torch.bfloat16)
    loaded.load_adapter(tmp_path / "adapter", trainable=trainable)
    with torch.no_grad():
        assert torch.equal(loaded.image_token_logprobs(PROMPTS, tokens), trained.image_token_logprobs(PROMPTS, tokens))
    assert torch.equal(loaded.generate_images(PROMPTS, cfg_scale=5.0, temperature=1.0, seed=3), tokens)


def test_a_trainable_adapter_loads_for_inference_until_training_starts(tiny_dir: Path, fresh: UnifiedModel, images,
                                                                       tmp_path: Path) -> None:
    """peft builds LoRA layers in train mode: loaded trainable, dropout would make every score a random draw."""
    fresh.add_lora(rank=4, alpha=8, dropout=0.5)
    fresh.save_adapter(tmp_path / "adapter")
    loaded = load_model(tiny_dir)
    loaded.load_adapter(tmp_path / "adapter", trainable=True)
    assert loaded.trainable_parameters() and not any(module.training for module in loaded.model.modules())
    tokens = loaded.generate_images(PROMPTS, cfg_scale=None, temperature=1.0, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, images, tokens), _outputs(loaded, images, tokens),
                                                 strict=True))


@pytest.mark.parametrize("settings, message", [
    ({"rank": 2.5}, r"LoRA rank must be an integer >= 1, got 2.5"),  # (a TypeError deep in torch)
    ({"alpha": float("nan")}, r"LoRA alpha must be a finite number > 0, got nan"),  # (saved, then refused on loading)
    ({"alpha": None}, r"LoRA alpha must be a finite number > 0, got None"),
    ({"dropout": None}, r"LoRA dropout must lie in \[0, 1\), got None"),  # (TypeErrors naming no argument)
    ({"dropout": "0.1"}, r"LoRA dropout must lie in \[0, 1\), got '0.1'"),
    ({"target_modules": 5}, r"LoRA target_modules must be a module name pattern or a list of names, got 5"),
])
def test_bad_lora_settings_are_refused_before_the_model_changes(tiny_dir: Path, settings: dict, message: str) -> None:
    um = load_model(tiny_dir)
    with pytest.raises(ValueError, match=message):
        um.add_lora(**{"rank": 4, "alpha": 8} | settings)
    um.add_lora(rank=2, alpha=4)  # (nothing was left half-attached)


def test_shared_parameters_grouped_by_layer_and_factor(fresh: UnifiedModel) -> None:
    fresh.add_lora(rank=4, alpha=8, dropout=0.0)
    groups = fresh.shared_lora_parameters()
    assert sorted(groups.by_layer) == [0, 1, 2, 3]
    assert all(len(params) == 14 for params in groups.by_layer.values())  # 7 modules × (A, B)
    assert len(groups.by_factor["lora_A"]) == len(groups.by_factor["lora_B"]) == 28
    assert len(groups.parameters) == len(groups.names) == 56
    for name, param in zip(groups.names, groups.parameters, strict=True):
        layer = int(name.split("language_model.layers.")[1].split(".")[0])
        factor = "lora_A" if ".lora_A." in name else "lora_B"
        assert any(p is param for p in groups.by_layer[layer])
        assert any(p is param for p in groups.by_factor[factor])
        assert param.shape[0 if factor == "lora_A" else 1] == 4  # rank
    head = {id(p) for n, p in fresh.model.named_parameters() if "generation_head" in n}
    assert not head & {id(p) for p in groups.parameters}  # the generation head is not shared


def test_add_lora_keeps_an_eval_model_deterministic(fresh: UnifiedModel, images) -> None:
    """peft builds LoRA layers in train mode; on an eval model their dropout must stay off."""
    fresh.model.eval()
    fresh.add_lora(rank=4, alpha=8, dropout=0.5)
    assert not any(module.training for module in fresh.model.modules())
    with torch.no_grad():
        for module in fresh.model.modules():  # make LoRA act, so dropout would show
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                module.lora_B["default"].weight.fill_(0.1)
        first, _ = fresh.answer_logprobs(images[:2], QUESTIONS, ANSWERS)
        second, _ = fresh.answer_logprobs(images[:2], QUESTIONS, ANSWERS)
    assert torch.equal(first, second)


def test_disabling_the_adapter_keeps_which_parameters_train(fresh: UnifiedModel) -> None:
    fresh.add_lora(rank=4, alpha=8, dropout=0.0)
    frozen = next(param for param in fresh.trainable_parameters())
    frozen.requires_grad_(False)  # e.g. a user freezing part of the adapter (peft re-enabling would thaw it)
    before = len(fresh.trainable_parameters())
    with fresh.adapters_disabled():
        pass
    assert len(fresh.trainable_parameters()) == before and not frozen.requires_grad


def test_sampling_in_train_mode_keeps_its_caches_under_gradient_checkpointing() -> None:
    """Checkpointed layers drop the KV cache in train mode: answers were decoded token by token without context
    ('red red red …') and image sampling raised AttributeError. Without dropout, train mode samples as eval does."""
    from unigap.world import render, sample_records

    um = load_model("tiny")
    um.add_lora(rank=4, alpha=8, dropout=0.0, gradient_checkpointing=True)
    images = [render(scene) for _, scene in sample_records(2, 0, "train")]
    questions = ["What color is the circle?", "How many objects are there?"]
    um.model.eval()
    answers, tokens = um.answer(images, questions), um.generate_images(["a red circle"], seed=3)
    um.model.train()
    assert um.answer(images, questions) == answers
    assert torch.equal(um.generate_images(["a red circle"], seed=3), tokens)
    assert um.model.is_activation_checkpointing  # restored: training still checkpoints
    layers = [m for m in um.model.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and any(m.gradient_checkpointing for m in layers)


def test_gradient_checkpointing_gives_the_same_gradients_without_a_gradient_for_the_embeddings() -> None:
    """transformers made the embeddings' output require a gradient (for reentrant checkpointing; ours is not): each
    backward pass also computed one for it, which nothing trains."""
    from unigap.train.dpo import DPOOptions, UnderstandingPair, task_dpo_loss
    from unigap.world import render, sample_records

    pairs = [UnderstandingPair(render(scene), "What color is the circle?", "red", "blue", -3.0, -4.0, 0, 0)
             for _, scene in sample_records(2, 0, "train")]
    grads, embedded = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        um = load_model("tiny")
        um.add_lora(rank=4, alpha=8, dropout=0.0, gradient_checkpointing=checkpointing)
        um.model.train()
        hook = um.model.get_input_embeddings().register_forward_hook(
            lambda module, args, out: embedded.append(out.requires_grad))
        task_dpo_loss(um, pairs, DPOOptions()).loss.backward()
        hook.remove()
        grads.append({name: p.grad for name, p in um.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7)
    assert not any(embedded)


def test_another_base_models_adapter_is_refused_and_leaves_the_model_as_it_was(tiny_dir: Path, tmp_path: Path) -> None:
    """PEFT wrapped the model and then raised a size-mismatch RuntimeError: LoRA layers left in, `um.peft` None,
    and a later `um.save()` wrote a checkpoint `load_model` refused."""
    other = load_model(tiny_dir)
    other.add_lora(rank=4, alpha=8)
    other.save_adapter(tmp_path / "other")
    um = load_model("tiny")
    before = um.fingerprint()
    with pytest.raises(UserError, match=r"does not fit this model: .* \(an adapter of another base model\?\)"):
        um.load_adapter(tmp_path / "other")
    assert um.peft is None and um.fingerprint() == before
    assert not any("lora_" in name for name, _ in um.model.named_parameters())


def test_an_unreadable_adapter_is_refused_before_the_model_is_wrapped(tiny_dir: Path, tmp_path: Path) -> None:
    """A truncated weights file was found unreadable only once PEFT had put its layers in: the model was left
    half-wrapped, and a good adapter loaded next was refused as "another base model's"."""
    um = load_model("tiny")
    um.add_lora(rank=4, alpha=8)
    um.save_adapter(tmp_path / "good")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_bytes((tmp_path / "good" / "adapter_config.json").read_bytes())
    weights = (tmp_path / "good" / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    fresh = load_model("tiny")
    with pytest.raises(UserError, match=r"cannot read the adapter in .*broken \(incomplete or corrupt\?\)"):
        fresh.load_adapter(broken)
    assert fresh.peft is None and not any("lora_" in name for name, _ in fresh.model.named_parameters())
    fresh.load_adapter(tmp_path / "good")  # and the right one still loads
    assert fresh.peft is not None


def test_an_adapter_peft_fails_on_is_checked_first_and_whatever_else_fails_leaves_the_model_whole(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A legacy .bin adapter of another base, a config whose r is not its factors' rank, or a config that is no JSON
    failed inside PEFT, after it had begun wrapping the model: LoRA layers left in, `um.peft` None, the fingerprint
    changed, and a good adapter loaded next refused as another base model's."""
    from safetensors.torch import load_file

    import unigap.model.lora as lora

    other = load_model(tiny_dir)
    other.add_lora(rank=4, alpha=8)
    tensors = load_file(other.save_adapter(tmp_path / "other") / "adapter_model.safetensors")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "adapter_config.json").write_bytes((tmp_path / "other" / "adapter_config.json").read_bytes())
    torch.save(tensors, legacy / "adapter_model.bin")
    um = load_model("tiny")
    um.add_lora(rank=4, alpha=8)
    good = um.save_adapter(tmp_path / "good")
    config = json.loads((good / "adapter_config.json").read_text())
    wrong_rank, no_json, nan_alpha, one_name = (tmp_path / name for name in ("wrong-rank", "no-json", "nan", "one"))
    for directory, text in ((wrong_rank, json.dumps(config | {"r": 8})), (no_json, "{"),
                            (nan_alpha, json.dumps(config | {"lora_alpha": float("nan")})),
                            (one_name, json.dumps(config | {"modules_to_save": "generation_head"}))):
        directory.mkdir()
        (directory / "adapter_config.json").write_text(text)
        (directory / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
    empty = tmp_path / "empty-bin"  # (an EOFError traceback)
    empty.mkdir()
    (empty / "adapter_config.json").write_bytes((good / "adapter_config.json").read_bytes())
    (empty / "adapter_model.bin").write_bytes(b"")
    fresh = load_model("tiny")
    before, flags = fresh.fingerprint(), [p.requires_grad for p in fresh.model.parameters()]
    for directory, message in ((empty, "cannot read the adapter in .*empty-bin"), (legacy, "does not fit this model"), (wrong_rank, "its weights have rank 4 but "
                               "adapter_config.json says r = 8"), (no_json, "cannot read .*adapter_config.json"),
                               (nan_alpha, "lora_alpha must be a number, got nan"),  # (folded: NaN weights)
                               (one_name, "cannot apply the adapter .*modules_to_save")):  # (wrappers in wrappers)
        with pytest.raises(UserError, match=message):
            fresh.load_adapter(directory)
        assert fresh.peft is None and fresh.fingerprint() == before
    wrap = lora.PeftModel.from_pretrained

    def wraps_then_fails(model, *args, **kwargs):
        wrap(model, *args, **kwargs)
        raise RuntimeError("Error(s) in loading state_dict for PeftModel:\n\tsize mismatch for ...")

    monkeypatch.setattr(lora.PeftModel, "from_pretrained", wraps_then_fails)
    with pytest.raises(UserError, match="^cannot apply the adapter in .*good: Error\\(s\\) in loading state_dict"):
        fresh.load_adapter(good)
    assert fresh.peft is None and fresh.fingerprint() == before and not hasattr(fresh.model, "peft_config")
    assert [p.requires_grad for p in fresh.model.parameters()] == flags  # (PEFT had frozen them all)
    assert not any("lora_" in name or "modules_to_save" in name for name, _ in fresh.model.named_parameters())
    monkeypatch.undo()
    fresh.load_adapter(good)  # and the right one still loads
    assert fresh.peft is not None


@pytest.mark.parametrize("target", ["model.vision_model.embeddings.patch_embedding",
                                    "model.vision_model.embeddings.position_embedding",
                                    r".*language_model\.embed_tokens"])
def test_adapters_on_convolutions_and_embeddings_still_load(target: str, tmp_path: Path, images) -> None:
    """Loaded, they compute what the trained model computes (its LoRA factors moved, so that they matter). PEFT saves
    a token embedding targeted by a regex with its own weight, as `embed_tokens.base_layer.weight`, which was
    refused as having no place in this model."""
    trained = load_model("tiny")
    trained.add_lora(rank=4, alpha=8, target_modules=target if target.startswith(".*") else [target])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trained.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    trained.save_adapter(tmp_path / "adapter")
    um = load_model("tiny")
    um.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        scores = [model.answer_logprobs(images[:2], QUESTIONS, ANSWERS)[0]
                  for model in (trained, um, load_model("tiny"))]
    torch.testing.assert_close(scores[1], scores[0])
    assert not torch.allclose(scores[1], scores[2])  # (the adapter changes what the vision tower sees)


def test_an_adapter_with_lora_biases_is_checked_without_a_traceback(tmp_path: Path) -> None:
    """PEFT's `lora_bias=True` saves a 1-D `lora_B.bias` ([out]); reading its shape as a factor's raised IndexError."""
    from safetensors.torch import load_file, save_file

    from unigap.model.lora import check_adapter_fits

    trained = load_model("tiny")
    trained.add_lora(rank=4, alpha=8)
    directory = trained.save_adapter(tmp_path / "adapter")
    tensors = load_file(directory / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("q_proj.lora_B.weight"))
    tensors[key.replace(".weight", ".bias")] = torch.zeros(tensors[key].shape[0])
    save_file(tensors, directory / "adapter_model.safetensors")
    check_adapter_fits(load_model("tiny").model, directory)  # fits: the bias is left to PEFT


def test_parts_trained_in_full_train_in_float32_over_bfloat16_weights(tiny_dir: Path, images, tmp_path: Path) -> None:
    """An AdamW step on a bfloat16 weight rounds away updates below half its spacing (at lr 1e-4 most of the
    generation head's): the head and the other fully trained parts keep float32 copies, the model around them bf16."""
    um = load_model(tiny_dir, dtype="bfloat16")
    um.add_lora(rank=4, alpha=8, dropout=0.0, trained_modules=("vision_model",))
    trained = {name: p for name, p in um.model.named_parameters() if p.requires_grad and "lora_" not in name}
    assert {name.split(".")[1] for name in trained} == {"generation_head", "vision_model"}
    assert all(p.dtype == torch.float32 for p in trained.values())
    assert um.model.get_input_embeddings().weight.dtype == torch.bfloat16
    tokens = um.generate_images(PROMPTS, cfg_scale=2.0, temperature=1.0, seed=1)  # (the head's output cast back)
    head = next(p for name, p in trained.items() if "generation_head" in name)
    before = head.detach().clone()
    optimizer = torch.optim.AdamW(list(trained.values()), lr=1e-4)
    text, _ = um.answer_logprobs(images[:2], QUESTIONS, ANSWERS)
    image, _ = um.image_logprobs(PROMPTS, tokens)
    (-(text.sum() + image.sum())).backward()
    assert all(p.grad is not None for p in trained.values())
    optimizer.step()
    moved = (head != before).float().mean().item()
    assert moved > 0.99  # in bfloat16 about three in four of the head's weights would not have moved (at lr 1e-4)
    um.save_adapter(tmp_path / "adapter")
    resumed = load_model(tiny_dir, dtype="bfloat16")
    resumed.load_adapter(tmp_path / "adapter", trainable=True)
    assert all(p.dtype == torch.float32 for name, p in resumed.model.named_parameters()
               if p.requires_grad and "lora_" not in name)


def test_a_fresh_adapter_over_bfloat16_weights_computes_exactly_the_base(tiny_dir: Path, images) -> None:
    """The parts trained in full keep float32 master weights but compute in bfloat16 as the base does: computed in
    float32, a fresh adapter's image log-probs were up to ~0.05 nats per token off the reference's, so DPO's
    log-ratios and GRPO's KL started off zero on a GPU."""
    um = load_model(tiny_dir, dtype=torch.bfloat16)
    tokens = um.generate_images(PROMPTS, cfg_scale=5.0, temperature=1.0, seed=0)
    um.add_lora(rank=4, alpha=8, dropout=0.0, trained_modules=("vision_model", "generation_aligner"))
    with torch.no_grad():
        policy = um.image_token_logprobs(PROMPTS, tokens), um.answer_logprobs(images[:2], QUESTIONS, ANSWERS)[0]
        with um.adapters_disabled():
            reference = um.image_token_logprobs(PROMPTS, tokens), um.answer_logprobs(images[:2], QUESTIONS, ANSWERS)[0]
    assert all(torch.equal(a, b) for a, b in zip(policy, reference))
    assert um.generate_images(PROMPTS, cfg_scale=5.0, temperature=1.0, seed=0).equal(tokens)


def test_master_weights_over_bfloat16_give_the_same_gradients_under_activation_checkpointing(tiny_dir: Path,
                                                                                               images) -> None:
    """Checkpointing runs a vision layer again in the backward pass, outside the trained part's forward: there it
    must round its master weights too (it met float32 weights and raised a dtype error)."""
    grads = []
    for checkpointing in (False, True):
        um = load_model(tiny_dir, dtype=torch.bfloat16)
        torch.manual_seed(0)  # (LoRA's A factors)
        um.add_lora(rank=4, alpha=8, dropout=0.0, trained_modules=("vision_model",),
                    gradient_checkpointing=checkpointing)
        um.model.train()
        (-um.answer_logprobs(images[:2], QUESTIONS, ANSWERS)[0].sum()).backward()
        grads.append({name: p.grad for name, p in um.model.named_parameters() if p.requires_grad})
    vision = [name for name, grad in grads[0].items() if "vision_model" in name and grad is not None]
    assert grads[0].keys() == grads[1].keys() and vision
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads[0].values(), grads[1].values()))
    copy = deepcopy(um.model.model.vision_model.modules_to_save["default"])  # (its forward rebound to the copy)
    with torch.no_grad():
        for param in copy.parameters():
            param.zero_()
    assert all(p.abs().sum() > 0 for p in um.model.model.vision_model.modules_to_save["default"].parameters()
               if p.dim() > 1)
    assert copy.forward.module is copy


def test_a_part_trained_in_full_over_bfloat16_survives_a_pickle(tiny_dir: Path) -> None:
    """`torch.save` of a whole module pickles it: its rounding forward was a bound method, which pickles as a lookup
    of `_rounded_forward` on the module and failed to load."""
    um = load_model(tiny_dir, dtype=torch.bfloat16)
    um.add_lora(rank=4, alpha=8, dropout=0.0)
    head = um.model.model.generation_head.modules_to_save["default"]
    loaded = pickle.loads(pickle.dumps(head))
    assert loaded.forward.module is loaded
    hidden = torch.randn(2, head.proj_out.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(loaded(hidden), head(hidden)) and loaded(hidden).dtype == torch.bfloat16


def test_trained_modules_are_the_parts_named_and_a_misspelt_one_is_refused() -> None:
    """PEFT matches `modules_to_save` by suffix: `aligner` alone also trained `generation_aligner`; `nope` trained
    nothing more, silently."""
    um = load_model("tiny")
    um.add_lora(rank=4, alpha=8, trained_modules=("aligner",))
    trained = {name.split(".modules_to_save")[0].split(".")[-1] for name, param in um.model.named_parameters()
               if param.requires_grad and "lora_" not in name}
    assert trained == {"aligner", "generation_head"}
    with pytest.raises(ValueError, match=r"trained_modules \['nope'\] name no part of this model; its parts: "):
        load_model("tiny").add_lora(trained_modules=("nope",))
