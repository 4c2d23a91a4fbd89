"""Every run config checks its field types when built in Python, as a TOML file's values are checked: a wrong type
fails at construction in one line naming the field, not deep inside a run."""

from __future__ import annotations

import dataclasses
import re
import typing

import numpy as np
import pytest

from unigap.errors import UserError
from unigap.pretrain.config import PretrainConfig
from unigap.refine.grpo_config import GRPOConfig
from unigap.refine.run import RefineConfig
from unigap.selfimprove.config import SelfImproveConfig
from unigap.study.config import StudyConfig
from unigap.study.tune import TuneConfig
from unigap.train.config import TrainConfig
from unigap.train.sft_data import SFTConfig
from unigap.unimrg.config import UniMRGConfig

CONFIGS = [(TrainConfig, {"strategy": "joint"}), (SFTConfig, {"gen_data": "captions.jsonl"}), (UniMRGConfig, {}),
           (SelfImproveConfig, {}), (GRPOConfig, {}), (RefineConfig, {}), (PretrainConfig, {}), (TuneConfig, {}),
           (StudyConfig, {})]


def _first(cls: type, *kinds: object) -> tuple[str, str]:
    """The first field of the first of `kinds` the config has, and that kind as the error names it."""
    hints = typing.get_type_hints(cls)
    for kind in kinds:
        for field in dataclasses.fields(cls):
            if hints[field.name] == kind:
                return field.name, re.escape(kind.__name__ if isinstance(kind, type) else str(kind))
    raise AssertionError(f"{cls.__name__} has no field of {kinds}")


@pytest.mark.parametrize(("cls", "required"), CONFIGS, ids=[cls.__name__ for cls, _ in CONFIGS])
def test_a_config_refuses_a_wrong_type(cls: type, required: dict) -> None:
    (count, _), (rate, rate_type) = _first(cls, int), _first(cls, float, tuple[float, ...])
    default = cls(**required)
    with pytest.raises(UserError, match=rf"^{cls.__name__}\.{count} must be int, got '3'$"):
        cls(**required, **{count: "3"})
    with pytest.raises(UserError, match=rf"{cls.__name__}\.{count} must be int, got True"):
        cls(**required, **{count: True})
    with pytest.raises(UserError, match=rf"{cls.__name__}\.{count} must be int"):
        cls(**required, **{count: np.int64(getattr(default, count))})  # JSON could not record it
    with pytest.raises(UserError, match=rf"{cls.__name__}\.{rate} must be {rate_type}, got '0.1'"):
        cls(**required, **{rate: "0.1"})


def test_ints_for_floats_and_optional_and_tuple_fields() -> None:
    assert TrainConfig(strategy="joint", beta=1).beta == 1  # TOML and Python alike write lr = 1
    assert PretrainConfig(vq_merge_similarity=None).vq_merge_similarity is None
    with pytest.raises(UserError, match=r"PretrainConfig\.vq_merge_similarity must be float \| None, got '0.9'"):
        PretrainConfig(vq_merge_similarity="0.9")
    assert TuneConfig(lrs=[1e-5, 3e-5]).lrs == [1e-5, 3e-5]  # a list where a tuple is declared reads the same
    with pytest.raises(UserError, match=r"TuneConfig\.lrs must be tuple\[float, \.\.\.\], got \('fast',\)"):
        TuneConfig(lrs=("fast",))
