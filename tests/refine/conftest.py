"""A stub model for the refine loop: it draws a wrong picture first, reflects like the oracle, edits exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import unigap.world as world


class ExactStub:
    """generate: a scene for the prompt broken by one edit (so round 0 fails); reflect: the exact instruction;
    edit: applies the instruction to the picture's objects; judge: P(yes) 0.9 for pictures the verifier accepts."""

    def __init__(self, can_edit: bool = True) -> None:
        self.supports_editing = can_edit
        self.images: list[Image.Image] = []
        self.rng = np.random.default_rng(0)

    def _keep(self, image: Image.Image) -> list[int]:
        self.images.append(image)
        return [len(self.images) - 1]

    def generate_images(self, prompts, n_per_prompt=1, cfg_scale=5.0, temperature=1.0, seed=None) -> torch.Tensor:
        ids = []
        for prompt in prompts:
            spec = world.parse_prompt(prompt.split(". ")[0])
            for _ in range(n_per_prompt):
                scene = world.sample_scene_for(spec, self.rng)
                broken, _ = world.break_scene(scene, spec, self.rng)
                ids.append(self._keep(world.render_pil(broken)))
        return torch.tensor(ids)

    def decode_tokens(self, ids: torch.Tensor) -> list[Image.Image]:
        return [self.images[i] for i in ids[:, 0].tolist()]

    def reflect(self, images, prompts) -> list[str]:
        from unigap.refine.loop import oracle_reflection

        return [oracle_reflection(image, world.parse_prompt(p)) for image, p in zip(images, prompts, strict=True)]

    def edit(self, images, instructions, cfg_scale=2.0, temperature=1.0, seed=None, image_cfg_scale=1.5) -> torch.Tensor:
        return torch.tensor([self._keep(Image.fromarray(world.edit_picture(image, instruction, self.rng)))
                             for image, instruction in zip(images, instructions, strict=True)])

    def judge(self, images, prompts) -> torch.Tensor:
        return torch.tensor([0.9 if world.verify(i, world.parse_prompt(p)).satisfied else 0.1
                             for i, p in zip(images, prompts, strict=True)])

    def fingerprint(self) -> str:
        return type(self).__name__


@pytest.fixture
def stub() -> ExactStub:
    return ExactStub()


@pytest.fixture
def stub_factory():
    return ExactStub
