"""A default that an option's help states is the one its config gives: help text and dataclass cannot drift apart.

The CLI keeps its help free of torch (so `unigap --help` is fast) and therefore writes some defaults as numbers; this
test reads every "(default X" in the help of the commands that build a config, and checks X against the field of the
same name."""

from __future__ import annotations

import re

import click
import pytest

from unigap.cli import _click_command
from unigap.refine.grpo_config import GRPOConfig
from unigap.selfimprove.config import SelfImproveConfig
from unigap.study.config import FULL, QUICK
from unigap.train.config import TrainConfig

# command path -> the config its flags fill (with `--quick`, the study's other preset)
CONFIGS = {
    ("refine", "train"): (GRPOConfig(), None),
    ("selfimprove",): (SelfImproveConfig(), None),
    ("study",): (FULL, QUICK),
    ("train",): (TrainConfig(strategy="joint"), None),
}
NUMBER = r"-?[0-9][0-9.e-]*(?<![.e-])"
DEFAULT = re.compile(rf"\(default (?P<default>{NUMBER})(?:[;,] quick (?P<quick>{NUMBER}))?")


def _command(path: tuple[str, ...]) -> click.Command:
    command = _click_command()
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def _stated_defaults() -> list:
    stated = []
    for path in CONFIGS:
        for param in _command(path).params:
            match = DEFAULT.search(getattr(param, "help", None) or "")
            if match:
                stated.append(pytest.param(path, param.name, match["default"], match["quick"],
                                           id=f"{' '.join(path)} --{param.name}"))
    return stated


def test_the_commands_state_defaults_to_check() -> None:
    assert len(_stated_defaults()) >= 10  # (the pattern still finds them)


@pytest.mark.parametrize(("path", "name", "default", "quick"), _stated_defaults())
def test_a_stated_default_is_the_configs(path: tuple[str, ...], name: str, default: str, quick: str | None) -> None:
    config, quick_config = CONFIGS[path]
    assert float(getattr(config, name)) == float(default)
    if quick is not None:
        assert float(getattr(quick_config, name)) == float(quick)
