"""`unigap merge`: rewarded soups of an und-only and a gen-only adapter (exact on ΔW), or one adapter folded into
its base as a standalone transformers checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from unigap.cli.common import MERGED_ADAPTER_KEY, MERGED_BEFORE_KEY, merged_adapters
from unigap.errors import UserError
from unigap.train.names import SOUP_LAMBDAS

MODES = "give --und and --gen (adapter soups) or --model and --adapter (a standalone checkpoint)"


def merge(
    und: Path | None = typer.Option(None, "--und", help="Adapter directory of the und-only run (θ_U); soups."),
    gen: Path | None = typer.Option(None, "--gen", help="Adapter directory of the gen-only run (θ_G); soups."),
    model: str | None = typer.Option(None, "--model", help='Base checkpoint directory, or "tiny", that --adapter '
                                     "is folded into."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A LoRA adapter directory (PEFT format) to fold "
                                        "into --model."),
    out: Path = typer.Option(..., "--out", help="Soups: one OUT/soup-λ adapter per λ. --model/--adapter: a new "
                             "checkpoint directory (absent or empty)."),
    lambdas: list[float] | None = typer.Option(None, "--lambda", help="λ (weight of θ_U) of a soup; repeatable "
                                               f"(default {', '.join(f'{lam:g}' for lam in SOUP_LAMBDAS)})."),
) -> None:
    """Write θ = λ·θ_U + (1−λ)·θ_G for each λ as a PEFT adapter (loadable with --adapter), or --model with
    --adapter merged in as a checkpoint that `JanusForConditionalGeneration.from_pretrained` and --model load."""
    soups_given = und is not None or gen is not None
    fold_given = model is not None or adapter is not None
    if soups_given == fold_given:
        raise UserError(f"{MODES}, {'not both' if soups_given else 'none was given'}")
    if soups_given:
        if und is None or gen is None:
            raise UserError("adapter soups need both --und and --gen")
        from unigap.manifest import MANIFEST_FILE, manifest, read_record, write_manifest
        from unigap.model.lora import adapter_fingerprint, check_adapter_files
        from unigap.train.merge import soups

        for path in (und, gen):  # (before the earlier soups are compared with them: the flag at fault named first)
            check_adapter_files(path)

        chosen = tuple(lam + 0.0 for lam in lambdas or SOUP_LAMBDAS)  # (-0 is 0: one soup, not soup--0 beside it)
        if (out / "config.json").exists() or merged_adapters(str(out)):  # (its manifest would be replaced)
            raise UserError(f"--out {out} holds a checkpoint `merge --model --adapter` wrote; choose another --out")
        before = (read_record(out / MANIFEST_FILE) or {}).get("config") or {}
        sides = {"und": und, "gen": gen}
        adapters = {side: str(path.resolve()) for side, path in sides.items()} | {
            f"{side}_fingerprint": adapter_fingerprint(path) for side, path in sides.items() if path.is_dir()}
        if _other_adapters(before, adapters):  # (its record would name these for the earlier soups too)
            raise UserError(f"--out {out} holds soups of other adapters (--und {before.get('und')} --gen "
                            f"{before.get('gen')}); choose another --out")
        earlier = before.get("lambdas") or []
        with manifest("merge", adapters | {"lambdas": [*earlier, *chosen]}) as record:
            written = soups(und, gen, out, chosen)
        write_manifest(out, record)  # (OUT is the merge's: another command's run is not written beside its soups)
        for path in written:
            typer.echo(str(path))
        return
    if model is None or adapter is None:
        raise UserError("a standalone checkpoint needs both --model and --adapter")
    if lambdas:
        raise UserError("--lambda applies to adapter soups (--und/--gen) only")
    _fold(model, adapter, out)


def _other_adapters(before: dict, now: dict) -> bool:
    """Whether an earlier soups run into the same folder souped other adapters: by content where it recorded it, else
    by path (recorded as typed before: read from here, as best it can be)."""
    keys = [f"{side}_fingerprint" for side in ("und", "gen")]
    if all(key in before and key in now for key in keys):  # (an adapter missing now: the soups say so themselves)
        return any(before[key] != now[key] for key in keys)
    return any(before.get(side) and Path(before[side]).resolve() != Path(now[side]) for side in ("und", "gen"))


def _fold(model: str, adapter: Path, out: Path) -> None:
    """Load --model with --adapter, merge, write OUT atomically (with its manifest)."""
    from unigap.cli.common import load
    from unigap.manifest import manifest, write_manifest
    from unigap.model.loading import resolve_checkpoint
    from unigap.model.lora import adapter_fingerprint
    from unigap.model.standalone import check_new_directory, save_merged, stored_dtype

    check_new_directory(out)  # before the slow load
    # the adapter's content is recorded, so that loading OUT with it again is refused (`common.load`)
    with manifest("merge", {"model": model, "adapter": str(adapter), "out": str(out),
                            MERGED_ADAPTER_KEY: adapter_fingerprint(adapter),
                            MERGED_BEFORE_KEY: merged_adapters(model)}) as record:
        base = resolve_checkpoint(model)
        # in the dtype its weights are stored in: a CUDA default of bf16 would round an fp32 base for good
        um = load(model, adapter, dtype=stored_dtype(base))
        record["device"] = str(um.device)
        save_merged(um, base, out)
    write_manifest(out, record)
    typer.echo(str(out))
