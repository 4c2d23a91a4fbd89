"""`TrainConfig`: every knob of a multi-task DPO run, loadable from TOML.

Why a dataclass apart from the trainer (as TRL separates `DPOConfig` from `DPOTrainer`): the config is
saved next to the adapter and into checkpoints, so a run can be reproduced or resumed, and a resumed run
can refuse to continue under different settings.

Precedence: dataclass defaults < TOML file (flat keys named like the fields) < command-line flags.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from unigap.errors import UserError
from unigap.train.defaults import DPO_DEFAULTS
from unigap.train.dpo import LOSS_TYPES, DPOOptions
from unigap.train.names import STRATEGIES

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig:
    """A multi-task DPO run (steps, lr, β and the NLL weight: `unigap.train.defaults`, shared with the study; the
    rest: the multi-task DPO paper's settings, arXiv 2603.17044)."""

    strategy: str = "joint"
    steps: int = DPO_DEFAULTS.steps
    lr: float = DPO_DEFAULTS.lr
    beta: float = DPO_DEFAULTS.beta
    seed: int = 0
    loss_type: str = "sigmoid"
    length_normalize: bool = False
    nll_weight: float = DPO_DEFAULTS.nll_weight
    # generation pairs scored under CFG-mixed logits at this scale (policy and reference alike), the mixture images
    # are sampled from; 0 = conditional logits only
    gen_cfg_scale: float = 0.0
    lora_rank: int = 64
    lora_alpha: float = 128.0
    lora_dropout: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    joint_alpha: float = 0.5  # naive joint: w_U
    fixed_w_und: float = 0.93  # fixed-weight strategy: w_U
    reweight_every: int = 50  # grad-weighted: K
    checkpoint_every: int = 50
    batch_size: int = 1  # pairs per task per step (SPEC §1: one); data-parallel processes share them
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    bf16: bool = False  # bf16 autocast (TRL's bf16=True): float32 weights and optimiser, matmuls in bfloat16

    def __post_init__(self) -> None:
        check_field_types(self)
        STRATEGIES.lookup(self.strategy)
        check_ranges(self, positive=("steps", "lr", "beta", "lora_rank", "lora_alpha", "max_grad_norm",
                                     "reweight_every", "checkpoint_every", "batch_size"),
                     non_negative=("weight_decay", "nll_weight", "seed"), guidance=("gen_cfg_scale",))
        for name in ("joint_alpha", "fixed_w_und"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")

    @property
    def dpo(self) -> DPOOptions:
        """The loss options every task shares."""
        return DPOOptions(self.beta, self.loss_type, self.length_normalize, self.nll_weight,  # type: ignore[arg-type]
                          cfg_scale=self.gen_cfg_scale or None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, toml_file: Path | None = None, **overrides: Any) -> TrainConfig:
        """Defaults, then the TOML file's keys, then the overrides that are not None."""
        return load_config(cls, toml_file, overrides)


# TRL's names of settings unigap names otherwise (its others, `beta`, `loss_type`, `max_grad_norm`, ..., are TRL's)
TRL_NAMES = {"learning_rate": "lr", "max_steps": "steps", "save_steps": "checkpoint_every", "lora_r": "lora_rank",
             "r": "lora_rank", "per_device_train_batch_size": "batch_size"}


def load_config(cls: type[C], toml_file: Path | None, overrides: dict[str, Any]) -> C:
    """A config dataclass from its defaults, then a TOML file's flat keys (named like the fields), then the
    overrides that are not None; unknown keys and wrongly typed values are `UserError`s."""
    values: dict[str, Any] = {}
    if toml_file is not None:
        try:
            values = tomllib.loads(Path(toml_file).read_text(encoding="utf-8-sig"))  # (a BOM, as the data files)
        except (OSError, ValueError) as exc:  # (a TOMLDecodeError or UnicodeDecodeError, or an integer of more
            raise UserError(f"cannot read config {toml_file}: {exc}") from None  # digits than Python converts)
    values |= {key: value for key, value in overrides.items() if value is not None}
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        named = [f"{key} (unigap's {TRL_NAMES[key]})" if TRL_NAMES.get(key) in known else key for key in unknown]
        raise UserError(f"unknown config key(s) {', '.join(named)}; known: {', '.join(known)}")
    coerced = {name: _coerced(value, hints[name]) for name, value in values.items()}
    for name, value in coerced.items():
        if not _type_ok(value, hints[name]):
            raise UserError(f"config key {name} must be {_type_name(hints[name])}, got {values[name]!r}")
        if problem := _out_of_range(value):
            raise UserError(f"config key {name} {problem}")
    return cls(**coerced)


def _out_of_range(value: Any) -> str | None:
    """What no setting can be, whatever its field: an infinite or NaN float (TOML writes inf and nan), an integer
    beyond 64 bits (as the flags refuse: torch's seeds take 64 bits); an array's items alike."""
    if isinstance(value, tuple):
        problem = next(filter(None, map(_out_of_range, value)), None)
        return problem and f"(an item) {problem}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return f"does not fit in 64 bits, got {value!r}"
    return None


def _options(expected: Any) -> tuple[Any, ...] | None:
    """The types a union annotation (`float | None`) allows, or None for any other annotation."""
    return typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, types.UnionType) else None


def _element(expected: Any) -> Any:
    """The element type of a `tuple[X, ...]` annotation (the only tuple form config fields take)."""
    args = typing.get_args(expected)
    if len(args) != 2 or args[1] is not Ellipsis:
        raise TypeError(f"config fields are tuple[X, ...], not {expected}")
    return args[0]


def _type_ok(value: Any, expected: Any) -> bool:
    """Whether a value has its field's type; an int is a float here (lr = 1), a bool is not a number."""
    if (options := _options(expected)) is not None:
        return any(_type_ok(value, option) for option in options)
    if typing.get_origin(expected) is tuple:
        return isinstance(value, tuple) and all(_type_ok(item, _element(expected)) for item in value)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _coerced(value: Any, expected: Any) -> Any:
    """A TOML value in its field's form: an int where a float is meant (inside a union or an array too), an array
    (a list) as a tuple; anything else as it is, for `_type_ok` to judge."""
    if (options := _options(expected)) is not None:
        return next((_coerced(value, o) for o in options if _type_ok(_coerced(value, o), o)), value)
    if typing.get_origin(expected) is tuple and isinstance(value, list | tuple):
        return tuple(_coerced(item, _element(expected)) for item in value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # (beyond a float: infinite, which the finite check then names)
            return math.inf
    return value


NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
         bool: ("true or false", "booleans"), type(None): ("nothing", "nothings")}


def _type_name(expected: Any, plural: bool = False) -> str:
    """An annotation as a user reads it: `float | None` is "a number or nothing", `tuple[float, ...]` "an array of
    numbers"."""
    if (options := _options(expected)) is not None:
        return " or ".join(_type_name(option, plural) for option in options)
    if typing.get_origin(expected) is tuple:
        return f"an array of {_type_name(_element(expected), plural=True)}"
    name = getattr(expected, "__name__", str(expected))
    return NAMES.get(expected, (name, f"{name}s"))[plural]


def check_field(config: object, name: str, ok: bool, what: str) -> None:
    """A `UserError` naming the setting as a flag would ("lora-rank must be positive, got 0") unless `ok`."""
    if not ok:
        raise UserError(f"{name.replace('_', '-')} must {what}, got {getattr(config, name)}")


def check_ranges(config: object, positive: Sequence[str] = (), non_negative: Sequence[str] = (),
                 temperatures: Sequence[str] = (), guidance: Sequence[str] = ()) -> None:
    """Every config's range check in one form: each `positive` field > 0 and each `non_negative` one >= 0 (NaN fails
    both), else `check_field`'s one line; each of `temperatures` and `guidance` (a CFG scale) in the sampler's own
    range (`check_temperature`, `check_guidance_scale`), here, before a model loads and samples at it."""
    from unigap.model.decoding import check_temperature
    from unigap.model.generation import check_guidance_scale

    for name in positive:
        check_field(config, name, getattr(config, name) > 0, "be positive")
    for name in non_negative:
        check_field(config, name, getattr(config, name) >= 0, "be >= 0")
    for name in temperatures:
        check_temperature(getattr(config, name), name=name.replace("_", "-"))
    for name in guidance:
        check_guidance_scale(name.replace("_", "-"), getattr(config, name))


def check_field_types(config: Any) -> None:
    """A config built in Python gets the check a TOML file's values get: `TrainConfig(lr="1e-4")` or an lr of inf
    fails here, in one line naming the field, not as a TypeError deep inside a run (or as a seed JSON cannot record,
    or torch cannot take); and the same coercion: a list for an array field is kept as a tuple."""
    hints = typing.get_type_hints(type(config))
    for field in fields(config):
        value, expected = getattr(config, field.name), hints[field.name]
        coerced = _coerced(value, expected)  # a list where an array is meant (as from TOML), an int for a float
        if not _type_ok(value, expected):
            if not _type_ok(coerced, expected):
                raise UserError(f"{type(config).__name__}.{field.name} must be {_type_name(expected)}, got {value!r}")
            object.__setattr__(config, field.name, coerced)  # (the configs are frozen)
        if problem := _out_of_range(coerced):  # (an lr of inf sampled a whole pool, then stopped on a NaN loss; an
            # int for a float judged as the float it is read as, as from TOML)
            raise UserError(f"{type(config).__name__}.{field.name} {problem}")
