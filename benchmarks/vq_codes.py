"""How many VQ codes mean the same thing, and what merging them costs: is the tokenizer fit for copying?

Why: an edit keeps most of its picture, so an editor could copy most of its output tokens from the source, if a
patch that the edit leaves pixel-identical kept its code. This measures, on edit pairs of train scenes (source
render, result render), how many distinct codes encode blank patches and how often a pixel-identical patch keeps
its code; then the same after `unigap.pretrain.vq.merge_similar_codes` at each similarity (code usage counted on
the first generation renders, as `unigap pretrain` counts it), with the verifier's acceptance of the VQ's
reconstructions of held-out val scenes (what merging costs in fidelity).

    python benchmarks/vq_codes.py [--model tiny] [--pairs 300] [--similarity 0.95 0.9 0.85 0.8]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import finite_float, positive_int, run_main, write_result
from unigap.evaluate.vq import vq_fidelity
from unigap.model import UnifiedModel, load_model
from unigap.pretrain.corpus import edit_corpus, generation_corpus
from unigap.pretrain.labels import grid_side
from unigap.pretrain.run import MERGE_IMAGES
from unigap.pretrain.vq import merge_similar_codes, to_pixels

RESULT = Path(__file__).parent / "results" / "vq_codes.json"
FIDELITY_N = 200  # held-out val scenes whose reconstructions the verifier checks


def patches(images: np.ndarray, grid: int) -> np.ndarray:
    """Per image, each token's patch as a row of its pixel values [S, grid², side²·3], for pixel comparisons."""
    side = images.shape[1] // grid
    return images.reshape(len(images), grid, side, grid, side, 3).transpose(0, 1, 3, 2, 4, 5).reshape(
        len(images), grid * grid, -1)


def measure(um: UnifiedModel, sources: np.ndarray, results: np.ndarray) -> dict[str, float | int]:
    grid = grid_side(um.num_image_tokens)
    src, res = patches(sources.astype(int), grid), patches(results.astype(int), grid)
    identical = torch.from_numpy((src == res).all(-1))
    blank = torch.from_numpy((src == 255).all(-1))
    before, after = um.encode_images(list(sources)), um.encode_images(list(results))
    return {
        "distinct_codes": int(torch.unique(um.model.model.vqmodel.quantize.embedding.weight, dim=0).shape[0]),
        "codes_on_blank_patches": int(before[blank].unique().numel()),
        "blank_patch_share": float(blank.float().mean()),
        "identical_patch_share": float(identical.float().mean()),
        "same_code_if_identical": float((before == after)[identical].float().mean()),
        "same_code_if_changed": float((before == after)[~identical].float().mean()),
        "fidelity_val": vq_fidelity(um, n=FIDELITY_N, seed=0, data_seed=0, progress=False, split="val")["accuracy"],
    }


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--pairs", type=positive_int, default=300, help="edit pairs of train scenes (seed 0)")
    parser.add_argument("--similarity", type=finite_float, nargs="*", default=[0.95, 0.9, 0.85, 0.8])
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    base = load_model(args.model, device="cpu")
    corpus = edit_corpus(args.pairs, 0)
    sources, results = np.stack(corpus.sources), np.stack(corpus.results)
    usage = to_pixels(generation_corpus(MERGE_IMAGES, 0, grid_side(base.num_image_tokens)).renders)  # as pretrain
    rows = {"as trained": measure(base, sources, results)}
    for similarity in args.similarity:
        um = copy.deepcopy(base)
        merge_similar_codes(um.model.model.vqmodel, usage, similarity)
        rows[f"merged at {similarity}"] = measure(um, sources, results)
    table = Table(title=f"{args.model}'s VQ on {args.pairs} edit pairs of train scenes")
    columns = ("distinct_codes", "codes_on_blank_patches", "same_code_if_identical", "same_code_if_changed",
               "fidelity_val")
    for column in ("codebook", *columns):
        table.add_column(column.replace("_", " "))
    for name, row in rows.items():
        table.add_row(name, *(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    Console(width=160).print(table)
    write_result(args.out, {"model": args.model, "pairs": args.pairs, "merge_images": MERGE_IMAGES,
                            "fidelity_n": FIDELITY_N, "results": rows})


if __name__ == "__main__":
    run_main(options(), main)
