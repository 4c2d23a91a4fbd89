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
    prompt: str = typer.Option(..., "--prompt", help='Text prompt, e.g. "a red circle".'),
    n: int = typer.Option(1, "--n", help="Number of images; more than one are tiled into a grid."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    cfg: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale (1 = none)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    out: Path = typer.Option(..., "--out", help="Output PNG (a grid of the n images when n > 1)."),
) -> None:
    """Generate images for a prompt and save them as one PNG."""
    from unigap.evaluate import check_output_file, write_atomically

    require_positive("--n", n)
    require_non_negative("--cfg", cfg)
    require_non_negative("--temperature", temperature)
    if not prompt.strip():
        raise UserError("--prompt must not be empty")
    check_output_file(out)
    um = load(model, adapter)
    tokens = um.generate_images([prompt], n_per_prompt=n, cfg_scale=cfg, temperature=temperature, seed=seed)
    sheet = grid(um.decode_tokens(tokens))
    write_atomically(out, lambda tmp: sheet.save(tmp, format="PNG"))
    typer.echo(f"wrote {n} image(s) to {out}")


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
