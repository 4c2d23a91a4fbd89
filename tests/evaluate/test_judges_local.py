"""Local judges (`clip:DIR`, `vlm:DIR`) on tiny random checkpoints built here, and `--judge` in eval, the
self-improvement audit and refine: scores in [0, 1], a finite calibrated threshold, reports that name the judge, and
a bad directory as one line with nothing written."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import unigap.world as world
from unigap.cli import main
from unigap.errors import UserError
from unigap.evaluate.judges import _local_judge, get_judge
from unigap.evaluate.local_judges import balanced_threshold, calibration_set
from unigap.model.checkpoint import weights_fingerprint
from unigap.refine import RefineConfig, run_refine
from unigap.selfimprove import SelfImproveConfig
from unigap.selfimprove.pool import Sample, audit
from unigap.world import split_prompts

IMAGE = "<image>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' }}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def byte_tokenizer(append_eos: bool, extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges (every byte a token): any text, offline, in milliseconds."""
    specials = ["<bos>", "<eos>", "<pad>", *extra]
    vocab = {token: i for i, token in enumerate([*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    single = "<bos> $A <eos>" if append_eos else "<bos> $A"  # CLIP pools at EOS; a causal LM continues the prompt
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<bos>", 0), ("<eos>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", model_max_length=128)
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra)})
    return tokenizer


def test_the_vlm_judge_reads_one_token_spellings_where_a_tokenizer_has_them() -> None:
    """With " yes", " no" and " No" merged but "Yes" and " Yes" not, the yes side held "Ġ" and "Y" (every word
    after a space, or starting with Y): only one-token spellings count where both words have some."""
    from unigap.evaluate.local_judges import answer_token_ids

    tokenizer = byte_tokenizer(append_eos=False)
    merged = {}
    for word in ("yes", "no", "No"):  # (" yes" as one token: Ġ, Ġy, Ġye, Ġyes)
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        piece = "Ġ"
        for ch in word:
            backend["model"]["merges"].append([piece, ch])
            piece += ch
            backend["model"]["vocab"].setdefault(piece, len(backend["model"]["vocab"]))
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
                                            bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
        merged[word] = tokenizer.convert_tokens_to_ids(piece)
    yes, no = answer_token_ids(tokenizer)
    assert yes == [merged["yes"]] and no == sorted([merged["no"], merged["No"]])
    yes, no = answer_token_ids(byte_tokenizer(append_eos=False))  # (no merges at all: the first bytes, as before)
    assert [byte_tokenizer(append_eos=False).convert_ids_to_tokens(ids) for ids in (yes, no)] == [["Y", "y"],
                                                                                                 ["N", "n"]]


def _image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _vision() -> dict:
    return dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                patch_size=8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("clip")
    tokenizer = byte_tokenizer(append_eos=True)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=_vision(), projection_dim=8)).save_pretrained(directory)
    CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("llava")
    tokenizer = byte_tokenizer(append_eos=False, extra=(IMAGE,))
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0,
                       eos_token_id=1, pad_token_id=2)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**_vision()), text_config=text, vision_feature_layer=-1,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE))
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    LlavaProcessor(image_processor=_image_processor(), tokenizer=tokenizer, patch_size=8, chat_template=CHAT_TEMPLATE,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pairs() -> tuple[list[Image.Image], list[world.PromptSpec]]:
    specs_scenes = world.sample_records(6, 0, "val")
    return [world.render_pil(scene) for _, scene in specs_scenes], [spec for spec, _ in specs_scenes]


def run_main(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_balanced_threshold_separates_and_survives_degenerate_scores() -> None:
    threshold, balanced = balanced_threshold([0.8, 0.9, 0.7], [0.1, 0.2, 0.75])
    assert 0.2 < threshold <= 0.7 and balanced == pytest.approx(5 / 6)
    threshold, balanced = balanced_threshold([0.9, 0.8], [0.1, 0.2])
    assert 0.2 < threshold < 0.8 and balanced == 1.0
    for degenerate in ([0.0] * 4, [float("nan")] * 4):  # a random CLIP: every score equal, or NaN
        threshold, balanced = balanced_threshold(degenerate, degenerate)
        assert math.isfinite(threshold) and balanced == 0.5


def test_calibration_pairs_are_true_prompts_against_near_misses() -> None:
    images, true, miss = calibration_set(20, seed=3)
    assert len(images) == len(true) == len(miss) > 10 and all(t != m for t, m in zip(true, miss, strict=True))
    assert calibration_set(20, seed=3)[2] == miss  # seeded
    train = {spec.text for spec in split_prompts("train", 0)}
    assert set(true) <= train and set(miss) <= train  # never a prompt an evaluation (val or test) asks about
    assert len(calibration_set(200)[0]) > 120  # (a train near miss exists for most renders)


def test_clip_judge_scores_are_in_unit_range_deterministic_and_calibrated(clip_dir, pairs) -> None:
    images, specs = pairs
    judge = get_judge(f"clip:{clip_dir}", independent=True)
    scores = judge.fn(None, images, specs)
    assert len(scores) == len(images) and all(0.0 <= s <= 1.0 for s in scores)
    assert judge.fn(None, images, specs) == scores
    assert judge.fn(None, images, [s.text for s in specs]) == scores  # free text works as well as specs
    description = json.loads(json.dumps(judge.describe()))
    assert description["name"] == f"clip:{clip_dir}" and description["directory"] == str(clip_dir.resolve())
    assert math.isfinite(description["threshold"]) and 0.0 <= description["threshold"] <= 1.0
    calibration = description["calibration"]
    assert calibration["pairs"] > 100 and calibration["split"] == "train"
    assert 0.5 <= calibration["balanced_accuracy"] <= 1.0 and 0.0 <= calibration["auc"] <= 1.0
    assert get_judge(f"clip:{clip_dir}") is judge  # loaded and calibrated once per process


def test_a_clip_judge_at_chance_on_the_calibration_pairs_is_warned_about(clip_dir) -> None:
    """A random CLIP scores every render alike: its threshold accepts everything, so its accuracy would read 1.0."""
    from unigap.errors import UnigapWarning
    from unigap.evaluate.judges import _clip_judge

    with pytest.warns(UnigapWarning, match=r"no better than chance \(AUC 0\.50 over \d+ pairs\)"):
        judge = _clip_judge("clip:random", clip_dir)
    assert judge.calibration["auc"] == pytest.approx(0.5, abs=0.01)


def test_vlm_judge_gives_p_yes(vlm_dir, pairs) -> None:
    images, specs = pairs
    judge = get_judge(f"vlm:{vlm_dir}", independent=True)
    scores = judge.fn(None, images, specs)
    assert len(scores) == len(images) and all(0.0 < s < 1.0 for s in scores)
    assert judge.fn(None, images, specs) == pytest.approx(scores)
    assert judge.fn(None, images[:1], specs[:1]) == pytest.approx(scores[:1], abs=1e-5)  # padding changes nothing
    assert judge.describe() == {"name": f"vlm:{vlm_dir}", "directory": str(vlm_dir.resolve()), "threshold": 0.5,
                                "version": 1, "weights": weights_fingerprint(vlm_dir)}  # which VLM, wherever it is


def test_a_vlm_judge_whose_processor_reads_a_flat_list_as_one_prompts_images_judges_a_batch(tmp_path, pairs) -> None:
    """Mllama's (and Gemma 3's, SmolVLM's) processor took the batch's images as one prompt's and raised on the first
    batch of two; the judge loaded, since its check judged one image."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor
    from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig

    tokenizer = byte_tokenizer(append_eos=False, extra=("<|image|>", "<|python_tag|>"))
    vision = MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                                attention_heads=2, image_size=56, patch_size=14, max_num_tiles=1, vision_output_dim=64,
                                intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]])
    text = MllamaTextConfig(vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, cross_attention_layers=[1],
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=1, bos_token_id=0)
    torch.manual_seed(0)
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    MllamaForConditionalGeneration(config).save_pretrained(tmp_path)
    MllamaProcessor(image_processor=MllamaImageProcessor(size={"height": 56, "width": 56}, max_image_tiles=1),
                    tokenizer=tokenizer).save_pretrained(tmp_path)
    images, specs = pairs
    judge = get_judge(f"vlm:{tmp_path}", independent=True)
    scores = judge.fn(None, images[:3], specs[:3])
    assert len(scores) == 3 and all(0.0 < s < 1.0 for s in scores)
    assert [judge.fn(None, [image], [spec])[0] for image, spec in zip(images[:3], specs[:3])] == pytest.approx(
        scores, abs=1e-5)


def test_clip_judge_scores_are_the_clip_models_own_cosine(clip_dir, pairs) -> None:
    """Against CLIP's forward pass, one pair at a time: logits_per_image / logit_scale is the cosine."""
    images, specs = pairs
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    expected = []
    for image, spec in zip(images, specs, strict=True):
        with torch.no_grad():
            out = model(**processor(text=[spec.text], images=[image.convert("RGB")], return_tensors="pt"))
        expected.append(max(float(out.logits_per_image[0, 0] / model.logit_scale.exp()), 0.0))
    assert get_judge(f"clip:{clip_dir}").fn(None, images, specs) == pytest.approx(expected, abs=1e-5)


def test_vlm_judge_p_yes_is_the_models_next_token_odds_of_yes_against_no(vlm_dir, pairs) -> None:
    """Against the VLM's forward pass on each question alone (no padding): P(y or Y) / P(y, Y, n or N) of the first
    answer token (byte tokens here; " yes" and " no" share their first byte, which tells nothing apart)."""
    from unigap.model.prompts import judge_question

    images, specs = pairs
    model, processor = LlavaForConditionalGeneration.from_pretrained(vlm_dir).eval(), LlavaProcessor.from_pretrained(
        vlm_dir)
    yes, no = (processor.tokenizer.convert_tokens_to_ids(list(letters)) for letters in ("yY", "nN"))
    expected = []
    for image, spec in zip(images, specs, strict=True):
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": judge_question(spec.text)}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        with torch.no_grad():
            logits = model(**processor(images=[image.convert("RGB")], text=[text], return_tensors="pt")).logits
        lp = logits[0, -1].float().log_softmax(-1)
        expected.append(float(torch.sigmoid(lp[yes].logsumexp(-1) - lp[no].logsumexp(-1))))
    assert get_judge(f"vlm:{vlm_dir}").fn(None, images, specs) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name, message", [
    ("clip:/nonexistent", "does not exist"),
    ("clip:", "needs a directory"),
    ("vlm:CLIP", "cannot load a vlm judge"),
    ("clip:VLM", "not a CLIP or SigLIP model"),
    ("vlm:TEXT_ONLY", "cannot load a vlm judge"),
    ("clip:POINTER", "cannot read the weights of the clip judge in .* \\(incomplete or corrupt\\?\\)"),
    ("sam:/x", "unknown judge"),
])
def test_a_bad_judge_is_one_user_error(clip_dir, vlm_dir, tmp_path, name, message) -> None:
    text_only = tmp_path / "text-only"  # a chat template that cannot take an image part fails at load, not mid-run
    shutil.copytree(vlm_dir, text_only)
    (text_only / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}")
    pointer = tmp_path / "lfs-pointer"  # a clone without `git lfs pull`: a pointer where the weights should be
    shutil.copytree(clip_dir, pointer)
    (pointer / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    name = name.replace("CLIP", str(clip_dir)).replace("VLM", str(vlm_dir)).replace("TEXT_ONLY", str(text_only))
    name = name.replace("POINTER", str(pointer))
    with pytest.raises(UserError, match=message) as info:
        get_judge(name)
    assert "\n" not in str(info.value)


def test_eval_with_a_clip_judge_records_it(tiny_dir, clip_dir, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    code, stdout, _ = run_main(capsys, ["eval", "--model", tiny_dir, "--judge", f"clip:{clip_dir}", "--n", 4,
                                        "--batch-size", 4, "--out", out])
    assert code == 0 and f"generation accuracy by clip:{clip_dir}" in stdout
    report = json.loads(out.read_text())
    judge = report["config"]["judge"]
    assert judge["directory"] == str(clip_dir.resolve()) and math.isfinite(judge["threshold"])
    assert "balanced_accuracy" in judge["calibration"] and report["manifest"]["judge"] == judge
    judged = report["judged_generation"]
    assert judged["n"] == 4 and 0 <= judged["accuracy"] <= 1 and judged["mean_clipscore"]["n"] == 4
    assert judged["mean_clipscore_100"]["mean"] == pytest.approx(40 * judged["mean_clipscore"]["mean"])  # the paper's
    assert report["generation"]["n"] == 4  # the verifier still reports on ShapeWorld prompts
    assert all(0 <= r["judge_score"] <= 1 for r in report["records"]["generation"])


def test_free_text_prompts_need_a_text_judge(tiny_dir, clip_dir, tmp_path, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle", "tag": "single_object"}\n{"prompt": "a photo of a cat"}\n')
    out = tmp_path / "eval.json"
    code, _, err = run_main(capsys, ["eval", "--model", tiny_dir, "--prompts", prompts, "--n", 2, "--out", out])
    assert code == 2 and f"{prompts}:2:" in err and "--judge clip:DIR or vlm:DIR" in err and not out.exists()
    code, _, err = run_main(capsys, ["eval", "--model", tiny_dir, "--prompts", prompts, "--judge", f"clip:{clip_dir}",
                                     "--n", 2, "--batch-size", 2, "--out", out])
    assert code == 0, err
    report = json.loads(out.read_text())
    records = report["records"]["generation"]
    assert [r["category"] for r in records] == ["colors", "free"] and records[1]["verified"] is None
    assert report["generation"]["n"] == 1 and report["judged_generation"]["n"] == 2  # the verifier reads one
    assert report["judged_generation"]["by_category"]["free"]["n"] == 1
    weak = report["judged_generation"]["weak_generation"]  # (the verifier's leaves the free-text image out)
    rejected = [r for r in records if r["self_rejected"]]
    assert weak["n"] == len(rejected) and "ci95" in weak
    assert weak["rate"] == (sum(not r["judge_accepted"] for r in rejected) / len(rejected) if rejected else None)


def test_eval_defaults_to_the_verifier(stub_factory) -> None:
    from unigap.evaluate import evaluate

    stub = stub_factory()
    stub.answer = lambda images, questions, **_: ["yes"] * len(questions)
    report = evaluate(stub, 4, 0, batch_size=4, critique=False, progress=False)
    assert report["config"]["judge"] == {"name": "verifier", "directory": None, "threshold": 0.5, "version": 1}
    assert "judged_generation" not in report


@pytest.mark.parametrize("judge, message", [("clip:/nonexistent", "does not exist"), ("self-pyes", "the model's own judge, not an independent one")])
def test_eval_with_a_bad_judge_exits_2_and_writes_nothing(tiny_dir, tmp_path, capsys, judge, message) -> None:
    out = tmp_path / "sub" / "eval.json"
    code, _, err = run_main(capsys, ["eval", "--model", tiny_dir, "--judge", judge, "--n", 2, "--out", out])
    assert code == 2 and err.startswith("unigap: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "sub").exists()


def test_the_selfimprove_audit_uses_a_clip_judge_and_its_threshold(clip_dir, pairs) -> None:
    images, specs = pairs
    config = SelfImproveConfig(audit=f"clip:{clip_dir}", audit_size=4)
    samples = [Sample(i, spec, (0,), 0.9, True, None) for i, spec in enumerate(specs)]
    audited = audit(samples, images, config, round_=0)
    judge = get_judge(config.audit)
    scores = judge.fn(None, images, specs)
    marked = [(s.audit, score) for s, score in zip(audited, scores, strict=True) if s.audit is not None]
    assert len(marked) == 4 and all(verdict == (score >= judge.threshold) for verdict, score in marked)
    with pytest.raises(UserError, match="or none"):
        SelfImproveConfig(audit="self-pyes")


def test_selfimprove_trains_on_free_text_audited_by_a_clip_judge(tiny_dir, clip_dir, tmp_path) -> None:
    from unigap.model import load_model
    from unigap.selfimprove import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na blue circle\n")
    config = SelfImproveConfig(prompts=str(prompts), audit=f"clip:{clip_dir}", method="sft", n_prompts=2, samples=2,
                               epochs=1, eval_n=0, epoch_eval_n=0, audit_size=4, batch_size=2, guard=False)
    result = run(load_model(tiny_dir), config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "pool" / "round0.jsonl").read_text().splitlines()]
    assert result["audits"][0]["audited"] == 4 and all(row["audit"] is not None for row in rows)
    assert [row["category"] for row in rows] == ["free", "free", "colors", "colors"]
    assert result["config"]["judge"]["directory"] == str(clip_dir.resolve())


def test_verifier_labels_on_free_text_are_the_independent_judges_verdicts(tiny_dir, clip_dir, tmp_path) -> None:
    """`--labels verifier` labels by the independent judge (`--judge`): a CLIP on a real checkpoint's free text, the
    paper's external-judge variant. It always called the ShapeWorld verifier, which reads no free text."""
    from unigap.model import load_model
    from unigap.selfimprove import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na blue circle\n")
    config = SelfImproveConfig(prompts=str(prompts), audit=f"clip:{clip_dir}", labels="verifier", method="sft",
                               n_prompts=2, samples=2, epochs=1, eval_n=0, epoch_eval_n=0, audit_size=4,
                               batch_size=2, guard=False)
    run(load_model(tiny_dir), config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "pool" / "round0.jsonl").read_text().splitlines()]
    assert [row["category"] for row in rows] == ["free", "free", "colors", "colors"]
    assert [row["accepted"] for row in rows] == [row["audit"] for row in rows]  # labels = the judge's verdicts


def test_selfimprove_with_a_bad_audit_directory_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["selfimprove", "--audit", "vlm:/nonexistent", "--out", out])
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err and not out.exists()


class Repeating:
    """The evaluation stub with `n_per_prompt` (best-of-N draws several images per prompt)."""

    supports_editing = True

    def __init__(self, stub) -> None:
        self.stub = stub

    def generate_images(self, prompts, n_per_prompt=1, cfg_scale=5.0, temperature=1.0, seed=None):
        return self.stub.generate_images([p for p in prompts for _ in range(n_per_prompt)], 1, cfg_scale, temperature,
                                         seed)

    def __getattr__(self, name):
        return getattr(self.stub, name)


def test_refine_reports_accuracy_by_a_clip_judge(editing_stub, clip_dir, tmp_path, capsys) -> None:
    config = RefineConfig(n=4, rounds=1, judge=f"clip:{clip_dir}")
    report = run_refine(Repeating(editing_stub), config, tmp_path / "run", progress=False)
    assert report["config"]["judge"]["directory"] == str(clip_dir.resolve())
    judged = report["judged"]
    assert [r["round"] for r in judged["rounds"]] == [0, 1] and judged["rounds"][0]["n"] == 4
    assert judged["best_of_n"]["n"] == 4 and 0 <= judged["oracle"]["accuracy"] <= 1
    assert "judged" not in run_refine(Repeating(editing_stub), RefineConfig(n=4, rounds=1), tmp_path / "plain",
                                      progress=False)
    code, _, err = run_main(capsys, ["refine", "--judge", "clip:/nonexistent", "--n", 2, "--out", tmp_path / "bad"])
    assert code == 2 and "does not exist" in err and not (tmp_path / "bad").exists()


def test_refine_reads_free_text_with_a_clip_judge(tiny_dir, clip_dir, tmp_path, capsys, monkeypatch) -> None:
    """The verifier reads the ShapeWorld prompt and leaves the free text to the judge; the oracle instructs on the
    ShapeWorld prompt and stops the free text; a file of free text alone is reported by the judge; a resumed run from
    an earlier version's parts is refused in one line."""
    monkeypatch.setenv("COLUMNS", "400")  # rich's table on one line per row
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na photo of a cat\n")
    args = ["refine", "--model", tiny_dir, "--prompts", prompts, "--n", 2, "--rounds", 1, "--batch-size", 2]
    code, _, err = run_main(capsys, [*args, "--out", tmp_path / "refused"])
    assert code == 2 and f"{prompts}:2:" in err and "--judge clip:DIR or vlm:DIR" in err
    assert not (tmp_path / "refused").exists()
    judge = ["--judge", f"clip:{clip_dir}"]

    code, out, err = run_main(capsys, [*args, *judge, "--out", tmp_path / "mixed"])
    assert code == 0, err
    report = json.loads((tmp_path / "mixed" / "refine.json").read_text())
    judged = report["judged"]
    assert report["rounds"][0]["n"] == 1 and judged["rounds"][0]["n"] == 2  # the verifier reads one prompt
    assert judged["rounds"][0]["by_category"]["free"]["n"] == 1 and judged["gain"]["n"] == 2
    assert report["best_of_n"]["n"] == 1 and judged["best_of_n"]["n"] == 2
    assert report["oracle"]["rounds"][0]["n"] == 1 and judged["oracle"]["n"] == 2  # it stops the free text at once
    oracle = json.loads((tmp_path / "mixed" / "parts" / "oracle.json").read_text())["records"]
    assert oracle[1]["stop_round"] == 1 and oracle[1]["reflections"] == ["no further edit needed"]
    for key in ("verified", "judged"):  # the same round-0 images as the loop's: the same batches and seeds
        assert [r[key][0] for r in oracle] == [r[key][0] for r in report["records"]]
    assert [r["verified"][0] is None for r in report["records"]] == [False, True]
    assert all(len(r["judged"]) == len(r["verified"]) for r in report["records"])
    assert f"by clip:{clip_dir}" in out and "judged by verifier" in out  # the judge's column beside the verifier's

    prompts.write_text("a photo of a cat\n")
    code, out, err = run_main(capsys, [*args, *judge, "--out", tmp_path / "free"])
    assert code == 0, err
    report = json.loads((tmp_path / "free" / "refine.json").read_text())
    assert report["oracle"] is None and "no ShapeWorld prompt" in report["oracle_skipped"]
    assert report["rounds"][0]["accuracy"] is None and report["judged"]["rounds"][0]["n"] == 1
    token = tmp_path / "token.txt"  # free text the model cannot take: refused before any work
    token.write_text("a photo of a cat\na cat <begin_of_image>\n")
    code, _, err = run_main(capsys, [*args[:4], token, *args[5:], *judge, "--out", tmp_path / "token"])
    assert code == 2 and f"{token}:2: generation prompts must not contain image tokens" in err
    assert not (tmp_path / "token").exists()
    assert "judged by clip:" in " ".join(out.split())  # the table reports the judge's numbers (its title wraps)

    part = tmp_path / "free" / "parts" / "self.json"
    part.write_text(json.dumps({k: v for k, v in json.loads(part.read_text()).items() if k != "judged"}))
    code, _, err = run_main(capsys, [*args, *judge, "--out", tmp_path / "free", "--resume"])
    assert code == 2 and "earlier unigap" in err


@pytest.fixture(scope="module")
def janus_pro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unigap.model import save_random_janus_pro

    return save_random_janus_pro(tmp_path_factory.mktemp("janus-pro"))


@pytest.mark.slow
def test_free_text_on_janus_pro_geometry(janus_pro_dir, clip_dir, tmp_path, capsys) -> None:
    """A real checkpoint's shape (384 px, 576 tokens, regenerate refiner): refine, gen-model pairs and selfimprove
    (bf16 autocast, gradient checkpointing) on a prompt file with free text, graded by a local CLIP."""
    from unigap.model import load_model
    from unigap.selfimprove import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na blue circle\n")
    code, _, err = run_main(capsys, ["refine", "--model", janus_pro_dir, "--prompts", prompts, "--n", 2, "--rounds", 1,
                                     "--batch-size", 2, "--judge", f"clip:{clip_dir}", "--out", tmp_path / "refine"])
    assert code == 0, err
    report = json.loads((tmp_path / "refine" / "refine.json").read_text())
    assert report["config"]["refiner_used"] == "regenerate" and report["judged"]["rounds"][1]["n"] == 2
    assert report["rounds"][0]["n"] == 1 and report["oracle"]["rounds"][0]["n"] == 1

    pairs = tmp_path / "pairs.jsonl"
    code, _, err = run_main(capsys, ["prefs", "build", "--model", janus_pro_dir, "--kind", "gen-model", "--prompts",
                                     prompts, "--judge", f"clip:{clip_dir}", "--n", 2, "--out", pairs])
    # a random CLIP may accept both images or neither: then nothing passes, said in one line
    assert (code == 0 and "clip" in pairs.read_text()) or (code == 2 and "no gen-model pair passed" in err), err

    # poor labels (the judge inverted): the random model's own judge accepts none of its images, so nothing would train
    config = SelfImproveConfig(prompts=str(prompts), audit=f"clip:{clip_dir}", method="sft", labels="poor", n_prompts=2,
                               samples=2, epochs=1, eval_n=0, epoch_eval_n=0, audit_size=4, batch_size=2, guard=False,
                               bf16=True, gradient_checkpointing=True)
    result = run(load_model(janus_pro_dir), config, tmp_path / "si", progress=False)
    assert result["audits"][0]["audited"] == 4 and math.isfinite(result["epochs"][1]["loss"])
    assert (tmp_path / "si" / "adapter" / "adapter_config.json").is_file()


def test_a_local_judge_goes_where_the_model_would_not_to_gpu_0(monkeypatch) -> None:
    """Under `accelerate launch` every process put its judge on "cuda", the current device: GPU 0 for all of them."""
    from unigap.evaluate import local_judges
    from unigap.model import loading

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (the real rule runs: only the probe is stubbed)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: real_empty(*a, **k))
    assert local_judges._device() == loading.default_device_and_dtype(None, None)[0] == torch.device("cuda:3")


def test_a_resume_under_other_judge_weights_in_the_same_folder_is_refused(tiny_dir, clip_dir, tmp_path,
                                                                          capsys) -> None:
    """Only the judge's name ("clip:DIR") was compared: a resume after the folder's model changed mixed two judges'
    verdicts in one refine.json (and in GRPO's reward, the self-improvement audit)."""
    judge = tmp_path / "clip"
    shutil.copytree(clip_dir, judge)
    args = ["refine", "--model", tiny_dir, "--n", 2, "--rounds", 0, "--judge", f"clip:{judge}", "--out", tmp_path / "r"]
    code, _, err = run_main(capsys, args)
    assert code in (0, None), err
    code, _, err = run_main(capsys, [*args, "--resume"])  # the same judge: continues (here: nothing left to do)
    assert code in (0, None), err
    torch.manual_seed(1)
    model = CLIPModel.from_pretrained(judge)
    with torch.no_grad():
        model.logit_scale.add_(1.0)
    model.save_pretrained(judge)
    _local_judge.cache_clear()  # (a process loads each judge once: a resume is a new process)
    code, _, err = run_main(capsys, [*args, "--resume"])
    assert code == 2 and "holds a refine run under other inputs" in err and "judge_weights" in err
