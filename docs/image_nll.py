"""How well a model fits rendered scenes it was or was not trained on: the mean teacher-forced NLL per image token
(conditional, no CFG) of n rendered (prompt, scene) pairs per set, for the model and each adapter.

    python docs/image_nll.py [--model tiny] [--adapter DIR ...] [--n 400] [--out nll.json]

Sets (partition seed 0, the shipped model's): `pretraining` is draw seed 0, the first scenes of the corpus the
shipped model was pretrained on; `fresh train` other scenes of the same train prompts (draw seed 7); `val` and
`test` held-out prompts. A gap between the first and the others is memorisation of the pretraining scenes.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from unigap.atomic import write_text_atomically
from unigap.model import UnifiedModel, load_model
from unigap.world import render, sample_records

SETS = {"pretraining": ("train", 0), "fresh train": ("train", 7), "val": ("val", 0), "test": ("test", 0)}
BATCH = 50


def nll_per_token(um: UnifiedModel, records: list) -> np.ndarray:
    """Each record's mean NLL per image token, in nats."""
    out = []
    with torch.no_grad():
        for i in range(0, len(records), BATCH):
            chunk = records[i : i + BATCH]
            tokens = um.encode_images([render(scene) for _, scene in chunk])
            logprobs, counts = um.image_logprobs([spec.text for spec, _ in chunk], tokens)
            out.append((-logprobs / counts).cpu().numpy())  # (on a GPU: .numpy() of a CUDA tensor raises)
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--adapter", action="append", default=[])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = {name: sample_records(args.n, 0, split, draw_seed=draw) for name, (split, draw) in SETS.items()}
    results = {}
    for adapter in [None, *args.adapter]:
        um = load_model(args.model)
        if adapter is not None:
            um.load_adapter(adapter)
        results[adapter or "base"] = {
            name: {"nll": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(len(v))), "n": len(v)}
            for name, v in ((name, nll_per_token(um, records)) for name, records in data.items())
        }
    print("| model | " + " | ".join(SETS) + " |\n|---|" + "---|" * len(SETS))
    for model, row in results.items():
        print(f"| {model} | " + " | ".join(f"{row[s]['nll']:.3f} ± {1.96 * row[s]['stderr']:.3f}" for s in SETS) + " |")
    if args.out:
        write_text_atomically(args.out, json.dumps({"n": args.n, "model": args.model, "results": results}, indent=2))


if __name__ == "__main__":
    main()
