"""A default that an option's help states is the one its config gives: help text and dataclass cannot drift apart.

The CLI keeps its help free of torch (so `unigap --help` is fast) and therefore writes some defaults out; this test
reads every default stated in the help of the commands that build a config, in the forms the help uses: "(default
X", "; default X", "X (default)" or "X (..., the default" in a list of choices, "(default 3; quick 2)" (the study's
`--quick` preset) and "(default: dpo 150, sft/unimrg 300)" (one per objective of `train`), and checks each against
the field of that name.
"""

from __future__ import annotations

import re
from typing import Any

import click
import pytest

from unigap.cli import _click_command
from unigap.refine.grpo_config import GRPOConfig
from unigap.selfimprove.config import SelfImproveConfig
from unigap.study.config import FULL, QUICK
from unigap.train.config import TrainConfig
from unigap.train.sft_data import SFTConfig
from unigap.unimrg.config import UniMRGConfig

# command path -> the configs its flags fill, by the word its help names them with ("" = the default one)
CONFIGS: dict[tuple[str, ...], dict[str, Any]] = {
    ("refine", "train"): {"": GRPOConfig()},
    ("selfimprove",): {"": SelfImproveConfig()},
    ("study",): {"": FULL, "quick": QUICK},
    ("train",): {"": TrainConfig(strategy="joint"), "dpo": TrainConfig(strategy="joint"),
                 "sft": SFTConfig(gen_data="data.jsonl"), "unimrg": UniMRGConfig()},
}
FIELDS = {("refine", "train", "split"): "eval_split"}  # an option named apart from its field
WORDS = {"half-way": 0}  # a default the help spells in words (curriculum_at 0: half-way)
VALUE = r"[\w.\-]*\w"
STATED = re.compile(rf"[(;,] ?default:? (?P<value>{VALUE})(?![\w/ ]* {VALUE})"  # "(default X", "; default X"
                    rf"|(?P<listed>{VALUE}) \((?:[^()|]*\bthe )?default[);,]"  # "X (default)", "X (..., the default)"
                    rf"|[;,] (?P<preset>quick) (?P<preset_value>{VALUE})"  # "; quick 2"
                    rf"|(?:default: |, )(?P<objectives>[a-z/]+) (?P<per_objective>[0-9][\w.\-]*)")  # "dpo 150, ..."


def _command(path: tuple[str, ...]) -> click.Command:
    command = _click_command()
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def _stated_defaults() -> list:
    """(path, field, config key, stated value) for every default a help text states about a config field."""
    stated = []
    for path, configs in CONFIGS.items():
        for param in _command(path).params:
            field = FIELDS.get((*path, param.name), param.name)
            if not hasattr(configs[""], field):
                continue  # (not a config field: --out, --dtype, --methods)
            for match in STATED.finditer(getattr(param, "help", None) or ""):
                if match["objectives"]:
                    found = [(key, match["per_objective"]) for key in match["objectives"].split("/")]
                elif match["preset"]:
                    found = [(match["preset"], match["preset_value"])]
                else:
                    found = [("", match["value"] or match["listed"])]
                stated += [pytest.param(path, field, key, value, id=f"{' '.join(path)} --{param.name} {key} {value}")
                           for key, value in found]
    return stated


def test_the_commands_state_defaults_to_check() -> None:
    ids = {param.id for param in _stated_defaults()}
    assert len(ids) >= 25  # (the patterns still find them)
    for expected in ("train --steps sft 300", "study --seeds quick 2", "selfimprove --method  curriculum-sft",
                     "refine train --split  test", "study --nll_weight  0", "study --gen_kind  gen-model",
                     "refine train --stages  tree", "refine train --loss_type  bnpo", "refine train --reward  verifier",
                     "refine train --scale_rewards  none"):
        assert expected in ids


@pytest.mark.parametrize(("path", "field", "key", "value"), _stated_defaults())
def test_a_stated_default_is_the_configs(path: tuple[str, ...], field: str, key: str, value: str) -> None:
    actual = getattr(CONFIGS[path][key], field)
    stated: Any = WORDS.get(value, value)
    if isinstance(actual, (int, float)) and not isinstance(actual, bool):
        assert float(actual) == float(stated)
    else:
        assert str(actual) == stated
