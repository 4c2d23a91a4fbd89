"""Self-improvement on the shipped tiny model, at toy sizes: the recipe, the guard, resume, the files, bad input."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from unigap.cli import main
from unigap.errors import UserError
from unigap.evaluate.stats import paired_difference
from unigap.model import load_model
from unigap.selfimprove import SelfImproveConfig, run
from unigap.selfimprove.run import Data
from unigap.selfimprove.pool import Sample, audit_metrics
from unigap.world import parse_prompt

run_module = importlib.import_module("unigap.selfimprove.run")  # the module; the package exports the function
TOY = dict(n_prompts=6, samples=3, epochs=2, eval_n=6, epoch_eval_n=6, audit_size=12, batch_size=4)


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(["selfimprove", *args])
    return int(exit_info.value.code or 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"samples": 0}, "samples must be positive"),
        ({"method": "ppo"}, "unknown method"),
        ({"labels": "oracle"}, "unknown labels"),
        ({"method": "dpo", "samples": 1}, "DPO needs --samples >= 2"),
        ({"method": "curriculum-sft", "epochs": 4, "curriculum_at": 4}, "curriculum-at"),
        ({"epochs": 1}, "curriculum-sft replays the discard pool between epochs: it needs --epochs >= 2, got 1"),
        ({"trainable": "everything"}, "unknown trainable"),
        # (the guard never acted, and its record read as an audit passed)
        ({"audit_size": 0}, 'audit-size 0 audits nothing: give it a positive size, or audit = "none"'),
    ],
)
def test_bad_settings_are_one_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        SelfImproveConfig(**overrides)


def test_replay_epoch_defaults_to_half_way() -> None:
    assert SelfImproveConfig(method="curriculum-sft", epochs=6).replay_epoch == 3
    assert SelfImproveConfig(method="curriculum-sft", epochs=6, curriculum_at=2).replay_epoch == 2
    assert SelfImproveConfig(method="sft").replay_epoch is None


def _sample(index: int, accepted: bool, audit: bool | None) -> Sample:
    return Sample(index, parse_prompt("a red circle"), (0,), 0.9 if accepted else 0.1, accepted, audit)


def test_pool_split_and_audit_metrics() -> None:
    samples = [_sample(0, True, True), _sample(0, False, False), _sample(1, False, True), _sample(2, True, False),
               _sample(2, True, None)]
    data = Data(rounds=[samples])
    assert len(data.sft) == 3 and data.discard == [1]  # prompt 1 has no accepted image
    data.rounds.append([_sample(1, True, True)])  # the curriculum's replay accepts one of its images
    assert len(data.sft) == 4 and data.discard == []
    metrics = audit_metrics(samples)
    assert metrics["audited"] == 4
    assert metrics["precision"]["value"] == 0.5 and metrics["precision"]["n"] == 2  # accepted and audited: T, F
    assert metrics["recall"]["value"] == 0.5 and metrics["recall"]["n"] == 2  # audited true: accepted, rejected
    assert metrics["agreement"]["value"] == 0.5


def test_paired_difference_matches_scipy() -> None:
    from scipy import stats

    before, after = [0, 1, 0, 0, 1, 0, 1, 0], [1, 1, 0, 1, 1, 0, 1, 1]
    out = paired_difference(before, after)
    assert out["delta"] == pytest.approx(0.375) and out["n"] == 8
    assert out["p"] == pytest.approx(stats.ttest_rel(after, before).pvalue)
    assert out["t"] == pytest.approx(stats.ttest_rel(after, before).statistic)
    assert out["ci95"][0] < 0.375 < out["ci95"][1]
    assert out["stderr"] == pytest.approx(stats.sem([b - a for a, b in zip(before, after)]))  # ddof 1, as the test
    half = stats.t.ppf(0.975, 7) * out["stderr"]
    assert out["ci95"] == pytest.approx([0.375 - half, 0.375 + half])
    assert paired_difference([1, 0], [1, 0])["p"] == 1.0  # no change anywhere: no evidence of one
    same = paired_difference([0, 0], [1, 1])  # the same change everywhere: the t-test is undefined, the sign test decides
    assert same["t"] is None and same["p"] == 0.5 and same["test"] == "sign"


def test_poor_labels_with_the_guard_stop_with_exit_3(tmp_path: Path) -> None:
    out = tmp_path / "poor"
    code = _cli("--labels", "poor", "--n-prompts", "6", "--samples", "3", "--epochs", "2", "--eval-n", "4",
                "--out", str(out))
    assert code == 3
    result = json.loads((out / "selfimprove.json").read_text())
    guard = result["guard"]
    assert guard["stopped"] is True and guard["precision"] < guard["threshold"] and guard["epoch"] == 0
    assert guard["p"] < guard["alpha"] == 0.05  # on evidence: a one-sided binomial test
    assert result["after"] is None and not (out / "adapter").exists() and result["win_rate"] is None


@pytest.mark.parametrize(("correct", "n", "base_rate", "stops"), [
    (0, 5, 0.04, False),  # a replay round's hardest prompts: 0 of 5 correct is what chance gives (the study's case)
    (0, 1, 0.0375, False),
    (1, 30, 0.4, True),  # far below the base rate, on 30 images
    (10, 30, 0.4, False),  # below it, but within chance
])
def test_the_guard_stops_on_evidence_not_on_a_handful_of_images(tmp_path: Path, correct: int, n: int,
                                                                 base_rate: float, stops: bool) -> None:
    from unigap.errors import GuardStopped

    audit = {"round": 1, "epoch": 1, "precision": {"value": correct / n, "n": n},
             "base_rate": {"value": base_rate, "n": 100}}
    config = SelfImproveConfig(**TOY)
    if stops:
        with pytest.raises(GuardStopped, match=r"one-sided binomial .*\(--resume --no-guard goes on past it\)"):
            run_module._guard(tmp_path, config, [audit], None)  # (--no-guard alone is refused: OUT holds a run)
        assert json.loads((tmp_path / "selfimprove.json").read_text())["guard"]["stopped"] is True
    else:
        run_module._guard(tmp_path, config, [audit], None)
        assert not (tmp_path / "selfimprove.json").exists()
    unguarded = SelfImproveConfig(**TOY, guard=False)  # --no-guard runs on, and records where it would have stopped
    run_module._guard(tmp_path / "unguarded", unguarded, [audit], None)
    alarm = run_module._result(unguarded, None, None, [], [audit], None)["guard"]["alarm"]
    assert (alarm is not None) == stops and (alarm is None or (alarm["round"], alarm["epoch"], alarm["n"]) == (1, 1, n))


def test_a_guard_turned_on_at_a_resume_says_which_adapter_the_folder_holds(tmp_path: Path) -> None:
    """A --no-guard run that trained 3 epochs, resumed with the guard on: round 0's audit fails, and the adapter in
    the folder is epoch 3's, trained past it, not "no adapter"."""
    from unigap.errors import GuardStopped

    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps({"step": e, "epoch": e}) + "\n" for e in range(4)))
    audit = {"round": 0, "epoch": 0, "precision": {"value": 1 / 30, "n": 30}, "base_rate": {"value": 0.4, "n": 100}}
    with pytest.raises(GuardStopped, match="holds epoch 3's adapter, trained past this audit without the guard"):
        run_module._guard(tmp_path, SelfImproveConfig(**TOY), [audit], None)
    finished = {"after": {"generation_accuracy": {"accuracy": 0.5}}, "guard": {"stopped": False}}
    (tmp_path / "selfimprove.json").write_text(json.dumps(finished))  # the run had finished: its result stays
    with pytest.raises(GuardStopped, match=r"trained past this audit without the guard, and .*selfimprove.json the "
                                           r"result of that finished run \(--resume --no-guard"):
        run_module._guard(tmp_path, SelfImproveConfig(**TOY), [audit], None)
    assert json.loads((tmp_path / "selfimprove.json").read_text()) == finished


def test_a_model_that_already_has_an_adapter_is_refused_before_any_work(tmp_path: Path) -> None:
    um = load_model("tiny")
    um.add_lora(rank=4, alpha=8)
    with pytest.raises(UserError, match="already has one: merge it into a checkpoint first"):
        run(um, SelfImproveConfig(**TOY), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_prompt_file_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\nnot a shapeworld prompt at all\n")  # free text, and the verifier audits
    out = tmp_path / "run"
    assert _cli("--prompts", str(prompts), "--out", str(out)) == 2
    assert _cli("--prompts", str(prompts), "--labels", "verifier", "--judge", "none", "--out", str(out)) == 2
    assert not out.exists()


def test_free_text_prompts_train_with_self_labels(tmp_path: Path) -> None:
    """A real checkpoint's prompts: the model labels its own images of them; no verifier is asked."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a photo of a red apple"}\n{"prompt": "a blue circle"}\n')
    result = _toy_run(tmp_path / "run", prompts=str(prompts), method="sft", epochs=1, eval_n=0, epoch_eval_n=0,
                      audit="none", samples=2)
    rows = [json.loads(line) for line in (tmp_path / "run" / "pool" / "round0.jsonl").read_text().splitlines()]
    assert [row["category"] for row in rows] == ["free", "free", "colors", "colors"]
    assert all(row["audit"] is None for row in rows) and result["audits"][0]["audited"] == 0
    assert [row["epoch"] for row in result["epochs"]] == [0, 1] and result["before"] is None


def test_a_prompt_file_with_a_held_out_prompt_is_refused(tmp_path: Path, capsys) -> None:
    """Training on a test prompt would leak into the before/after evaluation."""
    from unigap.world import split_prompts

    held_out = split_prompts("test", 0)[0].text
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{split_prompts('train', 0)[0].text}\n{held_out}\n")
    out = tmp_path / "run"
    assert _cli("--prompts", str(prompts), "--out", str(out)) == 2 and not out.exists()
    assert f"{held_out!r} is a test-split prompt" in capsys.readouterr().err


def test_prompts_in_the_config_file_are_the_ones_read(tmp_path: Path, monkeypatch) -> None:
    """`--prompts` unset leaves the TOML's `prompts` in force (flags win only where given)."""
    prompts, toml = tmp_path / "prompts.txt", tmp_path / "settings.toml"
    prompts.write_text("a red circle\n")
    toml.write_text(f"prompts = {json.dumps(str(prompts))}\n")
    read: list[str] = []

    def training_prompts(config: SelfImproveConfig) -> None:
        read.append(config.prompts)
        raise UserError("stop here")

    monkeypatch.setattr(run_module, "training_prompts", training_prompts)
    assert _cli("--config", str(toml), "--out", str(tmp_path / "run")) == 2
    assert _cli("--config", str(toml), "--prompts", "train", "--out", str(tmp_path / "run")) == 2
    assert read == [str(prompts), "train"]


def _toy_run(out: Path, **overrides) -> dict:
    um = load_model("tiny")
    return run(um, SelfImproveConfig(**{**TOY, **overrides}), out, progress=False)


def test_a_run_writes_its_files_and_resumes_to_the_same_result(tmp_path: Path, monkeypatch) -> None:
    config = dict(method="curriculum-sft", labels="verifier", seed=3, eval_n=4, epoch_eval_n=3)
    full = _toy_run(tmp_path / "full", **config)
    for key in ("generation_accuracy", "understanding_accuracy", "nonunification", "weak_generation"):
        assert full["before"][key]["n"] and full["after"][key]["n"]
        for side in ("before", "after"):  # each with its 95% CI, around its value
            metric = full[side][key]
            value = next(metric[k] for k in ("accuracy", "score", "rate") if k in metric)
            assert metric["ci95"][0] <= value <= metric["ci95"][1]
    assert full["paired"]["generation_accuracy"]["n"] == config["eval_n"]
    assert [row["epoch"] for row in full["epochs"]] == [0, 1, 2]
    trained = [row for row in full["epochs"][1:] if row["steps"]]
    assert full["epochs"][0]["grad_norm"] is None and trained and all(row["grad_norm"] > 0 for row in trained)
    assert full["guard"]["stopped"] is False and full["audits"][0]["precision"]["value"] == 1.0  # verifier labels
    assert full["trained_parameters"] == "LoRA on the LLM"
    win = full["win_rate"]
    assert set(win) >= {"value", "n", "ci95", "wins"} and (win["n"] == 0 or win["wins"] == round(win["value"] * win["n"] / 100))
    out = tmp_path / "full"
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "figures" / "epochs.png").is_file()
    um = load_model("tiny")  # the trained adapter loads and changes the model
    prompts, tokens = ["a red circle"], torch.zeros((1, um.num_image_tokens), dtype=torch.long)
    base = um.image_logprobs(prompts, tokens)[0]
    um.load_adapter(out / "adapter")
    assert not torch.allclose(um.image_logprobs(prompts, tokens)[0], base)
    rows = [json.loads(line) for line in (out / "pool" / "round0.jsonl").read_text().splitlines()]
    assert len(rows) == TOY["n_prompts"] * TOY["samples"]
    assert all((out / "pool" / row["image"]).is_file() for row in rows)
    assert {"prompt", "image", "p_yes", "accepted", "audit"} <= set(rows[0])
    from datasets import load_dataset

    pool = load_dataset("json", data_files=str(out / "pool" / "round0.jsonl"), split="train")
    assert pool.num_rows == len(rows) and pool[0]["prompt"] == rows[0]["prompt"]

    original = run_module.train_epoch
    calls = {"n": 0}

    def killed_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "killed", **config)
    monkeypatch.setattr(run_module, "train_epoch", original)
    resumed = _toy_run(tmp_path / "killed", **config)
    assert resumed == full

    save = run_module._save_epoch

    def killed_after_saving_epoch_1(*args, **kwargs):  # the checkpoint written, its row not yet logged
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "_save_epoch", killed_after_saving_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "cut", **config)
    monkeypatch.setattr(run_module, "_save_epoch", save)
    assert len((tmp_path / "cut" / "epochs.jsonl").read_text().splitlines()) == 1
    with (tmp_path / "cut" / "epochs.jsonl").open("a") as log:
        log.write('{"step": 1, "epo')  # and a row cut off by the kill
    assert _toy_run(tmp_path / "cut", **config) == full
    logged = [json.loads(line) for line in (tmp_path / "cut" / "epochs.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in logged] == [0, 1, 2] and logged == full["epochs"]

    plot, calls, drawn = run_module.epochs_plot, [], []

    def killed_drawing_the_last_epoch(epochs, path):  # a kill while the last figure is drawn: it is drawn again
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        drawn.append([row["epoch"] for row in epochs])
        return plot(epochs, path)

    monkeypatch.setattr(run_module, "epochs_plot", killed_drawing_the_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "drawn", **config)
    assert _toy_run(tmp_path / "drawn", **config) == full and drawn[-1] == [0, 1, 2]

    other = load_model("tiny")
    with torch.no_grad():
        other.model.get_input_embeddings().weight[0] += 1  # another model under the same settings: refused
    with pytest.raises(UserError, match=r"holds a selfimprove run under other settings \(model: "):
        run(other, SelfImproveConfig(**{**TOY, **config}), tmp_path / "full", progress=False)


def test_the_table_shows_no_win_rate_where_no_answer_changed() -> None:
    """With no disagreement there is no rate: the row reads "—", not a 50 that looks measured."""
    from rich.console import Console

    from unigap.cli.selfimprove import _table

    def row(win_rate: dict) -> list[str]:
        result = {"config": {"method": "sft", "labels": "self"}, "before": None, "after": None, "win_rate": win_rate}
        console = Console(record=True, width=200)
        console.print(_table(result))
        line = next(line for line in console.export_text().splitlines() if "win rate" in line)
        return [cell.strip() for cell in line.strip("│ ").split("│")]

    assert row({"value": None, "n": 0})[:4] == ["understanding win rate (0–100)", "—", "—", "n = 0"]
    assert row({"value": 60.0, "n": 5})[1:4] == ["50", "60.0", "n = 5"]


def test_gradient_checkpointing_trains_the_same_and_bf16_autocasts(tmp_path: Path) -> None:
    """The memory options of a 7B run: checkpointing recomputes the same activations (the same losses, dropout
    included); bf16 autocast computes them in bfloat16 (other losses, still finite)."""
    toy = dict(method="sft", labels="verifier", epochs=1, eval_n=0, epoch_eval_n=0, audit="none", n_prompts=4, samples=2)
    plain = _toy_run(tmp_path / "plain", **toy)
    checkpointed = _toy_run(tmp_path / "checkpointed", **toy, gradient_checkpointing=True)
    bf16 = _toy_run(tmp_path / "bf16", **toy, bf16=True)
    loss = plain["epochs"][1]["loss"]
    assert plain["epochs"][1]["steps"] > 0 and checkpointed["epochs"][1]["loss"] == pytest.approx(loss, abs=1e-6)
    assert bf16["epochs"][1]["loss"] != loss and abs(bf16["epochs"][1]["loss"] - loss) < 0.1 * abs(loss)
    assert bf16["config"]["bf16"] is True


def test_the_epoch_probe_samples_in_the_configured_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """It sampled 64 prompts at a time whatever `sample_batch` said: 128 rows with CFG, tens of GB of KV cache for a
    7B on a GPU, which lowering `sample_batch` could not help."""
    run_module = importlib.import_module("unigap.selfimprove.run")  # (the package's `run` is the function)
    seen = []

    def sampled(um, specs, seed, batch_size, cfg_scale, temperature, progress):
        seen.append((batch_size, progress))
        return None, [{"verified": True, "self_rejected": False} for _ in specs]

    monkeypatch.setattr(run_module, "generate_and_judge", sampled)
    run_module._epoch_row(None, SelfImproveConfig(epoch_eval_n=4, sample_batch=8), 1, Data(rounds=[[]]), {}, 0)
    run_module._epoch_row(None, SelfImproveConfig(epoch_eval_n=4, sample_batch=8), 1, Data(rounds=[[]]), {}, 0, True)
    assert seen == [(8, False), (8, True)]  # (its bar shown where the run's are: it sampled in silence)


def test_an_epoch_with_nothing_accepted_is_warned_of(tmp_path: Path, monkeypatch) -> None:
    """A real checkpoint whose judge accepts no image (P(yes) ~0.005 on a random Janus-Pro) trained nothing, saved an
    untrained adapter and reported Δ +0.000 as if it had run."""
    import unigap.selfimprove.pool as pool
    from unigap.errors import UnigapWarning

    monkeypatch.setattr(pool, "ACCEPT_THRESHOLD", 1.1)  # (no P(yes) reaches it)
    with pytest.warns(UnigapWarning, match=r"epoch 1 trained nothing: none of the images was accepted \(see pool/\); "
                                            r"its adapter is an untrained one"):
        result = _toy_run(tmp_path / "none", method="sft", epochs=1, eval_n=0, epoch_eval_n=1, n_prompts=2,
                          audit_size=2)
    assert result["epochs"][-1]["steps"] == 0


def test_a_diverged_epoch_names_what_survives(tmp_path: Path, monkeypatch) -> None:
    """A non-finite loss stopped the run saying only that: not that epoch 1's adapter and checkpoint were kept."""
    from unigap.train.loop import TrainingDiverged

    original, calls = run_module.train_epoch, []

    def diverged_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise TrainingDiverged("non-finite loss in epoch 2: training stopped")
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_epoch", diverged_in_epoch_2)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"epoch 2: training stopped; epoch 1's adapter is kept in .*adapter "
                                               r"and its checkpoint in .*checkpoint \(--resume continues from it"):
        _toy_run(out, method="sft", labels="verifier", eval_n=0, epoch_eval_n=1, n_prompts=2, audit_size=2)
    assert (out / "adapter" / "adapter_config.json").is_file()
    calls.clear()
    calls.append(1)  # the next call is epoch 2's again
    with pytest.raises(TrainingDiverged, match="epoch 2: training stopped; epoch 1's adapter is kept"):
        _toy_run(out, method="sft", labels="verifier", eval_n=0, epoch_eval_n=1, n_prompts=2, audit_size=2)


def test_the_loss_follows_the_sampling_guidance_unless_told_otherwise() -> None:
    """The loss's scale was a fixed 5: a run sampling without guidance (cfg_scale 1) trained SFT and its DPO pairs
    on a CFG-5 mixture it never sampled from."""
    from unigap.selfimprove import SelfImproveConfig

    assert SelfImproveConfig().loss_cfg_scale == 5.0  # (the default run: unchanged)
    assert SelfImproveConfig(cfg_scale=1.0).loss_cfg_scale == 1.0
    assert SelfImproveConfig(cfg_scale=3.0, loss_cfg_scale=0.0).loss_cfg_scale == 0.0  # (given: kept)
    with pytest.raises(UserError, match="cfg-scale 0 samples from the unconditional logits alone"):
        SelfImproveConfig(cfg_scale=0.0)  # (a loss scale of 0 means the conditional logits alone: no match)
    with pytest.raises(UserError, match="^cfg-scale must be a number"):  # (it named the loss scale it was copied to)
        SelfImproveConfig(cfg_scale=-1.0)


def test_the_table_shows_a_change_the_sign_test_decided() -> None:
    """Every item moving alike is decided by the sign test, with no interval: the row hid the Δ behind its p."""
    from rich.console import Console

    from unigap.cli.selfimprove import _table
    from unigap.evaluate.stats import paired_difference

    paired = paired_difference([0.0] * 8, [1.0] * 8)
    result = {"config": {"method": "sft", "labels": "self"}, "before": None, "after": None, "win_rate": {},
              "paired": {"generation_accuracy": paired}}
    console = Console(record=True, width=200)
    console.print(_table(result))
    line = next(line for line in console.export_text().splitlines() if line.lstrip("│ ").startswith("generation acc"))
    assert "+1.000 (sign test)" in line and "0.008" in line
    result["paired"]["generation_accuracy"] = paired_difference([0.0], [1.0])  # one item: no test at all
    console = Console(record=True, width=200)
    console.print(_table(result))
    line = next(line for line in console.export_text().splitlines() if line.lstrip("│ ").startswith("generation acc"))
    assert "+1.000" in line and "sign test" not in line
