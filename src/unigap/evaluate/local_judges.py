"""Independent judges from local checkpoints: `clip:DIR` (CLIPScore) and `vlm:DIR` (a VLM's P(yes)).

Why: the exact verifier only reads ShapeWorld prompts. A CLIP/SigLIP model or an image-text-to-text model judges
any prompt, and being separate from the model under study it can audit a self-judge. Both load from a local
directory only (`local_files_only`: nothing is downloaded), and every failure to load is one `UserError` line.

* `clip`: CLIPScore (Hessel et al. 2021) = 2.5 · max(cos(image, text), 0); the judge's score in [0, 1] is
  CLIPScore / 2.5 = max(cos, 0). Reports give its mean on that scale (`mean_clipscore`) and as 100 · max(cos, 0)
  (`mean_clipscore_100`), the scale the multi-task DPO paper reports (26.87 for Janus-Pro-7B). Its accept
  threshold is calibrated on ShapeWorld renders: the threshold that best separates each render's true prompt from
  one near-miss prompt (balanced accuracy), with the calibration's balanced accuracy and AUC recorded, so a useless
  judge is visible in every report: its AUC near 0.5 (and warned of), its balanced accuracy a little above (the
  best of the thresholds tried on the same pairs: about 0.53 for a random CLIP on 150 pairs).
* `vlm`: P(yes) of the judge question unigap asks its own models, from the next-token logits of the first tokens
  of yes/Yes against no/No (normalised over those); accept at 0.5.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from PIL import Image

from unigap.errors import UserError, first_line
from unigap.evaluate.critique import auc
from unigap.pixels import opaque_rgb
from unigap.world import PromptSpec, near_misses, render_pil, sample_records, satisfies, split_prompts

CLIPSCORE_WEIGHT = 2.5  # Hessel et al.'s w
PAPER_CLIPSCORE_WEIGHT = 100.0  # CLIPScore as 100 · cos, as arXiv 2603.17044 reports it
CALIBRATION_N = 200  # train-split renders the CLIP threshold is fitted on
CALIBRATION_SEED = 0
CALIBRATION_STREAM = 11  # the near miss of each render is drawn from this stream of the calibration seed
CALIBRATION_PARTITION = 0  # the ShapeWorld partition (data seed) whose train split the threshold is fitted on
BATCH_SIZE = 16
YES_WORDS = ("yes", "Yes", " yes", " Yes")
NO_WORDS = ("no", "No", " no", " No")
PROBE_IMAGE = Image.new("RGB", (64, 64), "white")


def prompt_texts(specs: Sequence[PromptSpec | str]) -> list[str]:
    """The prompt texts: these judges read text only, so free-text prompts work as well as ShapeWorld specs."""
    return [spec if isinstance(spec, str) else spec.text for spec in specs]


def model_directory(kind: str, directory: str) -> Path:
    """The judge's checkpoint directory, checked before any slow load."""
    if not directory:
        raise UserError(f"a {kind} judge needs a directory: {kind}:DIR")
    path = Path(directory).expanduser()
    if not path.exists():
        raise UserError(f"{kind} judge directory {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{kind} judge directory {path} is not a directory")
    return path


@contextmanager
def _loading(kind: str, path: Path) -> Iterator[None]:
    """Any failure to load a checkpoint becomes one line naming the directory; transformers' load reports and
    progress bars stay quiet (a user's mistake is one line; `_load_model` checks for missing weights itself)."""
    from unigap.model.loading import quiet_transformers

    try:
        with quiet_transformers():
            yield
    except UserError:  # (a ValueError too) already says what is wrong
        raise
    except SafetensorError as exc:  # a weights file cut short, or a Git LFS pointer in its place
        raise UserError(f"cannot read the weights of the {kind} judge in {path} (incomplete or corrupt?): "
                        f"{first_line(exc)}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ImportError) as exc:
        raise UserError(f"cannot load a {kind} judge from {path}: {first_line(exc)}") from None


def _load_model(kind: str, path: Path, auto_class: Any) -> Any:
    """The checkpoint under `auto_class`, in eval mode; one whose weights misfit its config would judge at random.
    (Its config.json checked here, not for every judge kind: a user's kind may load another format.)"""
    from unigap.model.loading import refuse_misfits

    if not (path / "config.json").is_file():
        raise UserError(f"{kind} judge directory {path} holds no model (no config.json)")

    model, info = auto_class.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                             ignore_mismatched_sizes=True)
    refuse_misfits(path, info)
    return model.to(_device()).eval()


def _device() -> torch.device:
    """The model's default device (`default_device_and_dtype`): under `accelerate launch` each process's own GPU,
    not GPU 0 for every process (a bare "cuda" is the current device, 0 until accelerate sets it)."""
    from unigap.model.loading import default_device_and_dtype

    return default_device_and_dtype(None, "float32")[0]


def _batched(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- CLIP / SigLIP ------------------------------------------------------------------------------------


class ClipScorer:
    """Cosine similarity of (image, text) pairs under a local CLIP or SigLIP checkpoint."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

        with _loading("clip", path):
            self.model = _load_model("clip", path, AutoModel)
            try:
                processor = AutoProcessor.from_pretrained(path, local_files_only=True)
                self.tokenizer, self.image_processor = processor.tokenizer, processor.image_processor
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        if not (hasattr(self.model, "get_text_features") and hasattr(self.model, "get_image_features")):
            name = type(self.model).__name__
            raise UserError(f"clip judge directory {path} holds a {name}, not a CLIP or SigLIP model")
        text_config = getattr(self.model.config, "text_config", None)
        self.max_length = getattr(text_config, "max_position_embeddings", None)
        # SigLIP was trained on texts padded to the full length; CLIP pools at EOS, so padding does not matter
        self.padding = "max_length" if self.model.config.model_type.startswith("siglip") else True
        with _loading("clip", path):
            self.cosine([PROBE_IMAGE], ["a circle"])  # a checkpoint that cannot score fails here, before any work

    @staticmethod
    def _features(output: Any) -> torch.Tensor:
        """Projected embeddings: newer transformers return a model output whose pooler_output holds them."""
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.inference_mode()
    def cosine(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """cos(image_i, text_i), one float per pair (NaN from a degenerate model reads as 0)."""
        out: list[float] = []
        device = next(self.model.parameters()).device
        for chunk in _batched(list(zip(images, texts, strict=True))):
            pixels = self.image_processor(images=[opaque_rgb(image) for image, _ in chunk], return_tensors="pt")
            pixels = pixels.to(device=device, dtype=self.model.dtype)
            tokens = self.tokenizer([text for _, text in chunk], padding=self.padding, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            image_emb = self._features(self.model.get_image_features(**pixels))
            text_emb = self._features(self.model.get_text_features(
                **{k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}))
            cos = (F.normalize(image_emb.float(), dim=-1) * F.normalize(text_emb.float(), dim=-1)).sum(-1)
            out += torch.nan_to_num(cos, nan=0.0).cpu().tolist()
        return out

    def scores(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """CLIPScore / 2.5 = max(cos, 0), in [0, 1]."""
        return [min(max(c, 0.0), 1.0) for c in self.cosine(images, texts)]


def calibration_set(n: int = CALIBRATION_N,
                    seed: int = CALIBRATION_SEED) -> tuple[list[Image.Image], list[str], list[str]]:
    """n train-split renders (of the default partition, data seed 0) with their true prompt and one train-split
    near-miss prompt the scene does not satisfy (renders with no such near miss are skipped). Train on both sides,
    so that the threshold is never fitted on the prompts an evaluation of that partition asks about, val or test."""
    rng = np.random.default_rng([seed, CALIBRATION_STREAM])
    train = {spec.text for spec in split_prompts("train", CALIBRATION_PARTITION)}
    images, true, miss = [], [], []
    for spec, scene in sample_records(n, CALIBRATION_PARTITION, "train", draw_seed=seed):
        wrong = [other for other in near_misses(spec) if other.text in train and not satisfies(scene, other)]
        if wrong:
            images.append(render_pil(scene))
            true.append(spec.text)
            miss.append(wrong[int(rng.integers(len(wrong)))].text)
    return images, true, miss


def balanced_threshold(positives: Sequence[float], negatives: Sequence[float]) -> tuple[float, float]:
    """(t, balanced accuracy) of the threshold t (accept when score >= t) that best separates positives from
    negatives. Candidates are the lowest score (accept all: 0.5) and midpoints between distinct scores, so equal
    or degenerate scores still give a finite threshold inside the scores' range; ties go to the lowest t."""
    pos = np.nan_to_num(np.asarray(positives, dtype=float))
    neg = np.nan_to_num(np.asarray(negatives, dtype=float))
    values = np.unique(np.concatenate([pos, neg]))
    candidates = np.concatenate([values[:1], (values[1:] + values[:-1]) / 2])
    tpr = (pos[None, :] >= candidates[:, None]).mean(axis=1)
    tnr = (neg[None, :] < candidates[:, None]).mean(axis=1)
    balanced = (tpr + tnr) / 2
    best = int(np.argmax(balanced))
    return float(candidates[best]), float(balanced[best])


def calibrate(scorer: ClipScorer, n: int = CALIBRATION_N, seed: int = CALIBRATION_SEED) -> dict[str, Any]:
    """The accept threshold (on the judge's [0, 1] scale) and how well it separates true from near-miss prompts."""
    images, true, miss = calibration_set(n, seed)
    pos, neg = scorer.scores(images, true), scorer.scores(images, miss)
    threshold, balanced = balanced_threshold(pos, neg)
    return {
        "threshold": threshold,
        "clipscore_threshold": CLIPSCORE_WEIGHT * threshold,
        "pairs": len(images),
        "split": "train",
        "data_seed": CALIBRATION_PARTITION,  # (another partition's held-out prompts may be among them)
        "seed": seed,
        "balanced_accuracy": balanced,
        "auc": auc(pos, neg)["auc"],
        "mean_score_true": float(np.mean(pos)),
        "mean_score_near_miss": float(np.mean(neg)),
    }


# -- image-text-to-text VLM -----------------------------------------------------------------------------


def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The tokens whose next-token odds P(yes) reads: the spellings of yes and no that are one token each (" yes",
    "Yes", ...) where both words have such spellings; else (a byte-level tokenizer without merges) every spelling's
    first token. A token both start with (e.g. a lone space) tells nothing apart and is dropped. (A spelling of
    several tokens beside one-token ones counted its first token, "Ġ" or "Y": every word starting like it.)"""
    spelled = {words: [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words]
               for words in (YES_WORDS, NO_WORDS)}
    whole = all(any(len(seq) == 1 for seq in seqs) for seqs in spelled.values())

    def first(words: tuple[str, ...]) -> set[int]:
        return {seq[0] for seq in spelled[words] if seq and (len(seq) == 1 or not whole)} - {tokenizer.unk_token_id}

    yes, no = first(YES_WORDS), first(NO_WORDS)
    shared = yes & no
    yes, no = yes - shared, no - shared
    if not yes or not no:
        raise UserError("the vlm judge's tokenizer cannot tell 'yes' from 'no' by their first token")
    return sorted(yes), sorted(no)


class VlmJudge:
    """P(yes) of "Does this image show <prompt>?" under a local image-text-to-text model."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        with _loading("vlm", path):
            self.model = _load_model("vlm", path, AutoModelForImageTextToText)
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # the next-token logits of every row sit at the last position
        self.yes, self.no = answer_token_ids(tokenizer)
        with _loading("vlm", path):
            # e.g. a chat template that cannot take an image fails here, or a processor that cannot batch
            self.p_yes([PROBE_IMAGE] * 2, ["a circle", "a red square"])

    def prompt(self, text: str) -> str:
        """The judge question, in the processor's chat template when it has one."""
        from unigap.model.prompts import judge_question

        question = judge_question(text)
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"{getattr(self.processor, 'image_token', '<image>')}\n{question}"

    @torch.inference_mode()
    def p_yes(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """P(yes | yes or no) for each (image, prompt) pair."""
        out: list[float] = []
        device = next(self.model.parameters()).device
        for chunk in _batched(list(zip(images, texts, strict=True))):
            # one list of images per prompt: a flat list is one prompt's images to some processors (Mllama, Gemma 3)
            inputs = self.processor(images=[[opaque_rgb(image)] for image, _ in chunk],
                                    text=[self.prompt(text) for _, text in chunk], padding=True, return_tensors="pt")
            inputs = inputs.to(device=device, dtype=self.model.dtype)
            logits = self.model(**inputs).logits[:, -1].float().log_softmax(-1)
            margin = logits[:, self.yes].logsumexp(-1) - logits[:, self.no].logsumexp(-1)
            out += torch.sigmoid(margin).cpu().tolist()
        return out
