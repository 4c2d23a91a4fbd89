"""Options and checks shared by the commands that load a model (`eval`, `generate`, `ask`).

torch/transformers are imported inside the commands, never at module level, so `unigap --help` and
the flag checks stay fast.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from unigap.errors import GuardStopped, UserError, first_line
from unigap.manifest import INPUTS_FILE

if TYPE_CHECKING:
    import torch
    from rich.table import Table

    from unigap.model import UnifiedModel


def print_table(table: Table) -> None:
    """Print a results table on stdout; into a file or a pipe, where rich assumes 80 columns and would cut numbers to
    "+0.0…", at the table's full width (a terminal keeps rich's fit to its width)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    if not console.is_terminal:
        natural = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
        console = Console(width=max(console.width, natural))
    console.print(table)


T = TypeVar("T")
GUARD_EXIT = 3  # an audit against an independent judge stopped the run (`GuardStopped`)
MODEL_OPTION = typer.Option(..., "--model", help='A checkpoint directory, or "tiny" (the shipped model).')
ADAPTER_OPTION = typer.Option(None, "--adapter", help="A LoRA adapter directory (PEFT format) to apply.")
JUDGE_OPTION = typer.Option(
    "verifier", "--judge", help="The independent judge of generated images: verifier (exact, ShapeWorld prompts), "
    "clip:DIR (CLIPScore of a local CLIP/SigLIP, threshold calibrated on ShapeWorld) or vlm:DIR (P(yes) of a local "
    "image-text-to-text model).")
BF16_OPTION = typer.Option(False, "--bf16", help="bf16 autocast of training (TRL's bf16=True): float32 weights "
                           "(loaded so on a GPU too), matmuls in bfloat16.")
GRADIENT_CHECKPOINTING_OPTION = typer.Option(False, "--gradient-checkpointing", help="Recompute activations in the "
                                             "backward pass: less memory, more compute, the same gradients.")
# None = `UnifiedModel.edit`'s defaults (`unigap.model.editing`, which imports torch: `--help` stays fast without it)
EDIT_CFG_OPTION = typer.Option(None, "--edit-cfg", help="Edits' guidance scale of the instruction against the source "
                               "alone (InstructPix2Pix's guidance_scale; default 2; 1 = none of the instruction's, "
                               "and with --edit-image-cfg 1 no guidance at all).")
EDIT_IMAGE_CFG_OPTION = typer.Option(None, "--edit-image-cfg", help="Edits' guidance scale of the source against "
                                     "neither (InstructPix2Pix's image_guidance_scale; default 1.5; equal to "
                                     "--edit-cfg: plain CFG on a blank twin).")


def edit_guidance_kwargs(edit_cfg: float | None, edit_image_cfg: float | None) -> dict[str, float]:
    """The edit-guidance flags a user gave, as config keywords (the rest keep their defaults)."""
    from unigap.model.generation import check_guidance_scale

    given = {"edit_cfg_scale": (edit_cfg, "--edit-cfg"), "edit_image_cfg_scale": (edit_image_cfg, "--edit-image-cfg")}
    for value, flag in given.values():
        check_guidance_scale(flag, value)
    return {key: value for key, (value, _) in given.items() if value is not None}


# the settings record of the runs `claim_inputs` guards that have no checkpoint, compared on --resume (a geneval
# layout's too: GenEval's scorer skips files)
RUN_SETTINGS_FILE = "settings.json"
SETTINGS_RECORDED = ("generate", "refine", "refine train", "selfimprove")  # the commands that write one


def claim_inputs(out: Path, what: str, model: str, adapter: Path | None = None, write: bool = True,
                 fingerprints: dict[str, str | None] | None = None, contents: dict[str, str] | None = None,
                 **data: Path | str | None) -> dict[str, str | None]:
    """Record what a resumable run reads, by content, in OUT/inputs.json: the model's weights (`weights_fingerprint`),
    the adapter's own files (`adapter_fingerprint`), each data file's sha256 (a split name as itself), and the command;
    or refuse (`UserError`) to continue a run made from other inputs, which `--resume` would mix with this one's.
    Called once the inputs are checked, before anything is written; `write=False` only checks (before the model loads,
    where the inputs can only be read in full with it). A directory that already holds files but no record is refused
    (a model's folder, a user's data, another run's adapter: written over, a model's took the adapter for good) unless
    it is a run of this command from before records, which is left as it is: its inputs are unknown, and a record
    written now would vouch for them. Returns
    the record; `fingerprints`, a check's record, is written without reading the inputs again. `contents`: other
    inputs' fingerprints, already computed (the images a data file names by path); a record from before it held them
    is taken as made from these."""
    from unigap import distributed
    from unigap.atomic import claim_settings, entries, file_fingerprint
    from unigap.model.checkpoint import weights_fingerprint
    from unigap.model.loading import resolve_checkpoint
    from unigap.model.lora import adapter_fingerprint
    from unigap.world import SPLITS

    # the command too: until a run finishes and writes its manifest, this names what made OUT (`cli._made_by`)
    inputs = fingerprints
    if inputs is None:
        inputs = {"command": what, "model_weights": weights_fingerprint(resolve_checkpoint(model))}
        sources = {"adapter_files": (adapter, adapter_fingerprint)} | {name: (source, file_fingerprint)
                                                                       for name, source in data.items()}
        for name, (source, fingerprint) in sources.items():  # (an absent one as null: compared too)
            # a split name is read as the split (`prompt_specs`), whatever a folder of that name in the cwd holds
            exists = source is not None and source not in SPLITS and Path(source).exists()
            inputs[name] = fingerprint(source) if exists else None if source is None else str(source)
        inputs |= contents or {}
    names = sorted(name for name in entries(out) if not name.startswith("."))  # (a .gitkeep, macOS's .DS_Store)
    recorded = (out / INPUTS_FILE).is_file() or not names
    if not recorded and not _earlier_run(out, what):  # (a model's folder took the adapter: loaded with it for good)
        raise UserError(f"--out {out} holds files no `unigap {what}` run wrote ({', '.join(names[:3])}"
                        f"{', ...' if len(names) > 3 else ''}); choose an empty or new folder")
    # a record from before it had them (its "adapter" hashed the whole folder, outputs written there too)
    defaults = {"command": what, "adapter_files": inputs.get("adapter_files"), **(contents or {})}
    claim_settings(out / INPUTS_FILE, inputs, what, defaults=defaults,
                   write=write and distributed.is_main() and recorded,
                   kind="inputs (compared by file name and content)")
    return inputs


def _earlier_run(out: Path, what: str) -> bool:
    """Whether `out`, holding files but no inputs record, holds a run of `what` from before runs kept one: its
    manifest names the command, or its resume checkpoint or its settings record (`generate`'s geneval layout,
    `refine`, `refine train`, `selfimprove`: each compares them on --resume) is there."""
    from unigap.manifest import MANIFEST_FILE, read_record
    from unigap.train.loop import holds_run

    made_by = (read_record(out / MANIFEST_FILE) or {}).get("command")
    settings = what in SETTINGS_RECORDED and (out / RUN_SETTINGS_FILE).is_file()
    return holds_run(out) or settings or isinstance(made_by, str) and made_by.replace("-", " ") == what


def judge_claimed(judge: dict[str, Any], name: str = "judge") -> dict[str, str]:
    """A local judge (its `describe()`) as a claimed input, by its weights (its directory where they are not
    safetensors): a resume under another model in the folder it names would mix two judges' verdicts in one run."""
    if judge.get("directory") is None:  # (the verifier, the model's own judges: their names are compared as settings)
        return {}
    return {f"{name}_weights": judge.get("weights") or judge["directory"]}


@contextmanager
def inputs_claimed(out: Path, what: str, model: str, adapter: Path | None = None,
                   contents: dict[str, str] | None = None,
                   **data: Path | str | None) -> Iterator[dict[str, str | None]]:
    """`claim_inputs` around the block that loads the model and runs: an error before the run writes anything of its
    own (an adapter that does not fit the model, a model folder that does not load) takes the new record back, and
    the folders writing it made, so the refused command leaves nothing and the corrected one is not refused as a run
    "under other inputs"."""
    from unigap import distributed
    from unigap.atomic import entries

    record_file = out / INPUTS_FILE
    fresh = not record_file.exists()
    made = [folder for folder in (out, *out.parents) if not folder.exists()]  # (deepest first)
    record = claim_inputs(out, what, model, adapter, contents=contents, **data)
    try:
        yield record
    except BaseException:
        # (the main process wrote the record: another one removing it too would race it to a FileNotFoundError)
        if fresh and distributed.is_main() and entries(out) == [INPUTS_FILE]:
            record_file.unlink()
            for folder in made:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise


def guarded_run(command: str, settings: dict[str, Any], seed: int, judge: dict[str, Any], out: Path, model: str,
                dtype: Any, train: Callable[[UnifiedModel], T]) -> T | None:
    """Load `model` and `train` it inside the run's manifest (`settings` as the manifest's config), for a command
    whose audit guard may stop it: then the manifest is written, the guard's one line goes to stderr and the command
    exits `GUARD_EXIT`. Returns `train`'s result on the main process (its manifest written), None on the others."""
    from unigap import distributed
    from unigap.manifest import manifest, write_manifest

    stopped: GuardStopped | None = None
    with manifest(command, {"model": model, **settings}, seeds=[seed], judge=judge) as record:
        um = load(model, None, dtype)
        record["device"] = str(um.device)
        try:
            result = train(um)
        except GuardStopped as exc:
            stopped = exc
    if stopped is not None:
        if distributed.is_main():
            write_manifest(out, record)
            typer.echo(f"unigap: {stopped}", err=True)
        raise typer.Exit(GUARD_EXIT)
    if not distributed.is_main():
        return None
    write_manifest(out, record)
    return result


def require_positive(flag: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{flag} must be positive, got {value}")


def require_sampling(cfg: float, temperature: float) -> None:
    """--cfg and --temperature in the sampler's ranges, checked before the model loads (not after, in torch)."""
    from unigap.model.decoding import check_temperature
    from unigap.model.generation import check_guidance_scale

    check_guidance_scale("--cfg", cfg)
    check_temperature(temperature, name="--temperature")


def require_non_negative(flag: str, value: float) -> None:
    if not value >= 0:
        raise UserError(f"{flag} must be >= 0, got {value}")


def weights_dtype(dtype: str | None, bf16: bool) -> str | None:
    """The dtype to load weights in. TRL's bf16=True is autocast over float32 weights, so --bf16 loads float32 (a
    GPU's default is bfloat16, under which autocast changes nothing) and refuses --dtype bfloat16."""
    if not bf16:
        return dtype
    if dtype == "bfloat16":
        raise UserError("bf16 autocast (--bf16, or bf16 = true in --config) runs over float32 weights (TRL's "
                        "bf16=True), and --dtype bfloat16 makes them bfloat16 already: give one of the two")
    return "float32"


MERGED_ADAPTER_KEY = "adapter_sha256"  # in a `merge --model --adapter` checkpoint's manifest config
MERGED_BEFORE_KEY = "merged_before"  # beside it: the adapters its --model had merged in already, by their hashes


def merged_adapters(model: str) -> list[str]:
    """The hashes of every adapter merged into a checkpoint `unigap merge --model --adapter` wrote (its manifest's;
    its base's merges carried along), none for any other checkpoint."""
    from unigap.manifest import MANIFEST_FILE, read_record

    record = read_record(Path(model) / MANIFEST_FILE) or {}
    config = record.get("config") if record.get("command") == "merge" else None
    if not isinstance(config, dict):
        return []
    before = config.get(MERGED_BEFORE_KEY)
    return [*(before if isinstance(before, list) else []), *filter(None, [config.get(MERGED_ADAPTER_KEY)])]


def _refuse_merged_twice(model: str, adapter: Path) -> None:
    """A checkpoint written by `unigap merge --model --adapter A` has A in its weights (and whatever its --model had
    merged in): A again would apply it twice. A is known by its own files (`adapter_fingerprint`: what else its
    folder holds, a run's checkpoint or outputs, may change), or by its whole folder's hash, which merges recorded
    before."""
    from unigap.atomic import file_fingerprint
    from unigap.manifest import MANIFEST_FILE
    from unigap.model.lora import adapter_fingerprint

    merged = merged_adapters(model)
    if merged and {adapter_fingerprint(adapter), file_fingerprint(adapter)} & set(merged):
        raise UserError(f"{model} already has the adapter {adapter} merged into its weights (its {MANIFEST_FILE}); "
                        "load it without --adapter")


def _checkpoint_quietly(model: str) -> Path:
    """`resolve_checkpoint`, its warning about what `model` names left to the load that says it once."""
    import warnings

    from unigap.errors import UnigapWarning
    from unigap.model.loading import resolve_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnigapWarning)
        return resolve_checkpoint(model)


def _warn_other_base(model: str, adapter: Path) -> None:
    """An adapter `unigap train` wrote records its base's weights (`INPUTS_FILE`): applied to another model it
    loads all the same where the shapes fit, its generation head replacing that model's, so that is said."""
    import warnings

    from unigap.errors import UnigapWarning
    from unigap.manifest import trained_on
    from unigap.model.checkpoint import weights_fingerprint

    base = trained_on(adapter)
    if base is None:  # (another tool's adapter)
        return
    here = weights_fingerprint(_checkpoint_quietly(model))
    if base != here:
        warnings.warn(f"adapter {adapter} was trained on other base weights ({base}) than --model {model} "
                      f"({here}): it applies, and its trained parts replace this model's", UnigapWarning, stacklevel=2)


CONFIG_SEED = "data_seed ="  # how a --config file gives the partition (train's UniMRG, selfimprove, refine train)


def warn_other_partition(model: str, data_seed: int, setting: str = "--data-seed") -> None:
    """A checkpoint `unigap pretrain` wrote records its seed, the partition its training prompts came from: under
    another --data-seed the held-out prompts hold many of them (173 of partition 3's 200 test prompts, for `tiny`),
    and the train split many of its held-out ones. `setting`: how the user gave it (a --config file's `data_seed =`)."""
    import warnings

    from unigap.errors import UnigapWarning
    from unigap.manifest import read_record
    from unigap.pretrain.run import SUMMARY_FILE

    try:
        summary = read_record(_checkpoint_quietly(model) / SUMMARY_FILE) or {}
    except (UserError, OSError):  # (a model that names no checkpoint: the load says so)
        return
    pretrained = summary.get("config", {}).get("seed") if isinstance(summary.get("config"), dict) else None
    if isinstance(pretrained, int) and pretrained != data_seed:  # (none: a checkpoint unigap did not pretrain)
        warnings.warn(f"{setting} {data_seed}: {model} was pretrained on partition {pretrained}'s train split; "
                      f"partition {data_seed}'s splits mix its training and held-out prompts ({setting} "
                      f"{pretrained} keeps them apart)", UnigapWarning, stacklevel=2)


def load(model: str, adapter: Path | None, dtype: str | torch.dtype | None = None) -> UnifiedModel:
    """The model (plus adapter); missing or broken directories are user errors, not tracebacks."""
    if adapter is not None:
        check_adapter(model, adapter)
    from unigap.model import load_model

    um = load_model(model, dtype=dtype)
    if adapter is not None:
        apply_adapter(um, adapter)
    return um


def check_adapter(model: str, adapter: Path) -> None:
    """`load`'s checks of an adapter directory for `model`, before a slow load."""
    if not adapter.is_dir():
        raise UserError(f"adapter directory {adapter} {'is a file' if adapter.exists() else 'does not exist'}")
    from unigap.model.lora import check_adapter_files

    check_adapter_files(adapter)
    _refuse_merged_twice(model, adapter)
    _warn_other_base(model, adapter)


def apply_adapter(um: UnifiedModel, adapter: Path) -> None:
    """Attach an adapter `check_adapter` passed (`load`'s second half: a caller may use the base model first)."""
    try:
        um.load_adapter(adapter)
    except UserError:  # (a ValueError too) already says what is wrong
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        hint = " (trained on another base model?)" if "size mismatch" in str(exc) else ""
        raise UserError(f"cannot apply adapter {adapter} to this model{hint}: {first_line(exc)}") from None
