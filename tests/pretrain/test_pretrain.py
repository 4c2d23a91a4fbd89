"""Pretraining: VQ training agrees with transformers' decode, losses reuse the model's scorers,
the corpus keeps held-out prompts out, and a killed run resumes to the same weights."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unigap.cli import main
from unigap.errors import UnigapWarning, UserError
from unigap.model import load_model
from unigap.model.generation import prompt_batch
from unigap.model.images import normalized_codebook, vq_encode
from unigap.pretrain import FULL as FULL_CONFIG
from unigap.pretrain import QUICK, pretrain
from unigap.pretrain import run as run_module
from unigap.pretrain.corpus import Corpora, critique_corpus, edit_corpus, generation_corpus, understanding_corpus
from unigap.pretrain.joint import (
    PatchHead,
    critique_rows,
    edit_loss,
    generation_loss,
    joint_step,
    make_optimizer,
    trainable_parameters,
    understanding_loss,
)
from unigap.pretrain.run import build_model, tokenize_corpora
from unigap.pretrain.vq import CROP_FOREGROUND, grid_crops, merge_similar_codes, to_pixels, train_vq, vq_reconstruct
from unigap.pretrain.labels import grid_side, patch_labels
from unigap.pretrain.vision import train_vision
from unigap.world import COLORS, SHAPES, SIZES, Scene, SceneObject, satisfies, scene_split, split_prompts

TINY = QUICK.scaled(scenes=24, understanding_scenes=24, questions_per_scene=2, critique_scenes=24, edit_pairs=24,
                    vq_steps=2, vq_batch=4, steps=4, und_batch=4, gen_batch=4, critique_batch=2, edit_batch=2,
                    checkpoint_every=2, warmup=2, vision_steps=4, vision_batch=8,
                    hidden_size=64, num_layers=2, num_heads=2, vision_hidden_size=32, vision_layers=1)  # fast, same code


@pytest.fixture(scope="module")
def corpus():
    return understanding_corpus(24, seed=0, questions_per_scene=3)


@pytest.fixture(scope="module")
def gen_corpus():
    return generation_corpus(24, seed=0, grid=8)


@pytest.fixture(scope="module")
def corpora(corpus, gen_corpus) -> Corpora:
    return Corpora(und=corpus, gen=gen_corpus, critique=critique_corpus(24, seed=0), edit=edit_corpus(24, seed=0))


@pytest.fixture(scope="module")
def model_and_corpus(corpora):
    um = build_model(TINY)
    tokenize_corpora(um, corpora)
    return um, corpora.und, corpora.gen


def test_generation_corpus_is_drawn_for_train_prompts(gen_corpus) -> None:
    train = {spec.text for spec in split_prompts("train", 0)}
    assert all(spec.text in train for spec in gen_corpus.specs)
    again = generation_corpus(24, seed=0, grid=8)
    assert np.array_equal(again.renders, gen_corpus.renders) and np.array_equal(again.labels, gen_corpus.labels)
    assert gen_corpus.labels.shape == (24, 3, 64)


def test_understanding_corpus_is_random_train_scenes_with_exact_judge_answers() -> None:
    corpus = understanding_corpus(300, seed=0, questions_per_scene=3)
    assert all(scene_split(scene, 0) == "train" for scene in corpus.scenes)
    # uniformly random scenes: object counts 1-4 and every shape alone on the canvas, in even shares
    counts = np.bincount([len(scene.objects) for scene in corpus.scenes], minlength=5)[1:]
    assert counts.min() > 50
    lone = {scene.objects[0].shape for scene in corpus.scenes if len(scene.objects) == 1}
    assert lone == {"circle", "square", "triangle"}
    train = {spec.text: spec for spec in split_prompts("train", 0)}
    judged = [(scene, q) for scene, qs in zip(corpus.scenes, corpus.questions, strict=True) for q in qs if q.kind == "judge"]
    answers = []
    for scene, q in judged:
        prompt = q.text.removeprefix("Does this image show ").removesuffix("?")
        assert prompt in train  # held-out prompt texts never appear in training questions
        assert q.answer == ("yes" if satisfies(scene, train[prompt]) else "no")
        answers.append(q.answer)
    assert 0.3 < answers.count("yes") / len(answers) < 0.7  # a satisfied prompt is in every pool it can be
    again = understanding_corpus(300, seed=0, questions_per_scene=3)
    assert [q.text for qs in again.questions for q in qs] == [q.text for qs in corpus.questions for q in qs]
    assert np.array_equal(again.renders, corpus.renders)


def test_merging_similar_codes_makes_each_group_one_token(corpus) -> None:
    um = build_model(TINY)
    vq = um.model.model.vqmodel
    train_vq(vq, corpus.renders[:8], steps=4, batch=4, lr=2e-3, seed=0)
    pixels = to_pixels(corpus.renders[:8])
    before = normalized_codebook(vq)
    usage = torch.bincount(vq_encode(vq, pixels).flatten(), minlength=len(before))
    assert merge_similar_codes(vq, pixels, 1.5) == len(before)  # nothing is that similar: nothing changes
    assert torch.equal(normalized_codebook(vq), before)
    kept = merge_similar_codes(vq, pixels, 0.6)
    after = normalized_codebook(vq)
    owners = torch.unique(after, dim=0)
    assert kept == len(owners) < len(before)
    similarity = owners @ owners.T
    assert bool((similarity[~torch.eye(kept, dtype=torch.bool)] < 0.6).all())  # survivors are apart
    assert bool(((before * after).sum(-1) >= 0.6 - 1e-6).all())  # each code took a vector within reach
    for row in owners:  # the group keeps its most-used member's vector
        members = (after == row).all(-1)
        assert torch.allclose(before[members][usage[members].argmax()], row)
    ids = vq_encode(vq, pixels).unique()
    first = {tuple(after[i].tolist()): i for i in reversed(range(len(after)))}  # lowest id of each vector
    assert set(ids.tolist()) <= set(first.values())  # a group encodes to one id
    twin = [i for i in range(len(after)) if i != first[tuple(after[i].tolist())]][0]
    with torch.no_grad():
        assert torch.allclose(vq.decode(torch.full((1, 64), twin)), vq.decode(torch.full((1, 64), first[tuple(
            after[twin].tolist())])))  # and any of its ids decodes alike


def test_vq_training_path_agrees_with_transformers_decode(corpus) -> None:
    um = build_model(TINY)
    vq = um.model.model.vqmodel
    losses = []
    train_vq(vq, corpus.renders[:8], steps=12, batch=4, lr=2e-3, seed=0,
             on_step=lambda step, numbers: losses.append(numbers.reconstruction))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns
    pixels = to_pixels(corpus.renders[:4])
    with torch.no_grad():
        recon, _, ids = vq_reconstruct(vq, pixels)
        assert torch.equal(ids, vq_encode(vq, pixels))  # training picks the codes encode picks
        assert torch.allclose(recon, vq.decode(ids), atol=1e-5)  # and decodes them as transformers does


def test_the_log_counts_the_codes_used_at_a_restart_step_too(corpus, monkeypatch) -> None:
    """A restart clears the used set; the step's count was taken after it, so every 100th log row said 0."""
    import unigap.pretrain.vq as vq_module

    monkeypatch.setattr(vq_module, "RESTART_EVERY", 2)
    vq = build_model(TINY).model.model.vqmodel
    used = []
    train_vq(vq, corpus.renders[:8], steps=5, batch=4, lr=2e-3, seed=0,
             on_step=lambda step, numbers: used.append(numbers.codes_used))
    assert len(used) == 5 and min(used) > 0


def _has_object(crop: np.ndarray) -> bool:
    return bool((np.abs(crop.astype(np.int16) - crop[:1, :1].astype(np.int16)).max(-1) > CROP_FOREGROUND).any())


def test_object_biased_crops_are_grid_aligned_and_favour_objects() -> None:
    canvas = np.full((64, 64, 3), 255, np.uint8)
    canvas[40:44, 8:12] = (200, 0, 0)  # one small object, inside 6 of the 25 grid-aligned 32×32 windows
    images = np.repeat(canvas[None], 600, axis=0)
    uniform = grid_crops(images, 32, 8, torch.Generator().manual_seed(0))
    biased = grid_crops(images, 32, 8, torch.Generator().manual_seed(0), empty_weight=0.1)
    assert uniform.shape == biased.shape == (600, 32, 32, 3)
    corners = {(r, c) for r in range(0, 33, 8) for c in range(0, 33, 8)}
    for crops in (uniform, biased):  # every crop is one of the grid-aligned windows of the canvas
        assert all(any(np.array_equal(crop, canvas[r : r + 32, c : c + 32]) for r, c in corners) for crop in crops[:40])
    share_uniform = np.mean([_has_object(crop) for crop in uniform])
    share_biased = np.mean([_has_object(crop) for crop in biased])
    # 6 of the 25 corners hold the object: uniform ≈ 0.24, weight 0.1 for the rest ≈ 6 / (6 + 1.9) ≈ 0.76
    assert 0.15 < share_uniform < 0.33 and 0.68 < share_biased < 0.84


def test_losses_are_the_model_scorers(model_and_corpus) -> None:
    um, corpus, gen_corpus = model_and_corpus
    rows = np.arange(4)
    gen, _ = generation_loss(um, PatchHead(um.model.config.text_config.hidden_size), gen_corpus, rows, np.random.default_rng(0), dropout=0.0)
    total, count = um.image_logprobs([gen_corpus.specs[r].text for r in rows], torch.from_numpy(gen_corpus.tokens[rows]))
    assert torch.allclose(gen, -total.sum() / count.sum(), atol=1e-5)

    # two of each scene's three questions, every answer token scored as `answer_logprobs` scores it alone
    rng = np.random.default_rng(3)
    und = understanding_loss(um, corpus, rows, rng, reconstructed=0.0, per_image=2)
    rng = np.random.default_rng(3)
    picked = [(r, corpus.questions[r][i]) for r in rows for i in rng.permutation(3)[:2]]
    assert len(picked) == 2 * len(rows)
    total, count = um.answer_logprobs(
        [corpus.renders[r] for r, _ in picked], [q.text for _, q in picked], [q.answer for _, q in picked]
    )
    assert torch.allclose(und, -total.sum() / count.sum(), atol=1e-5)


def test_a_joint_step_logs_the_rate_it_used(model_and_corpus, corpora) -> None:
    """The first warm-up step trains at lr / warmup and logs that (read after the scheduler stepped, it logged the
    next step's rate)."""
    um = copy.deepcopy(model_and_corpus[0])
    head = PatchHead(um.model.config.text_config.hidden_size)
    params = trainable_parameters(um, TINY) + list(head.parameters())
    optimizer, schedule = make_optimizer(params, TINY)
    rng = np.random.default_rng(0)
    logged = [joint_step(um, head, corpora, optimizer, schedule, params, rng, TINY).lr for _ in range(2)]
    assert logged == pytest.approx([TINY.lr / TINY.warmup, TINY.lr])


@pytest.mark.parametrize("config", [QUICK, FULL_CONFIG], ids=["quick", "full"])
def test_the_recipes_reach_their_peak_rate_and_decay_from_it(config) -> None:
    """`--quick` kept the full recipe's 100 warm-up steps over its 40: it trained at 1-40 % of its rate, never decaying."""
    optimizer, schedule = make_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    rates = []
    for _ in range(config.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert max(rates) == pytest.approx(config.lr) and rates[-1] < config.lr / 2


def test_prompt_dropout_uses_the_cfg_unconditional_prompt(model_and_corpus) -> None:
    um, _, corpus = model_and_corpus
    rows = np.arange(3)
    prompts = [corpus.specs[r].text for r in rows]
    head = PatchHead(um.model.config.text_config.hidden_size)
    dropped, _ = generation_loss(um, head, corpus, rows, np.random.default_rng(0), dropout=1.0)
    ids, mask = prompt_batch(um.prompts, prompts, cfg=True, device=um.device)
    from unigap.model.generation import image_token_logits

    tokens = torch.from_numpy(corpus.tokens[rows])
    logits = image_token_logits(um.model, ids[3:], mask[3:], tokens)  # the CFG unconditional half
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    assert torch.allclose(dropped, expected, atol=1e-5)
    kept, _ = generation_loss(um, head, corpus, rows, np.random.default_rng(0), dropout=0.0)
    assert not torch.allclose(dropped, kept)


def test_edit_instruction_dropout_trains_the_source_only_twin(model_and_corpus, corpora, monkeypatch) -> None:
    um, rows = model_and_corpus[0], np.arange(3)
    edits = corpora.edit
    sources, tokens = [edits.sources[r] for r in rows], torch.from_numpy(edits.tokens[rows])
    instructions = [edits.instructions[r] for r in rows]

    def loss(dropout: float, instruction_dropout: float) -> torch.Tensor:
        with torch.no_grad():
            return edit_loss(um, edits, rows, np.random.default_rng(0), 0.0, dropout, instruction_dropout)

    with torch.no_grad():
        source_only = -um.edit_token_logprobs(sources, instructions, tokens,
                                              instruction_dropped=torch.ones(3, dtype=torch.bool)).mean()
        full = -um.edit_token_logprobs(sources, instructions, tokens).mean()
    assert torch.allclose(loss(0.0, 1.0), source_only, atol=1e-5) and torch.allclose(loss(0.0, 0.0), full, atol=1e-5)
    assert not torch.allclose(source_only, full)
    seen = []  # an unconditional row stays unconditional: never also source-only
    monkeypatch.setattr(um, "edit_token_logprobs", lambda images, texts, tokens, cfg, dropped, instruction_dropped:
                        seen.append((dropped, instruction_dropped)) or torch.zeros(len(images), 1))
    edit_loss(um, edits, np.arange(24), np.random.default_rng(1), 0.0, 0.5, 0.5)
    (dropped, source_only), = seen
    assert dropped.any() and source_only.any() and not (dropped & source_only).any()
    with pytest.raises(ValueError, match="edit_instruction_dropout must lie in"):
        TINY.scaled(edit_instruction_dropout=1.5)


def test_patch_head_reads_the_states_that_predict_each_image_token(model_and_corpus) -> None:
    um, _, corpus = model_and_corpus
    rows = np.arange(3)
    torch.manual_seed(0)
    head = PatchHead(um.model.config.text_config.hidden_size)
    gen, patch = generation_loss(um, head, corpus, rows, np.random.default_rng(0), dropout=0.0)
    ids, mask = prompt_batch(um.prompts, [corpus.specs[r].text for r in rows], cfg=False, device=um.device)
    from unigap.model.generation import image_token_states

    states = image_token_states(um.model, ids, mask, torch.from_numpy(corpus.tokens[rows]))
    assert states.shape == (3, 64, um.model.config.text_config.hidden_size)
    labels = torch.from_numpy(corpus.labels[rows])
    shape = torch.nn.functional.cross_entropy(head.shape(states).flatten(0, 1), labels[:, 0].flatten())
    color = torch.nn.functional.cross_entropy(head.color(states).flatten(0, 1), labels[:, 1].flatten())
    assert torch.allclose(patch, shape + color, atol=1e-5)
    # the loss reaches the LLM: its gradient on the last layer is not zero
    um.model.zero_grad()
    patch.backward()
    assert um.model.model.language_model.layers[-1].mlp.down_proj.weight.grad.abs().sum() > 0
    um.model.zero_grad()


RESUMED = TINY.scaled(vq_steps=4, polish_steps=4, polish_critique_batch=3, polish_edit_batch=2,
                      vq_merge_similarity=0.5, edit_source="tokens")  # the merge must resume alike too


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of `RESUMED`, which every killed-and-resumed run must reproduce."""
    return pretrain(tmp_path_factory.mktemp("whole"), RESUMED, show_progress=False)


@pytest.mark.parametrize("stage", ["vq", "joint"])
def test_killed_run_resumes_to_the_same_weights(whole: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                stage: str) -> None:
    """Killed in the VQ stage, or in the joint stage and, once resumed, again in the polish stage: each time in its
    third step, after the checkpoint at step 2; the finished run equals the uninterrupted one."""
    config, out = RESUMED, tmp_path / "resumed"
    calls = {"n": 0}

    def killed_at(call: int):
        def count() -> None:
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
        return count

    def run_killed(dies: object, checkpoint_file: str) -> None:
        calls["n"] = 0
        if stage == "vq":
            real_train_vq = run_module.train_vq

            def train_vq_dying(*args, on_step, **kwargs):
                return real_train_vq(*args, on_step=lambda *a: (dies(), on_step(*a)), **kwargs)

            monkeypatch.setattr(run_module, "train_vq", train_vq_dying)
        else:
            real_step = run_module.joint_step
            monkeypatch.setattr(run_module, "joint_step", lambda *a, **k: (dies(), real_step(*a, **k))[1])
        with pytest.raises(KeyboardInterrupt):
            pretrain(out, config, show_progress=False)
        monkeypatch.undo()
        assert (out / getattr(run_module, checkpoint_file)).is_file()
        saved = torch.load(out / getattr(run_module, checkpoint_file), weights_only=False, map_location="cpu")
        assert saved["device"] == "cpu"  # (a resume on another kind of device is warned of)

    if stage == "vq":
        run_killed(killed_at(3), "VQ_PARTIAL")
        built = []
        monkeypatch.setattr(run_module, "build_corpora", lambda *a, **k: built.append(1))
        with pytest.raises(UserError, match=r"vq.pt was written under other vq settings \(vq_lr: "):
            pretrain(out, config.scaled(vq_lr=config.vq_lr / 2), show_progress=False)
        assert not built  # refused before any work
        monkeypatch.undo()
    else:
        run_killed(killed_at(3), "JOINT_FILE")
        run_killed(killed_at(config.steps - 2 + 3), "POLISH_FILE")  # the rest of stage 3, then polish's third step
        with pytest.raises(UserError, match=r"polish.pt was written under other polish settings \(lr: "):
            pretrain(out, config.scaled(polish_lr=config.polish_lr / 2), show_progress=False)
    last = out / getattr(run_module, "VQ_PARTIAL" if stage == "vq" else "POLISH_FILE")
    torch.save(torch.load(last, weights_only=False, map_location="cpu") | {"device": "cuda"}, last)  # preempted on a GPU
    with pytest.warns(UnigapWarning, match=f"{last.name} was trained on cuda so far and goes on on cpu"):
        pretrain(out, config, show_progress=False)
    with pytest.raises(UserError, match="holds a finished pretraining run"):  # not trained again from scratch
        pretrain(out, config, show_progress=False)
    if stage == "joint":  # stage 3 finished in an earlier run; its last losses still reach the summary
        summaries = [json.loads((run / run_module.SUMMARY_FILE).read_text()) for run in (whole, out)]
        assert summaries[1]["final_losses"] is not None and summaries[1]["device"] == "cpu"
        assert summaries[1]["final_losses"] == pytest.approx(summaries[0]["final_losses"])
        assert summaries[1]["polish_final_losses"] == pytest.approx(summaries[0]["polish_final_losses"])
    logs = [[json.loads(line) for line in (run / run_module.LOG_FILE).read_text().splitlines()] for run in (whole, out)]
    rows = [[(r["stage"], r["step"]) for r in log] for log in logs]  # every row once (a rerun's one-off rows last)
    assert sorted(rows[1]) == sorted(rows[0]) and len(set(rows[1])) == len(rows[1])
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    leftovers = (run_module.VQ_PARTIAL, run_module.VQ_FILE, run_module.JOINT_FILE, run_module.POLISH_FILE)
    assert not any((run / name).exists() for run in (whole, out) for name in leftovers)
    um = load_model(whole)
    assert um.num_image_tokens == 64 and um.codebook_size == TINY.codebook_size and um.edit_source == "tokens"
    log = [json.loads(line) for line in (whole / run_module.LOG_FILE).read_text().splitlines()]
    merged = [row for row in log if row.get("stage") == "vq_merge"]
    codebook = um.model.model.vqmodel.quantize.embedding.weight
    assert merged[-1]["codes"] == len(torch.unique(codebook, dim=0)) < TINY.codebook_size


def test_a_finished_stage_file_is_refused_under_its_own_settings_changed_not_under_later_stages(tmp_path) -> None:
    tower = run_module.build_model(TINY).model.model.vision_model
    path = tmp_path / run_module.VISION_FILE
    run_module.save_stage(tower, path, 1.5, run_module.stage_settings(TINY, "vision"))
    later = run_module.stage_settings(TINY.scaled(steps=7, lr=1e-3, polish_steps=3), "vision")
    assert run_module._load_stage(tower, path, later, "vision") == 1.5  # joint and polish settings may change
    for change, key in ((dict(vision_lr=1.0), "vision_lr"), (dict(vq_steps=9), "vq_steps"), (dict(seed=5), "seed")):
        with pytest.raises(UserError, match=rf"vision.safetensors was written under other vision settings \({key}: "):
            run_module._load_stage(tower, path, run_module.stage_settings(TINY.scaled(**change), "vision"), "vision")
    older = {k: v for k, v in run_module.stage_settings(TINY, "vision").items() if k != "sentence_fraction"}
    run_module.save_stage(tower, path, 2.0, older)  # written before a setting existed: taken at its default
    assert run_module._load_stage(tower, path, run_module.stage_settings(TINY, "vision"), "vision") == 2.0
    with pytest.raises(UserError, match=r"sentence_fraction: \(absent\) → 0.5"):
        run_module._load_stage(tower, path, run_module.stage_settings(TINY.scaled(sentence_fraction=0.5), "vision"),
                               "vision")


@pytest.mark.parametrize(("change", "moves_the_vq"), [
    (dict(hidden_size=128), True), (dict(vision_hidden_size=64), True), (dict(vision_layers=2), True),
    (dict(codebook_size=256), True), (dict(num_layers=3), False), (dict(num_heads=4), False)])
def test_every_setting_that_changes_the_vqs_initial_weights_is_a_vq_setting(change: dict, moves_the_vq: bool) -> None:
    """A VQ stage file is reused under a config with the same VQ settings: one whose seed draws other initial VQ
    weights (the LLM's width, the vision tower's) would not reproduce from its own record. The LLM's depth and
    heads leave them as they are, so those stay free to change."""
    def initial(config):
        return run_module.build_model(config).model.model.vqmodel.state_dict()

    base, other = initial(TINY), initial(TINY.scaled(**change))
    differs = base.keys() != other.keys() or any(base[k].shape != other[k].shape or not torch.equal(base[k], other[k])
                                                 for k in base)
    assert differs == moves_the_vq
    vq_settings_differ = run_module.stage_settings(TINY, "vq") != run_module.stage_settings(TINY.scaled(**change), "vq")
    assert vq_settings_differ == moves_the_vq


def test_critique_rows_draw_intact_pictures_at_the_share_asked(corpora) -> None:
    critique = corpora.critique
    intact = np.array([p == "intact" for p in critique.pictures])
    assert 0 < intact.sum() < len(critique)
    rows = critique_rows(critique, 4000, np.random.default_rng(0), 0.8)
    assert abs(intact[rows].mean() - 0.8) < 0.03
    assert len(set(rows[intact[rows]])) == intact.sum()  # every intact picture is drawn
    # unset, the draw is stage 3's uniform one, so a recipe without a share trains exactly as before
    assert np.array_equal(critique_rows(critique, 50, np.random.default_rng(1), None),
                          np.random.default_rng(1).integers(len(critique), size=50))


def test_critique_rows_refuse_a_share_the_corpus_cannot_draw(corpora) -> None:
    critique = corpora.critique
    only_broken = replace(critique, pictures=["broken"] * len(critique))
    with pytest.raises(ValueError, match="draws intact pictures, but the critique corpus holds none"):
        critique_rows(only_broken, 20, np.random.default_rng(0), 0.5)
    assert len(critique_rows(only_broken, 20, np.random.default_rng(0), 0.0)) == 20  # no intact one asked for


def test_polish_is_the_joint_step_at_its_own_batches_and_rate() -> None:
    base = TINY.scaled(polish_steps=7, polish_lr=1e-4, polish_warmup=3, polish_und_batch=2, polish_gen_batch=3,
                       polish_critique_batch=5, polish_edit_batch=6, polish_intact=0.6)
    polish = base.polish()
    assert (polish.steps, polish.lr, polish.warmup, polish.und_batch, polish.gen_batch, polish.critique_batch,
            polish.edit_batch, polish.critique_intact) == (7, 1e-4, 3, 2, 3, 5, 6, 0.6)
    assert polish.patch_label_weight == 0.0
    unchanged = {"steps", "lr", "warmup", "und_batch", "gen_batch", "critique_batch", "edit_batch", "critique_intact",
                 "patch_label_weight"}
    assert all(getattr(polish, f) == getattr(base, f) for f in asdict(base) if f not in unchanged)


@pytest.mark.parametrize(("change", "message"), [({"polish_intact": 1.5}, "polish_intact must lie in"),
                                                 ({"critique_intact": -0.1}, "critique_intact must lie in"),
                                                 ({"polish_steps": -1}, "polish_steps must be >= 0"),
                                                 # these failed only later: a traceback, or a "loss is not finite"
                                                 ({"gen_batch": 0}, "gen_batch must be positive, got 0"),
                                                 ({"polish_gen_batch": 0}, "polish_gen_batch must be positive"),
                                                 ({"und_batch": 0}, "und_batch must be positive"),
                                                 ({"questions_per_image": 0}, "questions_per_image must be positive"),
                                                 ({"edit_pairs": 0}, "edit_pairs must be positive"),
                                                 ({"checkpoint_every": 0}, "checkpoint_every must be positive"),
                                                 ({"prompt_dropout": 1.5}, r"prompt_dropout must lie in \[0, 1\]"),
                                                 ({"lr": float("nan")}, "PretrainConfig.lr must be a finite number, got nan"),
                                                 ({"vq_crop": 30}, "vq_crop must be a multiple of the VQ's 8-pixel"),
                                                 # (NaN at every VQ step; tracebacks in the model build or numpy)
                                                 ({"vq_lr": float("inf")}, "PretrainConfig.vq_lr must be a finite number"),
                                                 ({"seed": -1}, "seed must be >= 0"),
                                                 ({"num_heads": 3}, "num_heads must divide hidden_size 64 into heads "
                                                                    "of an even size, got 3"),
                                                 ({"hidden_size": 98}, "num_heads must divide hidden_size 98"),
                                                 ({"vision_hidden_size": 100}, r"vision_hidden_size must be a multiple "
                                                                               r"of its 3 heads \(one per 32"),
                                                 ({"codebook_size": 1}, "codebook_size must be at least 256, got 1")])
def test_pretrain_config_refuses_impossible_settings(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TINY.scaled(**change)
    assert TINY.scaled(edit_batch=0, critique_batch=0).edit_batch == 0  # (a task left unlearnt is a choice)
    assert TINY.scaled(vq_crop=96).vq_crop == 96  # (the whole image: no crop, whatever its side)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--seed", "-1"], "--seed must be >= 0"), (["--out", "{file}"], "is a file, not a directory"),
     (["--device", "tpu"], "unknown device 'tpu'"), (["--device", "cuda:99"], "asked for, but this torch")],
)
def test_cli_rejects_bad_input_with_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    argv = [a.format(file=file) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", *argv, "--quick"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_reconstruction_loss_weighs_colour_spilt_beside_an_object_as_much_as_lost_object_pixels() -> None:
    from unigap.pretrain.vq import OBJECT_MARGIN, reconstruction_loss

    canvas = np.full((1, 32, 32, 3), 255, np.uint8)
    canvas[0, 10:20, 10:20] = (200, 20, 20)
    pixels = to_pixels(canvas)
    lost, spilt, far = pixels.clone(), pixels.clone(), pixels.clone()
    lost[..., 10, 10:20] = 1.0  # an object row turned background
    spilt[..., 20 + OBJECT_MARGIN - 1, 10:20] = pixels[..., 10, 10:20]  # the same colour painted just outside
    far[..., 28, 10:20] = pixels[..., 10, 10:20]  # and far from the object
    loss = {name: reconstruction_loss(image, pixels).item() for name, image in [("lost", lost), ("spilt", spilt), ("far", far)]}
    assert loss["spilt"] == pytest.approx(loss["lost"], rel=1e-6)
    assert loss["far"] < loss["spilt"] / 5


def test_grid_side_is_the_side_of_a_square_token_grid() -> None:
    assert grid_side(64) == 8 and grid_side(576) == 24  # tiny and Janus-Pro
    with pytest.raises(ValueError, match="square grid"):
        grid_side(60)


def test_patch_labels_mark_the_patches_inside_each_object_box() -> None:
    obj = SceneObject("triangle", "blue", "small", x=24, y=40)  # box x 18..30, y 34..46 (radius 6)
    labels = patch_labels(Scene(64, (obj,)), grid=8)
    assert labels.shape == (3, 64)
    inside = {(row, col) for row in range(8) for col in range(8) if labels[0, row * 8 + col]}
    centres = [8 * k + 3.5 for k in range(8)]  # patch centres, in pixels
    expected = {(r, c) for r in range(8) for c in range(8) if abs(centres[r] - 40) <= 6.5 and abs(centres[c] - 24) <= 6.5}
    assert inside == expected and len(expected) == 4
    row, col = next(iter(expected))
    assert tuple(labels[:, row * 8 + col]) == (SHAPES.index("triangle") + 1, COLORS.index("blue") + 1, SIZES.index("small") + 1)
    assert labels[:, [r * 8 + c for r in range(8) for c in range(8) if (r, c) not in expected]].sum() == 0


def test_vision_stage_learns_and_is_seeded(model_and_corpus) -> None:
    _, corpus, _ = model_and_corpus
    towers, logs = [], []
    for _ in range(2):
        tower = build_model(TINY).model.model.vision_model
        log = []
        train_vision(tower, corpus, steps=30, batch=8, lr=3e-3, seed=0, reconstructed=0.5,
                     on_step=lambda step, numbers, log=log: log.append(numbers.loss))
        towers.append(tower.state_dict())
        logs.append(log)
    assert np.mean(logs[0][-5:]) < 0.8 * np.mean(logs[0][:5])  # it learns the labels
    assert logs[0] == logs[1] and all(torch.equal(towers[0][k], towers[1][k]) for k in towers[0])


@pytest.mark.parametrize("trains_vision", [False, True])
def test_joint_stage_leaves_the_vq_and_by_default_the_vision_tower_alone(trains_vision: bool) -> None:
    um = build_model(TINY)
    params = {id(p) for p in trainable_parameters(um, TINY.scaled(joint_trains_vision=trains_vision))}
    tower, vq = um.model.model.vision_model, um.model.model.vqmodel
    assert not any(id(p) in params for p in vq.parameters())
    assert all((id(p) in params) == trains_vision for p in tower.parameters())
    assert all(id(p) in params for p in um.model.model.language_model.parameters())


def test_the_device_asked_for_is_where_it_trains_and_is_recorded(tmp_path: Path, monkeypatch) -> None:
    """`--device` reaches `pretrain` and the manifest; the run's summary records where it trained."""
    import unigap.pretrain

    seen = {}

    def fake(out, config, report_to=(), device="cpu"):
        seen["device"] = device
        return Path(out).mkdir() or Path(out)

    monkeypatch.setattr(unigap.pretrain, "pretrain", fake)
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--quick", "--device", "cpu", "--out", str(tmp_path / "m")])
    assert exc.value.code == 0 and str(seen["device"]) == "cpu"
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["device"] == "cpu"


def test_the_closing_line_names_a_folder_called_tiny_as_a_path(tmp_path: Path, capsys, monkeypatch) -> None:
    """`--model tiny` loads the shipped model, so a run saved in ./tiny must be named ./tiny."""
    import unigap.pretrain

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(unigap.pretrain, "pretrain",
                        lambda out, config, report_to=(), device="cpu": Path(out).mkdir() or Path(out))
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--quick", "--out", "tiny"])
    assert exc.value.code == 0 and "load it with --model ./tiny" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # another seed trains in another partition: its held-out prompts are that one's
        main(["pretrain", "--quick", "--seed", "3", "--out", "other"])
    assert "(held out: `unigap eval --data-seed 3`)" in " ".join(capsys.readouterr().out.split())


def test_a_folder_of_a_users_own_files_is_refused_before_any_work(tmp_path: Path) -> None:
    """The checkpoint's files (config.json, the weights, the tokenizer) were written over a user's own at the end."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"mine holds files a pretraining run did not write \(config.json\); choose"):
        pretrain(mine, QUICK, show_progress=False)
    assert [p.name for p in mine.iterdir()] == ["config.json"]
    killed = tmp_path / "killed"  # a run killed before its first log row: only its loggers' files, and a dotfile
    (killed / "tensorboard").mkdir(parents=True)
    (killed / "wandb_run_id.txt").write_text("abc")
    (killed / ".DS_Store").write_bytes(b"")
    run_module.check_stage_files(killed, QUICK)  # (resumable, as the README says)
    (mine / "wandb").mkdir()  # (a user's project folder W&B has run in is still the user's)
    with pytest.raises(UserError, match="holds files a pretraining run did not write"):
        run_module.check_stage_files(mine, QUICK)


def test_a_stage_resumed_on_another_kind_of_device_is_warned_of(tmp_path: Path) -> None:
    """A run preempted on a GPU and resumed on a CPU went on silently: its records showed the last device only. So did
    one resumed with another CPU thread count, whose matrix products round differently."""
    import warnings

    path, cpu = tmp_path / "joint.pt", torch.device("cpu")
    with pytest.warns(UnigapWarning, match="joint.pt was trained on cuda so far and goes on on cpu: .* --device cuda"):
        run_module.warn_other_numerics(path, {"device": "cuda"}, cpu)
    other = torch.get_num_threads() + 1
    with pytest.warns(UnigapWarning, match=f"joint.pt was trained with {other} torch threads so far and goes on with "
                                           f"{torch.get_num_threads()}: .* UNIGAP_NUM_THREADS={other}"):
        run_module.warn_other_numerics(path, {"device": "cpu", "threads": other}, cpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_module.warn_other_numerics(path, run_module.numerics(cpu), cpu)
        run_module.warn_other_numerics(path, {"device": "cpu"}, cpu)  # (a checkpoint from before it said)
        run_module.warn_other_numerics(path, {}, cpu)


@pytest.mark.slow
def test_a_rerun_that_turns_a_stage_off_keeps_no_row_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the VQ merge, then after polish, each rerun with that stage off: the killed run's merge and polish
    rows stayed in the log, which then disagreed with the run (the summary's `polish_final_losses: null`)."""
    config, out = RESUMED.scaled(vq_steps=2), tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    def stages() -> set[str]:
        return {json.loads(line)["stage"] for line in (out / run_module.LOG_FILE).read_text().splitlines()}

    monkeypatch.setattr(run_module, "tokenize_corpora", killed)  # (after the merge's row)
    with pytest.raises(KeyboardInterrupt):
        pretrain(out, config, show_progress=False)
    assert "vq_merge" in stages()
    config = config.scaled(vq_merge_similarity=None)
    monkeypatch.setattr(run_module, "tokenize_corpora", tokenize_corpora)
    monkeypatch.setattr(run_module, "save_tiny", killed)  # (after polish's last row and checkpoint)
    with pytest.raises(KeyboardInterrupt):
        pretrain(out, config, show_progress=False)
    assert "polish" in stages() and "vq_merge" not in stages()
    monkeypatch.undo()
    pretrain(out, config.scaled(polish_steps=0), show_progress=False)
    assert "joint" in stages() and not {"polish", "vq_merge"} & stages()
    assert json.loads((out / run_module.SUMMARY_FILE).read_text())["polish_final_losses"] is None


def test_a_one_off_row_logged_alike_before_keeps_its_place_on_resume(tmp_path: Path) -> None:
    """The VQ check is recomputed by every run: logged again, its row landed after the finished vision stage's
    rows, and a resumed log no longer read in one run's order."""
    from unigap.metrics_log import MetricLogger, read_log

    logger = MetricLogger(tmp_path / "log.jsonl", append=True)
    fidelity = {"stage": "vq_fidelity", "accepted": 0.5, "n": 4}
    for row in ({"stage": "vq", "step": 0, "loss": 1.0}, fidelity, {"stage": "vision", "step": 0, "loss": 2.0}):
        run_module._log(logger, row)
    before = read_log(logger.path)
    run_module._log_again(logger, dict(fidelity))  # a resumed run: the same numbers
    assert read_log(logger.path) == before
    run_module._log_again(logger, fidelity | {"accepted": 0.75})  # other numbers: the new row replaces the old
    assert [row["stage"] for row in read_log(logger.path)] == ["vq", "vision", "vq_fidelity"]
    assert read_log(logger.path)[-1]["accepted"] == 0.75
