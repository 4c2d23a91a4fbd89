"""The verifier: exact on renders, robust on degraded ones, strict on false prompts, clear on bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from shapeworld_degrade import DEGRADATIONS

from unigap.errors import UserError
from unigap.pixels import rgb_pixels
from unigap.world import (
    Item,
    PromptSpec,
    Scene,
    SceneObject,
    detect,
    load_image,
    parse_prompt,
    render,
    satisfies,
    verify,
)
from unigap.world.scene import RELATIONS

OPPOSITE = dict(zip(RELATIONS, ("right of", "left of", "below", "above")))


def hard_negatives(spec: PromptSpec) -> list[PromptSpec]:
    """Near misses of a prompt: count off by one, colours swapped or changed, relation reversed."""
    out = []
    items = spec.items
    if spec.category == "counting":
        item = items[0]
        out += [
            PromptSpec("counting", (dataclasses.replace(item, count=c),))
            for c in (item.count - 1, item.count + 1)
            if 1 <= c <= 4
        ]
    if spec.category == "color_attribution":
        a, b = items
        out.append(PromptSpec(spec.category, (Item(a.shape, b.color), Item(b.shape, a.color))))
    if spec.category == "colors":
        other = "blue" if items[0].color != "blue" else "red"
        out.append(PromptSpec("colors", (Item(items[0].shape, other),)))
    if spec.category == "position":
        out.append(PromptSpec("position", items, OPPOSITE[spec.relation]))
        out.append(PromptSpec("position", items[::-1], spec.relation))
    return out


def negatives(corpus, rng: np.random.Generator) -> list[tuple[int, PromptSpec]]:
    """Per scene: one other scene's prompt that it does not satisfy, plus its unsatisfied near misses."""
    out = []
    for i, (spec, scene, _) in enumerate(corpus):
        while True:
            other = corpus[rng.integers(len(corpus))][0]
            if not satisfies(scene, other):
                out.append((i, other))
                break
        out += [(i, s) for s in hard_negatives(spec) if not satisfies(scene, s)]
    return out


def test_clean_renders_detected_exactly_and_satisfy_their_prompt(corpus):
    accepted = exact = 0
    for spec, scene, image in corpus:
        verdict = verify(image, spec)
        accepted += verdict.satisfied
        exact += [(d.shape, d.color, d.size, d.x, d.y) for d in verdict.objects] == [
            (o.shape, o.color, o.size, o.x, o.y) for o in scene.objects
        ]
    assert accepted / len(corpus) >= 0.995
    assert exact == len(corpus)  # renders are parsed back to the exact scene, centres included


def test_clean_renders_reject_prompts_they_do_not_satisfy(corpus):
    pairs = negatives(corpus, np.random.default_rng(1))
    assert len(pairs) > 2500  # 2,000 random + the near misses
    rejected = sum(not verify(corpus[i][2], spec).satisfied for i, spec in pairs)
    assert rejected / len(pairs) >= 0.99


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_degraded_renders_judged_correctly(corpus, name):
    rng = np.random.default_rng(7)
    subset = corpus[:1000]
    pairs = negatives(subset, np.random.default_rng(2))
    degraded = [DEGRADATIONS[name](image, rng) for _, _, image in subset]
    accepted = np.mean([verify(img, spec).satisfied for img, (spec, _, _) in zip(degraded, subset)])
    rejected = np.mean([not verify(degraded[i], spec).satisfied for i, spec in pairs])
    assert accepted >= 0.97, f"{name}: accepted {accepted:.3f} of true prompts"
    assert rejected >= 0.97, f"{name}: rejected {rejected:.3f} of false prompts"


def _scene(*objects: tuple[str, str, str, int, int]) -> Scene:
    return Scene(64, tuple(SceneObject(*o) for o in objects))


def test_reasons_name_what_is_missing():
    scene = _scene(
        ("circle", "red", "small", 12, 12),
        ("circle", "red", "large", 40, 40),
        ("square", "blue", "small", 50, 12),
    )
    image = render(scene)
    verdict = verify(image, parse_prompt("three red circles"))
    assert not verdict.satisfied and verdict.reason == "expected 3 red circle(s), found 2"
    assert verify(image, parse_prompt("two red circles")).satisfied
    verdict = verify(image, parse_prompt("a green triangle"))
    assert not verdict.satisfied and verdict.reason == "expected a green triangle, found none"
    verdict = verify(image, parse_prompt("a blue square to the left of a red circle"))
    assert not verdict.satisfied and "no blue square is left of a red circle" in verdict.reason
    assert verify(image, parse_prompt("a blue square to the right of a red circle")).satisfied
    assert verify(image, parse_prompt("a blue square above a red circle")).satisfied
    assert len(verdict.objects) == 3


def test_accepts_pil_images_and_checks_size():
    scene = _scene(("triangle", "purple", "large", 30, 30))
    image = render(scene)
    assert verify(Image.fromarray(image), parse_prompt("a triangle")).satisfied
    with pytest.raises(UserError, match="expected a 64x64 image, got 32x48"):
        verify(np.zeros((48, 32, 3), np.uint8), parse_prompt("a triangle"))
    with pytest.raises(UserError, match="RGB"):
        verify(np.zeros((64, 64), np.uint8), parse_prompt("a triangle"))
    big = render(Scene(128, (SceneObject("triangle", "purple", "large", 60, 60),)))
    assert verify(big, parse_prompt("a triangle"), canvas=128).satisfied
    with pytest.raises(UserError, match="expected a 64x64 image, got 128x128"):
        verify(big, parse_prompt("a triangle"))


def test_a_path_or_a_prompts_text_is_taken_wherever_an_image_or_a_spec_is(tmp_path):
    """verify(path) said "expected an RGB image ..., got array shape ()"; satisfies, check and judge_question given a
    prompt's text raised AttributeError ('str' object has no attribute 'items')."""
    from unigap.world import judge_question, satisfies
    from unigap.world.prompts import check

    scene = _scene(("triangle", "purple", "large", 30, 30))
    Image.fromarray(render(scene)).save(tmp_path / "t.png")
    assert verify(tmp_path / "t.png", "a triangle").satisfied and verify(str(tmp_path / "t.png"), "a circle").reason
    assert satisfies(scene, "a purple triangle") and not satisfies(scene, "a red triangle")
    assert check(scene.objects, "a triangle", scene.geometry.margin) == check(scene.objects, parse_prompt(
        "a triangle"), scene.geometry.margin)
    assert judge_question("a red circle") == judge_question(parse_prompt("a red circle"))
    with pytest.raises(UserError, match="image file not found"):
        verify(tmp_path / "gone.png", "a triangle")


def test_a_users_mistake_is_a_value_error_to_scripts():
    """Scripts catch bad values as ValueError; the CLI turns the same UserError into one line."""
    with pytest.raises(ValueError, match="expected a 64x64 image, got 32x48"):
        verify(np.zeros((48, 32, 3), np.uint8), "a triangle")
    with pytest.raises(ValueError, match="cannot parse prompt"):
        parse_prompt("a triangle!")


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """Pillow's conversion of a 16-bit PNG (mode I;16) clips every value above 255: a ramp read as white."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as opened:
        pixels = rgb_pixels(opened)
    assert np.array_equal(pixels, np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2))
    assert np.array_equal(load_image(tmp_path / "ramp.png"), pixels)
    Image.fromarray(ramp).save(tmp_path / "cut.png", transparency=int(ramp[0, 5]))  # one grey value transparent
    with Image.open(tmp_path / "cut.png") as opened:
        cut = rgb_pixels(opened)
    assert (cut[0, 5] == 255).all() and np.array_equal(np.delete(cut[0], 5, axis=0), np.delete(pixels[0], 5, axis=0))
    wide = Image.fromarray(np.array([[0, 70000, -5, 300]], dtype=np.int32))  # mode I: clipped, not wrapped
    assert rgb_pixels(wide)[0, :, 0].tolist() == [0, 255, 0, 1]


def test_a_transparent_background_reads_as_white_as_in_transformers(tmp_path):
    """A cut-out PNG (shape opaque, background transparent, its hidden colour black) must not read as a shape on a
    black canvas: transparency is composited onto white, as transformers' `convert_to_rgb` does."""
    from transformers.image_transforms import convert_to_rgb

    from unigap.model.images import to_rgb_array

    image = render(_scene(("triangle", "purple", "large", 30, 30)))
    opaque = (image != 255).any(axis=2)
    rgba = np.dstack([np.where(opaque[..., None], image, 0), np.where(opaque, 255, 0)]).astype(np.uint8)
    cut_out = Image.fromarray(rgba, "RGBA")
    assert (np.asarray(cut_out.convert("RGB"))[~opaque] == 0).all()  # what a plain convert would show
    assert np.array_equal(rgb_pixels(cut_out), image)
    assert np.array_equal(rgb_pixels(cut_out), convert_to_rgb(cut_out, return_numpy=True))
    assert np.array_equal(to_rgb_array(cut_out), image)
    cut_out.save(tmp_path / "cut_out.png")
    assert np.array_equal(load_image(tmp_path / "cut_out.png"), image)
    assert verify(cut_out, parse_prompt("a purple triangle")).satisfied
    assert np.array_equal(rgb_pixels(Image.fromarray(image)), image)  # opaque images are unchanged
    premultiplied = Image.fromarray(rgba, "RGBA").convert("RGBa")
    assert np.array_equal(rgb_pixels(premultiplied), image)


def test_off_palette_blobs_and_odd_shapes_match_nothing():
    image = np.full((64, 64, 3), 255, np.uint8)
    image[10:30, 10:30] = (120, 80, 40)  # brown: no palette colour
    image[40:44, 5:60] = (200, 20, 20)  # a red bar: much longer than wide
    objects = detect(image)
    assert [(o.color, o.shape) for o in objects] == [("red", "unknown")]
    assert not verify(image, parse_prompt("a red square")).satisfied


def test_touching_objects_of_different_colours_are_split():
    image = render(_scene(("square", "blue", "large", 20, 32)))
    image[21:44, 32:55] = (200, 20, 20)  # a red square whose left edge touches the blue one
    found = sorted((o.color, o.shape) for o in detect(image))
    assert found == [("blue", "square"), ("red", "square")]


def test_blank_and_noise_images_contain_no_objects():
    rng = np.random.default_rng(0)
    assert detect(np.full((64, 64, 3), 255, np.uint8)) == []
    noisy = np.clip(255 + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert detect(noisy) == []
    speck = np.full((64, 64, 3), 255, np.uint8)
    speck[30:34, 30:34] = (200, 20, 20)  # 16 px: far below a small object's area
    assert detect(speck) == []


def test_clutter_beyond_the_worlds_object_limit_satisfies_nothing():
    """Random blobs must not pass existence prompts: more objects than any scene holds is no scene."""
    image = np.full((64, 64, 3), 255, np.uint8)
    for k in range(5):  # five small red squares, 3 px apart: every one is a clean detection
        image[4 : 4 + 9, 4 + 12 * k : 13 + 12 * k] = (200, 20, 20)
    assert [o.shape for o in detect(image)] == ["square"] * 5
    verdict = verify(image, parse_prompt("a red square"))
    assert not verdict.satisfied and verdict.reason == "5 objects found; a ShapeWorld scene holds at most 4"
    image[4:13, 52:61] = 255  # four are a scene again
    assert verify(image, parse_prompt("a red square")).satisfied
    assert verify(image, parse_prompt("four red squares")).satisfied
