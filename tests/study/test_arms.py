"""The arm registry: every arm resolves, selections by name and family, requirements, and report order."""

from __future__ import annotations

import json

import pytest

from unigap.arms import ARMS, FAMILIES, Arm, register, select
from unigap.errors import UserError
from unigap.study.results import BASE, MethodRun, Study
from unigap.report import build_report
from unigap.study import StudyConfig


@pytest.mark.parametrize("name", list(ARMS))
def test_every_arm_has_a_builder_family_and_known_requirements(name: str) -> None:
    arm = ARMS[name]
    assert callable(arm.build()) and arm.family in FAMILIES
    assert set(arm.requires) <= set(ARMS)
    assert Study([MethodRun("zzz", 0, {}), MethodRun(name, 0, {})]).methods() == [name, "zzz"]  # the report orders it
    assert name in StudyConfig(methods=select(name)).methods_in_order()  # the CLI's selection accepts it


def test_selection_by_family_and_name_adds_requirements() -> None:
    assert select("p2") == (*(name for name in ARMS if name.startswith("self-")), "sft")
    assert set(select("soup-0.5")) == {"soup-0.5", "und-only", "gen-only"}
    assert select(None) == tuple(name for name, arm in ARMS.items() if arm.default)
    assert "upgrad" in select("p1") and "upgrad" not in select(None)
    with pytest.raises(UserError, match="unknown arm or family 'p9'"):
        select("joint,p9")


def test_post_hoc_arms_join_when_their_requirements_run() -> None:
    assert StudyConfig(methods=("und-only", "gen-only")).methods_in_order()[-1] == "oracle"
    assert StudyConfig(methods=("joint",)).methods_in_order() == ["joint"]
    with pytest.raises(UserError, match="need gen-only, und-only too"):
        StudyConfig(methods=("soup-0.5",))


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(Arm("joint", "p1", "trained", "unigap.study.builders:train_strategy"))
    with pytest.raises(ValueError, match="arm name 'p4' is a family's"):  # (`--methods p4` chose the family instead)
        register(Arm("p4", "p1", "post-hoc", "unigap.study.builders:oracle"))
    assert "p4" not in ARMS


def test_the_cli_rejects_an_unknown_arm_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from unigap.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--methods", "joint,sideways", "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["unigap: error: unknown arm or family 'sideways'; expected one of " + ", ".join([*FAMILIES, *ARMS])]
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_p2_and_p3_arms_build_on_a_tiny_model_and_reach_the_report(small_config: StudyConfig, tmp_path) -> None:
    from unigap.study import run_study

    config = small_config.scaled(methods=("self-sft", "sft", "refine", "best-of-n", "refine-grpo"), self_prompts=2,
                                 self_epochs=1, refine_rounds=1, grpo_steps=2, unimrg_steps=2, unimrg_scenes=8)
    built = build_report(run_study(config, tmp_path / "study", show_progress=False), tmp_path / "study")
    assert built.results["methods"] == ["base", "self-sft", "sft", "refine", "best-of-n", "refine-grpo"]
    assert [arm["family"] for arm in built.results["arms"]] == ["p2", "p2", "p3", "p3", "p3"]
    assert [(c["arm"], c["baseline"]) for c in built.results["comparisons"]] == [("refine", "best-of-n"),
                                                                                 ("refine-grpo", "refine")]
    assert [e["round"] for e in built.results["refine_rounds"]["refine-grpo"]] == [0, 1]
    assert (tmp_path / "study" / "refine-grpo" / "seed0" / "grpo" / "adapter_model.safetensors").is_file()
    assert "accuracy per round" in (tmp_path / "study" / "report.html").read_text()
    for name in ("self-sft", "sft", "refine", "best-of-n"):
        report = json.loads((tmp_path / "study" / name / "seed1" / "eval.json").read_text())
        # (an inference-time arm's own images replace the one-shot metrics: with their intervals, as eval's)
        assert all("ci95" in report[key] for key in ("generation", "nonunification", "weak_generation")), name
        assert "ci95" in report["self_judge"]["precision"], name
    assert (tmp_path / "study" / "sft" / "seed0" / "gen_tokens.safetensors").is_file()  # its data tokenized once
    assert (tmp_path / "study" / "self-sft" / "seed0" / "selfimprove" / "pool" / "round0.jsonl").is_file()
    assert list(built.results["win_rates"]) == ["self-sft", "sft", "refine-grpo"]  # the trained arms, not the loop


def test_the_deprecated_strategy_flag_still_selects_arms(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from unigap.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--strategy", "joint", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[0] == "unigap: --strategy is deprecated; use --methods NAME,NAME,..."
    assert err[1].startswith("unigap: error: model path") and err[1].endswith("does not exist")


def test_p4_runs_only_its_arms_and_the_base_and_compares_unimrg_with_und_sft(small_config: StudyConfig,
                                                                             tmp_path) -> None:
    from unigap.study import run_study

    config = small_config.scaled(methods=select("p4"), unimrg_steps=2, unimrg_scenes=4)
    built = build_report(run_study(config, tmp_path / "study", show_progress=False), tmp_path / "study")
    assert built.results["methods"] == ["base", "unimrg", "und-sft"]
    assert [arm["family"] for arm in built.results["arms"]] == ["p4", "p4"]
    assert not (tmp_path / "study" / "prefs").exists()  # preference pairs and diagnostics are P1's
    [comparison] = built.results["comparisons"]
    assert (comparison["arm"], comparison["baseline"]) == ("unimrg", "und-sft")
    assert comparison["metrics"]["understanding.accuracy"]["test"] == "paired"  # same items, same seeds
    assert built.results["training"] == {}  # no DPO losses table for SFT runs
    assert (tmp_path / "study" / "unimrg" / "seed1" / "adapter_config.json").is_file()
    assert not (tmp_path / "study" / "unimrg" / "seed1" / "checkpoint").exists()


def test_an_arm_registered_in_a_users_script_runs_and_reaches_the_report(small_config: StudyConfig, tmp_path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding an arm is one registration: its builder, named lazily, writes its eval.json through the runner, and the
    study selects, runs, compares and reports it with no edit elsewhere."""
    import sys
    import types

    from unigap.study import run_study

    def greedy_base(runner, name: str, seed: int) -> None:  # the base model under another name
        runner.evaluate(runner.model(), name, seed)

    module = types.ModuleType("users_arms")
    module.greedy_base = greedy_base  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "users_arms", module)
    monkeypatch.setattr(ARMS, "_entries", dict(ARMS))  # (the registration ends with the test)
    register(Arm("my-arm", "p3", "inference-time", "users_arms:greedy_base", default=False))
    config = small_config.scaled(methods=select("my-arm"))
    built = build_report(run_study(config, tmp_path / "study", show_progress=False), tmp_path / "study")
    assert built.results["methods"] == ["base", "my-arm"]
    assert built.results["arms"] == [{"name": "my-arm", "family": "p3", "kind": "inference-time"}]
    assert "my-arm" in (tmp_path / "study" / "report.html").read_text()
    generation = built.results["results"]["my-arm"]["generation.accuracy"]  # the base's own images, paired
    assert (generation["delta"], generation["test"], generation["p"]) == (0.0, "paired", 1.0)


def test_a_users_arms_register_like_the_builtin_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requirements of requirements are selected; a post-hoc arm without requirements joins only when chosen; an
    arm registered after import is among the defaults; the study's own folder names are refused."""
    monkeypatch.setattr(ARMS, "_entries", dict(ARMS))  # (the registrations end with the test)
    register(Arm("soup-of-soup", "p1", "post-hoc", "unigap.study.builders:soup", ("soup-0.5",), default=False))
    assert set(select("soup-of-soup")) == {"soup-of-soup", "soup-0.5", "und-only", "gen-only"}
    StudyConfig(methods=select("soup-of-soup"))  # (it said "need gen-only, und-only too")
    register(Arm("my-posthoc", "p4", "post-hoc", "unigap.study.builders:soup", default=False))
    assert "my-posthoc" not in StudyConfig(methods=("joint",)).methods_in_order()
    register(Arm("my-default", "p4", "trained", "unigap.study.builders:unimrg"))
    assert "my-default" in StudyConfig().methods
    register(Arm("a-late-one", "p4", "trained", "unigap.study.builders:unimrg", default=False, baseline="my-defualt"))
    with pytest.raises(UserError, match="unknown baseline of arm 'a-late-one': arm 'my-defualt' \\(did you mean "
                                        "'my-default'\\?\\); expected one of "):  # (the report compared nothing)
        StudyConfig(methods=("a-late-one",))
    late = Study([MethodRun(name, 0, {}) for name in ("a-late-one", "my-default", BASE, "joint")])
    assert late.methods() == [BASE, "joint", "my-default", "a-late-one"]  # (registry order, not the alphabet's)
    for name in ("base", "prefs", "answer-length"):
        with pytest.raises(ValueError, match="the study's own"):
            register(Arm(name, "p3", "inference-time", "unigap.study.builders:refine"))


def test_an_arm_of_any_family_that_trains_on_the_pairs_gets_them(small_config: StudyConfig, tmp_path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The pairs were built only when a p1 arm ran: a user's p4 arm reading them found no file."""
    from unigap.study.run import StudyRunner

    monkeypatch.setattr(ARMS, "_entries", dict(ARMS))
    register(Arm("my-dpo", "p4", "trained", "unigap.study.builders:train_strategy", default=False, needs_pairs=True,
                 options={"strategy": "joint"}))
    register(Arm("my-sft", "p4", "trained", "unigap.study.builders:unimrg", default=False,
                 options={"objective": "und-sft"}))
    names = lambda methods: [job.name for job in StudyRunner(small_config.scaled(methods=methods), tmp_path,  # noqa: E731
                                                             None).jobs()]
    assert {"und pairs", "gen pairs", "gradient diagnostics"} <= set(names(("my-dpo",)))
    assert "und pairs" not in names(("my-sft",))


@pytest.mark.parametrize(("builder", "options", "message"), [
    ("train_strategy", {}, "arm 'mine': its builder train_strategy needs options={'strategy': ...}"),
    ("train_strategy", {"strategy": "mine"}, "unknown strategy 'mine'"),
    ("self_improve", {"method": "sft", "label": "poor"}, "arm 'mine' at the study's settings: .*unexpected keyword argument 'label'"),
    ("unimrg", {"objective": "dpo"}, "objective"),
    # an option the study sets itself (its budget): a TypeError when the job ran
    ("self_improve", {"method": "sft", "epochs": 3}, "arm 'mine' at the study's settings: .*multiple values for "
                                                     "keyword argument 'epochs'"),
    ("train_strategy", {"strategy": "joint", "steps": 9}, "multiple values for keyword argument 'steps'"),
    # (no pairs built for it: it failed after every base evaluation, or, beside a p1 arm, left the report's losses)
    ("train_strategy", {"strategy": "joint"}, "arm 'mine': its builder train_strategy trains on the study's "
                                              "preference pairs; register it with needs_pairs=True"),
    # options a builder never reads (a duplicate arm under another name), and a soup's λ its name cannot give
    ("refine", {"rounds": 5}, r"arm 'mine': its builder refine takes no options, got \['rounds'\]"),
    ("soup", {}, r"arm 'mine': a soup is named soup-<λ>, λ in \[0, 1\]"),
])
def test_an_arm_a_stock_builder_cannot_build_fails_before_any_job(small_config: StudyConfig, tmp_path,
                                                                  monkeypatch: pytest.MonkeyPatch, builder: str,
                                                                  options: dict, message: str) -> None:
    """The builders chose their settings by the arm's name: an arm of another name failed when its job ran, after
    the base evaluations, the pairs and every arm before it."""
    from unigap.study.run import StudyRunner

    monkeypatch.setattr(ARMS, "_entries", dict(ARMS))
    arm = register(Arm("mine", "p2", "trained", f"unigap.study.builders:{builder}", default=False, options=options))
    assert hash(arm) == hash(Arm("mine", "p2", "trained", arm.builder, default=False))  # (options are not hashed)
    with pytest.raises(UserError, match=message):
        StudyRunner(small_config.scaled(methods=("mine",)), tmp_path, None).jobs()
    assert not any(tmp_path.iterdir())


def test_an_arm_its_builder_cannot_run_at_the_studys_budget_fails_before_any_job(small_config: StudyConfig,
                                                                                  tmp_path) -> None:
    """A curriculum replays between epochs: at one self-improvement epoch its job failed after the base evaluations."""
    from unigap.study.run import StudyRunner

    config = small_config.scaled(methods=("self-curriculum-sft",), self_epochs=1)
    with pytest.raises(UserError, match="arm 'self-curriculum-sft' at the study's settings: .*needs --epochs >= 2"):
        StudyRunner(config, tmp_path, None).jobs()
    assert [job.name for job in StudyRunner(config.scaled(self_epochs=2), tmp_path, None).jobs()][-1] == \
        "self-curriculum-sft, seed 1"


def test_a_builder_that_writes_no_eval_json_is_an_error_not_a_missing_arm(small_config: StudyConfig, tmp_path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from unigap.study import run_study

    module = types.ModuleType("users_lazy_arms")
    module.forgets = lambda runner, name, seed: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "users_lazy_arms", module)
    monkeypatch.setattr(ARMS, "_entries", dict(ARMS))
    register(Arm("forgetful", "p3", "inference-time", "users_lazy_arms:forgets", default=False))
    with pytest.raises(RuntimeError, match="the job 'forgetful, seed 0' ended without writing .*eval.json"):
        run_study(small_config.scaled(methods=select("forgetful")), tmp_path / "study", show_progress=False)
    assert '"interrupted": true' in (tmp_path / "study" / "jobs.jsonl").read_text()


def test_an_arm_reading_pairs_it_did_not_ask_for_is_told_how(small_config: StudyConfig, tmp_path) -> None:
    from unigap.study.run import StudyRunner

    with pytest.raises(UserError, match="registered with needs_pairs=True"):
        StudyRunner(small_config, tmp_path, None).pairs("und")


def test_unimrg_arms_share_built_data_only_when_it_is_the_same_data(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data was shared under the maps' names alone: an und-sft arm of other answer forms trained on und-sft's."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    import unigap.study.builders as builders
    import unigap.unimrg
    import unigap.unimrg.trainer

    monkeypatch.setattr(ARMS, "_entries", dict(ARMS))
    register(Arm("und-sft-word", "p4", "trained", "unigap.study.builders:unimrg", default=False,
                 options={"objective": "und-sft", "sentence_fraction": 0.0}))
    built, trained = [], []
    monkeypatch.setattr(unigap.unimrg, "build_data", lambda *args: built.append(args[4]) or ("data", args[4]))
    monkeypatch.setattr(unigap.unimrg.trainer, "train_unimrg", lambda um, config, out, **kw: trained.append(
        (config.sentence_fraction, kw["data"])) or SimpleNamespace(out_dir=out))
    memo: dict = {}
    runner = SimpleNamespace(config=SimpleNamespace(unimrg_steps=2, unimrg_scenes=4, data_seed=0), model=lambda: None,
                             memo=lambda key, make: memo[key] if key in memo else memo.setdefault(key, make()),
                             run_dir=lambda name, seed: tmp_path / name, evaluate=lambda *args, **kw: None,
                             bar=lambda description, total: nullcontext(lambda done=None: None))
    for name in ("und-sft", "und-sft-word", "und-sft"):
        builders.unimrg(runner, name, 0)
    default = trained[0][0]
    assert built == [default, 0.0] and trained == [(default, ("data", default)), (0.0, ("data", 0.0)),
                                                   (default, ("data", default))]
