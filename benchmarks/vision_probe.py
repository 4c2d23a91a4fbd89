"""Does a model's vision tower see shapes? A linear probe for the shape under each patch.

Why: understanding failed on shape questions (v4 named the shape of a lone object correctly 12% of the
time), and the question is whether the tower's features hold shape at all or the LLM fails to read them.
The tower is frozen; one linear layer is fitted on its patch features of 1000 random train-split scenes to
the `patch_labels` shape class (background included) and scored on 200 more, on patches that hold an
object (3 shapes: chance ≈ 0.33 if it always names one shape).

    python benchmarks/vision_probe.py [--model tiny] [--model runs/other ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from _common import check_model, machine, run_main, write_result
from unigap.model import load_model
from unigap.pretrain.corpus import understanding_corpus
from unigap.pretrain.labels import patch_labels
from unigap.pretrain.vq import to_pixels

RESULT = Path(__file__).parent / "results" / "vision_probe.json"
FIT, TEST = 1000, 200


@torch.no_grad()
def patch_features(tower: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The tower's patch features, in float32 on the CPU (where the probe is fitted), whatever the device and dtype
    the model was loaded in (a GPU's bf16 by default)."""
    weight = next(tower.parameters())
    return torch.cat([tower(pixel_values=pixels[i : i + 200].to(weight.device, weight.dtype)).last_hidden_state
                      .float().cpu() for i in range(0, len(pixels), 200)])


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """Fit a linear shape classifier on the first FIT scenes; accuracy on the object patches of the rest."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(features.shape[-1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(head(features[:FIT]).flatten(0, 1), labels[:FIT].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = head(features[FIT:]).argmax(-1)
    on_object = labels[FIT:] > 0
    return (predicted == labels[FIT:])[on_object].float().mean().item()


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="tiny or a checkpoint directory (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = options()
    args = parser.parse_args(argv)
    for name in args.model or []:  # (a later one would fail after the earlier ones' probes)
        check_model(parser, name)
    corpus = understanding_corpus(FIT + TEST, seed=0, questions_per_scene=0)
    pixels = to_pixels(corpus.renders)
    rows, um = [], None
    for name in args.model or ["tiny"]:
        um = load_model(name)
        tower = um.model.model.vision_model.eval()
        grid = int(round(tower.config.num_image_tokens**0.5))
        labels = torch.from_numpy(np.stack([patch_labels(scene, grid)[0] for scene in corpus.scenes]))
        rows.append({"model": name, "shape_probe_accuracy": probe_accuracy(patch_features(tower, pixels), labels)})
    table = Table("model", "patch-shape probe accuracy (object patches)")
    for row in rows:
        table.add_row(row["model"], f"{row['shape_probe_accuracy']:.3f}")
    Console().print(table)
    write_result(RESULT, {"benchmark": "vision_probe", "fit_scenes": FIT, "test_scenes": TEST, "models": rows,
                          **machine(um)})


if __name__ == "__main__":
    run_main(options(), main)
