"""Rewarded soups of two adapters, exact on the weight deltas (SPEC §1 post-hoc method a).

Why not peft's `add_weighted_adapter(..., "linear")`: it mixes A and B separately, so the merged
ΔW = (λB_U + (1−λ)B_G)(λA_U + (1−λ)A_G) has cross terms and is not λΔW_U + (1−λ)ΔW_G. Here the soup is
written directly as a LoRA of rank r_U + r_G (the `cat` construction):

    A = [A_U; A_G],   B = [λ·s_U·B_U, (1−λ)·s_G·B_G],   scaling 1 (lora_alpha = rank)

so B·A = λ·s_U·B_U·A_U + (1−λ)·s_G·B_G·A_G = λΔW_U + (1−λ)ΔW_G exactly (s = lora_alpha / r). Fully
trained modules (`modules_to_save`: the generation head) are interpolated λ·W_U + (1−λ)·W_G. The result is
an ordinary PEFT adapter directory, loadable with `UnifiedModel.load_adapter`. Works on the saved files
only: no model is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from unigap.errors import UserError, first_line
from unigap.atomic import atomic_write_bytes, directory_atomically, write_json
from unigap.manifest import INPUTS_FILE, trained_on
from unigap.model.lora import (A_SUFFIX, ADAPTER_CONFIG, ADAPTER_WEIGHTS, B_SUFFIX, LORA_ALPHA, LORA_TENSOR,
                               check_adapter_files, check_ranks, read_adapter_config)
from unigap.train.names import SOUP_LAMBDAS

# settings that must agree for two adapters to be souped (rank and alpha may differ)
_MUST_MATCH = ("peft_type", "target_modules", "modules_to_save", "base_model_name_or_path", "bias")


def _read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = Path(directory)
    check_adapter_files(directory, weights=(ADAPTER_WEIGHTS,))  # (souping reads the safetensors format)
    config = read_adapter_config(directory)
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("peft_type") != "LORA":
        raise UserError(f"{directory}: only plain LoRA adapters (no rank/alpha patterns) can be souped")
    try:
        tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    except SafetensorError as exc:
        raise UserError(f"cannot read the adapter in {directory} (incomplete or corrupt?): {first_line(exc)}") from None
    check_ranks(directory, config, {key: tuple(tensor.shape) for key, tensor in tensors.items()})
    other = next((key for key in tensors if LORA_TENSOR.search(key) and not key.endswith((A_SUFFIX, B_SUFFIX))), None)
    if other is not None:  # (mixed as if trained in full, they would bring back the cross terms, or not load)
        raise UserError(f"{directory}: only plain LoRA adapters (factors of linear layers) can be souped; it holds "
                        f"{other}")
    return config, tensors


def lora_scaling(config: dict) -> float:
    """peft's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (lora_alpha absent: peft's default)."""
    rank = config["r"]
    return config.get("lora_alpha", LORA_ALPHA) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def delta_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """ΔW = B·A·scaling per LoRA module of a saved adapter (fp32), keyed by module path."""
    config, tensors = _read_adapter(directory)
    scale = lora_scaling(config)
    return {
        key[: -len(A_SUFFIX)]: tensors[key[: -len(A_SUFFIX)] + B_SUFFIX].float() @ tensors[key].float() * scale
        for key in tensors
        if key.endswith(A_SUFFIX)
    }


Adapter = tuple[dict, dict[str, torch.Tensor]]  # a saved adapter's config and tensors


def soup(und_dir: str | Path, gen_dir: str | Path, lam: float, out_dir: str | Path) -> Path:
    """Write the adapter λ·θ_U + (1−λ)·θ_G (exact on ΔW; generation head interpolated) to `out_dir`."""
    check_lambda(lam)
    return _write_soup(_matching_adapters(und_dir, gen_dir), lam, out_dir, _common_base(und_dir, gen_dir))


def _common_base(und_dir: str | Path, gen_dir: str | Path) -> str | None:
    """The base weights both adapters record (`unigap train`'s inputs record), which their soups record in turn, so
    that a soup applied to other weights (one of its adapters folded in already) is warned of as they are; None
    where either records none. `UserError` where they record different ones: the soup would mix two bases."""
    bases = [trained_on(d) for d in (und_dir, gen_dir)]
    if None in bases:
        return None
    if bases[0] != bases[1]:
        raise UserError(f"{und_dir} and {gen_dir} were trained on different base weights ({bases[0]} and {bases[1]})")
    return bases[0]


def _matching_adapters(und_dir: str | Path, gen_dir: str | Path) -> tuple[Adapter, Adapter]:
    """Both adapters, read and checked to be of one shape (a `UserError` otherwise)."""
    (config_u, tensors_u), (config_g, tensors_g) = _read_adapter(und_dir), _read_adapter(gen_dir)
    differ = [f"{key} {config_u.get(key)!r} and {config_g.get(key)!r}" for key in _MUST_MATCH
              if config_u.get(key) != config_g.get(key)
              and not (key == "base_model_name_or_path" and _same_base(config_u.get(key), config_g.get(key)))]
    if not differ and set(tensors_u) != set(tensors_g):
        differ = ["their tensors' names"]
    if not differ:  # (a base of another size under the same name: the soup's concatenation would fail)
        differ = [f"{key} {tuple(tensors_u[key].shape)} and {tuple(tensors_g[key].shape)}" for key in tensors_u
                  if _shape(key, tensors_u[key]) != _shape(key, tensors_g[key])][:1]
    if differ:
        raise UserError(f"{und_dir} and {gen_dir} are adapters of different bases or shapes: {'; '.join(differ)}")
    return (config_u, tensors_u), (config_g, tensors_g)


def _same_base(a: object, b: object) -> bool:
    """Whether two adapters' recorded bases are one checkpoint by another spelling: the shipped model's name and its
    path, or a relative and an absolute path to one folder (from here)."""
    from unigap.model.loading import resolve_checkpoint

    try:
        return resolve_checkpoint(str(a)).resolve() == resolve_checkpoint(str(b)).resolve()
    except UserError:  # (one no longer there, or never a checkpoint: the names are all there is to compare)
        return False


def _shape(key: str, tensor: torch.Tensor) -> tuple[int, ...]:
    """What two adapters of one base share in a tensor: all of it but the rank (A's rows, B's columns)."""
    if key.endswith(A_SUFFIX):
        return tuple(tensor.shape[1:])
    if key.endswith(B_SUFFIX):
        return (tensor.shape[0], *tensor.shape[2:])
    return tuple(tensor.shape)


def _write_soup(adapters: tuple[Adapter, Adapter], lam: float, out_dir: str | Path, base: str | None) -> Path:
    (config_u, tensors_u), (config_g, tensors_g) = adapters
    scale_u, scale_g = lam * lora_scaling(config_u), (1 - lam) * lora_scaling(config_g)
    merged: dict[str, torch.Tensor] = {}
    for key, u in tensors_u.items():
        g = tensors_g[key]
        if key.endswith(A_SUFFIX):
            merged[key] = torch.cat([u, g], dim=0)
        elif key.endswith(B_SUFFIX):
            merged[key] = torch.cat([u.float() * scale_u, g.float() * scale_g], dim=1).to(u.dtype)
        else:
            merged[key] = (lam * u.float() + (1 - lam) * g.float()).to(u.dtype)
    rank = config_u["r"] + config_g["r"]
    config = config_u | {"r": rank, "lora_alpha": rank, "use_rslora": False}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = save({key: t.contiguous() for key, t in merged.items()}, metadata={"format": "pt"})
    atomic_write_bytes(out / ADAPTER_WEIGHTS, lambda handle: handle.write(weights))
    atomic_write_bytes(out / ADAPTER_CONFIG, lambda handle: handle.write(json.dumps(config, indent=2).encode()))
    if base is None:  # (a soup rewritten in place: not the record of the adapters it was made of before)
        (out / INPUTS_FILE).unlink(missing_ok=True)
    else:
        write_json(out / INPUTS_FILE, {"model_weights": base})
    return out


def soups(
    und_dir: str | Path, gen_dir: str | Path, out_dir: str | Path, lambdas: tuple[float, ...] = SOUP_LAMBDAS
) -> list[Path]:
    """One soup per λ, in OUT/soup-{λ}; every λ is checked before any soup is written, a soup is never written
    over another, and each folder appears whole (weights and config) or not at all."""
    for lam in lambdas:
        check_lambda(lam)
    if Path(und_dir).resolve() == Path(gen_dir).resolve():
        raise UserError(f"--und and --gen are the same adapter ({und_dir}): every soup of it with itself is that "
                        "adapter")
    directories = [soup_directory(out_dir, lam) for lam in lambdas]
    if len(set(directories)) < len(directories):
        raise UserError(f"--lambda values {', '.join(map(str, lambdas))} name the same soup twice; give distinct "
                        "values")
    taken = [d.name for d in directories if d.exists() and (not d.is_dir() or any(d.iterdir()))]
    if taken:
        raise UserError(f"--out {out_dir} already holds {', '.join(taken)}; choose a new --out or other --lambda "
                        "values")
    adapters = _matching_adapters(und_dir, gen_dir)  # (before any folder is made: a refusal writes nothing)
    base = _common_base(und_dir, gen_dir)
    for lam, directory in zip(lambdas, directories, strict=True):
        with directory_atomically(directory) as staging:
            _write_soup(adapters, lam, staging, base)
    return directories


def check_lambda(lam: float) -> None:
    """`UserError` unless λ (the und-only adapter's weight in a soup) lies in [0, 1]."""
    if not 0 <= lam <= 1:
        raise UserError(f"λ must lie in [0, 1], got {lam}")


def soup_directory(out_dir: str | Path, lam: float) -> Path:
    """Where `soups` writes the soup of weight λ."""
    return Path(out_dir) / f"soup-{lam:g}"
