"""`unigap generate` and `unigap ask`: one model call from the command line, to look at a model by hand."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from PIL import Image

from unigap.cli.common import ADAPTER_OPTION, MODEL_OPTION, load, require_non_negative, require_positive
from unigap.errors import UserError
from unigap.world import load_image

app = typer.Typer()


def grid(images: list[Image.Image]) -> Image.Image:
    """Tiles in row-major order, ceil(sqrt(K)) columns, no gaps (tile i at column i % cols, row i // cols)."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    sheet = Image.new("RGB", (cols * width, rows * height), (0, 0, 0))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % cols) * width, (i // cols) * height))
    return sheet


@app.command()
def generate(
    model: str = MODEL_OPTION,
    adapter: Path | None = ADAPTER_OPTION,
    prompt: str | None = typer.Option(None, "--prompt", help='Text prompt, e.g. "a red circle".'),
    prompts: Path | None = typer.Option(None, "--prompts", help="A prompt file (text lines, or JSONL with a "
                                        '"prompt" field) instead of --prompt: one PNG per prompt in --out (a directory).'),
    n: int = typer.Option(1, "--n", help="Number of images; more than one are tiled into a grid."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    cfg: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale (1 = none)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    out: Path = typer.Option(..., "--out", help="Output PNG (a grid of the n images when n > 1); with --prompts a "
                             "directory."),
) -> None:
    """Generate images for a prompt (or each prompt of a file) and save them as PNG."""
    from unigap.evaluate import check_output_file, write_atomically
    from unigap.evaluate.data import read_prompt_file

    require_positive("--n", n)
    require_non_negative("--cfg", cfg)
    require_non_negative("--temperature", temperature)
    if (prompt is None) == (prompts is None):
        raise UserError("give exactly one of --prompt and --prompts")
    if prompt is not None and not prompt.strip():
        raise UserError("--prompt must not be empty")
    texts = [prompt] if prompt is not None else [text for _, text in read_prompt_file(prompts)]
    if prompts is None:
        check_output_file(out)
    elif out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; with --prompts it must be a directory")
    else:
        check_output_file(out / "0000.png")  # a parent that is a file fails here, before the model loads
    um = load(model, adapter)
    for index, text in enumerate(texts):
        tokens = um.generate_images([text], n_per_prompt=n, cfg_scale=cfg, temperature=temperature, seed=seed + index)
        sheet = grid(um.decode_tokens(tokens))
        target = out if prompts is None else out / f"{index:04d}.png"
        write_atomically(target, lambda tmp, sheet=sheet: sheet.save(tmp, format="PNG"))
    typer.echo(f"wrote {n * len(texts)} image(s) to {out}")


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
    typer.echo(um.answer([pixels], [question], max_new_tokens=max_new_tokens)[0])
