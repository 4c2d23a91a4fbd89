"""The refine loop: per-round metrics, stopping, format failures, oracle and best-of-N, outputs and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unigap.cli import main
from unigap.errors import UserError
from unigap.refine import RefineConfig, run_loop, run_refine
from unigap.refine.metrics import round_metrics, stop_metrics
from unigap.world import parse_prompt

SPECS = [parse_prompt(t) for t in ("a red circle", "two blue squares", "a circle and a square", "a green triangle")]


@pytest.mark.parametrize(("rounds", "reflector", "refiner", "message"), [
    (1, "Oracle", "edit", "--reflector must be one of self, oracle, got 'Oracle'"),  # (ran the model's own)
    (1, "self", "edt", "--refiner must be one of auto, edit, regenerate, got 'edt'"),  # (regenerated)
    (-3, "self", "auto", "--rounds must be >= 0, got -3"),  # (ran round 0 alone)
])
def test_the_loop_refuses_settings_it_would_run_as_others(stub, rounds, reflector, refiner, message) -> None:
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        run_loop(stub, SPECS, rounds=rounds, reflector=reflector, refiner=refiner, seed=0, progress=False)


def test_an_exact_reflector_and_editor_fix_round_zero_and_then_stop(stub) -> None:
    trajectories = run_loop(stub, SPECS * 3, rounds=3, reflector="self", refiner="auto", seed=0, progress=False)
    rounds = round_metrics(trajectories, 3)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[0]["accuracy"] == 0.0  # the stub's first pictures are all broken by one edit
    assert rounds[1]["accuracy"] >= 0.75 and rounds[1]["improved"]["rate"] >= 0.75
    assert rounds[1]["worse"]["rate"] == 0.0 and rounds[1]["n"] == len(trajectories)
    colours = rounds[1]["by_category"]["colors"]  # per category with its interval too
    assert colours["n"] == 6 and colours["ci95"][0] <= colours["accuracy"] <= colours["ci95"][1]
    stop = stop_metrics(trajectories, 3)
    assert stop["rate"]["rate"] >= 0.75 and stop["stopped_on_wrong"]["rate"] == 0.0
    assert all(t.verdict_after(3) == t.verified[-1] for t in trajectories)  # stopped prompts carry their image


def test_the_loop_and_best_of_n_start_from_given_one_shot_images(stub, monkeypatch) -> None:
    """The study's inference-time arms start from the base's own one-shot images: the loop drew its round 0, and
    best-of-N its samples, from other seeds, so "refine − base" paired two draws of the base model, not one image
    before and after the loop."""
    import numpy as np

    import unigap.world as world
    from unigap.refine.metrics import best_of_n_images

    one_shot = stub.decode_tokens(stub.generate_images([s.text for s in SPECS]))  # (the stub's: all broken)
    real, calls = stub.generate_images, []
    monkeypatch.setattr(stub, "generate_images", lambda prompts, n=1, *args: calls.append(n) or real(prompts, n, *args))
    trajectories = run_loop(stub, SPECS, rounds=1, reflector="self", refiner="auto", seed=0, progress=False,
                            first=one_shot)
    assert [t.images[0] for t in trajectories] == one_shot and not calls  # (round 1 edits)
    assert [t.verified[0] for t in trajectories] == [False] * len(SPECS)
    rng = np.random.default_rng(0)
    right = [world.render_pil(world.sample_scene_for(spec, rng)) for spec in SPECS]
    assert best_of_n_images(stub, SPECS, 3, 0, 5.0, 1.0, 8, False, first=right) == right  # the judge's pick
    assert calls == [2, 2]  # n − 1 more of each prompt (two prompts a batch: 8 // 3)


def test_progress_lines_name_each_round_and_the_oracles_as_its_own(stub, monkeypatch) -> None:
    import unigap.refine.loop as loop_module

    names: list[str] = []
    real = loop_module.map_items

    def recording(items, batch_size, fn, name, progress):
        names.append(name)
        return real(items, batch_size, fn, name, False)

    monkeypatch.setattr(loop_module, "map_items", recording)
    run_loop(stub, SPECS, rounds=1, reflector="self", refiner="edit", seed=0)
    run_loop(stub, SPECS, rounds=1, reflector="oracle", refiner="edit", seed=0)
    assert names == ["round 0: generate", "round 1: reflect", "round 1: edit", "oracle round 0: generate",
                     "oracle round 1: edit"]  # (the oracle reflects without the model)


def test_edits_take_the_edit_guidance_and_generation_keeps_its_cfg(stub, monkeypatch, tmp_path: Path) -> None:
    calls: list[tuple] = []
    edit, generate = stub.edit, stub.generate_images
    monkeypatch.setattr(stub, "edit", lambda images, notes, cfg, temperature, seed, image_cfg: calls.append(
        ("edit", cfg, image_cfg)) or edit(images, notes))
    monkeypatch.setattr(stub, "generate_images", lambda prompts, n, cfg, temperature, seed: calls.append(
        ("generate", cfg)) or generate(prompts, n))
    config = RefineConfig(n=4, rounds=1, cfg_scale=4.0, edit_cfg_scale=3.0, edit_image_cfg_scale=1.25)
    run_refine(stub, config, tmp_path / "run", progress=False)
    assert set(calls) == {("generate", 4.0), ("edit", 3.0, 1.25)}  # the loop, the oracle's loop and best-of-N


def test_shares_carry_wilson_intervals_inside_zero_and_one() -> None:
    from scipy.stats import binomtest

    from unigap.evaluate.stats import with_ci

    assert with_ci({"rate": 0.5, "n": 2, "stderr": 0.35}, "rate")["ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    low, high = with_ci({"rate": 0.0, "n": 10, "stderr": 0.0}, "rate")["ci95"]  # ± 1.96 stderr would be [0, 0]
    assert low == 0.0 and high == pytest.approx(binomtest(0, 10).proportion_ci(method="wilson").high) and high > 0.2
    assert with_ci({"rate": None, "n": 0, "stderr": None}, "rate")["ci95"] is None


def test_zero_rounds_is_one_shot_generation(stub) -> None:
    trajectories = run_loop(stub, SPECS, rounds=0, reflector="self", refiner="auto", seed=0, progress=False)
    assert all(len(t.images) == 1 and not t.reflections for t in trajectories)


def test_an_instruction_outside_the_grammar_stops_the_prompt_when_editing(stub, monkeypatch) -> None:
    monkeypatch.setattr(stub, "reflect", lambda images, prompts: ["please make it nicer"] * len(images))
    trajectories = run_loop(stub, SPECS, rounds=2, reflector="self", refiner="edit", seed=0, progress=False)
    assert all(t.format_failure_round == 1 and len(t.images) == 1 for t in trajectories)
    assert round_metrics(trajectories, 2)[1]["format_failures"] == len(SPECS)


def test_refine_json_holds_rounds_oracle_and_best_of_n_and_resumes(stub, tmp_path: Path) -> None:
    config = RefineConfig(n=8, rounds=2, seed=1)
    report = run_refine(stub, config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "refine.json").read_text())
    keys = {"round", "accuracy", "improved", "worse", "unchanged", "stopped", "n"}  # every round, round 0 too
    assert all(keys <= set(entry) for entry in saved["rounds"]) and saved["rounds"][0]["round"] == 0
    assert saved["rounds"][0]["improved"] is None and saved["rounds"][0]["stopped"] == 0
    assert saved["rounds"][1]["improved"]["ci95"] is not None
    for key in ("stopped_on_correct", "stopped_on_wrong", "went_on_past_correct"):
        assert saved["stop"][key]["ci95"][0] <= saved["stop"][key]["rate"] <= saved["stop"][key]["ci95"][1]
    assert saved["oracle"]["accuracy"] >= 0.75 and saved["best_of_n"]["n_samples"] == 3
    assert (tmp_path / "run" / "strips" / "000.png").is_file()
    again = run_refine(stub, config, tmp_path / "run", progress=False)  # every part is read back, not rerun
    assert again["rounds"] == report["rounds"]
    with pytest.raises(UserError, match="other settings"):
        run_refine(stub, RefineConfig(n=8, rounds=1, seed=1), tmp_path / "run", progress=False)
    stub.fingerprint = lambda: "another model"  # from Python no checkpoint path tells the models apart
    with pytest.raises(UserError, match=r"other settings \(model: \"ExactStub\" → \"another model\"\)"):
        run_refine(stub, config, tmp_path / "run", progress=False)
    del stub.fingerprint
    settings = tmp_path / "run" / "settings.json"
    before = {k: v for k, v in json.loads(settings.read_text()).items() if not k.startswith("edit_")}
    settings.write_text(json.dumps(before))  # as saved before the edit scales existed: it edited under plain CFG
    with pytest.raises(UserError, match=r"edit_cfg_scale: \(absent\) → 2.0"):
        run_refine(stub, config, tmp_path / "run", progress=False)


def test_rounds_zero_generates_once_for_the_loop_and_its_oracle(stub, tmp_path: Path, monkeypatch) -> None:
    import unigap.refine.run as run_module

    loops = []
    real = run_module.run_loop
    monkeypatch.setattr(run_module, "run_loop", lambda *args, **kwargs: loops.append(args[3]) or real(*args, **kwargs))
    report = run_refine(stub, RefineConfig(n=4, rounds=0), tmp_path / "once", progress=False)
    assert loops == ["self"] and report["oracle"]["rounds"] == report["rounds"]


def test_an_empty_reflection_is_a_format_failure_when_regenerating_as_in_training(stub_factory) -> None:
    """Training rewarded an empty reflection as a format failure (no image); the loop regenerated from "prompt. " and
    counted it as going on."""
    stub = stub_factory(can_edit=False)
    stub.reflect = lambda images, prompts: [" "] * len(images)
    [trajectory] = run_loop(stub, SPECS[:1], rounds=2, reflector="self", refiner="auto", seed=0, progress=False)
    assert trajectory.format_failure_round == 1 and len(trajectory.images) == 1 and trajectory.stop_round is None
    from unigap.refine.loop import acted_on

    assert not acted_on(" ", edit=False) and acted_on("make it red", edit=False) and not acted_on("make it red", True)


def test_a_model_that_cannot_edit_regenerates_and_refuses_edit(stub_factory, tmp_path: Path) -> None:
    stub = stub_factory(can_edit=False)
    report = run_refine(stub, RefineConfig(n=4, rounds=1), tmp_path / "regen", progress=False)
    assert report["config"]["refiner_used"] == "regenerate"
    settings = tmp_path / "regen" / "settings.json"
    settings.write_text(json.dumps({k: v for k, v in json.loads(settings.read_text()).items()
                                    if not k.startswith("edit_")}))  # from before the edit scales: it never edited
    assert run_refine(stub, RefineConfig(n=4, rounds=1), tmp_path / "regen", progress=False)["rounds"] == report["rounds"]
    with pytest.raises(UserError, match="cannot"):
        run_refine(stub, RefineConfig(n=4, rounds=1, refiner="edit"), tmp_path / "edit", progress=False)
    with pytest.raises(UserError, match="^--edit-cfg guides edits; this model cannot edit, so the loop regenerates$"):
        run_refine(stub, RefineConfig(n=4, rounds=1, edit_cfg_scale=5.0), tmp_path / "guided", progress=False)
    assert not (tmp_path / "guided").exists()  # refused before anything is written
    with pytest.raises(UserError, match="^--edit-image-cfg guides edits; --refiner regenerate never edits$"):
        RefineConfig(n=4, rounds=1, refiner="regenerate", edit_image_cfg_scale=5.0)  # any model: only the flag given


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--rounds", "-1"], "--rounds must be >= 0"), (["--reflector", "judge"], "--reflector must be one of"),
     (["--prompts", "nowhere.txt"], "--prompts must be a split (test, val) or a prompt file; nowhere.txt is neither"),
     (["--rounds", "0", "--reflector", "oracle", "--edit-cfg", "2"],
      "--reflector, --edit-cfg act on the rounds after the first image, and --rounds 0 runs none"),
     (["--refiner", "regenerate", "--edit-image-cfg", "1"],  # (the flag given, not both)
      "--edit-image-cfg guides edits; --refiner regenerate never edits")],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["refine", "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_format_failure_is_no_stop_decision_and_the_mean_stop_round_has_an_interval_within_the_rounds() -> None:
    """A reflection outside the grammar ends its prompt with the image kept; it was counted as having gone on past a
    correct image (here the only such case), and in the decisions' denominator."""
    from unigap.evaluate.data import prompt_specs
    from unigap.refine.loop import Trajectory
    from unigap.world import NO_EDIT

    specs = prompt_specs("test", 3, 0, 0)
    fixed_then_stopped = Trajectory(specs[0], images=[None] * 2, verified=[False, True],
                                    reflections=["move the circle above the square", NO_EDIT], stop_round=2)
    garbled = Trajectory(specs[1], images=[None], verified=[True], reflections=["garbage"], format_failure_round=1)
    stopped_on_wrong = Trajectory(specs[2], images=[None], verified=[False], reflections=[NO_EDIT], stop_round=1)
    stop = stop_metrics([fixed_then_stopped, garbled, stopped_on_wrong], 3)
    assert stop["decisions"] == 3 and stop["went_on_past_correct"]["rate"] == 0
    assert stop["stopped_on_correct"]["rate"] == stop["stopped_on_wrong"]["rate"] == pytest.approx(1 / 3)
    assert stop["mean_round"]["mean"] == 1.5
    from scipy import stats  # the t-interval of the stop rounds 2 and 1 (the sample sd, as scipy takes it) ...
    low, high = stats.t.interval(0.95, 1, loc=1.5, scale=stats.sem([2, 1]))
    assert low < 1 and high > 3  # ... reaches past both ends of rounds 1..3, where it is cut
    assert stop["mean_round"]["ci95"] == [1.0, 3.0]
    assert stop_metrics([fixed_then_stopped, stopped_on_wrong], 10)["mean_round"]["ci95"] == pytest.approx([1.0, high])
    assert stop_metrics([stopped_on_wrong], 3)["mean_round"]["ci95"] is None  # one stop: no interval
