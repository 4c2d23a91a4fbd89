"""Pretraining the embedded default: a tiny Janus trained from scratch on ShapeWorld.

Stages, each a module: `corpus` (train-split scenes, renders, questions), `vq` (the VQ tokenizer),
`labels` (which object covers each image patch), `vision` (the vision tower on those labels), `joint`
(LLM, vision tower, aligners and generation head on understanding + generation, with a patch-label head),
`run` (orchestration, checkpoints, resume). `unigap pretrain` calls `run.pretrain`.
"""

from unigap.pretrain.config import FULL, QUICK, PretrainConfig
from unigap.pretrain.run import pretrain

__all__ = ["FULL", "QUICK", "PretrainConfig", "pretrain"]
