"""Every run config checks its field types when built in Python, as a TOML file's values are checked: a wrong type
fails at construction in one line naming the field, not deep inside a run."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest

from unigap.errors import UserError
from unigap.pretrain.config import PretrainConfig
from unigap.refine.grpo_config import GRPOConfig
from unigap.refine.run import RefineConfig
from unigap.selfimprove.config import SelfImproveConfig
from unigap.study.config import StudyConfig
from unigap.study.tune import TuneConfig
from unigap.train.config import TrainConfig, check_field_types, load_config
from unigap.train.sft_data import SFTConfig
from unigap.unimrg.config import UniMRGConfig

CONFIGS = [(TrainConfig, {"strategy": "joint"}), (SFTConfig, {"gen_data": "captions.jsonl"}), (UniMRGConfig, {}),
           (SelfImproveConfig, {}), (GRPOConfig, {}), (RefineConfig, {}), (PretrainConfig, {}), (TuneConfig, {}),
           (StudyConfig, {})]
NAMES = {int: "an integer", float: "a number", tuple[float, ...]: "an array of numbers"}


def _first(cls: type, *kinds: object) -> tuple[str, str]:
    """The first field of the first of `kinds` the config has, and that kind as the error names it."""
    hints = typing.get_type_hints(cls)
    for kind in kinds:
        for field in dataclasses.fields(cls):
            if hints[field.name] == kind:
                return field.name, NAMES[kind]
    raise AssertionError(f"{cls.__name__} has no field of {kinds}")


@pytest.mark.parametrize(("cls", "required"), CONFIGS, ids=[cls.__name__ for cls, _ in CONFIGS])
def test_a_config_refuses_a_wrong_type(cls: type, required: dict) -> None:
    (count, _), (rate, rate_type) = _first(cls, int), _first(cls, float, tuple[float, ...])
    default = cls(**required)
    with pytest.raises(UserError, match=rf"^{cls.__name__}\.{count} must be an integer, got '3'$"):
        cls(**required, **{count: "3"})
    with pytest.raises(UserError, match=rf"{cls.__name__}\.{count} must be an integer, got True"):
        cls(**required, **{count: True})
    with pytest.raises(UserError, match=rf"{cls.__name__}\.{count} must be an integer"):
        cls(**required, **{count: np.int64(getattr(default, count))})  # JSON could not record it
    with pytest.raises(UserError, match=rf"{cls.__name__}\.{rate} must be {rate_type}, got '0.1'"):
        cls(**required, **{rate: "0.1"})


def test_ints_for_floats_and_optional_and_tuple_fields() -> None:
    assert TrainConfig(strategy="joint", beta=1).beta == 1  # TOML and Python alike write lr = 1
    assert PretrainConfig(vq_merge_similarity=None).vq_merge_similarity is None
    with pytest.raises(UserError, match=r"PretrainConfig\.vq_merge_similarity must be a number or nothing, got '0.9'"):
        PretrainConfig(vq_merge_similarity="0.9")
    tuned = TuneConfig(lrs=[1e-5, 1])  # a list, as a TOML array reads: kept as a tuple, so the config hashes
    assert tuned.lrs == (1e-5, 1.0) and isinstance(tuned.lrs[1], float) and hash(tuned)
    from unigap.study import StudyConfig

    assert StudyConfig(methods=["und-only"]).methods == ("und-only",)
    with pytest.raises(UserError, match=r"TuneConfig\.lrs must be an array of numbers, got \('fast',\)"):
        TuneConfig(lrs=("fast",))


@dataclasses.dataclass(frozen=True)
class _Shapes:
    budget: float | None = None
    rates: tuple[float, ...] = (0.1,)

    def __post_init__(self) -> None:
        check_field_types(self)


def test_a_toml_file_fills_optional_and_array_fields_in_their_types(tmp_path: Path) -> None:
    toml = tmp_path / "shapes.toml"
    toml.write_text("budget = 1\nrates = [1, 0.5]\n")
    loaded = load_config(_Shapes, toml, {})
    assert loaded == _Shapes(budget=1.0, rates=(1.0, 0.5)) and isinstance(loaded.budget, float)
    assert isinstance(loaded.rates[0], float) and hash(loaded)
    toml.write_text('rates = ["fast"]\n')
    with pytest.raises(UserError, match=r"config key rates must be an array of numbers, got \['fast'\]"):
        load_config(_Shapes, toml, {})


@pytest.mark.parametrize(("value", "message"), [
    ("1" + "0" * 400, "config key lr must be a finite number, got inf"),  # (an OverflowError from float())
    (str(2**1024 - 1), "config key lr must be a finite number, got inf"),  # (below 2**1024, still past a float)
    ("9" * 5000, "cannot read config .*Exceeds the limit"),  # (tomllib's plain ValueError)
])
def test_a_toml_number_too_large_is_one_line(tmp_path: Path, value: str, message: str) -> None:
    from unigap.train.config import TrainConfig

    toml = tmp_path / "big.toml"
    toml.write_text(f"lr = {value}\n")
    with pytest.raises(UserError, match=message):
        TrainConfig.load(toml, strategy="joint")
