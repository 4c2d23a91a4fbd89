"""`unigap world`: sample ShapeWorld datasets and verify single images from the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from unigap.errors import UserError
from unigap.manifest import MANIFEST_FILE, manifest, read_record, write_manifest
from unigap.progress import progress
from unigap.world.dataset import IMAGE_NAME, IMAGES_DIR, QUESTIONS_FILE, SAMPLES_FILE, SPLITS, write_dataset
from unigap.world.prompts import CATEGORIES, parse_prompt
from unigap.world.scene import DEFAULT_CANVAS, MAX_CANVAS, MIN_CANVAS
from unigap.world.verify import load_image, verify

app = typer.Typer(
    help="ShapeWorld: a synthetic world of coloured shapes with exact ground truth.", no_args_is_help=True
)

MAX_N, MAX_QUESTIONS = 1_000_000, 100  # a dataset's images, and questions per image (more ran out of memory or hung)
MAX_QUESTION_ROWS = 5_000_000  # questions in all: held in memory for one write (~0.7 KB and 0.2 ms each)
PROGRESS_MIN_N = 200  # below this a bar flickers more than it informs


@app.command()
def sample(
    n: int = typer.Option(..., "--n", help="Number of samples."),
    seed: int = typer.Option(..., "--seed", help="Seed (use one seed for all splits of a dataset)."),
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    split: str = typer.Option("train", "--split", help="train | val | test"),
    category: str | None = typer.Option(
        None, "--category", help=f"One of {', '.join(CATEGORIES)} (default: all)."
    ),
    size: int = typer.Option(DEFAULT_CANVAS, "--size", help=f"Canvas side in pixels ({MIN_CANVAS} to {MAX_CANVAS})."),
    questions: int = typer.Option(0, "--questions", help="Also write DIR/questions.jsonl: this many questions per "
                                  "image with their exact answers (understanding data for train --objective sft), "
                                  "each drawn independently, so an image may get one question twice."),
    draw_seed: int | None = typer.Option(None, "--draw-seed", help="Which scenes of the split are drawn (default: "
                                         "--seed). The partition stays --seed's; the shipped model was pretrained "
                                         "on --seed 0's first 6000 train scenes, so new data for it needs another."),
) -> None:
    """Write DIR/samples.jsonl and DIR/images/*.png for one split (rendered scenes with the prompt each satisfies:
    generation data for `unigap train --objective sft --gen-data`)."""
    if not 0 < n <= MAX_N:
        raise UserError(f"--n must be from 1 to {MAX_N:,}, got {n}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if not 0 <= questions <= MAX_QUESTIONS:
        raise UserError(f"--questions must be from 0 to {MAX_QUESTIONS}, got {questions}")
    if n * questions > MAX_QUESTION_ROWS:
        raise UserError(f"--n × --questions must be at most {MAX_QUESTION_ROWS:,} questions in all (they are held in "
                        f"memory for one write), got {n * questions:,}: sample the questions in smaller parts")
    if draw_seed is not None and draw_seed < 0:
        raise UserError(f"--draw-seed must be >= 0, got {draw_seed}")
    _check_size(size)
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if category is not None and category not in CATEGORIES:
        raise UserError(f"--category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    theirs = _not_ours(out, n)
    if theirs:
        raise UserError(f"--out {out} holds {', '.join(theirs)} that `unigap world sample` did not write; choose "
                        "another --out")
    settings = {"n": n, "seed": seed, "split": split, "category": category, "size": size, "questions": questions,
                "draw_seed": draw_seed}
    seeds = [seed] if draw_seed is None else [seed, draw_seed]
    with manifest("world sample", settings, seeds=seeds) as record, \
            progress("sampling", n, show=n >= PROGRESS_MIN_N) as update:
        path = write_dataset(out, n, seed, split, category, size, progress=update, questions=questions,
                             draw_seed=draw_seed)
    write_manifest(out, record)
    asked = f", and {questions} question(s) per image to {out / QUESTIONS_FILE}" if questions else ""
    typer.echo(f"wrote {n} samples to {path}{asked}")


def _not_ours(out: Path, n: int) -> list[str]:
    """What a sample into `out` would replace that no earlier one wrote (a user's own questions and pictures): its
    index files, and the images it writes, unless an earlier sample made the folder (its manifest, or, from before
    manifests, its samples.jsonl's rows)."""
    if (read_record(out / MANIFEST_FILE) or {}).get("command") == "world sample" or _a_sample(out / SAMPLES_FILE):
        return []
    found = [name for name in (SAMPLES_FILE, QUESTIONS_FILE) if (out / name).is_file()]
    images = sorted(p.name for p in (out / IMAGES_DIR).glob("*.png")
                    if re.fullmatch(IMAGE_NAME, p.name) and int(p.stem) < n) if (out / IMAGES_DIR).is_dir() else []
    return found + [f"{IMAGES_DIR}/{name}" for name in images[:3]] + (["..."] if len(images) > 3 else [])


def _a_sample(index: Path) -> bool:
    """Whether a samples.jsonl's first row is one `world sample` writes."""
    try:
        with index.open(encoding="utf-8") as handle:
            row = json.loads(handle.readline())
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and {"index", "split", "spec", "scene", "image"} <= set(row)


def _check_size(size: int) -> None:
    if not MIN_CANVAS <= size <= MAX_CANVAS:
        raise UserError(f"--size must be from {MIN_CANVAS} to {MAX_CANVAS} pixels, got {size}")


@app.command("verify")
def verify_command(
    image: Path = typer.Argument(..., help="PNG/JPEG image of the configured size."),
    prompt: str = typer.Option(..., "--prompt", help='A ShapeWorld prompt, e.g. "a red circle".'),
    size: int = typer.Option(DEFAULT_CANVAS, "--size", help=f"Canvas side in pixels ({MIN_CANVAS} to {MAX_CANVAS})."),
) -> None:
    """Judge one image against one prompt; prints a JSON verdict (exit 0 whether satisfied or not)."""
    _check_size(size)
    spec = parse_prompt(prompt)
    picture = load_image(image)
    height, width = picture.shape[:2]
    judged = height == width and MIN_CANVAS <= width <= MAX_CANVAS  # (a Janus-Pro's 384 px)
    hints = [f"pass --size {width} to judge it at its own size"] if judged else []
    if width % size == height % size == 0:  # (a sheet read as one scene: every tile's objects)
        hints.append(f"if it is a grid of {size}x{size} images (`generate --n`), crop each tile and verify it alone")
    if (height, width) != (size, size):
        hints = hints or [f"a canvas is square, {MIN_CANVAS} to {MAX_CANVAS} pixels"]
        raise UserError(f"{image} is {width}x{height}, not the {size}x{size} canvas --size says; {', or '.join(hints)}")
    verdict = verify(picture, spec, size)
    typer.echo(json.dumps({"prompt": spec.text, **verdict.to_dict()}))
