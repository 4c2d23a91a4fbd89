"""Editing (image + instruction → image tokens) and reflection on tiny random Janus checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unigap.errors import UserError
from unigap.model import UnifiedModel, load_model
from unigap.model.decoding import token_logprobs
from unigap.model.editing import EDIT_SOURCES, EditGuidance, edit_prefix, guidance_prefix
from unigap.model.generation import prefixed_image_token_states, sample_from_prefix
from unigap.pretrain import PretrainConfig
from unigap.train.sft import ImageToImageTask

INSTRUCTIONS = ["make the red circle blue", "add a square", "remove the triangle to the left of the star"]


def test_a_checkpoint_that_cannot_edit_says_so(um: UnifiedModel, janus_pro_dir: Path, images) -> None:
    assert not um.supports_editing and not load_model(janus_pro_dir).supports_editing
    with pytest.raises(UserError, match="cannot edit"):
        um.edit(images[:1], ["add a square"])


def test_editing_survives_save_and_load(editor: UnifiedModel, tmp_path: Path) -> None:
    assert editor.supports_editing and load_model(editor.save(tmp_path / "copy")).supports_editing


def test_edits_are_image_tokens_batched_like_single_calls(editor: UnifiedModel, images) -> None:
    batched = editor.edit(images[:3], INSTRUCTIONS, cfg_scale=3.0, temperature=0.0)
    assert batched.shape == (3, editor.num_image_tokens) and batched.dtype == torch.long
    assert int(batched.min()) >= 0 and int(batched.max()) < editor.codebook_size
    for row in range(3):  # instructions of different lengths: left padding changes nothing
        single = editor.edit(images[row : row + 1], INSTRUCTIONS[row : row + 1], cfg_scale=3.0, temperature=0.0)
        assert torch.equal(single[0], batched[row])
    assert len(editor.decode_tokens(batched)) == 3


def test_the_source_image_and_the_seed_decide_the_edit(editor: UnifiedModel, images) -> None:
    same = ["add a square"] * 2
    greedy = editor.edit(images[:2], same, temperature=0.0)
    assert not torch.equal(greedy[0], greedy[1])  # the image reaches the LLM through the vision tower
    first = editor.edit(images[:2], same, seed=5)
    assert torch.equal(first, editor.edit(images[:2], same, seed=5))
    assert not torch.equal(first, editor.edit(images[:2], same, seed=6))


@pytest.mark.parametrize("source", EDIT_SOURCES)
@pytest.mark.parametrize("scales", [(None, None), (None, 1.5), (2.5, 1.0), (2.5, 2.5), (2.0, 1.5)])
def test_teacher_forced_edit_scores_equal_the_sampled_steps(request, source, images, scales) -> None:
    """The prefix the trainer scores is the prefix the sampler extends: same log-probs for the same tokens, under
    no guidance, a source-only twin, a blank twin, and both (three row groups)."""
    editor = request.getfixturevalue("editor" if source == "vision" else "token_editor")
    fmt, model, batch = editor.prompts, editor.model, 2
    guidance = EditGuidance(*scales)
    assert len(guidance.groups) == {(None, None): 1, (None, 1.5): 1, (2.5, 1.0): 2, (2.5, 2.5): 2, (2.0, 1.5): 3}[scales]
    embeds, mask = guidance_prefix(model, fmt, editor.vision, images[:batch], INSTRUCTIONS[:batch], guidance, source)
    tokens, sampled = sample_from_prefix(model, fmt, embeds, mask, batch, None, 1.0, seed=3, mix=guidance.mix)
    with torch.no_grad():
        states = prefixed_image_token_states(model, embeds, mask, tokens.repeat(len(guidance.groups), 1))
        scored = token_logprobs(guidance.mix(model.model.generation_head(states).float()), tokens)
        assert torch.allclose(scored, sampled, atol=1e-4)
        assert torch.allclose(editor.edit_token_logprobs(images[:batch], INSTRUCTIONS[:batch], tokens, *scales[:1],
                                                         image_cfg_scale=scales[1]),
                              sampled, atol=1e-4)  # the public methods read the checkpoint's source
    assert torch.equal(editor.edit(images[:batch], INSTRUCTIONS[:batch], scales[0], 1.0, seed=3,
                                   image_cfg_scale=scales[1]), tokens)


def test_edit_guidance_is_instruct_pix2pix(editor: UnifiedModel, images) -> None:
    """u + t·(c − s) + i·(s − u) over the three twins; i = 1 needs no blank twin, i = t no source-only twin."""
    c, s, u = torch.randn(3, 2, 7).unbind(0)
    assert torch.allclose(EditGuidance(2.0, 1.5).mix(torch.cat([c, s, u])), u + 2.0 * (c - s) + 1.5 * (s - u))
    assert torch.allclose(EditGuidance(2.0, 1.0).mix(torch.cat([c, s])), u + 2.0 * (c - s) + (s - u))
    assert torch.allclose(EditGuidance(3.0, 3.0).mix(torch.cat([c, u])), u + 3.0 * (c - u))
    assert torch.equal(EditGuidance(None, 1.0).mix(c), c)
    assert EditGuidance(0.0, 1.0).groups == ("full", "source")  # a scale of 0 is not "no guidance"
    assert EditGuidance(None, 1.5).groups == ("full",) and torch.equal(EditGuidance(None, 1.5).mix(c), c)
    with pytest.raises(ValueError, match="image_cfg_scale must be a number from 0 to 1e"):
        EditGuidance(2.0, -1.0)
    with pytest.raises(ValueError, match=r"cfg_scale must be a number from 0 to 1e\+06 \(or None: no guidance\), got"):
        EditGuidance(float("inf"), 1.0)
    # scoring under a cfg_scale defaults its image scale as `edit` does, so the two agree unless told otherwise
    tokens, sampled = sample_from_prefix(editor.model, editor.prompts, *guidance_prefix(
        editor.model, editor.prompts, editor.vision, images[:1], INSTRUCTIONS[:1], EditGuidance(2.0), "vision"),
        1, None, 1.0, seed=0, mix=EditGuidance(2.0).mix)
    with torch.no_grad():
        assert torch.allclose(editor.edit_token_logprobs(images[:1], INSTRUCTIONS[:1], tokens, 2.0), sampled, atol=1e-4)
    # the twins: "source" keeps the image and pads the instruction; "blank" pads both
    dropped, instruction_dropped = EditGuidance(2.0, 1.5).rows(1)
    assert dropped.tolist() == [False, False, True] and instruction_dropped.tolist() == [False, True, True]
    fmt, model = editor.prompts, editor.model
    full, _ = edit_prefix(model, fmt, editor.vision, images[:1], INSTRUCTIONS[:1])
    twin, _ = edit_prefix(model, fmt, editor.vision, images[:1], INSTRUCTIONS[:1],
                          instruction_dropped=torch.tensor([True]))
    ids = torch.tensor(fmt.edit_ids(INSTRUCTIONS[0]))
    words = (ids != fmt.ids.image) & (ids != fmt.ids.bos) & (ids != fmt.ids.boi)
    pad = model.get_input_embeddings()(torch.tensor([fmt.ids.pad]))[0]
    assert torch.allclose(twin[0, ids == fmt.ids.image], full[0, ids == fmt.ids.image])
    assert torch.allclose(twin[0, words], pad.expand(int(words.sum()), -1))
    assert not torch.allclose(full[0, words], twin[0, words])


def test_a_token_editor_reads_the_source_as_its_vq_ids(token_editor: UnifiedModel, editor: UnifiedModel, images,
                                                      tmp_path: Path) -> None:
    model, fmt = token_editor.model, token_editor.prompts
    ids = fmt.edit_ids(INSTRUCTIONS[0])
    embeds, _ = edit_prefix(model, fmt, token_editor.vision, images[:1], INSTRUCTIONS[:1], source="tokens")
    slots = torch.tensor(ids) == fmt.ids.image
    with torch.no_grad():
        expected = model.prepare_embeddings_for_image_generation(token_editor.encode_images(images[:1]))
        assert torch.allclose(embeds[0, slots], expected[0], atol=1e-6)
        vision, _ = edit_prefix(model, fmt, token_editor.vision, images[:1], INSTRUCTIONS[:1])
    assert not torch.allclose(vision[0, slots], expected[0])  # the default reads the vision tower
    assert token_editor.edit_source == "tokens" and editor.edit_source == "vision"
    assert load_model(token_editor.save(tmp_path / "copy")).edit_source == "tokens"
    sidecar = tmp_path / "copy" / "unigap.json"  # a checkpoint written before `edit_source` existed
    settings = json.loads(sidecar.read_text())
    del settings["edit_source"]
    sidecar.write_text(json.dumps(settings))
    assert load_model(tmp_path / "copy").edit_source == "vision"
    sidecar.write_text(json.dumps({**settings, "edit_source": "pixels"}))
    with pytest.raises(UserError, match="unknown edit_source 'pixels'"):
        load_model(tmp_path / "copy")
    with pytest.raises(ValueError, match="unknown edit source 'pixels'"):
        PretrainConfig(edit_source="pixels")


def test_reflection_is_text_on_any_checkpoint(um: UnifiedModel, janus_pro_dir: Path, images) -> None:
    for model in (um, load_model(janus_pro_dir)):
        answers = model.reflect(images[:2], ["a red circle", "two blue squares."], max_new_tokens=4)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    question = um.prompts.reflect_question("a red circle.")
    assert question.startswith("The description of the target image is: a red circle. How to further edit")
    assert question.endswith("answer: no further edit needed.")


def test_editing_prompts_hold_the_image_and_end_in_begin_of_image(um: UnifiedModel, janus_pro_dir: Path) -> None:
    for model in (um, load_model(janus_pro_dir)):
        ids = model.prompts.edit_ids("add a square")
        assert ids[0] == model.prompts.ids.bos and ids[-1] == model.prompts.ids.boi
        assert ids.count(model.prompts.ids.image) == model.num_image_tokens
    with pytest.raises(ValueError, match="image placeholder tokens"):
        um.prompts.edit_ids("add <image_placeholder>")


def test_one_instruction_per_image(editor: UnifiedModel) -> None:
    with pytest.raises(ValueError, match="mismatched batch"):
        editor.edit([np.zeros((64, 64, 3), dtype=np.uint8)], ["add a square", "add a circle"])
    empty = editor.edit_token_logprobs([], [], torch.zeros((0, editor.num_image_tokens), dtype=torch.long), 2.0)
    assert empty.shape == (0, editor.num_image_tokens)  # nothing to score is no error
    assert all(rows.dtype == torch.bool and not len(rows) for rows in EditGuidance(2.0, 1.5).rows(0))


def test_unimrg_maps_come_through_the_vision_tower_on_any_checkpoint(token_editor: UnifiedModel, images) -> None:
    targets = token_editor.encode_images(images[:2])
    loss, _ = ImageToImageTask(images[:2], INSTRUCTIONS[1], targets).loss(token_editor, np.arange(2))
    with torch.no_grad():
        through = {source: -token_editor.edit_token_logprobs(images[:2], INSTRUCTIONS[1:2] * 2, targets,
                                                             source=source).mean(-1).sum() for source in EDIT_SOURCES}
    assert torch.allclose(loss.detach(), through["vision"]) and not torch.allclose(loss.detach(), through["tokens"])


def test_bad_edit_tokens_raise_as_for_generation(editor: UnifiedModel) -> None:
    """Scoring edits skipped the image-token check: 10 tokens were scored as if an image, ids past the codebook
    raised IndexError from the embedding, a list raised AttributeError."""
    n, image = editor.num_image_tokens, [np.zeros((64, 64, 3), dtype=np.uint8)]
    for tokens, message in ((torch.zeros((1, 10), dtype=torch.long), rf"shape \[batch, {n}\]"),
                            (torch.full((1, n), editor.codebook_size), "must lie in"),
                            (torch.zeros((1, n)), "integer ids")):
        with pytest.raises(ValueError, match=message):
            editor.edit_token_logprobs(image, ["add a square"], tokens, 2.0)
    zeros = torch.zeros((1, n), dtype=torch.long)
    listed = editor.edit_token_logprobs(image, ["add a square"], [[0] * n], 2.0)  # a list of ids, as elsewhere
    assert torch.equal(listed, editor.edit_token_logprobs(image, ["add a square"], zeros, 2.0))
