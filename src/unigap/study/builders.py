"""How each kind of study arm is built: `builder(runner, name, seed)` trains or assembles the arm's model, then
evaluates it into `<name>/seed<k>/eval.json` (last: that file marks the job done). See `unigap.arms`.

The training builders take their settings from the arm's `options` and the study's budget: `train_strategy` a DPO
`strategy`, `self_improve` `SelfImproveConfig` fields (`method`, `labels`, `guard`), `unimrg` an `objective`;
`check_options` builds each arm's settings at the study's budget before any job runs, so an arm they do not make a
run of (an option missing, unknown, or one the study sets itself) fails at once, not hours in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unigap.arms import ARMS, Arm
from unigap.errors import UserError

def _dpo_settings(c: Any, arm: Arm, seed: int) -> Any:
    from unigap.train.config import TrainConfig

    return TrainConfig(**arm.options, steps=c.steps, lr=c.lr, beta=c.beta, nll_weight=c.nll_weight, seed=seed,
                       checkpoint_every=min(50, c.steps))


def _self_improve_settings(c: Any, arm: Arm, seed: int) -> Any:
    from unigap.selfimprove import SelfImproveConfig

    # (its own before/after evaluation skipped: the study evaluates every arm the same way)
    return SelfImproveConfig(**arm.options, n_prompts=c.self_prompts, epochs=c.self_epochs, eval_n=0, epoch_eval_n=0,
                             seed=seed, data_seed=c.data_seed)


def _unimrg_settings(c: Any, arm: Arm, seed: int) -> Any:
    from unigap.unimrg import UniMRGConfig

    return UniMRGConfig(**arm.options, steps=c.unimrg_steps, n_scenes=c.unimrg_scenes, seed=seed,
                        data_seed=c.data_seed, checkpoint_every=min(50, c.unimrg_steps))


# each training builder's settings for (study config, arm, seed), of which the arm's options are keywords, and the
# option it needs
SETTINGS: dict[str, tuple[Callable[[Any, Arm, int], Any], str]] = {
    "train_strategy": (_dpo_settings, "strategy"), "self_improve": (_self_improve_settings, "method"),
    "unimrg": (_unimrg_settings, "objective")}


def check_options(arm: Arm, config: Any) -> None:
    """`UserError` unless the arm's builder, if one of these, makes settings of its options (and has the one it needs)
    at the study `config`'s budget."""
    module, _, function = arm.builder.partition(":")
    if module != __name__:
        return
    if function == "soup":  # (a bad λ failed after seed 0's DPO arms had trained)
        _soup_lambda(arm.name)
    if function not in SETTINGS:
        if arm.options:  # (they would be recorded, and never used: a duplicate arm under another name)
            raise UserError(f"arm {arm.name!r}: its builder {function} takes no options, got {sorted(arm.options)}")
        return
    settings, needed = SETTINGS[function]
    if needed not in arm.options:
        raise UserError(f"arm {arm.name!r}: its builder {function} needs options={{{needed!r}: ...}}")
    try:
        settings(config, arm, 0)
    except (TypeError, UserError) as exc:  # (an option the settings have no field for, or one the study sets)
        raise UserError(f"arm {arm.name!r} at the study's settings: {exc}") from None
    if function == "train_strategy" and not arm.needs_pairs:  # (no pairs were built: it failed after every base run)
        raise UserError(f"arm {arm.name!r}: its builder train_strategy trains on the study's preference pairs; "
                        "register it with needs_pairs=True, so that the study builds them")


def train_strategy(runner: Any, name: str, seed: int) -> None:
    """Multi-task DPO with the arm's strategy (continuing a killed run), evaluated."""
    from unigap.train.trainer import DPOTrainer

    c = runner.config
    settings = _dpo_settings(c, ARMS[name], seed)
    um = runner.model()
    trainer = DPOTrainer(um, settings, runner.pairs("und"), runner.pairs("gen"), runner.run_dir(name, seed))
    with runner.bar(f"{name} DPO", c.steps) as update:
        trainer.train(trainer.has_checkpoint, lambda step, record: update(step))
    runner.evaluate(um, name, seed)


def _soup_lambda(name: str) -> float:
    """A soup arm's λ, which its name `soup-<λ>` gives; `UserError` for a name that gives none in [0, 1]."""
    from unigap.train.merge import check_lambda

    try:
        lam = float(name.removeprefix("soup-"))
        check_lambda(lam)
    except (ValueError, UserError) as exc:
        raise UserError(f"arm {name!r}: a soup is named soup-<λ>, λ in [0, 1] ({exc})") from None
    return lam


def soup(runner: Any, name: str, seed: int) -> None:
    """The rewarded soup `soup-<λ>` of the seed's und-only and gen-only adapters."""
    from unigap.train.merge import soup as merge_soup

    lam = _soup_lambda(name)
    adapter = merge_soup(runner.run_dir("und-only", seed), runner.run_dir("gen-only", seed), lam,
                         runner.run_dir(name, seed))
    um = runner.model()
    um.load_adapter(adapter)
    runner.evaluate(um, name, seed)


def oracle(runner: Any, name: str, seed: int) -> None:
    """Each task routed to its single-task adapter (the post-hoc upper bound)."""
    from unigap.train.oracle import SeparateLoraOracle

    routed = SeparateLoraOracle(runner.model(), runner.run_dir("und-only", seed), runner.run_dir("gen-only", seed))
    runner.evaluate(routed, name, seed)


def self_improve(runner: Any, name: str, seed: int) -> None:
    """`unigap selfimprove` with the arm's method and labels at the study's budget."""
    from unigap.manifest import read_record
    from unigap.selfimprove import GuardStopped, run
    from unigap.selfimprove.run import RESULT_FILE

    config = _self_improve_settings(runner.config, ARMS[name], seed)
    um, out, notes = runner.model(), runner.run_dir(name, seed) / "selfimprove", None
    try:
        run(um, config, out, progress=False)
    except GuardStopped:  # `um` holds the last epoch the guard let through (the base model if before training)
        notes = {"guard": read_record(out / RESULT_FILE)["guard"]}  # the report flags the arm
    runner.evaluate(um, name, seed, notes=notes)


# an inference-time arm's (model, held-out specs, seed, their one-shot images) -> the final images and the loop's
# per-round metrics, or None
FinalImages = Callable[[Any, list[Any], int, list[Any]], tuple[list[Any], Any]]


def refine(runner: Any, name: str, seed: int) -> None:
    """`refine` (self reflection) or `refine-oracle` (the exact instruction): the loop on the base model."""
    _with_final_images(runner, name, seed, runner.model(),
                       _loop(runner.config, "oracle" if name == "refine-oracle" else "self"))


def refine_grpo(runner: Any, name: str, seed: int) -> None:
    """The self-reflection loop after `unigap refine train` at the study's step budget (continuing a killed run)."""
    from unigap.refine.grpo import train_grpo
    from unigap.refine.grpo_config import GRPOConfig

    c = runner.config
    um = runner.model()
    config = GRPOConfig(steps=c.grpo_steps, seed=seed, data_seed=c.data_seed, eval_n=0,
                        checkpoint_every=min(25, c.grpo_steps), micro_batch_size=c.grpo_micro_batch_size)
    with runner.bar(f"{name} GRPO", c.grpo_steps) as update:  # (its own bars would break the study's display)
        train_grpo(um, config, runner.run_dir(name, seed) / "grpo", resume=True, show_progress=False,  # (fresh if none)
                   on_step=lambda done, record: update(done))
    _with_final_images(runner, name, seed, um, _loop(c, "self"))


def best_of_n(runner: Any, name: str, seed: int) -> None:
    """1 + rounds samples per prompt on the base model, the self-judge picks: the loop's sampling budget."""
    from unigap.model.generation import CFG_SCALE
    from unigap.refine.metrics import best_of_n_images

    c = runner.config

    def pick(um: Any, specs: list[Any], seed: int, one_shot: list[Any]) -> tuple[list[Any], None]:
        return best_of_n_images(um, specs, 1 + c.refine_rounds, seed, CFG_SCALE, 1.0, c.batch_size, False,
                                first=one_shot), None

    _with_final_images(runner, name, seed, runner.model(), pick)


def _loop(c: Any, reflector: str) -> FinalImages:
    """The refine loop's final images, and its per-round metrics."""
    def final(um: Any, specs: list[Any], seed: int, one_shot: list[Any]) -> tuple[list[Any], Any]:
        from unigap.model.generation import CFG_SCALE
        from unigap.refine.loop import run_loop
        from unigap.refine.metrics import round_metrics

        trajectories = run_loop(um, specs, c.refine_rounds, reflector, "auto", seed, CFG_SCALE, 1.0, c.batch_size,
                                False, first=one_shot)
        return [t.images[-1] for t in trajectories], round_metrics(trajectories, c.refine_rounds)

    return final


def _with_final_images(runner: Any, name: str, seed: int, um: Any, final: FinalImages) -> None:
    """An inference-time arm's evaluation: the model's own, with `final`'s images in place of the one-shot ones
    (verified and self-judged the same way) and the loop's per-round metrics where it gives them. `final` starts
    from those one-shot images, sampled with the base's prompts, seeds and batches (on the base model they are the
    base's own), so an arm and the base pair on the same images, as the report's paired test says they do."""
    from unigap.evaluate import evaluate, save_report
    from unigap.evaluate.run import with_intervals
    from unigap.evaluate.critique import self_judge_metrics
    from unigap.evaluate.data import held_out_pairs
    from unigap.evaluate.generation import generation_metrics, judge_images
    from unigap.evaluate.progress import map_items

    c = runner.config
    one_shot: list[Any] = []
    report = evaluate(um, c.n, seed, data_seed=c.data_seed, batch_size=c.batch_size, critique=False, progress=False,
                      on_images=one_shot.extend)
    specs = [spec for spec, _ in held_out_pairs(c.n, seed, c.data_seed)]
    images, rounds = final(um, specs, seed, one_shot)
    if rounds is not None:
        report["refine"] = {"rounds": rounds}
    records = map_items(list(zip(specs, images, strict=True)), c.batch_size, lambda index, chunk: judge_images(
        um, [spec for spec, _ in chunk], [image for _, image in chunk], start=index * c.batch_size), "judging",
        show=False)  # (in the study's batches, as the base's images were judged: not n images in one forward)
    report.update(generation_metrics(records))
    report["self_judge"] = self_judge_metrics(records)
    report["records"]["generation"] = records
    report["config"].update(model=c.model, method=name, refine_rounds=c.refine_rounds)
    runner.add_win_rate(report, um, name, seed)  # (refine-grpo's; the other refine arms are the base model)
    save_report(with_intervals(report), runner.eval_file(name, seed))  # (the replaced metrics' too)


def unimrg(runner: Any, name: str, seed: int) -> None:
    """`unigap train --objective <the arm's>` (unimrg or und-sft) with its own defaults at the study's step budget
    (continuing a killed run), evaluated."""
    from unigap.train.loop import CHECKPOINT_DIR
    from unigap.unimrg import build_data
    from unigap.unimrg.trainer import train_unimrg

    config = _unimrg_settings(runner.config, ARMS[name], seed)
    um = runner.model()
    maps = list(config.auxiliary)  # the same data for every seed: built once per study process, per what it reads
    key = ("unimrg", config.n_scenes, config.data_seed, config.questions_per_image, config.sentence_fraction, *maps)
    data = runner.memo(key, lambda: build_data(um, config.n_scenes, config.data_seed, config.questions_per_image,
                                               config.sentence_fraction, maps))
    out = runner.run_dir(name, seed)
    with runner.bar(f"{name} steps", config.steps) as update:  # (its own bars would break the study's display)
        train_unimrg(um, config, out, resume=(out / CHECKPOINT_DIR).is_dir(), show_progress=False, data=data,
                     on_step=lambda done, record: update(done))
    runner.evaluate(um, name, seed)


def sft(runner: Any, name: str, seed: int) -> None:
    """`unigap train --objective sft` on rendered train scenes: `unigap world sample`'s files (images with the
    prompt each satisfies, and two questions per image), written once per study, at the SFT arms' step and scene
    budget; evaluated. The scenes are the first of the shipped model's pretraining corpus (draw seed = `data_seed`);
    fresh ones (`--draw-seed`) did no better (docs/experiments.md)."""
    from unigap.train.loop import CHECKPOINT_DIR
    from unigap.train.sft_data import SFTConfig, train_sft
    from unigap.world.dataset import QUESTIONS_FILE, SAMPLES_FILE, write_dataset

    c = runner.config
    data = runner.out / "data" / "sft"
    if not (data / SAMPLES_FILE).is_file():  # written last: a present file means complete data
        write_dataset(data, c.unimrg_scenes, c.data_seed, "train", questions=2)
    config = SFTConfig(steps=c.unimrg_steps, seed=seed, checkpoint_every=min(50, c.unimrg_steps),
                       und_data=str(data / QUESTIONS_FILE), gen_data=str(data / SAMPLES_FILE))
    um = runner.model()
    out = runner.run_dir(name, seed)
    with runner.bar(f"{name} steps", config.steps) as update:
        train_sft(um, config, out, resume=(out / CHECKPOINT_DIR).is_dir(), show_progress=False,
                  on_step=lambda done, record: update(done))
    runner.evaluate(um, name, seed)
