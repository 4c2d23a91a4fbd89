"""Fixtures: a random tiny Janus with the real ShapeWorld vocabulary, and stub models with known behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unigap.world as world
from unigap.evaluate import UnderstandingItem
from unigap.model import UnifiedModel, load_model, save_random_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_tiny(tmp_path_factory.mktemp("tiny"), world.vocabulary())


@pytest.fixture(scope="session")
def um(tiny_dir: Path) -> UnifiedModel:
    return load_model(tiny_dir)


class StubModel:
    """A fake unified model whose every output is known, so metrics have exact expected values.

    * `answer`: the exact answer (looked up by image bytes and question), reformatted (upper case,
      trailing period, spaces around punctuation) to exercise normalisation; `wrong_kinds` get "purple".
    * `generate_images`: one token per image, an index into `self.images`: a render of a scene that
      satisfies the prompt, or a blank canvas for prompts of `blank_categories`.
    * `judge`: P(yes) = 0.2 for blank images and for prompts of `doubted_categories`, else 0.9.
    """

    def __init__(
        self,
        items: Sequence[UnderstandingItem] = (),
        wrong_kinds: tuple[str, ...] = (),
        blank_categories: tuple[str, ...] = (),
        doubted_categories: tuple[str, ...] = (),
    ) -> None:
        self.truth = {(it.image.tobytes(), it.question.text): it.question for it in items}
        self.wrong_kinds, self.blank, self.doubted = wrong_kinds, blank_categories, doubted_categories
        self.images: list[Image.Image] = []
        self.blank_ids: set[int] = set()
        self.generate_calls: list[dict] = []
        self.judged: list[Image.Image] = []
        self.rng = np.random.default_rng(0)

    def answer(self, images, questions, max_new_tokens=32, temperature=0.0, seed=None) -> list[str]:
        out = []
        for image, text in zip(images, questions, strict=True):
            question = self.truth[(np.asarray(image).tobytes(), text)]
            if question.kind in self.wrong_kinds:
                out.append("purple")
            else:
                out.append(" ".join(world.tokenize_words(question.answer)).upper() + " .")
        return out

    def generate_images(self, prompts, n_per_prompt=1, cfg_scale=5.0, temperature=1.0, seed=None) -> torch.Tensor:
        self.generate_calls.append({"prompts": list(prompts), "seed": seed, "cfg_scale": cfg_scale})
        ids = []
        for prompt in prompts:
            spec = world.parse_prompt(prompt)
            if spec.category in self.blank:
                self.blank_ids.add(len(self.images))
                self.images.append(Image.new("RGB", (64, 64), world.BACKGROUND))
            else:
                self.images.append(world.render_pil(world.sample_scene_for(spec, self.rng)))
            ids.append([len(self.images) - 1])
        return torch.tensor(ids)

    def decode_tokens(self, ids: torch.Tensor) -> list[Image.Image]:
        return [self.images[i] for i in ids[:, 0].tolist()]

    def judge(self, images, prompts) -> torch.Tensor:
        self.judged.extend(images)
        blank = {id(self.images[i]) for i in self.blank_ids}
        return torch.tensor(
            [
                0.2 if id(image) in blank or world.parse_prompt(p).category in self.doubted else 0.9
                for image, p in zip(images, prompts, strict=True)
            ]
        )


    def fingerprint(self) -> str:
        return type(self).__name__

    def reflect(self, images, prompts, max_new_tokens=24) -> list[str]:
        """The exact reflection on the verifier's parse (an oracle), "looks fine" (a format failure) for
        prompts of `doubted_categories`."""
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            spec = world.parse_prompt(prompt)
            if spec.category in self.doubted:
                out.append("looks fine")
                continue
            objects = world.verify(image, spec).objects
            out.append(world.reflection_answer(objects, spec, world.Geometry.for_canvas(64).margin) or "remove the object")
        return out


class EditingStub(StubModel):
    """A stub that edits exactly: it reads the picture's objects, applies the instruction, renders the result."""

    supports_editing = True

    def edit(self, images, instructions, cfg_scale=2.0, temperature=1.0, seed=None, image_cfg_scale=1.5) -> torch.Tensor:
        ids = []
        for image, instruction in zip(images, instructions, strict=True):
            self.images.append(Image.fromarray(world.edit_picture(image, instruction, self.rng)))
            ids.append([len(self.images) - 1])
        return torch.tensor(ids)


@pytest.fixture
def stub_factory():
    return StubModel


@pytest.fixture
def editing_stub():
    return EditingStub()


@pytest.fixture
def editing_stub_factory():
    return EditingStub
