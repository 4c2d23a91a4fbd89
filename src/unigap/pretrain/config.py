"""What `unigap pretrain` trains and for how long: one dataclass, two presets (full and `--quick`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from unigap.errors import UserError
from unigap.model.editing import check_edit_source
from unigap.model.tiny import MIN_CODEBOOK, TINY_IMAGE_SIZE, TINY_PATCH_SIZE, VISION_HEAD_SIZE, vision_heads
from unigap.train.config import check_field_types


# Every corpus is built and every step draws understanding and generation examples; critique and edit batches may be
# 0 (that task is not learnt).
POSITIVE = ("hidden_size", "num_layers", "num_heads", "codebook_size", "vision_hidden_size", "vision_layers", "scenes",
            "understanding_scenes", "questions_per_scene", "critique_scenes", "edit_pairs", "vq_batch", "vq_lr",
            "vq_crop", "vision_batch", "vision_lr", "und_batch", "questions_per_image", "gen_batch", "lr",
            "checkpoint_every", "polish_lr", "polish_und_batch", "polish_gen_batch")
NON_NEGATIVE = ("seed", "vq_steps", "vq_empty_crop_weight", "vision_steps", "steps", "critique_batch", "edit_batch",
                "weight_decay", "warmup", "patch_label_weight", "polish_steps", "polish_warmup",
                "polish_critique_batch", "polish_edit_batch")


def _check(name: str, value: object, ok: Callable[[Any], bool], what: str) -> None:
    """One line naming the field as `PretrainConfig` (and `recipe_probe --set`) spells it (NaN fails every check)."""
    if not ok(value):
        raise UserError(f"{name} must {what}, got {value}")


@dataclass(frozen=True)
class PretrainConfig:
    """Model sizes, corpora and each training stage's budget. The full preset is the shipped `tiny`'s recipe (its
    corpora drawn by the rules of its day: docs/experiments.md)."""

    seed: int = 0
    # model (see unigap.model.tiny_janus_config)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    codebook_size: int = 512
    vision_hidden_size: int = 128
    vision_layers: int = 2
    # corpora (see unigap.pretrain.corpus): train-split scenes rendered once
    scenes: int = 6000  # drawn for train prompts: generation targets and VQ training images
    understanding_scenes: int = 12000  # uniformly random, with questions
    questions_per_scene: int = 8
    sentence_fraction: float = 0.25  # understanding questions asked for a full-sentence answer
    critique_scenes: int = 10000  # pictures of train prompts, intact, broken or damaged, with judge + reflection questions
    edit_pairs: int = 8000  # (source scene, instruction, edited scene) triples
    edit_source: str = "vision"  # how an edit reads its source image: "vision" tower or its VQ "tokens" (model.editing)
    reconstructed_fraction: float = 0.5  # understanding, critique and edit-source images that are VQ reconstructions
    # stage 1: VQ tokenizer
    vq_steps: int = 5600
    vq_batch: int = 32
    vq_lr: float = 3e-3
    vq_crop: int = 32  # train on grid-aligned crops of this side (the VQ is convolutional)
    vq_empty_crop_weight: float = 0.1  # draw weight of a crop with no object, against 1; 1 = uniform (see README)
    vq_merge_similarity: float | None = None  # after stage 1, merge codes this similar (pretrain.vq.merge_similar_codes)
    # stage 2: the vision tower alone, on per-patch object labels (see unigap.pretrain.vision)
    vision_steps: int = 600
    vision_batch: int = 64
    vision_lr: float = 2e-3
    # stage 3: LLM, aligners and generation head (and the vision tower if joint_trains_vision) on both tasks
    joint_trains_vision: bool = False
    steps: int = 3000
    und_batch: int = 24  # images per step
    questions_per_image: int = 4  # questions scored per understanding image (sharing its forward pass)
    gen_batch: int = 24
    critique_batch: int = 16  # critique pictures per step, all their questions scored
    critique_intact: float | None = None  # share of critique pictures drawn intact; None: as the corpus holds them
    edit_batch: int = 16  # edit pairs per step (0: the model does not learn to edit)
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    prompt_dropout: float = 0.1  # generation prompts and edit prefixes replaced by the unconditional prompt (CFG)
    # edit prefixes that keep the source and drop the instruction: the twin editing's guidance compares the full prefix
    # with at the default image scale (unigap.model.editing.EditGuidance); 0 leaves that twin untrained
    edit_instruction_dropout: float = 0.0
    patch_label_weight: float = 1.0  # weight of the image-position shape/colour loss (see unigap.pretrain.joint.PatchHead)
    checkpoint_every: int = 100
    # stage 4, polish: the joint step again from stage 3's weights with a fresh optimiser and schedule, fewer
    # understanding and generation examples, more critique and edit ones, and critique pictures drawn intact
    # `polish_intact` of the time (stage 3 draws intact, broken and damaged alike; see unigap.pretrain.joint)
    polish_steps: int = 0
    polish_lr: float = 5e-4
    polish_warmup: int = 30
    polish_und_batch: int = 12
    polish_gen_batch: int = 12
    polish_critique_batch: int = 32
    polish_edit_batch: int = 24
    polish_intact: float = 0.5

    def __post_init__(self) -> None:
        """Refuse a setting that would fail (or train nothing) only later, often after the long VQ stage."""
        check_field_types(self)
        for name in ("polish_intact", "critique_intact", "edit_instruction_dropout", "sentence_fraction",
                     "reconstructed_fraction", "prompt_dropout"):
            _check(name, getattr(self, name), lambda share: share is None or 0.0 <= share <= 1.0, "lie in [0, 1]")
        check_edit_source(self.edit_source)
        if self.vq_merge_similarity is not None and not -1.0 < self.vq_merge_similarity <= 1.0:
            raise ValueError(f"vq_merge_similarity is a cosine similarity in (-1, 1], got {self.vq_merge_similarity}")
        for name in POSITIVE:  # (check_field_types refused NaN and inf: an infinite lr trained every VQ step on NaN)
            _check(name, getattr(self, name), lambda value: value > 0, "be positive")
        for name in NON_NEGATIVE:
            _check(name, getattr(self, name), lambda value: value >= 0, "be >= 0")
        # shapes the model build refuses, after every corpus is drawn (RoPE rotates pairs of a head's dimensions)
        _check("num_heads", self.num_heads, lambda heads: self.hidden_size % (2 * heads) == 0,
               f"divide hidden_size {self.hidden_size} into heads of an even size")
        heads = vision_heads(self.vision_hidden_size)
        _check("vision_hidden_size", self.vision_hidden_size, lambda size: size % heads == 0,
               f"be a multiple of its {heads} heads (one per {VISION_HEAD_SIZE} dimensions)")
        _check("codebook_size", self.codebook_size, lambda size: size >= MIN_CODEBOOK, f"be at least {MIN_CODEBOOK}")
        _check("vq_crop", self.vq_crop, lambda crop: crop % TINY_PATCH_SIZE == 0 or crop >= TINY_IMAGE_SIZE,
               f"be a multiple of the VQ's {TINY_PATCH_SIZE}-pixel token side (or the whole {TINY_IMAGE_SIZE}-pixel "
               "image)")  # (a crop between token rows fails the first VQ step, after every corpus is drawn)

    def scaled(self, **changes: object) -> PretrainConfig:
        return replace(self, **changes)

    def polish(self) -> PretrainConfig:
        """Stage 4 as a joint-stage config (`joint_step` and `make_optimizer` read it like stage 3's)."""
        return replace(self, steps=self.polish_steps, lr=self.polish_lr, warmup=self.polish_warmup,
                       und_batch=self.polish_und_batch, gen_batch=self.polish_gen_batch,
                       critique_batch=self.polish_critique_batch, edit_batch=self.polish_edit_batch,
                       critique_intact=self.polish_intact, patch_label_weight=0.0)


FULL = PretrainConfig()
QUICK = FULL.scaled(scenes=400, understanding_scenes=400, questions_per_scene=2, critique_scenes=200, edit_pairs=200,
                    vq_steps=40, vision_steps=20, steps=40, warmup=4, checkpoint_every=20)  # (FULL's 100: all warm-up)
