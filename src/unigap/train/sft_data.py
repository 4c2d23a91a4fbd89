"""`unigap train --objective sft`: supervised fine-tuning on users' own data, both tasks in one LoRA run.

Understanding data (image + question + answer: `unigap.data.understanding`) trains the answers; generation data
(image + caption: `unigap.data.captions`) trains the image tokens from the caption. The generation images are
VQ-tokenized once, at the model's image size, into `OUT/gen_tokens.safetensors` (keyed by the data file's sha256,
every image's stored bytes, the model's VQ geometry, fingerprint and dtype), so a resumed run or a second run in the
same folder does not encode them again, and an image edited in place or another model does. A resumed run is
refused when any image it reads (by path, from either file) was edited since the run began (`images_digest`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from unigap.atomic import path_setting
from unigap.data.captions import CaptionedImage, read_caption_data
from unigap.data.tables import StoredImage
from unigap.data.understanding import UserItem, read_understanding_data
from unigap.errors import UserError
from unigap import distributed
from unigap.atomic import atomic_write_bytes, file_fingerprint
from unigap.train.config import check_field, check_ranges, load_config
from unigap.model.checkpoint import model_identity
from unigap.train.loop import StepCallback, bar_and, resumed_state
from unigap.train.sft import AnswerTask, SFTOptions, SFTTrainer, Task, TextToImageTask, vq_tokens
from unigap.train.trainer import TrainResult

TOKEN_CACHE = "gen_tokens.safetensors"
ENCODE_BATCH = 32


@dataclass(frozen=True)
class SFTConfig(SFTOptions):
    """`SFTOptions` plus the data files and each task's loss weight; a file left empty trains no such task."""

    lr: float = 3e-4  # chosen on the validation split of the shipped model (docs/experiments.md)
    # image + question + answer(s): JSONL/CSV/Parquet or a save_to_disk folder
    und_data: str = field(default="", metadata=path_setting())
    gen_data: str = field(default="", metadata=path_setting())  # image + prompt (or caption), same formats
    und_weight: float = 1.0
    gen_weight: float = 1.0
    max_rows: int = 0  # use at most this many rows of each file (0: all)
    # > 0: the generation loss under the CFG mixture images are sampled from, for images the model sampled itself
    # (as self-improvement's); on rendered scenes it cost 0.16-0.18 generation accuracy (docs/experiments.md)
    loss_cfg_scale: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.und_data and not self.gen_data:
            raise UserError("--objective sft needs --und-data, --gen-data or both")
        check_ranges(self, non_negative=("und_weight", "gen_weight", "max_rows"), guidance=("loss_cfg_scale",))
        check_field(self, "prompt_dropout", not (self.loss_cfg_scale and self.prompt_dropout),
                    "be 0 with loss-cfg-scale (the CFG mixture scores every row with its unconditional twin)")
        if not (self.und_data and self.und_weight > 0 or self.gen_data and self.gen_weight > 0):
            raise UserError("nothing to train: every task with data has weight 0")

    @classmethod
    def load(cls, toml_file: Path | None = None, **overrides: Any) -> SFTConfig:
        """Defaults, then the TOML file's keys (named like the fields), then the overrides that are not None."""
        return load_config(cls, toml_file, overrides)


@dataclass(frozen=True)
class SFTData:
    understanding: list[UserItem]
    captions: list[CaptionedImage]


def read_sft_data(config: SFTConfig) -> SFTData:
    """Both files read and checked (a bad row names its file and line) before any model is loaded."""
    limit = config.max_rows or None
    return SFTData(
        read_understanding_data(config.und_data, limit) if config.und_data else [],
        read_caption_data(config.gen_data, limit) if config.gen_data else [],
    )


def images_digest(images: list[StoredImage]) -> str:
    """One sha256 over every image's stored content (a file named by path read in full): what a data file's own
    hash misses when an image is edited in place."""
    return hashlib.sha256("".join(image.digest for image in images).encode()).hexdigest()


def caption_tokens(um: Any, captions: list[CaptionedImage], source: str, out_dir: Path,
                   progress: Any = None) -> torch.Tensor:
    """VQ ids [n, N] of the captioned images, read from the token cache when it matches, else encoded and cached.
    The key holds every image's bytes and the model with its dtype: an image edited in place, or another VQ, is
    encoded again, not read stale."""
    images = images_digest([c.stored for c in captions])
    key = {"sha256": file_fingerprint(source), "rows": str(len(captions)), "tokens": str(um.num_image_tokens),
           "codebook": str(um.model.config.vq_config.num_embeddings), "images": images,
           **{name: str(value) for name, value in model_identity(um).items()}}
    cache = out_dir / TOKEN_CACHE
    if cache.is_file():
        with safe_open(str(cache), "pt") as handle:
            if handle.metadata() == key:
                return handle.get_tensor("ids")
    ids = vq_tokens(um, [c.stored for c in captions], ENCODE_BATCH, progress)  # decoded batch by batch
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        blob = save({"ids": ids.contiguous()}, metadata=key)
        atomic_write_bytes(cache, lambda handle: handle.write(blob))
    return ids


def sft_tasks(um: Any, config: SFTConfig, data: SFTData, out_dir: Path, progress: Any = None
              ) -> dict[str, tuple[Task, float]]:
    """The run's tasks: `und` (answers) and `gen` (caption → image tokens), those with data and a weight > 0."""
    tasks: dict[str, tuple[Task, float]] = {}
    if data.understanding and config.und_weight > 0:
        items = data.understanding
        images = [i.stored for i in items]  # decoded batch by batch
        tasks["und"] = (AnswerTask(images, [[i.question.text] for i in items], [[i.question.answer] for i in items]),
                        config.und_weight)
    if data.captions and config.gen_weight > 0:
        ids = caption_tokens(um, data.captions, config.gen_data, out_dir, progress)
        tasks["gen"] = (TextToImageTask([c.prompt for c in data.captions], ids, config.loss_cfg_scale or None),
                        config.gen_weight)
    return tasks


def train_sft(um: Any, config: SFTConfig, out_dir: str | Path, resume: bool = False,
              report_to: tuple[str, ...] = (), show_progress: bool = True, data: SFTData | None = None,
              on_step: StepCallback | None = None) -> TrainResult:
    """Read the data (unless given), tokenize the generation images once, then train (or resume) a LoRA in
    `out_dir` with progress bars (and `on_step(done, record)` after each step: the study's bar): what
    `unigap train --objective sft` runs."""
    from unigap.progress import progress

    out_dir = Path(out_dir)
    resumed_state(out_dir, config, resume, mmap=True, identity=model_identity(um))  # fails before the data is built
    data = read_sft_data(config) if data is None else data
    um.prompts.check_texts(prompts=[(c.where, c.prompt) for c in data.captions],  # (before a step draws one, hours in)
                           questions=[(item.where, item.question.text) for item in data.understanding])
    show_progress = show_progress and distributed.is_main()
    with progress("tokenize", max(len(data.captions), 1), show_progress and bool(data.captions)) as update:
        tasks = sft_tasks(um, config, data, out_dir, update)
    trainer = SFTTrainer(um, config, tasks, out_dir, f"{out_dir.name}-sft", report_to)
    with progress("sft", config.steps, show_progress) as update:
        return trainer.train(resume, bar_and(update, on_step))
