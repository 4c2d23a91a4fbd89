"""`UnifiedModel`: one object giving every stage what it needs from a Janus model.

It holds the transformers `JanusForConditionalGeneration` (always the unwrapped module — peft injects
LoRA in place, so the same module paths run the adapted model), its tokenizer and prompt convention,
and the pixel preprocessing. Understanding, generation, scoring, VQ and LoRA all hang off it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import PeftModel
from PIL import Image
from transformers import JanusForConditionalGeneration, PreTrainedTokenizerBase

from unigap.atomic import files_atomically
from unigap.errors import UserError
from unigap.model import editing, generation, lora, understanding
from unigap.model.checkpoint import model_fingerprint, save_checkpoint
from unigap.model.decoding import check_counts
from unigap.model.images import (
    VQ_MEAN,
    VQ_STD,
    ImageInput,
    VisionPreprocessing,
    pixel_tensor,
    vq_decode,
    vq_encode,
    vq_image_size,
)
from unigap.model.prompts import JANUS_PRO_TEMPLATE, PromptFormat, SpecialIds, janus_pro_system_prompt
from unigap.model.tokenizer import BOI, EOI, special_token_id


def special_ids(model: JanusForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> SpecialIds:
    """Resolve the ids image generate and the prompts need: the generation config first (what
    transformers' image generate reads), then the tokenizer."""
    gen = model.generation_config
    boi = (getattr(gen, "generation_kwargs", None) or {}).get("boi_token_id", getattr(gen, "boi_token_id", None))
    ids = {
        "bos": gen.bos_token_id if gen.bos_token_id is not None else tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id,
        "image": model.config.image_token_id,
        "boi": boi if boi is not None else special_token_id(tokenizer, BOI),
        "eoi": special_token_id(tokenizer, EOI),
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise UserError(f"the checkpoint defines no {', '.join(missing)} token id(s)")
    return SpecialIds(**{name: int(value) for name, value in ids.items()})


class UnifiedModel:
    """A Janus model for understanding, image generation, scoring and LoRA training."""

    def __init__(
        self,
        model: JanusForConditionalGeneration | PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: str = JANUS_PRO_TEMPLATE,
        image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        image_std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        use_default_system_prompt: bool = True,
        supports_editing: bool = False,
        edit_source: str = "vision",
    ) -> None:
        self.peft: PeftModel | None = model if isinstance(model, PeftModel) else None
        self.model: JanusForConditionalGeneration = model.get_base_model() if self.peft is not None else model
        self.tokenizer = tokenizer
        vision_config = self.model.config.vision_config
        self.prompts = PromptFormat(
            template=template,
            tokenizer=tokenizer,
            ids=special_ids(self.model, tokenizer),
            num_image_tokens=vision_config.num_image_tokens,
            system_prompt=janus_pro_system_prompt(use_default_system_prompt) if template == JANUS_PRO_TEMPLATE else "",
            max_positions=getattr(self.model.config.text_config, "max_position_embeddings", None),
        )
        self.vision = VisionPreprocessing(vision_config.image_size, tuple(image_mean), tuple(image_std))
        self._supports_editing = supports_editing
        self.edit_source = editing.check_edit_source(edit_source)  # how `edit` reads the source image (see editing)
        self.use_default_system_prompt = use_default_system_prompt  # (kept for `save`)

    # -- basic facts -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per generated image (e.g. 576 on Janus-Pro, 64 on the tiny models)."""
        return self.prompts.num_image_tokens

    @property
    def codebook_size(self) -> int:
        return self.model.config.vq_config.num_embeddings

    @property
    def supports_editing(self) -> bool:
        """Whether the checkpoint was trained to edit images (its sidecar says so; Janus-Pro was not)."""
        return self._supports_editing

    def save(self, directory: str | os.PathLike) -> Path:
        """Write this model as a checkpoint directory that `load_model` reads back (sidecar included)."""
        if self.peft is not None:
            raise ValueError("this model carries a LoRA adapter: save it with save_adapter, or write base + adapter as "
                             "one checkpoint with `unigap merge --model DIR --adapter A --out OUT` "
                             "(unigap.model.standalone.save_merged)")
        return save_checkpoint(
            self.model,
            self.tokenizer,
            directory,
            template=self.prompts.template,
            image_mean=self.vision.mean,
            image_std=self.vision.std,
            editing=self.supports_editing,
            edit_source=self.edit_source,
            use_default_system_prompt=self.use_default_system_prompt,
        )

    # -- understanding -----------------------------------------------------------------------

    def answer(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int | None = None,
        return_finished: bool = False,
    ) -> list[str] | tuple[list[str], list[bool]]:
        """Answer one question per image (temperature 0 = greedy); with `return_finished`, also whether each answer
        ended in EOS (False where `max_new_tokens` cut it off: TRL's truncated completions)."""
        texts, _, finished = self.sample_answers(images, questions, max_new_tokens, temperature, seed)
        return (texts, finished) if return_finished else texts

    def sample_answers(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> understanding.Completions:
        """`answer`'s completions with the token ids sampled (EOS last where one was): a policy gradient scores those
        ids (`answer_token_logprobs` takes them), since re-tokenising the decoded text need not give them back.
        Sampled (temperature > 0), as in `answer` and `reflect`, a row depends on `seed` and on the rest of the batch,
        as `generate_images`' rows do."""
        return understanding.generate_answers(self.model, self.prompts, self.vision, images, questions,
                                              max_new_tokens, temperature, seed)

    def answer_logprobs(
        self, images: Sequence[ImageInput], questions: Sequence[str], answers: Sequence[str]
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Summed log-prob of each answer (EOS included) and its token count; differentiable."""
        return understanding.answer_logprobs(self.model, self.prompts, self.vision, images, questions, answers)

    def answer_token_logprobs(
        self, images: Sequence[ImageInput], questions: Sequence[str], answers: Sequence[str | Sequence[int]],
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs [B, W] of each answer and their mask [B, W] (right-aligned), under the distribution
        `answer` samples at `temperature`; differentiable: what token-level policy-gradient losses need. A text is
        scored with EOS appended; token ids (`sample_answers`' `ids`) as exactly those ids, an EOS only if sampled."""
        return understanding.answer_token_logprobs(self.model, self.prompts, self.vision, images, questions, answers,
                                                   temperature)

    def grouped_answer_logprobs(
        self, images: Sequence[ImageInput], questions: Sequence[Sequence[str]], answers: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """`answer_logprobs` for several questions per image (flattened in order), the image run once."""
        return understanding.grouped_answer_logprobs(self.model, self.prompts, self.vision, images, questions, answers)

    def judge(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> torch.Tensor:
        """P(yes) for "Does this image show {prompt}?", normalised over yes/no, one per image."""
        return understanding.judge_yes_probability(self.model, self.prompts, self.vision, images, prompts)

    def judge_generate(
        self, images: Sequence[ImageInput], prompts: Sequence[str], max_new_tokens: int = 8
    ) -> list[int | None]:
        """The judge question answered greedily in words, parsed to 1 (yes), 0 (no) or None."""
        check_counts(images=images, prompts=prompts)  # (before a single string is read as one prompt per character)
        questions = [self.prompts.judge_question(prompt) for prompt in prompts]
        texts = self.answer(images, questions, max_new_tokens=max_new_tokens, temperature=0.0)
        return [understanding.parse_verdict(text) for text in texts]

    def reflect(self, images: Sequence[ImageInput], prompts: Sequence[str], max_new_tokens: int = 24,
                temperature: float = 0.0, seed: int | None = None, return_finished: bool = False,
                ) -> list[str] | tuple[list[str], list[bool]]:
        """R3's reflection, each in a fresh context holding only the image and the target prompt (greedy by default;
        sampled at `temperature` > 0, as RL rollouts need): `unigap.world.NO_EDIT` or one edit instruction. Any
        checkpoint answers (it is text); read answers with `unigap.world.parse_reflection`, which reports text
        outside the grammar as a format failure. `return_finished` as in `answer`."""
        check_counts(images=images, prompts=prompts)  # (as in judge_generate)
        questions = [self.prompts.reflect_question(prompt) for prompt in prompts]
        return self.answer(images, questions, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           return_finished=return_finished)

    # -- generation --------------------------------------------------------------------------

    def generate_images(
        self,
        prompts: Sequence[str],
        n_per_prompt: int = 1,
        cfg_scale: float | None = generation.CFG_SCALE,
        temperature: float = 1.0,
        seed: int | None = None,
        return_logprobs: bool = False,
    ) -> torch.LongTensor | tuple[torch.LongTensor, torch.Tensor]:
        """Sample image tokens [len(prompts)·n_per_prompt, N], prompt-major; optionally with the
        per-step log-probs [.., N] of the (CFG-mixed, untempered) policy. cfg_scale None/1 = no CFG. A row depends on
        `seed` and on the rest of the batch (one generator per call); `seed=None` draws from torch's global RNG, so
        `torch.manual_seed` reproduces it (as every sampling method here)."""
        tokens, logprobs = generation.sample_image_tokens(
            self.model, self.prompts, prompts, n_per_prompt, cfg_scale, temperature, seed
        )
        return (tokens, logprobs) if return_logprobs else tokens

    def edit(
        self,
        images: Sequence[ImageInput],
        instructions: Sequence[str],
        cfg_scale: float | None = editing.EDIT_CFG_SCALE,
        temperature: float = 1.0,
        seed: int | None = None,
        image_cfg_scale: float | None = editing.EDIT_IMAGE_CFG_SCALE,
    ) -> torch.LongTensor:
        """Edited images' token ids [B, N]: each source image (read as the checkpoint's `edit_source` says: through
        the understanding encoder, or as its VQ ids) and its instruction (text) → image tokens from the generation
        head. Guidance is InstructPix2Pix's (`editing.EditGuidance`): `cfg_scale` scales the instruction against the
        source alone, `image_cfg_scale` the source against neither; `image_cfg_scale=cfg_scale` is plain CFG on a
        twin without source or instruction, as `generate_images` guides (and `edit` did before `image_cfg_scale`);
        `cfg_scale=None`: no guidance. A row depends on `seed` and on the rest of the batch, as `generate_images`'
        rows do. `UserError` on a checkpoint that cannot edit (`supports_editing` False, e.g. Janus-Pro)."""
        if not self.supports_editing:
            raise UserError(
                "this checkpoint cannot edit images (it was not trained to; Janus-Pro cannot): "
                "regenerate from a refined prompt instead"
            )
        return editing.sample_edits(self.model, self.prompts, self.vision, images, instructions, cfg_scale,
                                    temperature, seed, self.edit_source, image_cfg_scale)

    def image_logprobs(
        self, prompts: Sequence[str], image_tokens: torch.Tensor, cfg_scale: float | None = None
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Teacher-forced summed log-prob of each image's tokens and the token count; differentiable.
        Conditional-only by default; CFG-mixed logits when `cfg_scale` is given."""
        return generation.score_image_tokens(self.model, self.prompts, prompts, image_tokens, cfg_scale)

    def image_token_logprobs(
        self, prompts: Sequence[str], image_tokens: torch.Tensor, cfg_scale: float | None = None,
        dropped: torch.Tensor | None = None, temperature: float = 1.0,
    ) -> torch.Tensor:
        """Per-token teacher-forced log-probs [B, N] of each image's tokens (CFG-mixed when `cfg_scale` is given;
        otherwise the rows where `dropped` [B] is True get the unconditional prompt: prompt dropout), at a sampling
        `temperature` (with `cfg_scale`, `generate_images`'s distribution at the same scale and temperature)."""
        return generation.image_token_logprobs(self.model, self.prompts, prompts, image_tokens, cfg_scale, dropped,
                                               temperature)

    def edit_token_logprobs(
        self, images: Sequence[ImageInput], instructions: Sequence[str], image_tokens: torch.Tensor,
        cfg_scale: float | None = None, dropped: torch.Tensor | None = None, source: str | None = None,
        image_cfg_scale: float | None = editing.EDIT_IMAGE_CFG_SCALE, instruction_dropped: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Per-token log-probs [B, N] of edited images' tokens given source image + instruction: with `cfg_scale`,
        under the guidance `edit` samples with (`image_cfg_scale` defaults as there); without (the default), conditional,
        `dropped` [B] rows unconditional and `instruction_dropped` [B] rows source-only; differentiable.
        `source` overrides the checkpoint's `edit_source` (UniMRG's maps must come through the vision tower);
        `temperature`: `edit`'s at the same guidance and temperature."""
        source = self.edit_source if source is None else editing.check_edit_source(source)
        return editing.edit_token_logprobs(self.model, self.prompts, self.vision, images, instructions, image_tokens,
                                           cfg_scale, dropped, source, image_cfg_scale, instruction_dropped,
                                           temperature)

    # -- VQ ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageInput]) -> torch.LongTensor:
        """Images → VQ token ids [B, N] (nearest normalised code; see `images.vq_encode`)."""
        vq = self.model.model.vqmodel
        if check_counts(images=images) == 0:  # (a list or a [B, H, W, 3] array: one image alone would be read by rows)
            return torch.zeros((0, self.num_image_tokens), dtype=torch.long, device=self.device)
        pixels = pixel_tensor(images, vq_image_size(vq), VQ_MEAN, VQ_STD)
        return vq_encode(vq, pixels.to(self.device, self.dtype))

    @torch.no_grad()
    def decode_tokens(self, ids: torch.Tensor) -> list[Image.Image]:
        """VQ token ids [B, N] → RGB images."""
        ids = generation.check_image_tokens(ids, self.num_image_tokens, self.codebook_size)
        if ids.shape[0] == 0:
            return []
        return vq_decode(self.model.model.vqmodel, ids.to(self.device))

    # -- LoRA --------------------------------------------------------------------------------

    def add_lora(
        self,
        rank: int = 64,
        alpha: float = 128,
        dropout: float = 0.05,
        target_modules: str | list[str] = lora.LM_LORA_TARGETS,
        train_generation_head: bool = True,
        trained_modules: Sequence[str] = (),
        gradient_checkpointing: bool = False,
    ) -> PeftModel:
        """Attach a fresh LoRA adapter to the LLM (and make the generation head trainable); `trained_modules`
        names further parts trained in full (`aligner`, `generation_aligner`, `vision_model`). With
        `gradient_checkpointing`, training recomputes each layer's activations in the backward pass instead of
        keeping them (transformers' activation checkpointing, non-reentrant): less memory for a large model, one
        more forward pass of compute; the same gradients."""
        if self.peft is not None:
            raise ValueError("this model already has a LoRA adapter")
        was_training = self.model.training
        self.peft = lora.attach_lora(
            self.model, rank, alpha, dropout, target_modules, train_generation_head, trained_modules
        )
        self.model.train(was_training)  # peft builds LoRA layers in train mode: dropout would act at inference
        if gradient_checkpointing:  # active in train mode only: sampling and evaluation keep their KV caches
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            # transformers also makes the embeddings' output require a gradient, which only reentrant checkpointing
            # needs: every backward pass then computed a gradient for it that nothing trains (the same gradients)
            self.model.disable_input_require_grads()
        return self.peft

    def load_adapter(self, directory: str | os.PathLike, trainable: bool = False) -> PeftModel:
        """Attach an adapter saved with `save_adapter` (standard PEFT format); `trainable` makes its LoRA weights
        trainable. Either way the model stays in the mode it was in (eval after loading): a training loop calls
        `um.model.train()` itself, as after `add_lora`."""
        if self.peft is not None:
            raise ValueError("this model already has a LoRA adapter")
        was_training = self.model.training
        self.peft = lora.load_lora(self.model, directory, trainable)
        self.model.train(was_training)  # as in add_lora: a trainable adapter loads in train mode, dropout on
        return self.peft

    def fingerprint(self) -> str:
        """A short hash of the model as it is now (weights, adapter, dtype): what a resumed run compares, so that its
        finished parts are never reused under another model."""
        return model_fingerprint(self.model)

    def save_adapter(self, directory: str | os.PathLike) -> Path:
        """Save the adapter (LoRA weights + trained generation head) in standard PEFT format, each file replaced
        whole (a run killed while saving leaves whole files, never a torn one)."""
        if self.peft is None:
            raise ValueError("no LoRA adapter to save; call add_lora or load_adapter first")
        with files_atomically(directory) as staging:
            self.peft.save_pretrained(str(staging))
        return Path(directory)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[UnifiedModel]:
        """Run the base model inside the block (the DPO reference policy); a no-op without LoRA. Which parameters
        train is as before the block (peft's re-enabling would make a frozen adapter trainable again)."""
        if self.peft is None:
            yield self
            return
        trainable = {name: param.requires_grad for name, param in self.model.named_parameters()}
        try:
            with self.peft.disable_adapter():
                yield self
        finally:
            for name, param in self.model.named_parameters():
                param.requires_grad_(trainable.get(name, param.requires_grad))

    def shared_lora_parameters(self) -> lora.LoraParameterGroups:
        """Trainable LoRA tensors of the shared LLM, grouped by layer and by lora_A/lora_B."""
        return lora.shared_lora_parameters(self.model)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything an optimiser should update (LLM LoRA + generation head when trained)."""
        return [param for param in self.model.parameters() if param.requires_grad]
