"""Memory of reading a user's image data: what unigap holds against what the decoded pixels would take.

`unigap eval --questions`, `unigap train --objective sft` and `unigap prefs build --questions` read a user's whole
file before any work, checking every image by decoding it once; the images are then kept as stored (a path, or
encoded bytes) and decoded as they are used. This script writes N seeded photo-sized JPEGs (640 x 480) and a JSONL of
questions about them into a temporary folder, reads it with `read_understanding_data` in a fresh process and
reports the growth of that process's resident memory, then its further growth when every item's pixels are decoded
and held (what reading used to keep), side by side in one run. Linux (it reads /proc/self/statm).

    python benchmarks/user_data_memory.py                 # 400 images; benchmarks/results/user_data_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from _common import machine, nonnegative_int, positive_int, run_main, write_result

WIDTH, HEIGHT = 640, 480
MEASURE = """
import os, sys
from unigap.data.understanding import read_understanding_data

def rss():  # resident bytes now (Linux: /proc)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

start = rss()
items = read_understanding_data(sys.argv[1])
read = rss()
pixels = [item.image for item in items]  # what holding them decoded costs, measured the same way
print(len(items), read - start, rss() - read)
"""


def write_data(folder: Path, n: int, seed: int) -> Path:
    """n noisy JPEGs (noise compresses poorly, as photos do) and a JSONL asking one question about each."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir()
    base = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rows = []
    for i in range(n):
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / "images" / f"{i:05d}.jpg", quality=90)
        rows.append(json.dumps({"image": f"images/{i:05d}.jpg", "question": "What color?", "answer": "red"}))
    (folder / "und.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "und.jsonl"


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=400, help="Images in the file.")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "user_data_memory.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = options().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_data(Path(tmp), args.n, args.seed)
        on_disk = sum(f.stat().st_size for f in (Path(tmp) / "images").iterdir())
        done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True)
    items, reading, decoding = (int(v) for v in done.stdout.split())
    result = {"machine": machine(), "images": items, "width": WIDTH, "height": HEIGHT, "jpeg_bytes": on_disk,
              "pixel_bytes": items * WIDTH * HEIGHT * 3, "rss_growth_reading_bytes": reading,
              "rss_growth_holding_pixels_bytes": decoding}
    table = Table(title=f"{items} images of {WIDTH} x {HEIGHT}: resident memory (MiB)")
    for column in ("JPEG on disk", "pixels", "reading the file", "then holding the pixels"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{result[k] / 2**20:.1f}" for k in ("jpeg_bytes", "pixel_bytes", "rss_growth_reading_bytes",
                                                         "rss_growth_holding_pixels_bytes")))
    Console().print(table)
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    run_main(options(), main)
