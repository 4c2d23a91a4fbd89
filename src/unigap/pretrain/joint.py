"""Stage 3: train the LLM, aligners and generation head (the vision tower too if `joint_trains_vision`) on
every task at once.

Each step takes a batch of understanding examples (a random scene's image, several questions → exact
answers; images are renders or their VQ reconstructions, so the model also understands the kind of image
it generates), a batch of text-to-image examples (prompt → VQ ids of a scene satisfying it), a batch of
critique pictures (judge and reflection questions about intact, broken and damaged pictures of train
prompts) and a batch of edits (source image + instruction → VQ ids of the edited scene). Some generation
prompts and edit prefixes are replaced by the unconditional prompt, built exactly as CFG builds it at
inference. Each task's loss is its mean token cross-entropy; the step minimises their sum plus
`patch_label_weight` times the patch-label loss of `PatchHead`. The VQ stays frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unigap.model import UnifiedModel
from unigap.model.decoding import left_pad
from unigap.model.generation import image_token_states, unconditional
from unigap.pretrain.config import PretrainConfig
from unigap.pretrain.corpus import (
    JUDGED_NEAR_MISSES,
    Corpora,
    CritiqueCorpus,
    EditCorpus,
    GenerationCorpus,
    UnderstandingCorpus,
)

CRITIQUE_QUESTIONS = JUDGED_NEAR_MISSES + 3  # every question of a critique picture (judge x2, reflect x2)
from unigap.world import COLORS, SHAPES


@dataclass
class JointStep:
    """One step's per-task losses, for the log."""

    und_loss: float
    gen_loss: float
    patch_loss: float
    critique_loss: float
    edit_loss: float
    lr: float


class PatchHead(torch.nn.Module):
    """Names the shape and colour of the object under each image token from the LLM state that predicts
    that token; used in pretraining only, then dropped.

    Why: the generation loss alone teaches the model to carry a prompt's colour word to the image
    positions but not its shape word. On v5, swapping the shape word of a colour prompt ("a red circle"
    → "a red square") lowered a training image's log-likelihood by 0.24 nats, swapping the colour word by
    3.2, and its images of "a circle" and of "a square" held the same mix of shapes. Stage 2's per-patch
    labels did the same for the vision tower, whose shape probe went from 0.35 to 0.92.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.shape = torch.nn.Linear(hidden_size, len(SHAPES) + 1)  # class 0: background
        self.color = torch.nn.Linear(hidden_size, len(COLORS) + 1)

    def loss(self, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Shape plus colour cross-entropy; `states` [B, N, hidden], `labels` [B, 3, N] (`patch_labels`)."""
        shape = F.cross_entropy(self.shape(states).flatten(0, 1).float(), labels[:, 0].flatten())
        color = F.cross_entropy(self.color(states).flatten(0, 1).float(), labels[:, 1].flatten())
        return shape + color


def trainable_parameters(um: UnifiedModel, config: PretrainConfig) -> list[torch.nn.Parameter]:
    """Every parameter except the VQ tokenizer's (stage 1) and, unless `joint_trains_vision`, the vision
    tower's (stage 2). Why freeze the tower: trained on through the LLM's answers it forgets what stage 2
    taught it (`benchmarks/vision_probe.py`: a linear probe for the shape under each patch scores 0.92 on
    the frozen tower, 0.40 on one trained on for 400 joint steps), and Janus likewise keeps its pretrained SigLIP encoder frozen in unified pretraining (its stage II)."""
    um.model.model.vqmodel.requires_grad_(False)
    um.model.model.vision_model.requires_grad_(config.joint_trains_vision)
    return [p for p in um.model.parameters() if p.requires_grad]


def make_optimizer(params: list[torch.nn.Parameter], config: PretrainConfig) -> tuple[torch.optim.Optimizer, object]:
    """AdamW with linear warm-up then cosine decay to 10% of the peak learning rate."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))

    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def understanding_loss(
    um: UnifiedModel,
    corpus: UnderstandingCorpus | CritiqueCorpus,
    rows: np.ndarray,
    rng: np.random.Generator,
    reconstructed: float,
    per_image: int,
) -> torch.Tensor:
    """Mean answer-token cross-entropy (EOS included) on up to `per_image` questions per chosen scene.

    The questions of one image share its forward pass (`grouped_answer_logprobs`), so each answer is
    scored exactly as at inference while the image, most of the sequence, is paid for once.
    """
    assert corpus.reconstructions is not None
    chosen = [rng.permutation(len(corpus.questions[r]))[:per_image] for r in rows]
    questions = [[corpus.questions[r][i] for i in picks] for r, picks in zip(rows, chosen, strict=True)]
    use_recon = rng.random(len(rows)) < reconstructed
    images = [corpus.reconstructions[r] if rec else corpus.renders[r] for r, rec in zip(rows, use_recon, strict=True)]
    total, count = um.grouped_answer_logprobs(
        images, [[q.text for q in qs] for qs in questions], [[q.answer for q in qs] for qs in questions]
    )
    return -total.sum() / count.sum()


def generation_loss(
    um: UnifiedModel, head: PatchHead, corpus: GenerationCorpus, rows: np.ndarray, rng: np.random.Generator, dropout: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean image-token cross-entropy and the `head`'s patch-label loss on the same states; a `dropout`
    share of prompts made unconditional."""
    assert corpus.tokens is not None
    fmt = um.prompts
    ids, mask = left_pad([fmt.generation_ids(corpus.specs[r].text) for r in rows], fmt.ids.pad)
    dropped = torch.from_numpy(rng.random(len(rows)) < dropout)
    ids = unconditional(fmt, ids, dropped)
    tokens = torch.from_numpy(corpus.tokens[rows]).to(um.device)
    states = image_token_states(um.model, ids.to(um.device), mask.to(um.device), tokens)
    logits = um.model.model.generation_head(states)
    patch = head.loss(states, torch.from_numpy(corpus.labels[rows]).to(um.device))
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()), patch


def edit_loss(
    um: UnifiedModel, corpus: EditCorpus, rows: np.ndarray, rng: np.random.Generator, reconstructed: float, dropout: float,
    instruction_dropout: float = 0.0,
) -> torch.Tensor:
    """Mean image-token cross-entropy of the edited scenes given source image + instruction
    (`unigap.model.editing.edit_prefix`); a `dropout` share of prefixes made unconditional and an
    `instruction_dropout` share of the others source-only, the two twins of editing's guidance."""
    assert corpus.tokens is not None and corpus.reconstructions is not None
    use_recon = rng.random(len(rows)) < reconstructed
    images = [corpus.reconstructions[r] if rec else corpus.sources[r] for r, rec in zip(rows, use_recon, strict=True)]
    dropped = torch.from_numpy(rng.random(len(rows)) < dropout)
    tokens = torch.from_numpy(corpus.tokens[rows])
    instructions = [corpus.instructions[r] for r in rows]
    source_only = None  # drawn only when asked, so a run without it keeps its random stream
    if instruction_dropout:
        source_only = torch.from_numpy(rng.random(len(rows)) < instruction_dropout) & ~dropped
    return -um.edit_token_logprobs(images, instructions, tokens, None, dropped,
                                   instruction_dropped=source_only).mean()


def critique_rows(corpus: CritiqueCorpus, n: int, rng: np.random.Generator, intact: float | None) -> np.ndarray:
    """n critique pictures, uniformly or, with `intact` set, intact pictures that share of the time. Why:
    the reflection answer of an intact picture of its prompt is the only `no further edit needed` most pictures
    teach, and v7, which drew the three kinds alike, stopped on 77% of its correct images."""
    if intact is None:
        return rng.integers(len(corpus), size=n)
    is_intact = np.array([p == "intact" for p in corpus.pictures])
    pools = np.flatnonzero(is_intact), np.flatnonzero(~is_intact)
    pick = rng.random(n) < intact
    for kind, pool, needed in (("intact", pools[0], pick.any()), ("broken or damaged", pools[1], (~pick).any())):
        if needed and not len(pool):
            raise ValueError(f"critique_intact {intact} draws {kind} pictures, but the critique corpus holds none")
    return np.array([pool[rng.integers(len(pool))] for pool in (pools[0] if i else pools[1] for i in pick)])


def joint_step(
    um: UnifiedModel,
    head: PatchHead,
    corpora: Corpora,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    rng: np.random.Generator,
    config: PretrainConfig,
) -> JointStep:
    """One optimiser step on one batch of each task (`params` include the head's); the loss is their sum."""
    und_rows = rng.integers(len(corpora.und), size=config.und_batch)
    gen_rows = rng.integers(len(corpora.gen), size=config.gen_batch)
    und = understanding_loss(um, corpora.und, und_rows, rng, config.reconstructed_fraction, config.questions_per_image)
    gen, patch = generation_loss(um, head, corpora.gen, gen_rows, rng, config.prompt_dropout)
    zero = und.new_zeros(())
    critique, edit = zero, zero
    if config.critique_batch:
        rows = critique_rows(corpora.critique, config.critique_batch, rng, config.critique_intact)
        critique = understanding_loss(um, corpora.critique, rows, rng, config.reconstructed_fraction, CRITIQUE_QUESTIONS)
    if config.edit_batch:
        rows = rng.integers(len(corpora.edit), size=config.edit_batch)
        edit = edit_loss(um, corpora.edit, rows, rng, config.reconstructed_fraction, config.prompt_dropout,
                         config.edit_instruction_dropout)
    loss = und + gen + config.patch_label_weight * patch + critique + edit
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"pretraining loss is not finite (understanding {float(und)}, generation {float(gen)}, patch labels "
            f"{float(patch)}, critique {float(critique)}, editing {float(edit)})"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    lr = schedule.get_last_lr()[0]  # the rate this step uses (after `schedule.step()` it is the next step's)
    optimizer.step()
    schedule.step()
    return JointStep(und.item(), gen.item(), patch.item(), critique.item(), edit.item(), lr)
