"""The generic registry every concept uses (arms, judges, strategies): one name once, one error for unknown names,
lazy targets."""

from __future__ import annotations

import sys

import pytest

from unigap.arms import ARMS
from unigap.errors import UserError
from unigap.evaluate.judges import JUDGES, LOCAL_JUDGES
from unigap.registry import Registry, load
from unigap.train.names import STRATEGIES


def test_a_registry_keeps_order_and_reads_like_a_mapping() -> None:
    colours: Registry[int] = Registry("colour")
    assert colours.register("deep-red", 1) == 1
    colours.register("blue", 2)
    assert list(colours) == ["deep-red", "blue"] and dict(colours.items()) == {"deep-red": 1, "blue": 2}
    assert "blue" in colours and "green" not in colours and len(colours) == 2 and colours["blue"] == 2
    assert colours.lookup("blue") == 2


def test_a_name_registers_once_and_well_formed() -> None:
    colours: Registry[int] = Registry("colour")
    colours.register("red", 1)
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        colours.register("red", 2)
    for bad in ("Red", "red green", "red_green", "-red", ""):
        with pytest.raises(ValueError, match="lowercase words"):
            colours.register(bad, 3)
    assert dict(colours.items()) == {"red": 1}


def test_an_unknown_name_is_one_user_error_with_the_closest_name() -> None:
    colours: Registry[int] = Registry("colour")
    for name in ("red", "green", "blue"):
        colours.register(name, 0)
    with pytest.raises(UserError) as error:
        colours.lookup("gren")
    assert str(error.value) == "unknown colour 'gren' (did you mean 'green'?); expected one of red, green, blue"
    with pytest.raises(UserError, match="^unknown colour 'purple'; expected one of red, green, blue$"):
        colours.lookup("purple")
    with pytest.raises(UserError, match="^unknown colour 'red'; expected one of green, blue$"):
        colours.lookup("red", choices=["green", "blue"])  # registered, but not allowed here


def test_lazy_targets_import_only_when_loaded() -> None:
    assert load("unigap.registry:Registry") is Registry
    for bad in ("unigap.registry", ":Registry", "unigap.registry:"):
        with pytest.raises(ValueError, match="module:attr"):
            load(bad)


@pytest.mark.parametrize("command", [["--help"], ["study", "--help"], ["train", "--help"], ["eval", "--help"]])
def test_the_command_lines_help_lists_names_without_importing_torch(command: list[str]) -> None:
    """The help lists arms, strategies and judges from registries whose entries are torch-free or lazy."""
    import subprocess

    code = ("import sys\nfrom unigap.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True)
    assert "Usage" in done.stdout and done.stderr.strip().splitlines()[-1] == "False"


def test_the_report_and_the_statistics_load_without_torch() -> None:
    """They read results JSON; `unigap.evaluate` and `unigap.study` import their model-bound names on first use."""
    import subprocess

    code = ("import sys\nimport unigap.report, unigap.evaluate.stats, unigap.study.results\n"
            "from unigap.evaluate import summarize\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    import unigap.evaluate

    assert unigap.evaluate.evaluate.__module__ == "unigap.evaluate.run"
    with pytest.raises(AttributeError, match="module 'unigap.evaluate' has no attribute 'no_such_name'"):
        unigap.evaluate.no_such_name  # noqa: B018


@pytest.mark.parametrize("registry", [ARMS, JUDGES, LOCAL_JUDGES, STRATEGIES], ids=lambda r: r.concept)
def test_every_builtin_registry_fails_unknown_names_the_same_way(registry: Registry) -> None:
    assert len(registry) >= 2
    with pytest.raises(UserError, match=f"^unknown {registry.concept} 'no-such-name'"):
        registry.lookup("no-such-name")


def test_a_judge_is_found_by_the_name_it_registered_under(monkeypatch: pytest.MonkeyPatch) -> None:
    """A judge registered as 'my-judge' whose own name differed was refused as "the model's own judge", with the
    verifier listed twice."""
    from unigap.evaluate.judges import Judge, get_judge

    monkeypatch.setattr(JUDGES, "_entries", dict(JUDGES))
    mine = JUDGES.register("my-judge", Judge("mine", lambda um, images, specs: [1.0] * len(images), independent=True,
                                             threshold=0.5))
    assert get_judge("my-judge", independent=True) is mine
    with pytest.raises(UserError, match="self-pyes is the model's own judge, not an independent one; expected one "
                                        "of verifier, my-judge, clip:DIR, vlm:DIR$"):
        get_judge("self-pyes", independent=True)


def test_a_local_judge_kind_of_a_users_may_load_a_directory_without_a_transformers_config(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind's directory had to hold a config.json: an open_clip or a .pt checkpoint could not be registered."""
    from unigap.evaluate.judges import Judge, _local_judge, get_judge

    monkeypatch.setattr(LOCAL_JUDGES, "_entries", dict(LOCAL_JUDGES))
    seen = []

    def mine(name, path):
        seen.append(path)
        return Judge(name, lambda um, images, specs: [1.0] * len(images), independent=True, threshold=0.5)

    LOCAL_JUDGES.register("toykind", mine)
    (tmp_path / "weights.pt").write_bytes(b"")
    judge = get_judge(f"toykind:{tmp_path}", independent=True)
    _local_judge.cache_clear()
    assert judge.name == f"toykind:{tmp_path}" and seen == [tmp_path]
    with pytest.raises(UserError, match=r"clip judge directory .* holds no model \(no config.json\)"):
        get_judge(f"clip:{tmp_path}")
