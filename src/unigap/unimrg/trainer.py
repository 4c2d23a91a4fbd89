"""`UniMRGTrainer`: understanding SFT, plus (objective `unimrg`) generating each input image's representations.

An `SFTTrainer` with UniMRG's tasks: understanding (the images' questions and exact answers) and, for `unimrg`,
one image-to-image task per auxiliary representation (the input image through the understanding encoder, the
representation's instruction, loss = mean cross-entropy on the target's image tokens: the autoregressive-token
form of UniMRG's loss), each weighted by its config weight. Only the auxiliary losses reach the generation head.

Logged keys (`LOGGED_KEYS`): step, lr, loss, und/loss, <representation>/loss, grad_norm.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unigap.errors import UnigapWarning
from unigap.model.checkpoint import model_identity
from unigap.train.loop import StepCallback, bar_and, resumed_state
from unigap.train.sft import AnswerTask, ImageToImageTask, SFTTrainer, Task
from unigap.train.trainer import TrainResult
from unigap.unimrg.config import REPRESENTATIONS, UniMRGConfig
from unigap.unimrg.data import INSTRUCTIONS, UniMRGData, check_instructions

LOGGED_KEYS = ("step", "lr", "loss", "und/loss", *(f"{r}/loss" for r in REPRESENTATIONS), "grad_norm")


@contextmanager
def _fixed_instructions() -> Iterator[None]:
    """No warning for UniMRG's own instructions: they are fixed texts, some of whose words are outside the shipped
    model's vocabulary and read as <unk>, which is no user's mistake (`check_instructions` makes sure they still
    tell the maps apart)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the tokenizer does not know", category=UnigapWarning)
        yield


class UniMRGTrainer(SFTTrainer):
    """Trains a fresh LoRA on `um` with UniMRG's tasks built from `data`; `train()` runs (or resumes)."""

    def __init__(self, um: Any, config: UniMRGConfig, data: UniMRGData, out_dir: str | Path,
                 report_to: tuple[str, ...] = ()) -> None:
        missing = [r for r in config.auxiliary if r not in data.targets]
        if missing:
            raise ValueError(f"the data holds no targets for {', '.join(missing)}")
        with _fixed_instructions():
            check_instructions(um, list(config.auxiliary))
        questions = [[q.text for q in qs] for qs in data.questions]
        answers = [[q.answer for q in qs] for qs in data.questions]
        tasks: dict[str, tuple[Task, float]] = {"und": (AnswerTask(data.images, questions, answers), 1.0)}
        for name, weight in config.auxiliary.items():
            tasks[name] = (ImageToImageTask(data.images, INSTRUCTIONS[name], data.targets[name]), weight)
        super().__init__(um, config, tasks, out_dir, f"{Path(out_dir).name}-{config.objective}", report_to)

    def train(self, resume: bool = False, on_step: StepCallback | None = None) -> TrainResult:
        with _fixed_instructions():  # each step encodes the instructions
            return super().train(resume, on_step)


def train_unimrg(um: Any, config: UniMRGConfig, out_dir: str | Path, resume: bool = False,
                 report_to: tuple[str, ...] = (), show_progress: bool = True, data: UniMRGData | None = None,
                 on_step: StepCallback | None = None) -> TrainResult:
    """Build the data (unless given: it depends on the data settings only, not on the seed), then train (or resume)
    a run in `out_dir`, with progress bars (and `on_step` as `train_sft`'s): what `unigap train --objective
    unimrg|und-sft` and the study's `unimrg` and `und-sft` arms run."""
    from unigap import distributed
    from unigap.progress import progress
    from unigap.unimrg.data import build_data

    show_progress = show_progress and distributed.is_main()  # one bar under a launcher, not one per process
    resumed_state(out_dir, config, resume, mmap=True, identity=model_identity(um))  # fails before the data is built
    if data is None:
        representations = list(config.auxiliary)
        with progress("data", config.n_scenes * (1 + len(representations)), show_progress) as update:
            data = build_data(um, config.n_scenes, config.data_seed, config.questions_per_image,
                              config.sentence_fraction, representations, update)
    trainer = UniMRGTrainer(um, config, data, out_dir, report_to)
    with progress(config.objective, config.steps, show_progress) as update:
        return trainer.train(resume, bar_and(update, on_step))
