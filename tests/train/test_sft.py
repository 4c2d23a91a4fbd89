"""`unigap train --objective sft`: both tasks from users' files in one LoRA run, the token cache, resume, and user
mistakes (one line, exit 2, nothing written)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from test_train_cli import run_main
from unigap.errors import UserError
from unigap.model import load_model
from unigap.train import sft, sft_data
from unigap.train.sft_data import TOKEN_CACHE, SFTConfig, read_sft_data, train_sft
from unigap.world.dataset import write_dataset

SMALL = "lora_rank = 4\nlora_alpha = 8\ncheckpoint_every = 2\nbatch_size = 4\n"
HEAD = "base_model.model.model.generation_head."


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_dataset(root, 12, 0, "train", questions=2)
    (root / "small.toml").write_text(SMALL)
    return root


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_both_tasks_in_one_run(tiny_dir: Path, world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, _ = run_main(capsys, ["train", "--model", str(tiny_dir), "--objective", "sft", "--und-data",
                                        str(world / "questions.jsonl"), "--gen-data", str(world / "samples.jsonl"),
                                        "--steps", "3", "--config", str(world / "small.toml"), "--out", str(out)])
    assert code == 0 and "24 understanding, 12 generation examples" in stdout
    rows = _log(out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["loss"] == pytest.approx(rows[0]["und/loss"] + rows[0]["gen/loss"])
    assert (out / "adapter_model.safetensors").is_file() and (out / TOKEN_CACHE).is_file()
    ids = load_file(out / TOKEN_CACHE)["ids"]
    um = load_model(tiny_dir)
    assert ids.shape == (12, um.num_image_tokens)
    config = json.loads((out / "train_config.json").read_text())
    assert config["und_data"].endswith("questions.jsonl") and config["lora_rank"] == 4


def test_data_named_in_the_config_file_is_claimed_by_content(tiny_dir: Path, world: Path, tmp_path: Path, capsys,
                                                                monkeypatch) -> None:
    """A resumed run is compared with the files it read, wherever they were named: a --config file's data too."""
    import unigap.cli.train as train_cli

    claimed: list[dict] = []

    def stop(out, what, model, contents=None, **data):
        claimed.append(data)
        raise UserError("stop here")

    monkeypatch.setattr(train_cli, "inputs_claimed", stop)
    toml = tmp_path / "data.toml"
    data = world / "samples.jsonl"
    toml.write_text(world.joinpath("small.toml").read_text() + f"gen_data = {json.dumps(str(data))}\n")
    code, _, _ = run_main(capsys, ["train", "--model", str(tiny_dir), "--objective", "sft", "--config", str(toml),
                                   "--out", str(tmp_path / "run")])
    assert code == 2 and claimed == [{"und_data": None, "gen_data": str(data)}]


def test_a_resume_after_an_image_was_edited_in_place_is_refused(tiny_dir: Path, world: Path, tmp_path: Path,
                                                                capsys) -> None:
    """The data file's hash misses an image it names by path: edited in place, the steps after a resume trained on
    other pictures than the steps before."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world, data)
    args = ["train", "--model", str(tiny_dir), "--objective", "sft", "--gen-data", str(data / "samples.jsonl"),
            "--steps", "2", "--config", str(data / "small.toml"), "--out", str(tmp_path / "run")]
    assert run_main(capsys, args)[0] == 0
    image = sorted((data / "images").iterdir())[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    code, _, err = run_main(capsys, [*args, "--steps", "4", "--resume"])
    assert code == 2 and "under other inputs (compared by file name and content) (images: " in err


def test_generation_data_trains_the_head_understanding_data_does_not(tiny_dir: Path, world: Path,
                                                                       tmp_path: Path) -> None:
    base = load_model(tiny_dir).model.model.generation_head.state_dict()
    moved = {}
    for name, files in (("gen", {"gen_data": str(world / "samples.jsonl")}),
                        ("und", {"und_data": str(world / "questions.jsonl")})):
        config = SFTConfig(steps=2, lora_rank=4, lora_alpha=8, batch_size=2, **files)
        train_sft(load_model(tiny_dir), config, tmp_path / name, show_progress=False)
        adapter = load_file(tmp_path / name / "adapter_model.safetensors")
        moved[name] = any(not torch.equal(adapter[HEAD + key], value) for key, value in base.items())
        assert set(_log(tmp_path / name)[0]) == {"step", "lr", "loss", f"{name}/loss", "grad_norm"}
    assert moved == {"gen": True, "und": False}


def test_resume_reuses_the_token_cache_and_ends_where_a_whole_run_does(tiny_dir: Path, world: Path,
                                                                       tmp_path: Path) -> None:
    config = SFTConfig(steps=4, lora_rank=4, lora_alpha=8, batch_size=2, checkpoint_every=2,
                       gen_data=str(world / "samples.jsonl"), und_data=str(world / "questions.jsonl"))
    done = []
    train_sft(load_model(tiny_dir), config, tmp_path / "whole", show_progress=False,
              on_step=lambda step, record: done.append((step, "loss" in record)))
    assert done == [(1, True), (2, True), (3, True), (4, True)]  # (the study's bar: its sft arm trained in silence)

    def stop_at_3(step: int, record: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    um = load_model(tiny_dir)
    tasks = sft_data.sft_tasks(um, config, read_sft_data(config), tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        sft_data.SFTTrainer(um, config, tasks, tmp_path / "cut", "cut").train(on_step=stop_at_3)
    um = load_model(tiny_dir)
    encoded = []
    um.encode_images = lambda images: encoded.append(len(images))  # would break the run if it were called
    train_sft(um, config, tmp_path / "cut", resume=True, show_progress=False)
    assert encoded == []  # the images were not tokenized again
    whole, cut = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("whole", "cut"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_prompt_dropout_trains_a_share_of_image_rows_unconditionally(tiny_dir: Path, world: Path,
                                                                      tmp_path: Path) -> None:
    """The batch's rows do not depend on the dropout; the dropped share does; image losses change with it, answer
    losses do not (an answer task given every row dropped scores them as given none)."""
    rows = [sft.batch_rows(0, 1, step, 1000, 8, 0.25) for step in range(200)]
    assert all(np.array_equal(r, sft.batch_rows(0, 1, step, 1000, 8)[0]) for step, (r, _) in enumerate(rows))
    assert np.mean([d.mean() for _, d in rows]) == pytest.approx(0.25, abs=0.04)
    assert not any(sft.batch_rows(0, 1, step, 1000, 8)[1].any() for step in range(50))
    first = {}
    for dropout in (0.0, 0.99):
        config = SFTConfig(steps=1, lora_rank=4, lora_alpha=8, lora_dropout=0.0, batch_size=4, prompt_dropout=dropout,
                           gen_data=str(world / "samples.jsonl"), und_data=str(world / "questions.jsonl"))
        train_sft(load_model(tiny_dir), config, tmp_path / f"pd-{dropout}", show_progress=False)
        first[dropout] = _log(tmp_path / f"pd-{dropout}")[0]
    assert first[0.99]["gen/loss"] != pytest.approx(first[0.0]["gen/loss"], rel=1e-4)
    um, rows = load_model(tiny_dir), np.arange(3)
    task = sft.AnswerTask([np.zeros((64, 64, 3), np.uint8)] * 3, [["what colour is the circle?"]] * 3, [["red"]] * 3)
    with torch.no_grad():
        assert torch.equal(task.loss(um, rows, torch.ones(3, dtype=torch.bool))[0], task.loss(um, rows)[0])


def test_loss_cfg_scale_scores_images_under_the_samplers_mixture(tiny_dir: Path, world: Path) -> None:
    """`loss_cfg_scale` > 0: the generation loss is the image tokens' log-prob under CFG-mixed logits (what
    `generate_images` samples from), not the conditional one; refused below 0 and with prompt dropout."""
    files = {"gen_data": str(world / "samples.jsonl")}
    config = SFTConfig(loss_cfg_scale=5.0, **files)
    um, data, rows = load_model(tiny_dir), read_sft_data(config), np.arange(3)
    targets = sft.vq_tokens(um, [c.image for c in data.captions[:3]], 3)
    prompts = [c.prompt for c in data.captions[:3]]
    guided = sft.TextToImageTask(prompts, targets, config.loss_cfg_scale)
    plain = sft.TextToImageTask(prompts, targets)
    with torch.no_grad():
        want = -um.image_token_logprobs(prompts, targets, cfg_scale=5.0).mean(dim=-1).sum()
        assert torch.allclose(guided.loss(um, rows)[0], want)
        assert not torch.allclose(plain.loss(um, rows)[0], want)
    with pytest.raises(UserError, match="loss-cfg-scale must be a number from 0 to"):
        SFTConfig(loss_cfg_scale=-1.0, **files)
    with pytest.raises(UserError, match="prompt-dropout must be 0 with loss-cfg-scale"):
        SFTConfig(loss_cfg_scale=5.0, prompt_dropout=0.1, **files)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "sft"], "--objective sft needs --und-data, --gen-data or both"),
        (["--objective", "sft", "--und-data", "W/questions.jsonl", "--strategy", "joint"],
         "--strategy: for --objective dpo only"),
        (["--strategy", "joint", "--und-data", "W/questions.jsonl"], "--und-data: for --objective sft only"),
        (["--objective", "sft", "--gen-data", "W/missing.jsonl"], "data file not found"),
        (["--objective", "sft", "--gen-data", "W/bad.jsonl"], "bad.jsonl:2: needs a 'prompt' (or 'caption') column"),
        (["--objective", "sft", "--gen-data", "W/samples.jsonl", "--config", "W/weights.toml"],
         "nothing to train: every task with data has weight 0"),
    ],
)
def test_user_mistakes_exit_2_and_write_nothing(tiny_dir: Path, world: Path, tmp_path: Path, capsys, args,
                                                message) -> None:
    (world / "bad.jsonl").write_text('{"image": "images/000000.png", "prompt": "a red circle"}\n'
                                     '{"image": "images/000000.png"}\n')
    (world / "weights.toml").write_text("gen_weight = 0.0\n")
    out = tmp_path / "run"
    args = [a.replace("W/", f"{world}/") for a in args]
    code, _, err = run_main(capsys, ["train", "--model", str(tiny_dir), *args, "--out", str(out)])
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_gradient_checkpointing_gives_the_same_adapter_and_bfloat16_trains(tiny_dir: Path, world: Path,
                                                                           tmp_path: Path) -> None:
    files = {"gen_data": str(world / "samples.jsonl"), "und_data": str(world / "questions.jsonl")}
    adapters = {}
    for checkpointing in (False, True):
        config = SFTConfig(steps=2, lora_rank=4, lora_alpha=8, lora_dropout=0.0, batch_size=2,
                           gradient_checkpointing=checkpointing, **files)
        out = tmp_path / f"gc-{checkpointing}"
        train_sft(load_model(tiny_dir), config, out, show_progress=False)
        adapters[checkpointing] = load_file(out / "adapter_model.safetensors")
    assert all(torch.allclose(adapters[False][k], adapters[True][k], atol=1e-5) for k in adapters[False])
    um = load_model(tiny_dir, dtype="bfloat16")
    config = SFTConfig(steps=2, lora_rank=4, lora_alpha=8, batch_size=2, **files)
    train_sft(um, config, tmp_path / "bf16", show_progress=False)
    rows = _log(tmp_path / "bf16")
    assert all(math.isfinite(r["loss"]) for r in rows)
    lora = {k: v for k, v in load_file(tmp_path / "bf16" / "adapter_model.safetensors").items() if "lora_" in k}
    assert lora and all(v.dtype == torch.float32 for v in lora.values())  # peft keeps adapter weights in float32


def test_bf16_autocast_trains_near_the_float32_losses(tiny_dir: Path, world: Path, tmp_path: Path) -> None:
    """`bf16`: float32 weights, forward matmuls in bfloat16; the losses move (autocast is on) but stay close."""
    files = {"gen_data": str(world / "samples.jsonl"), "und_data": str(world / "questions.jsonl")}
    losses = {}
    for bf16 in (False, True):
        config = SFTConfig(steps=2, lora_rank=4, lora_alpha=8, lora_dropout=0.0, batch_size=2, bf16=bf16, **files)
        train_sft(load_model(tiny_dir), config, tmp_path / f"bf16-{bf16}", show_progress=False)
        losses[bf16] = [r["loss"] for r in _log(tmp_path / f"bf16-{bf16}")]
        lora = load_file(tmp_path / f"bf16-{bf16}" / "adapter_model.safetensors")
        assert all(v.dtype == torch.float32 for v in lora.values())
    assert losses[True] != losses[False]
    assert losses[True] == pytest.approx(losses[False], rel=0.02)


def test_a_checkpoint_from_before_a_new_setting_still_resumes(tiny_dir: Path, world: Path, tmp_path: Path) -> None:
    """A setting added since a checkpoint was written (absent from it) is accepted at its default, refused otherwise."""
    from unigap.train.checkpoint import load_checkpoint, save_checkpoint

    config = SFTConfig(steps=4, lora_rank=4, lora_alpha=8, batch_size=2, checkpoint_every=2,
                       gen_data=str(world / "samples.jsonl"))
    um = load_model(tiny_dir)
    tasks = sft_data.sft_tasks(um, config, read_sft_data(config), tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        sft_data.SFTTrainer(um, config, tasks, tmp_path / "run", "run").train(
            on_step=lambda step, record: (_ for _ in ()).throw(KeyboardInterrupt) if step == 2 else None)
    state = load_checkpoint(tmp_path / "run" / "checkpoint")
    del state["config"]["prompt_dropout"]  # as written before the setting existed
    save_checkpoint(tmp_path / "run" / "checkpoint", state)
    changed = dataclasses.replace(config, prompt_dropout=0.1)
    with pytest.raises(UserError, match=r"different settings: prompt_dropout: \(absent\) → 0.1"):
        train_sft(load_model(tiny_dir), changed, tmp_path / "run", resume=True, show_progress=False)
    train_sft(load_model(tiny_dir), config, tmp_path / "run", resume=True, show_progress=False)
    assert [r["step"] for r in _log(tmp_path / "run")] == [0, 1, 2, 3]


def test_the_token_cache_notices_an_image_edited_in_place_and_another_model(tiny_dir: Path, tmp_path: Path) -> None:
    """The cache key held the data file's hash, not its images' nor the model's: an image fixed in place, or another
    VQ, read the old tokens back."""
    from shutil import copytree

    from PIL import Image

    from tiny_world_fixtures import build_tiny_world_model

    world = tmp_path / "world"
    write_dataset(world, 3, 0, "train")
    config = SFTConfig(gen_data=str(world / "samples.jsonl"))
    um, out = load_model(tiny_dir), tmp_path / "out"
    first = sft_data.caption_tokens(um, read_sft_data(config).captions, config.gen_data, out)
    image = world / json.loads((world / "samples.jsonl").read_text().splitlines()[0])["image"]
    Image.new("RGB", Image.open(image).size).save(image)  # fixed in place: black
    captions = read_sft_data(config).captions
    again = sft_data.caption_tokens(um, captions, config.gen_data, out)
    assert not torch.equal(again, first) and torch.equal(again[1:], first[1:])
    assert torch.equal(again, sft_data.caption_tokens(um, captions, config.gen_data, tmp_path / "fresh"))
    copytree(out, tmp_path / "other-out")
    other = load_model(build_tiny_world_model(tmp_path / "other", seed=1))
    assert torch.equal(sft_data.caption_tokens(other, captions, config.gen_data, tmp_path / "other-out"),
                       sft_data.caption_tokens(other, captions, config.gen_data, tmp_path / "other-fresh"))
