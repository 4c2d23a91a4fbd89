"""The checkpoint sidecar: which prompt convention and pixel statistics a checkpoint uses.

A checkpoint is a transformers-format directory (config + safetensors + tokenizer files, optionally a
preprocessor config and generation config). unigap adds one small sidecar, `unigap.json`, saying which
prompt convention the model was trained with, whether it was trained to edit images (`editing`) and how an edit
reads its source image (`edit_source`: the vision tower, or the source's VQ ids; `unigap.model.editing`), and,
for models without a preprocessor config, the pixel mean/std. A directory without the sidecar is a
Janus-Pro checkpoint converted by transformers (no editing).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import JanusForConditionalGeneration, PreTrainedTokenizerBase

from unigap.atomic import files_atomically, write_text_atomically
from unigap.errors import UserError
from unigap.model.editing import EDIT_SOURCES, check_edit_source
from unigap.model.prompts import JANUS_PRO_TEMPLATE, TEMPLATES

SIDECAR = "unigap.json"


def read_sidecar(directory: Path) -> dict:
    """The `unigap.json` settings of a checkpoint; Janus-Pro defaults when the file is absent."""
    sidecar_file = directory / SIDECAR
    settings: dict = {}
    if sidecar_file.is_file():
        try:
            settings = json.loads(sidecar_file.read_text())
        except ValueError as exc:  # (a JSONDecodeError, or an integer of more digits than Python converts)
            raise UserError(f"{sidecar_file} is not valid JSON: {exc}") from exc
        if not isinstance(settings, dict):
            raise UserError(f"{sidecar_file} must hold a JSON object, got {type(settings).__name__}")
    template = settings.setdefault("template", JANUS_PRO_TEMPLATE)
    if template not in TEMPLATES:
        raise UserError(f"{sidecar_file}: unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")
    source = settings.setdefault("edit_source", "vision")  # sidecars written before it existed: the vision tower
    if source not in EDIT_SOURCES:
        raise UserError(f"{sidecar_file}: unknown edit_source {source!r}; expected one of {', '.join(EDIT_SOURCES)}")
    for key in ("editing", "use_default_system_prompt"):  # ("false" would read as true)
        if key in settings and not isinstance(settings[key], bool):
            raise UserError(f"{sidecar_file}: {key} must be true or false, got {json.dumps(settings[key])}")
    return settings


def save_checkpoint(
    model: JanusForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | os.PathLike,
    *,
    template: str,
    image_mean: float | tuple[float, float, float],
    image_std: float | tuple[float, float, float],
    editing: bool = False,
    edit_source: str = "vision",
    use_default_system_prompt: bool = True,
) -> Path:
    """Write weights, configs, tokenizer and the `unigap.json` sidecar so `load_model` can read them back
    (`use_default_system_prompt`: a converted checkpoint's processor setting, which has no other file here). The
    sidecar goes first and every other file is renamed into place whole (`files_atomically`): a kill never leaves
    weights that load without it, as a Janus-Pro checkpoint under the wrong prompt template, or a torn file."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")
    check_edit_source(edit_source)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "template": template,
        "image_mean": list(image_mean) if isinstance(image_mean, tuple | list) else [image_mean] * 3,
        "image_std": list(image_std) if isinstance(image_std, tuple | list) else [image_std] * 3,
        "editing": editing,
        "edit_source": edit_source,
        "use_default_system_prompt": use_default_system_prompt,
    }
    write_text_atomically(directory / SIDECAR, json.dumps(settings, indent=2))
    with files_atomically(directory) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return directory


FINGERPRINT_VALUES = 256  # taken from each end of each parameter by `model_fingerprint`


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model as it is in memory (base weights, any adapter, their dtype): each parameter's name,
    shape and dtype and its first and last `FINGERPRINT_VALUES` values. Why: a run resumed from Python, where no
    checkpoint path says which model made its finished parts, must tell another model (or the same one with another
    adapter) from its own. Like `weights_fingerprint` it samples: two trainings differ at the ends of every tensor, a
    hand edit confined to a tensor's middle would go unnoticed."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            ends = torch.cat([flat[:FINGERPRINT_VALUES], flat[-FINGERPRINT_VALUES:]]).float().cpu()
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}:".encode())
            digest.update(ends.numpy().tobytes())
    return digest.hexdigest()[:16]


def model_identity(um: Any) -> dict[str, str | None]:
    """What a resumed run records of its model: `model`, its `fingerprint()`, and `model_dtype`, which also tells
    a refusal's reader why the fingerprints differ when only the dtype does (a GPU's bf16 default against a CPU's
    fp32). None for a model-like object without them (a user's own `Refinable`): unknown, not refused."""
    fingerprint = getattr(um, "fingerprint", None)
    dtype = getattr(um, "dtype", None)
    return {"model": fingerprint() if callable(fingerprint) else None,
            "model_dtype": None if dtype is None else dtype_name(dtype)}


def dtype_name(dtype: Any) -> str:
    """`bfloat16` for torch.bfloat16: how run records name a dtype."""
    return str(dtype).removeprefix("torch.")


FINGERPRINT_BYTES = 1 << 20  # read from each end of each weights file


def weights_fingerprint(directory: str | os.PathLike) -> str:
    """A short hash of a checkpoint's weights: each safetensors file's name, size, first and last MiB.

    Why: a resumed study must not mix results of two different models saved under one name (a
    retrained `tiny`, an overwritten directory). Two trainings differ in their first tensor bytes, and
    reading 2 MiB per file keeps this instant even for 7B shards.
    """
    digest = hashlib.sha256()
    for file in sorted(Path(directory).glob("*.safetensors")):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}:".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            handle.seek(max(0, size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]
