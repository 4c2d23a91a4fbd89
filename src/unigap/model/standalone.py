"""Fold a LoRA adapter into its base model: a standalone checkpoint that needs neither peft nor the adapter.

Why: other tools (serving stacks, benchmark harnesses) load a plain transformers checkpoint,
`JanusForConditionalGeneration.from_pretrained(DIR)`, not base + adapter. The directory holds every file of the
base except its weights (tokenizer, processor and preprocessor configs, and the `unigap.json` sidecar that makes
`load_model` read it as the same kind of model: prompt convention, pixel statistics, editing), then the merged
weights (safetensors, in the base's stored dtype) with their config and generation config. It is written in a
temporary directory and renamed, so it exists only when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
import torch
from safetensors import SafetensorError

from unigap.atomic import directory_atomically
from unigap.errors import UserError
from unigap.model.unified import UnifiedModel

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")  # replaced, not copied


def check_new_directory(out: str | os.PathLike) -> Path:
    """`out` must be absent or an empty directory (a checkpoint is never written over another)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty; choose a new directory")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot create {out}: {blocker} is a file")
    return out


def stored_dtype(directory: Path) -> torch.dtype | None:
    """The dtype a checkpoint's config says its weights are stored in (None when it says none, or has no readable
    config: loading the checkpoint says what is wrong)."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    value = getattr(torch, str(config.get("dtype") or config.get("torch_dtype")), None)
    return value if isinstance(value, torch.dtype) else None


def save_merged(um: UnifiedModel, base_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Merge `um`'s adapter into its weights and write the standalone checkpoint `out` next to the files of
    `base_dir` (the checkpoint `um` was loaded from). `um` becomes the merged model, without adapter."""
    if um.peft is None:
        raise ValueError("this model carries no adapter to merge")
    base_dir, out = Path(base_dir), check_new_directory(out)
    dtype = stored_dtype(base_dir)
    if dtype is not None and um.dtype != dtype and torch.finfo(um.dtype).eps > torch.finfo(dtype).eps:
        raise UserError(f"this model was loaded in {str(um.dtype).removeprefix('torch.')}, but {base_dir} stores "
                        f"{str(dtype).removeprefix('torch.')}: every merged weight would keep the narrower rounding "
                        f"under the wider name; load it with dtype={str(dtype).removeprefix('torch.')!r} to merge "
                        "losslessly (`unigap merge` does)")
    um.peft.merge_and_unload()  # LoRA folded into the base layers, trained modules (generation head) put in place
    um.peft = None
    if dtype is not None:
        um.model.to(dtype)  # saved in the dtype the base is stored in
    with directory_atomically(out) as tmp:
        for file in base_dir.iterdir():
            if file.is_file() and not any(file.match(pattern) for pattern in WEIGHT_FILES):
                shutil.copy2(file, tmp / file.name)
        try:
            um.model.save_pretrained(tmp)  # safetensors + config.json + generation_config.json, over the base's
        except SafetensorError as exc:  # (its own error for a failed write: "No space left on device (os error 28)")
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), str(exc)) from exc  # the storage's refusal, as every other writer's
    return out
