"""`unigap merge --model --adapter`: the adapter folded into a standalone checkpoint that computes what base + adapter
computes, loads with transformers alone and with `load_model` as the same kind of model; written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import JanusForConditionalGeneration

from unigap.cli import main
from unigap.errors import UserError
from unigap.model import UnifiedModel, load_model
from unigap.model.checkpoint import read_sidecar
from unigap.model.standalone import save_merged

PROMPTS = ["a red circle", "the big blue square"]
QUESTIONS = ["shape ?", "what color is the star ?"]
ANSWERS = ["a circle", "blue"]


def make_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter with nonzero A, B and generation head, as if trained."""
    um = load_model(base)
    um.add_lora(rank=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in um.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return um.save_adapter(out)


def run_main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def outputs(um: UnifiedModel, images: list, tokens: torch.Tensor) -> dict[str, object]:
    """Everything a checkpoint is used for: understanding and image-token log-probs, greedy answers and images."""
    with torch.no_grad():
        return {
            "answer_logprobs": um.answer_logprobs(images[:2], QUESTIONS, ANSWERS)[0],
            "image_token_logprobs": um.image_token_logprobs(PROMPTS, tokens, cfg_scale=3.0),
            "judge": um.judge(images[:2], PROMPTS),
            "greedy_answers": um.answer(images[:2], QUESTIONS, max_new_tokens=4),
            "greedy_images": um.generate_images(PROMPTS, cfg_scale=2.0, temperature=0.0),
        }


@pytest.fixture(scope="module")
def editing_base(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with a sidecar that says it can edit: the merged one must say so too."""
    base = tmp_path_factory.mktemp("base") / "tiny"
    shutil.copytree(tiny_dir, base)
    sidecar = base / "unigap.json"
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"editing": True}))
    return base


@pytest.fixture(scope="module")
def adapter(editing_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(editing_base, tmp_path_factory.mktemp("adapter") / "adapter")


def test_merged_checkpoint_equals_base_plus_adapter(editing_base, adapter, images, tmp_path, capsys) -> None:
    out = tmp_path / "merged"
    code, stdout, _ = run_main(capsys, "merge", "--model", editing_base, "--adapter", adapter, "--out", out)
    assert code == 0 and stdout.strip() == str(out)

    adapted = load_model(editing_base)
    adapted.load_adapter(adapter)
    tokens = adapted.generate_images(PROMPTS, cfg_scale=2.0, temperature=1.0, seed=0)
    expected = outputs(adapted, images, tokens)
    merged = load_model(out)
    assert merged.peft is None and merged.supports_editing and merged.prompts.template == "tiny"
    assert read_sidecar(out) == read_sidecar(editing_base)
    got = outputs(merged, images, tokens)
    for key in ("answer_logprobs", "image_token_logprobs", "judge"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4)
    assert got["greedy_answers"] == expected["greedy_answers"]
    assert torch.equal(got["greedy_images"], expected["greedy_images"])
    with adapted.adapters_disabled() as base:  # the adapter matters: merging it changed the outputs
        assert not torch.allclose(outputs(base, images, tokens)["image_token_logprobs"], got["image_token_logprobs"])

    plain = JanusForConditionalGeneration.from_pretrained(out)  # transformers alone
    assert not [name for name in plain.state_dict() if "lora" in name or "modules_to_save" in name]
    for name, tensor in merged.model.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[name], tensor)
    assert json.loads((out / "manifest.json").read_text())["config"]["adapter"] == str(adapter)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    Image.new("RGB", (64, 64), "white").save(tmp_path / "white.png")
    code, _, err = run_main(capsys, "ask", "--model", out, "--adapter", adapter, "--image", tmp_path / "white.png",
                            "--question", "How many objects are there?")  # the adapter again would apply it twice
    assert code == 2 and f"already has the adapter {adapter} merged into its weights" in err
    (adapter / "eval.json").write_text("{}")  # an output written beside the adapter since: still the same adapter
    code, _, err = run_main(capsys, "ask", "--model", out, "--adapter", adapter, "--image", tmp_path / "white.png",
                            "--question", "How many objects are there?")
    assert code == 2 and "merged into its weights" in err
    other = make_adapter(editing_base, tmp_path / "other", seed=1)  # merged over the merge: the first still known
    assert run_main(capsys, "merge", "--model", out, "--adapter", other, "--out", tmp_path / "merged2")[0] == 0
    for merged_in in (adapter, other):
        code, _, err = run_main(capsys, "merge", "--model", tmp_path / "merged2", "--adapter", merged_in, "--out",
                                tmp_path / "merged3")
        assert code == 2 and f"already has the adapter {merged_in} merged into its weights" in err
    record = (tmp_path / "merged2" / "manifest.json").read_text()  # soups written there replaced that record
    code, _, err = run_main(capsys, "merge", "--und", adapter, "--gen", other, "--out", tmp_path / "merged2")
    assert code == 2 and "holds a checkpoint `merge --model --adapter` wrote" in err
    assert (tmp_path / "merged2" / "manifest.json").read_text() == record


def test_merged_checkpoint_keeps_the_base_dtype_and_files(tiny_dir, tmp_path) -> None:
    adapter = make_adapter(tiny_dir, tmp_path / "adapter", seed=1)
    um = load_model(tiny_dir)
    um.load_adapter(adapter)
    out = save_merged(um, tiny_dir, tmp_path / "merged")
    assert um.peft is None  # `um` is now the merged model
    base_files = {p.name for p in tiny_dir.iterdir()}
    assert base_files <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert (out / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_merging_a_model_loaded_narrower_than_its_base_is_stored_is_refused(tiny_dir, tmp_path) -> None:
    """`load_model` defaults to bf16 on a GPU: `save_merged` then wrote every fp32 base weight's bf16 rounding as
    float32, and turned the caller's model to float32."""
    adapter = make_adapter(tiny_dir, tmp_path / "adapter", seed=1)
    um = load_model(tiny_dir, dtype="bfloat16")
    um.load_adapter(adapter)
    with pytest.raises(UserError, match="loaded in bfloat16, but .* stores float32: .* dtype='float32'"):
        save_merged(um, tiny_dir, tmp_path / "merged")
    assert um.peft is not None and um.dtype == torch.bfloat16 and not (tmp_path / "merged").exists()  # untouched


def test_a_merge_where_the_default_dtype_is_bf16_keeps_an_fp32_base_whole(editing_base, adapter, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    """On a GPU the default load is bf16: an fp32 base merged there was written back as fp32 copies of its bf16
    rounding (every weight, the VQ included), no longer what base + adapter computes."""
    from safetensors.torch import load_file

    from unigap.model import loading

    real = loading.default_device_and_dtype
    monkeypatch.setattr(loading, "default_device_and_dtype",  # what a CUDA machine picks when told nothing
                        lambda device, dtype: real(device, torch.bfloat16 if dtype is None else dtype))
    out = tmp_path / "merged"
    code, _, _ = run_main(capsys, "merge", "--model", editing_base, "--adapter", adapter, "--out", out)
    base, merged = load_file(editing_base / "model.safetensors"), load_file(out / "model.safetensors")
    vq = [name for name in base if name.startswith("model.vqmodel.")]
    assert code == 0 and vq and all(torch.equal(merged[name], base[name]) for name in vq)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "BASE", "--adapter", "ADAPTER", "--und", "ADAPTER", "--out", "OUT"], "not both"),
        (["--out", "OUT"], "none was given"),
        (["--model", "BASE", "--out", "OUT"], "needs both --model and --adapter"),
        (["--gen", "ADAPTER", "--out", "OUT"], "need both --und and --gen"),
        (["--model", "BASE", "--adapter", "ADAPTER", "--lambda", 0.5, "--out", "OUT"], "--lambda applies to"),
        (["--model", "BASE", "--adapter", "BASE", "--out", "OUT"], "no PEFT adapter"),
        (["--model", "BASE", "--adapter", "ADAPTER", "--out", "FULL"], "exists and is not empty"),
        (["--model", "BASE", "--adapter", "ADAPTER", "--out", "FULL/config.json/x"], "is a file"),
    ],
)
def test_merge_mistakes_exit_2_with_one_line(editing_base, adapter, tmp_path, capsys, args, message) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    names = {"BASE": editing_base, "ADAPTER": adapter, "OUT": tmp_path / "out", "FULL": tmp_path / "full"}
    filled = [str(a) for a in args]
    for name, value in names.items():
        filled = [a.replace(name, str(value), 1) if a.startswith(name) else a for a in filled]
    code, _, err = run_main(capsys, "merge", *filled)
    assert code == 2 and err.startswith("unigap: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary directory left either


def test_an_interrupted_merge_leaves_nothing(editing_base, adapter, tmp_path, monkeypatch) -> None:
    um = load_model(editing_base)
    um.load_adapter(adapter)

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(JanusForConditionalGeneration, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        save_merged(um, editing_base, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_met_by_the_merge_is_the_storage_error_of_every_writer(editing_base, adapter, tmp_path,
                                                                            monkeypatch, capsys) -> None:
    """safetensors raises its own SafetensorError for a failed write, which printed a traceback (exit 1) where every
    other writer's full disk is one line."""
    from safetensors import SafetensorError

    def full(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No "
                              "space left on device\" }) No space left on device (os error 28)")

    monkeypatch.setattr(JanusForConditionalGeneration, "save_pretrained", full)
    code, _, err = run_main(capsys, "merge", "--model", editing_base, "--adapter", adapter, "--out", tmp_path / "m")
    lines = [line for line in err.splitlines() if line.startswith("unigap:")]
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("text", "message"), [("{", "is not valid JSON"), ("[]", "must hold a JSON object, got list")])
def test_a_sidecar_that_is_no_json_object_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    """(A list raised AttributeError from `setdefault`.)"""
    from unigap.errors import UserError

    (tmp_path / "unigap.json").write_text(text)
    with pytest.raises(UserError, match=message):
        read_sidecar(tmp_path)
