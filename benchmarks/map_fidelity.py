"""VQ fidelity of UniMRG's auxiliary maps: can the model's image tokenizer encode the segmentation and depth maps?

Why: the auxiliary targets are the maps' VQ tokens. A map the VQ cannot reconstruct gives tokens that no decoder
draws back as the map, and the embedded model's VQ was trained on renders only (white background, palette
colours). This round-trips renders, segmentation maps and depth maps through the VQ, drawn as unigap draws them
(on the renders' white background) and on black (the usual look of such maps), and reports the mean absolute
pixel error (0-255) and the share of pixels whose nearest colour (background or palette) survives.

    python benchmarks/map_fidelity.py [--model tiny] [--n 200] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import machine, nonnegative_int, positive_int, run_main, write_result
from unigap.model import load_model
from unigap.world import PALETTE, random_train_scenes, render, render_depth, render_segmentation

RESULT = Path(__file__).parent / "results" / "map_fidelity.json"
MAPS = {"render": render, "segmentation": render_segmentation, "depth": render_depth}
WHITE, BLACK = np.array([255, 255, 255]), np.array([0, 0, 0])


def classes(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Each pixel's nearest colour among the background and the palette: [B, H, W] indices."""
    colours = np.array([background, *PALETTE.values()], dtype=np.float32)  # [C, 3]
    distance = ((images[..., None, :].astype(np.float32) - colours) ** 2).sum(-1)  # [B, H, W, C]
    return distance.argmin(-1)


def measure(model: str, n: int, seed: int) -> dict:
    um = load_model(model)
    scenes = random_train_scenes(n, 0, draw=seed + 100)
    rows = []
    for name, draw in MAPS.items():
        white = np.stack([draw(scene) for scene in scenes])
        on_black = np.where((white == 255).all(-1, keepdims=True), BLACK, white).astype(np.uint8)
        for background, images in (("white", white), ("black", on_black)):
            decoded = []
            for start in range(0, n, 64):
                chunk = list(images[start : start + 64])
                pictures = um.decode_tokens(um.encode_images(chunk))
                decoded += [np.asarray(p.convert("RGB").resize(images.shape[1:3][::-1])) for p in pictures]
            back = np.stack(decoded)
            colour = WHITE if background == "white" else BLACK
            rows.append({
                "map": name, "background": background, "n": n,
                "mean_abs_error": float(np.abs(back.astype(np.float32) - images).mean()),
                "pixel_class_agreement": float((classes(back, colour) == classes(images, colour)).mean()),
            })
    return {"model": model, "n": n, "seed": seed, "machine": machine(um), "rows": rows}


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n", type=positive_int, default=200, help="random train-split scenes")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    result = measure(args.model, args.n, args.seed)
    table = Table(title=f"VQ round trip of the auxiliary maps ({args.model}, n = {args.n})")
    for column in ("map", "background", "mean abs error", "pixel classes kept"):
        table.add_column(column, justify="left" if column in ("map", "background") else "right")
    for row in result["rows"]:
        table.add_row(row["map"], row["background"], f"{row['mean_abs_error']:.1f}",
                      f"{row['pixel_class_agreement']:.3f}")
    Console().print(table)
    write_result(args.out, result)


if __name__ == "__main__":
    run_main(options(), main)
