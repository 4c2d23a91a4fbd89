"""LoRA on the shared LLM (peft), with the generation head fully trainable.

The SigLIP tower also has `q_proj/k_proj/v_proj`, so the targets are a regex anchored on
`language_model.layers.N` — a plain name list would put LoRA into the vision tower too. peft injects
the LoRA layers in place, so the wrapped `JanusForConditionalGeneration` keeps its module paths and
every UnifiedModel method runs the adapted model; `disable_adapter()` gives the base (reference) model.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module  # (torch.func.functional_call's own)
from torch.utils._pytree import tree_map
from transformers import JanusForConditionalGeneration

from unigap.errors import UserError, first_line
from unigap.model.decoding import is_number
from unigap.world.scene import check_integer

LM_LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
GENERATION_HEAD = "generation_head"

# peft 0.21 asks transformers 5.x for `is_gradient_checkpointing`, which transformers deprecates with a
# FutureWarning on every adapter: a known, harmless warning that would land between progress bars.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)

_LORA_PARAM = re.compile(r"language_model\.layers\.(\d+)\..*\.(lora_A|lora_B)\.")


def attach_lora(
    model: JanusForConditionalGeneration,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: str | list[str],
    train_generation_head: bool,
    trained_modules: Sequence[str] = (),
) -> PeftModel:
    """Wrap `model` with a fresh LoRA adapter named "default" (B = 0, so outputs start unchanged); the generation
    head and `trained_modules` (names of `model.model`'s children) train in full as peft `modules_to_save`, with
    float32 master weights like the LoRA factors (`train_in_float32`)."""
    check_integer("LoRA rank", rank)
    if not (is_number(alpha) and 0 < alpha < math.inf):
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")  # (saved NaN: refused on loading)
    if not (is_number(dropout) and 0 <= dropout < 1):  # (None or "0.1": a TypeError naming no argument)
        raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout!r}")
    if not (isinstance(target_modules, str) or isinstance(target_modules, Sequence)
            and all(isinstance(name, str) for name in target_modules)):
        raise ValueError(f"LoRA target_modules must be a module name pattern or a list of names, got "
                         f"{target_modules!r}")
    parts = dict(model.model.named_children())
    unknown = [name for name in trained_modules if name not in parts]
    if unknown:
        raise ValueError(f"trained_modules {unknown} name no part of this model; its parts: {', '.join(parts)}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        # anchored: PEFT matches by suffix, and `aligner` alone would take `generation_aligner` with it
        modules_to_save=[*([GENERATION_HEAD] if train_generation_head else []),
                         *(f"model.{name}" for name in trained_modules)] or None,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    _fully_trained_in_float32(peft_model)  # (peft keeps the LoRA factors float32)
    return peft_model


def _fully_trained_in_float32(peft_model: PeftModel) -> bool:
    """`train_in_float32` on every part trained in full; whether any was not float32 already."""
    wrappers = [m for m in peft_model.modules() if isinstance(m, ModulesToSaveWrapper)]
    return any([train_in_float32(wrapper.modules_to_save["default"]) for wrapper in wrappers])


def train_in_float32(module: nn.Module) -> bool:
    """Keep float32 master weights for a module trained in full over bfloat16 (or float16) weights: an AdamW step on
    a bfloat16 weight rounds away any update below half its spacing, at lr 1e-4 that of every weight above ~0.03 in
    size, most of the generation head's. The module still computes in the weights' own dtypes, on its master weights
    rounded to them (gradients reach the float32 copies), so a fresh adapter computes exactly what the base does:
    computed in float32, DPO's log-ratios and GRPO's KL started off zero. Floating inputs are cast to that dtype, so
    the model around it runs as before. Returns whether it changed anything (False: float32 already)."""
    dtype = next(module.parameters()).dtype
    if dtype == torch.float32:
        return False
    for sub in module.modules():  # each rounds its own weights and its children's: activation checkpointing runs a
        dtypes = {name: tensor.dtype for name, tensor in _floating(sub)}  # layer again outside its parent's forward
        if dtypes:
            sub._master_dtypes = dtypes
            sub.forward = _RoundedForward(sub)
    module._input_dtype = dtype
    module.float()
    return True


def _floating(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, t) for name, t in (*module.named_parameters(), *module.named_buffers()) if t.is_floating_point()]


class _RoundedForward:
    """A module's own forward on its master weights rounded to the dtypes they were loaded in (`train_in_float32`).
    An object holding the module rather than a bound method: a deep copy or a pickle of the module carries it along,
    pointing at the copy (a bound method pickles as a lookup of its function's name on the module, which fails)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: object, **kwargs: object) -> object:
        module = self.module
        dtype = getattr(module, "_input_dtype", None)
        if dtype is not None:
            args, kwargs = tree_map(lambda v: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v,
                                    (args, kwargs))
        rounded = {name: tensor.to(module._master_dtypes.get(name, tensor.dtype)) for name, tensor in _floating(module)}
        with _reparametrize_module(module, rounded):
            return type(module).forward(module, *args, **kwargs)


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # a saved PEFT adapter's files
LORA_ALPHA = 8  # peft's LoraConfig default, for a config that leaves it out
LEGACY_WEIGHTS = "adapter_model.bin"  # PEFT's pickle format (save_pretrained(safe_serialization=False))
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"  # a LoRA layer's two factors in a saved adapter
LORA_TENSOR = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\b")  # PEFT's names of its tensors


def check_adapter_files(directory: str | Path, weights: tuple[str, ...] = (ADAPTER_WEIGHTS, LEGACY_WEIGHTS)) -> None:
    """`UserError` unless `directory` holds a saved adapter's config and one of its `weights` files: PEFT looks for a
    missing one on the hub."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file() or not any((directory / name).is_file() for name in weights):
        raise UserError(f"{directory} holds no PEFT adapter ({ADAPTER_CONFIG} + {' or '.join(weights)})")


def adapter_fingerprint(directory: str | Path) -> str:
    """sha256 of a saved adapter's own files (config and weights), not of whatever else its folder holds: a run may
    write its outputs there (`generate --adapter runs/a --out runs/a/geneval`), which must not change the adapter."""
    from unigap.atomic import file_fingerprint

    files = [Path(directory) / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LEGACY_WEIGHTS)]
    present = [file for file in files if file.is_file()]
    return "".join(file_fingerprint(file) for file in present) if present else file_fingerprint(directory)


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """A saved adapter's `adapter_config.json`; `UserError` naming it when it is no readable JSON object."""
    path = Path(directory) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # (ValueError: a JSONDecodeError, or an integer too long to convert)
        raise UserError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(config).__name__}")
    alpha = config.get("lora_alpha", LORA_ALPHA)  # (NaN: a merged checkpoint of NaN weights, written with exit 0)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise UserError(f"{path}: lora_alpha must be a number, got {alpha!r}")
    return config


def _tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of a saved adapter's tensors, read without their values (a safetensors header, or a legacy `.bin`
    loaded onto the meta device)."""
    weights, legacy = directory / ADAPTER_WEIGHTS, directory / LEGACY_WEIGHTS
    try:
        if weights.is_file():
            with safe_open(str(weights), "pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        return {key: tuple(t.shape) for key, t in torch.load(legacy, map_location="meta", weights_only=True).items()}
    except (SafetensorError, OSError, RuntimeError, pickle.UnpicklingError, AttributeError, EOFError) as exc:
        raise UserError(f"cannot read the adapter in {directory} (incomplete or corrupt?): {first_line(exc)}") from None


def check_ranks(directory: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """`UserError` unless the adapter's LoRA factors have the rank its config says (no `rank_pattern`): PEFT would
    fail halfway through wrapping a model with it, and a soup of it would be written, then fail to load."""
    ranks = {shape[0] for key, shape in shapes.items() if key.endswith(A_SUFFIX)}
    if not config.get("rank_pattern") and ranks - {config.get("r")}:
        raise UserError(f"{directory}: its weights have rank {', '.join(map(str, sorted(ranks)))} but "
                        f"{ADAPTER_CONFIG} says r = {config.get('r')}")


def check_adapter_fits(model: nn.Module, directory: str | Path) -> None:
    """`UserError` when a saved adapter does not fit `model` (another base model's adapter), checked before PEFT wraps
    the model, whose failure would leave it half-wrapped: a LoRA factor of a layer this model lacks, or whose inner
    side differs from its linear layer's or whose rank is not its config's `r`, or a tensor trained in full of
    another shape or with no place here. Reads the tensors' shapes only; factors of other layer types (embedding,
    convolution) are left to PEFT."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    shapes = _tensor_shapes(directory)
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    check_ranks(directory, config, shapes)
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        marker = LORA_TENSOR.search(name)
        if marker is None:  # (a targeted embedding's own weight is saved under its LoRA layer's `base_layer`)
            name = name.replace(".base_layer.", ".")
            expected = tuple(params[name].shape) if name in params else None
        else:
            layer = modules.get(name[: marker.start()])
            if isinstance(layer, nn.Linear) and marker.group(1) in ("A", "B") and len(shape) == 2:  # (not a bias)
                expected = (shape[0], layer.in_features) if marker.group(1) == "A" else (layer.out_features, shape[1])
            else:
                expected = None if layer is None else shape
        if expected != shape:
            here = "has no place in this model" if expected is None else f"is {list(expected)} in this model"
            raise UserError(f"the adapter in {directory} does not fit this model: {name} is {list(shape)} in the "
                            f"adapter and {here} (an adapter of another base model?)")


def load_lora(model: JanusForConditionalGeneration, directory: str | Path, trainable: bool) -> PeftModel:
    """Wrap `model` with an adapter saved by `PeftModel.save_pretrained` (standard PEFT format), its parts trained in
    full with float32 master weights as they were trained (`train_in_float32`), their saved float32 weights loaded as
    saved: over bfloat16 weights PEFT's copies in the base's dtype would round them, and a resumed run would train on
    from the rounded weights. `UserError` for a directory without one, or with an unreadable one."""
    check_adapter_files(directory)
    check_adapter_fits(model, directory)  # before PEFT wraps the model: a failure there leaves it half-wrapped
    trained = {name: param.requires_grad for name, param in model.named_parameters()}  # (PEFT freezes them)
    try:
        peft_model = PeftModel.from_pretrained(model, str(directory), is_trainable=trainable)
        weights = Path(directory) / ADAPTER_WEIGHTS
        if _fully_trained_in_float32(peft_model) and weights.is_file():  # (a legacy .bin adapter: PEFT's own load)
            set_peft_model_state_dict(peft_model, load_file(weights))  # the upcast copies hold rounded weights
    except Exception as exc:  # noqa: BLE001 - whatever PEFT met after it began wrapping: the model is given back whole
        _unwrap(model)
        for name, param in model.named_parameters():
            param.requires_grad_(trained.get(name, param.requires_grad))
        raise UserError(f"cannot apply the adapter in {directory}: {first_line(exc)}") from None
    return peft_model


def _unwrap(model: nn.Module) -> None:
    """`model` as it was before PEFT began wrapping it: each LoRA layer and each trained-in-full wrapper replaced by
    the module it wraps, PEFT's config on it dropped (what a failed `PeftModel.from_pretrained` leaves behind)."""
    while True:  # outermost first: a wrapper inside another is found again, under its new name, on a later pass
        wrappers = [(name, module) for name, module in model.named_modules()
                    if isinstance(module, ModulesToSaveWrapper | LoraLayer)]
        if not wrappers:
            break
        name, module = wrappers[0]
        inner = module.original_module if isinstance(module, ModulesToSaveWrapper) else module.get_base_layer()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, inner)
    if "peft_config" in vars(model):
        del model.peft_config


@dataclass
class LoraParameterGroups:
    """The shared (LLM) LoRA parameters, by decoder layer and by factor (A or B).

    `names` and `parameters` are in model order; `by_layer` / `by_factor` hold the same tensors.
    The generation head is *not* shared (only generation uses it), so it is left out on purpose.
    """

    names: list[str] = field(default_factory=list)
    parameters: list[nn.Parameter] = field(default_factory=list)
    by_layer: dict[int, list[nn.Parameter]] = field(default_factory=dict)
    by_factor: dict[str, list[nn.Parameter]] = field(default_factory=lambda: {"lora_A": [], "lora_B": []})


def shared_lora_parameters(model: nn.Module) -> LoraParameterGroups:
    """Collect the trainable LoRA tensors of the LLM's decoder layers."""
    groups = LoraParameterGroups()
    for name, param in model.named_parameters():
        match = _LORA_PARAM.search(name)
        if match is None or not param.requires_grad:
            continue
        layer, factor = int(match.group(1)), match.group(2)
        groups.names.append(name)
        groups.parameters.append(param)
        groups.by_layer.setdefault(layer, []).append(param)
        groups.by_factor[factor].append(param)
    return groups
