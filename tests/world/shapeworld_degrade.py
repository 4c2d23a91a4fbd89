"""Image degradations for the ShapeWorld robustness tests (a uniquely named module, not conftest, so
importing it cannot pick up another test directory's conftest)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = 15.0) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).astype(np.uint8)


def blur(image: np.ndarray, rng: np.random.Generator, radius: float = 1.0) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def jpeg(image: np.ndarray, rng: np.random.Generator, quality: int = 50) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


DEGRADATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "noise15": add_noise,
    "blur1": blur,
    "jpeg50": jpeg,
}
