"""`unigap generate` and `unigap ask`: the model from the command line, to look at it by hand or to write a prompt
file's samples in the folder layout of an external benchmark's scorer (GenEval)."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from contextlib import nullcontext
from pathlib import Path

import typer

from unigap.cli.common import (ADAPTER_OPTION, INPUTS_FILE, MODEL_OPTION, RUN_SETTINGS_FILE, inputs_claimed, load,
                               require_non_negative, require_positive, require_sampling)
from unigap.errors import UnigapWarning, UserError
from unigap.world import load_image

app = typer.Typer()

LAYOUTS = ("grid", "geneval")
GRID_INDEX = "metadata.jsonl"  # grid layout with --prompts: which PNG shows which prompt (imagefolder's name)
GRID_COLUMNS = ("file_name", "prompt", "seed", "n")  # its rows
MAX_N = 256  # images per prompt, sampled in one call: a 16 × 16 grid (10⁶ ran a 24 GB machine out, and was killed)


@app.command()
def generate(
    model: str = MODEL_OPTION,
    adapter: Path | None = ADAPTER_OPTION,
    prompt: str | None = typer.Option(None, "--prompt", help='Text prompt, e.g. "a red circle".'),
    prompts: Path | None = typer.Option(None, "--prompts", help='A prompt file (text lines, or JSONL with a '
                                        "\"prompt\" field, e.g. GenEval's evaluation_metadata.jsonl) instead of "
                                        "--prompt: with the grid layout one PNG per prompt in --out (a directory), listed in its "
                                        "metadata.jsonl."),
    n: int = typer.Option(1, "--n", help="Images per prompt; in the grid layout more than one are tiled."),
    max_prompts: int | None = typer.Option(None, "--max-prompts", help="With --prompts: the file's first K prompts "
                                           "only (all when it has fewer)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    cfg: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale (1 = none)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    out: Path = typer.Option(..., "--out", help="Output PNG (a grid of the n images when n > 1); with --prompts a "
                             "directory."),
    layout: str = typer.Option("grid", "--layout", help="grid: one PNG per prompt; geneval: GenEval's folders OUT/"
                               "00000/{metadata.jsonl,samples/00000.png,grid.png} for its scorer (needs --prompts)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Prompts per model call (geneval layout; "
                                          "default 8). The images depend on it."),
    resume: bool = typer.Option(False, "--resume", help="Continue a geneval-layout run in --out, skipping the "
                                "finished prompt folders."),
) -> None:
    """Generate images for a prompt (or each prompt of a file) and save them as PNG."""
    if not 0 < n <= MAX_N:
        raise UserError(f"--n must be from 1 to {MAX_N} (images per prompt, sampled at once), got {n}")
    if max_prompts is not None:
        require_positive("--max-prompts", max_prompts)
        if prompts is None:
            raise UserError("--max-prompts limits a --prompts file; with --prompt there is one prompt")
    require_non_negative("--seed", seed)
    require_sampling(cfg, temperature)
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if (prompt is None) == (prompts is None):
        raise UserError("give exactly one of --prompt and --prompts")
    if prompt is not None and not prompt.strip():
        raise UserError("--prompt must not be empty")
    if layout == "geneval":
        if prompts is None:
            raise UserError("--layout geneval needs --prompts FILE (one folder per line)")
        _generate_geneval(model, adapter, prompts, out, n=n, seed=seed, cfg=cfg, temperature=temperature,
                          batch_size=8 if batch_size is None else batch_size, resume=resume, max_prompts=max_prompts)
        return
    if batch_size is not None or resume:
        raise UserError("--batch-size and --resume apply to --layout geneval only")
    _generate_grids(model, adapter, prompt, prompts, out, n=n, seed=seed, cfg=cfg, temperature=temperature,
                    max_prompts=max_prompts)


def _generate_grids(model: str, adapter: Path | None, prompt: str | None, prompts: Path | None, out: Path, *,
                    n: int, seed: int, cfg: float, temperature: float, max_prompts: int | None) -> None:
    """One PNG (a grid of the n samples) for --prompt, or one per line of --prompts, sampled with seed + its index;
    with --prompts also OUT/metadata.jsonl (file_name, prompt, seed: `datasets`' imagefolder reads it)."""
    from unigap.atomic import atomic_write_lines, entries, has_index, indexed_files_atomically
    from unigap.evaluate import check_output_file, write_atomically
    from unigap.evaluate.data import read_prompt_file
    from unigap.evaluate.layouts import grid
    from unigap.evaluate.progress import batches

    numbered = [("--prompt", prompt)] if prompt is not None else [
        (f"{prompts}:{line_no}", text) for line_no, text in read_prompt_file(prompts)][:max_prompts]
    texts = [text for _, text in numbered]
    if prompts is None:
        check_output_file(out, ".png")
    elif out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; with --prompts it must be a directory")
    elif entries(out) and not (has_index(out, GRID_INDEX) and _grid_index(out / GRID_INDEX)):
        raise UserError(f"--out {out} holds files of something else than an earlier grid run (no {GRID_INDEX} of "
                        f"one); choose an empty or new folder")
    else:
        check_output_file(out / GRID_INDEX)  # a parent that is a file fails here, before the model loads
    um = load(model, adapter)
    um.prompts.check_texts(prompts=numbered)
    rows = []
    # a prompt file's PNGs and index are staged, then swapped in: an interrupted rerun never mixes two runs
    staged = nullcontext() if prompts is None else indexed_files_atomically(out, {GRID_INDEX: ["file_name"]},
                                                                              named=r"\d{4,}\.png")
    with staged as staging:
        for (index,) in batches(range(len(texts)), 1, "generate", show=prompts is not None):
            text = texts[index]
            tokens = um.generate_images([text], n_per_prompt=n, cfg_scale=cfg, temperature=temperature,
                                        seed=seed + index)
            sheet = grid(um.decode_tokens(tokens))
            target = out if staging is None else staging / f"{index:04d}.png"
            write_atomically(target, lambda tmp, sheet=sheet: sheet.save(tmp, format="PNG"))
            rows.append(dict(zip(GRID_COLUMNS, (target.name, text, seed + index, n), strict=True)))
        if staging is not None:
            atomic_write_lines(staging / GRID_INDEX, [json.dumps(row) for row in rows])
    if prompts is None:
        typer.echo(f"wrote {'an image' if n == 1 else f'a grid of {n} images'} to {out}")
    else:  # (a folder, whatever the number of prompts: one PNG each, and the index)
        kind = ("image", "images") if n == 1 else (f"grid of {n} images", f"grids of {n} images")
        typer.echo(f"wrote {len(texts)} {kind[len(texts) != 1]}, one per prompt, and {GRID_INDEX} to {out}/")


def _grid_index(path: Path) -> bool:
    """Whether `path` is the index an earlier grid run wrote (its rows `GRID_COLUMNS`, naming its PNGs), or is being
    swapped in: the rerun replaces the PNGs it lists, so another `metadata.jsonl` (an image folder of a user's
    dataset, a GenEval prompt folder) must not pass for one."""
    if not path.is_file():
        return True  # (a swap a kill interrupted: `indexed_files_atomically` finishes it)
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return False
    return all(isinstance(row, dict) and set(row) == set(GRID_COLUMNS) and re.fullmatch(r"\d{4,}\.png",
               str(row["file_name"])) for row in rows)


def _generate_geneval(model: str, adapter: Path | None, prompts: Path, out: Path, *, n: int, seed: int, cfg: float,
                      temperature: float, batch_size: int, resume: bool, max_prompts: int | None) -> None:
    """GenEval's folder layout (`unigap.evaluate.layouts`), one folder per prompt line; --resume skips finished ones."""
    from unigap.atomic import claim_settings, entries
    from unigap.evaluate import check_output_file
    from unigap.evaluate.data import read_prompt_rows
    from unigap.evaluate.layouts import write_geneval_layout
    from unigap.manifest import manifest, write_manifest
    from unigap.model.checkpoint import dtype_name

    require_positive("--batch-size", batch_size)
    numbered = read_prompt_rows(prompts)
    if max_prompts is not None and max_prompts >= len(numbered):
        max_prompts = None  # nothing is cut: a resumed run may leave the flag out
    numbered = numbered[:max_prompts]
    rows = [row for _, row in numbered]
    untagged = [line_no for line_no, row in numbered if "tag" not in row]
    if untagged:  # (its scorer reads metadata["tag"] of every folder: the first such one stops the whole scoring)
        warnings.warn(f"{prompts}:{untagged[0]}: {len(untagged)} of {len(rows)} prompt(s) without GenEval's metadata "
                      "(tag, include): its scorer stops at their folders; give its evaluation_metadata.jsonl lines",
                      UnigapWarning, stacklevel=2)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; with --layout geneval it must be a directory")
    check_output_file(out / RUN_SETTINGS_FILE)  # a parent that is a file fails here, before the model loads
    started = bool(set(entries(out)) - {INPUTS_FILE})  # (its inputs alone: killed while the model loaded)
    if started and not resume:
        raise UserError(f"{out} is not empty: pass --resume to continue a generate run there, or choose another --out")
    if started and not (out / RUN_SETTINGS_FILE).is_file():
        raise UserError(f"--resume: {out} holds no generate run (no {RUN_SETTINGS_FILE}); choose another --out")
    # the prompts by content, not path: a resumed run must write the folders of the same lines; the model and adapter
    # paths are recorded, not compared (another spelling, or a job resumed from another folder, reads the same
    # weights), where `inputs_claimed` compares their contents: not in a run begun before it kept its record
    settings = {"layout": "geneval", "model": model, "adapter": None if adapter is None else str(adapter),
                "prompts_sha256": hashlib.sha256(prompts.read_bytes()).hexdigest(), "n": n, "seed": seed, "cfg": cfg,
                "temperature": temperature, "batch_size": batch_size, "max_prompts": max_prompts}
    paths = ("model", "adapter") if (out / INPUTS_FILE).is_file() else ()
    claim_settings(out / RUN_SETTINGS_FILE, settings, "generate", defaults={"max_prompts": None}, write=False,
                   free=paths)
    with inputs_claimed(out, "generate", model, adapter), manifest(
            "generate", {**settings, "prompts": str(prompts)}, seeds=[seed]) as record:
        um = load(model, adapter)
        um.prompts.check_texts(prompts=[(f"{prompts}:{line_no}", row["prompt"]) for line_no, row in numbered])
        # and where the images are drawn: another device's random streams, or dtype, draw other images for a seed
        # (a run recorded before these were resumes as it did)
        machine = {"model_dtype": dtype_name(um.dtype), "device": um.device.type}
        claim_settings(out / RUN_SETTINGS_FILE, settings | machine, "generate",
                       defaults={"max_prompts": None, **machine}, free=paths)
        record["device"] = str(um.device)
        written = write_geneval_layout(um, rows, out, n=n, seed=seed, cfg_scale=cfg, temperature=temperature,
                                       batch_size=batch_size)
    write_manifest(out, record)
    typer.echo(f"wrote {written} of {len(rows)} prompt folder(s), {n} image(s) each, to {out}")


@app.command()
def ask(
    model: str = MODEL_OPTION,
    adapter: Path | None = ADAPTER_OPTION,
    image: Path = typer.Option(..., "--image", help="An image file (PNG, JPEG, ...)."),
    question: str = typer.Option(..., "--question", help='e.g. "What color is the circle?"'),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Longest answer, in tokens."),
) -> None:
    """Answer a question about an image (greedy) and print the answer."""
    require_positive("--max-new-tokens", max_new_tokens)
    if not question.strip():
        raise UserError("--question must not be empty")
    pixels = load_image(image)
    um = load(model, adapter)
    um.prompts.check_texts(questions=[("--question", question)])
    um.prompts.check_room(len(um.prompts.understanding_ids(question)), max_new_tokens,
                          f"--max-new-tokens {max_new_tokens}")  # (before the answer's work: named as the flag)
    typer.echo(um.answer([pixels], [question], max_new_tokens=max_new_tokens)[0])
