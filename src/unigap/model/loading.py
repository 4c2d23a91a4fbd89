"""Finding, checking and loading checkpoints (directories in transformers format, or embedded names)."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer, JanusForConditionalGeneration, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from unigap.errors import UnigapWarning, UserError, first_line
from unigap.model.checkpoint import dtype_name, read_sidecar
from unigap.model.decoding import is_number
from unigap.model.unified import UnifiedModel

EMBEDDED = {"tiny": Path(__file__).resolve().parent.parent / "assets" / "tiny"}
DEFAULT_PIXEL_STAT = 0.5  # Janus-Pro's image_mean and image_std


def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """An embedded model's name or a directory → a directory that holds a Janus checkpoint."""
    name = str(path_or_name)
    if name in EMBEDDED:
        if Path(name).is_dir():
            warnings.warn(f"{name!r} names the shipped model, not the directory {name}/ here (pass ./{name} to load "
                          "that)", UnigapWarning, stacklevel=2)
        directory = EMBEDDED[name]
        if not (directory / "config.json").is_file():
            raise UserError(
                f"the embedded model {name!r} is not present (expected it at {directory}); "
                "pass the path of a checkpoint directory instead"
            )
        return directory
    directory = Path(name).expanduser()
    if not directory.exists():
        raise UserError(f"model path {directory} does not exist")
    if not directory.is_dir():
        raise UserError(f"model path {directory} is not a directory")
    config_file = directory / "config.json"
    if not config_file.is_file():
        adapter = _read_json(directory / "adapter_config.json")  # (a LoRA adapter given where its base goes)
        if isinstance(adapter, dict) and adapter:
            base = adapter.get("base_model_name_or_path") or "BASE"
            raise UserError(f"{directory} is a LoRA adapter, not a checkpoint: pass its base, --model {base}, with "
                            f"--adapter {directory} where the command takes one (`unigap merge --model {base} "
                            f"--adapter {directory} --out DIR` makes one checkpoint of both; in Python, "
                            "`um = load_model(base); um.load_adapter(adapter)`)")
        raise UserError(f"{directory} is not a transformers checkpoint: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:  # (ValueError: a JSONDecodeError, or a huge integer)
        raise UserError(f"{config_file} is not a valid JSON config: {exc}") from exc
    if model_type == "multi_modality":  # DeepSeek's own Janus / Janus-Pro release, before conversion
        raise UserError(
            f"{directory} is a DeepSeek-format Janus checkpoint (model_type 'multi_modality'); convert it to the "
            "transformers format first with transformers' src/transformers/models/janus/convert_janus_weights_to_hf.py "
            "(in the transformers repository; not installed with the package)"
        )
    if model_type != "janus":
        raise UserError(f"{directory} is not a Janus checkpoint (config model_type is {model_type!r}, not 'janus')")
    if not any(directory.glob("*.safetensors")):
        pickled = any(directory.glob("pytorch_model*.bin"))  # what the conversion script writes by default
        raise UserError(f"{directory} has no *.safetensors weights" + (
            " (only pytorch_model*.bin: run the conversion with --safe_serialization, or load the folder with "
            "JanusForConditionalGeneration.from_pretrained and save_pretrained it again)" if pickled else ""))
    _check_shards(directory)
    return directory


def _check_shards(directory: Path) -> None:
    """A sharded checkpoint (Janus-Pro-7B's) with all its shards and the index that joins them: a shard or the index
    missing, what an interrupted download leaves, was transformers' traceback after the tokenizer loaded."""
    if (directory / "model.safetensors").is_file():  # (what transformers loads first, whatever else is there)
        return
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        raise UserError(f"{directory} holds *.safetensors weights but neither model.safetensors nor the "
                        "model.safetensors.index.json that joins shards (an incomplete download?)")
    joined = _read_json(index)
    weight_map = joined.get("weight_map") if isinstance(joined, dict) else None  # (a JSON list: no map either)
    if not isinstance(weight_map, dict):
        raise UserError(f"{index} has no 'weight_map' of tensor names to shard files")
    missing = sorted({str(name) for name in weight_map.values()} - {p.name for p in directory.glob("*.safetensors")})
    if missing:
        raise UserError(f"{directory} lacks {len(missing)} of the weight files its {index.name} names (first: "
                        f"{missing[0]}): an incomplete download?")


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except ValueError as exc:  # (a JSONDecodeError, or an integer of more digits than Python converts)
        raise UserError(f"{file} is not valid JSON: {exc}") from exc


def pixel_stats(directory: Path, settings: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pixel mean/std: the sidecar's, else the checkpoint's image processor's (`preprocessor_config.json`, or inside
    `processor_config.json` as transformers 5 saves a processor), else Janus-Pro's 0.5."""
    preprocessor = (_read_json(directory / "preprocessor_config.json")
                    or _read_json(directory / "processor_config.json").get("image_processor", {}))

    def stat(key: str) -> tuple[float, ...]:
        value = settings.get(key, preprocessor.get(key, DEFAULT_PIXEL_STAT))
        values = value if isinstance(value, list | tuple) else [value] * 3
        numbers = all(is_number(v) and math.isfinite(v) for v in values)
        if len(values) != 3 or not numbers or (key == "image_std" and min(values) <= 0):  # (a std of 0: NaN pixels)
            raise UserError(f"{directory}: {key} must be 3 finite numbers{', each > 0' if key == 'image_std' else ''}"
                            f", got {json.dumps(value)}")
        return tuple(float(v) for v in values)

    return stat("image_mean"), stat("image_std")


def uses_default_system_prompt(directory: Path, settings: dict | None = None) -> bool:
    """Whether the checkpoint's JanusProcessor prepends the default system prompt (converted ones do): its
    processor_config.json says, or, for a checkpoint `UnifiedModel.save` wrote, its sidecar `settings`."""
    processor = _read_json(directory / "processor_config.json")
    if "use_default_system_prompt" in processor:
        return bool(processor["use_default_system_prompt"])
    return bool((settings or {}).get("use_default_system_prompt", True))


LOADABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def default_device_and_dtype(
    device: str | torch.device | None, dtype: torch.dtype | str | None
) -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 when available (the process's own GPU under `accelerate launch`: LOCAL_RANK), else CPU in fp32,
    unless told otherwise."""
    if device is None:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: {exc}") from None
    if device.type == "meta":  # (it takes the tensor below, and fails minutes later, inside the first computation)
        raise UserError("device 'meta' holds no data to compute with; give cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} asked for, but this torch sees no CUDA device "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})")
    try:  # any other kind (mps, xpu, …): a tensor there or the library's reason, in one line
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"device {str(device)!r} asked for, but this torch cannot use it: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UserError(f"unknown dtype {dtype!r}")
        dtype = getattr(torch, dtype)
    if dtype is not None and dtype not in LOADABLE_DTYPES:  # (a float8 is floating point, with no storage to load in)
        shown = dtype_name(dtype) if isinstance(dtype, torch.dtype) else repr(dtype)  # (Python's float, numpy's)
        raise UserError(f"dtype must be one of float32, bfloat16, float16, float64 (a torch.dtype or its name), "
                        f"got {shown}")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def default_device_name() -> str:
    """The device `load_model` loads on when told none, as the study's and tuning run's manifests record it."""
    return str(default_device_and_dtype(None, None)[0])


def default_dtype_name() -> str:
    """The dtype `load_model` loads in when told none (a GPU's bf16, a CPU's float32), as run records name it: what
    a study or a tuning run records of its models, which `model()` loads afresh for every arm."""
    return dtype_name(default_device_and_dtype(None, None)[1])


def load_weights(
    directory: Path, device: torch.device, dtype: torch.dtype
) -> tuple[JanusForConditionalGeneration, PreTrainedTokenizerBase]:
    """The transformers model (eval mode) and tokenizer of a checked checkpoint directory."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of {directory}: {first_line(exc)}") from None
    try:  # device_map puts the weights straight onto the device (no full CPU copy of a 7B model first)
        with quiet_transformers():
            model, info = JanusForConditionalGeneration.from_pretrained(
                directory, dtype=dtype, device_map=device, output_loading_info=True, ignore_mismatched_sizes=True)
    except SafetensorError as exc:
        raise UserError(f"cannot read the weights in {directory} (incomplete or corrupt?): {first_line(exc)}") from None
    refuse_misfits(directory, info)
    unused = sorted(info.get("unexpected_keys", ()))  # a real checkpoint may carry extras (buffers, another head)
    if unused:
        warnings.warn(f"the weights in {directory} hold {len(unused)} tensor(s) its config.json has no place for "
                      f"(first: {unused[0]}); loaded without them", UnigapWarning, stacklevel=3)
    if getattr(model, "_hf_peft_config_loaded", False):  # (transformers applies a folder's adapter without a word)
        warnings.warn(f"{directory} holds a LoRA adapter (adapter_config.json) beside the checkpoint, which "
                      "transformers loaded with it: this model is the checkpoint and that adapter", UnigapWarning,
                      stacklevel=3)
    return model.eval(), tokenizer


MISFITS = {  # transformers' loading report: it fills each such tensor at random, with a warning
    "mismatched_keys": "hold {n} tensor(s) of another shape than its config.json gives",
    "missing_keys": "lack {n} tensor(s) its config.json calls for",
}


def refuse_misfits(directory: Path, info: dict[str, Any]) -> None:
    """`UserError` where the weights do not fit the config (`info`: `from_pretrained`'s loading info, taken with
    `ignore_mismatched_sizes=True`): transformers would load the model all the same, the misfits at random (a model
    that answers, draws or judges noise)."""
    for kind, misfit in MISFITS.items():
        found = sorted((key,) if isinstance(key, str) else tuple(key) for key in info.get(kind, ()))
        if found:  # a mismatch comes as (name, shape in the weights, shape the config gives)
            first = found[0][0] + "".join(f", {list(shape)} {where}" for shape, where
                                          in zip(found[0][1:], ("in the weights", "by config.json")))
            raise UserError(f"the weights in {directory} {misfit.format(n=len(found))} (first: {first}): an edited "
                            "config.json, or weights of another model?")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' loading reports and progress bars off for the block: a misfit is refused in one line
    (`refuse_misfits`), and a bar per load tells a user nothing."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(
    path_or_name: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> UnifiedModel:
    """Load a Janus checkpoint directory (Janus-Pro 1B/7B or a unigap tiny model), or an embedded
    model by name ("tiny"), as a `UnifiedModel` on `device` in `dtype` (default: CUDA bf16, else CPU fp32).
    """
    directory = resolve_checkpoint(path_or_name)
    settings = read_sidecar(directory)
    device, dtype = default_device_and_dtype(device, dtype)
    model, tokenizer = load_weights(directory, device, dtype)
    mean, std = pixel_stats(directory, settings)
    return UnifiedModel(
        model,
        tokenizer,
        template=settings["template"],
        image_mean=mean,
        image_std=std,
        use_default_system_prompt=uses_default_system_prompt(directory, settings),
        supports_editing=bool(settings.get("editing", False)),
        edit_source=settings["edit_source"],
    )
