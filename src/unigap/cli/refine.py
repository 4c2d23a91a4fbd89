"""`unigap refine`: generate → reflect → refine on held-out prompts, per-round metrics, oracle and best-of-N; and
`unigap refine train`: R3's GRPO of the loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.table import Table

from unigap.cli.common import (
    ADAPTER_OPTION,
    BF16_OPTION,
    CONFIG_SEED,
    EDIT_CFG_OPTION,
    EDIT_IMAGE_CFG_OPTION,
    JUDGE_OPTION,
    edit_guidance_kwargs,
    guarded_run,
    inputs_claimed,
    judge_claimed,
    load,
    print_table,
    warn_other_partition,
    weights_dtype,
)
from unigap.errors import UserError

app = typer.Typer()
refine_app = typer.Typer(help="Reason → reflect → refine (R3): run the loop, or train it with GRPO (`train`).")
app.add_typer(refine_app, name="refine")


def _table(report: dict) -> Table:
    """The rounds by the verifier, with a column of --judge's accuracy on the same images; by --judge alone where
    the verifier read no prompt (free text)."""
    judged = report.get("judged")
    by_verifier = report["rounds"][0]["n"] > 0
    section = report if by_verifier else judged
    judge = "verifier" if by_verifier else judged["judge"]
    table = Table(title=f"refine ({report['config']['refiner_used']}, n = {report['config']['n_prompts']}, "
                        f"judged by {judge})")
    extra = [f"by {judged['judge']}"] if judged and by_verifier else []
    for column in ("round", "accuracy", *extra, "improved", "worse", "unchanged", "stopped"):
        table.add_column(column, justify="right", overflow="fold")

    def share(metric: dict | None, key: str) -> str:
        return "—" if metric is None or metric[key] is None else f"{metric[key]:.3f}"

    parts = [section, *([judged] if extra else [])]

    def accuracy(get: Callable[[dict], dict | None]) -> list[str]:  # the section's, and --judge's in its column
        return [share(get(part), "accuracy") for part in parts]

    for index, row in enumerate(section["rounds"]):
        table.add_row(str(row["round"]), *accuracy(lambda part: part["rounds"][index]),
                      *(share(row[k], "rate") for k in ("improved", "worse", "unchanged")), str(row["stopped"]))
    table.add_row("best of N", *accuracy(lambda part: part["best_of_n"]), "", "", "", "")
    table.add_row("oracle", *accuracy(lambda part: part["oracle"]), "", "", "", "")
    return table


def _typed(ctx: typer.Context) -> list[str]:
    """The options the user gave, as typed (`--edit-cfg`), defaults left out."""
    return [f"--{name.replace('_', '-')}" for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"]  # (typer ships its own click)


def _refuse_loop_options(ctx: typer.Context) -> None:
    """`unigap refine --seed 1 train` would run `train` at its own default seed: options typed before a subcommand
    belong to the loop, so they are refused rather than silently dropped."""
    typed = _typed(ctx)
    if typed:
        sub = ctx.invoked_subcommand
        raise UserError(f"{', '.join(typed)} before `{sub}` would be ignored: put `{sub}`'s options after it "
                        f"(`unigap refine {sub} --help`)")


@refine_app.callback(invoke_without_command=True)
def refine_command(
    ctx: typer.Context,
    model: str = typer.Option("tiny", "--model", help='A checkpoint directory, or "tiny" (the shipped model).'),
    adapter: Path | None = ADAPTER_OPTION,
    prompts: str = typer.Option("test", "--prompts", help="A held-out split (test, val) or a file of prompts "
                                "(free text too, with --judge clip:DIR or vlm:DIR)."),
    n: int = typer.Option(300, "--n", help="Prompts (at most n of a prompt file)."),
    rounds: int = typer.Option(3, "--rounds", help="Reflect/refine rounds after the first image (0 = one-shot)."),
    reflector: str = typer.Option("self", "--reflector", help="self (the model) | oracle (the exact diff)."),
    refiner: str = typer.Option("auto", "--refiner", help="auto | edit | regenerate (auto: edit when the model can)."),
    seed: int = typer.Option(0, "--seed", help="Draws the prompts and every sample."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per sampling call (the samples depend on it)."),
    out: Path = typer.Option(Path("runs/refine"), "--out", help="Output directory (refine.json, strips/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    judge: str = JUDGE_OPTION,
    edit_cfg: float | None = EDIT_CFG_OPTION,
    edit_image_cfg: float | None = EDIT_IMAGE_CFG_OPTION,
) -> None:
    """Run the refine loop, the oracle reflector and best-of-N at the same budget; write OUT/refine.json."""
    if ctx.invoked_subcommand is not None:
        _refuse_loop_options(ctx)
        return
    from unigap.manifest import manifest, write_manifest
    from unigap.refine import RefineConfig, run_refine

    edit_guidance = edit_guidance_kwargs(edit_cfg, edit_image_cfg)
    after_first = [option for option in _typed(ctx) if option in ("--reflector", "--refiner", "--edit-cfg",
                                                                  "--edit-image-cfg")]
    if rounds == 0 and after_first:
        raise UserError(f"{', '.join(after_first)} act{'s' if len(after_first) == 1 else ''} on the rounds after the "
                        "first image, and --rounds 0 runs none")
    config = RefineConfig(n=n, rounds=rounds, reflector=reflector, refiner=refiner, prompts=prompts, seed=seed,
                          batch_size=batch_size, judge=judge, **edit_guidance)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if (out / "settings.json").exists() and not resume:
        raise UserError(f"{out} already holds a refine run: pass --resume to continue it, or choose another --out")
    from unigap import distributed
    from unigap.refine.run import refine_prompts

    refine_prompts(config)  # a bad prompt file fails before the load
    from unigap.evaluate.data import prompt_lines
    from unigap.evaluate.judges import get_judge

    chosen = get_judge(config.judge, independent=True)  # a bad judge directory fails before anything is written
    distributed.wait_for_everyone()  # under `accelerate launch`: every process has checked OUT before one writes
    described = chosen.describe()
    with inputs_claimed(out, "refine", model, adapter, judge_claimed(described), prompts=config.prompts), manifest(
            "refine", {"model": model, "adapter": None if adapter is None else str(adapter), **config.__dict__},
            seeds=[seed], judge=described) as record:
        um = load(model, adapter)
        um.prompts.check_texts(prompts=prompt_lines(config.prompts))  # (run_refine writes before it samples)
        record["device"] = str(um.device)
        report = run_refine(um, config, out)
    if not distributed.is_main():
        return
    write_manifest(out, record)
    print_table(_table(report))
    typer.echo(f"wrote {out / 'refine.json'}")


@refine_app.command("train")
def train_command(
    model: str = typer.Option("tiny", "--model", help='A checkpoint directory, or "tiny" (the shipped model).'),
    out: Path = typer.Option(Path("runs/refine-grpo"), "--out", help="Output directory: log, checkpoint, adapter, "
                             "settings.json, grpo.json (the loop before and after training)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser steps (default 200); rollouts alternate "
                                     "generation and reflection + refinement unless --stages generate, one rollout "
                                     "per num_iterations steps (1 by default: a rollout a step)."),
    stages: str | None = typer.Option(None, "--stages", help="tree (R3's schedule, the default) | generate (every "
                                      "step trains the generation stage alone)."),
    reward: str | None = typer.Option(None, "--reward", help="What scores each image: verifier (its graded score, "
                                      "the default) | verifier-binary (its verdict, 1 or 0: the accuracy the loop "
                                      "is measured by) | self-pyes (the model's own judge: self-rewarded; the "
                                      "verifier is logged beside it as an audit) | base-pyes (its judge before "
                                      "training, frozen) | clip:DIR | vlm:DIR (see `unigap eval --judge`)."),
    no_guard: bool = typer.Option(False, "--no-guard", help="With a judge as the reward: keep the verifier's audit "
                                  "but never stop (the guard stops, exit 3, when the audited accuracy falls; "
                                  "grpo.json's guard.alarm records when it would have)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 3e-4; R3 trains the full model at "
                                    "5e-6, a LoRA needs more)."),
    num_generations: int | None = typer.Option(None, "--num-generations", help="Samples per group (R3: 16)."),
    micro_batch_size: int | None = typer.Option(None, "--micro-batch-size", help="Samples scored and back-propagated "
                                                "at once (default: a whole group): less memory, the same gradient "
                                                "up to rounding; a run may resume under another value."),
    beta: float | None = typer.Option(None, "--beta", help="KL weight, k3 estimator (default 0.001, R3's; TRL's "
                                      "default is 0)."),
    scale_rewards: str | None = typer.Option(None, "--scale-rewards", help="none (R3: reward − group mean, the "
                                             "default; TRL divides by the std: group) | group | batch (the std of "
                                             "every reward of the step)."),
    loss_type: str | None = typer.Option(None, "--loss-type", help="How a group's reflection tokens make one loss, "
                                         "TRL's names: bnpo (R3's: sum / trained tokens, the default) | grpo (mean "
                                         "per completion) | dr_grpo (sum / (G × max completion length))."),
    eval_n: int | None = typer.Option(None, "--eval-n", help="Held-out prompts for the loop before and after (default "
                                      "300; 0 = none)."),
    split: str | None = typer.Option(None, "--split", help="Held-out split of those prompts: test (default), or val "
                                     "to choose settings."),
    seed: int | None = typer.Option(None, "--seed", help="Seed: LoRA init, prompts, every sample (default 0)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file of GRPOConfig keys (flags win)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last "
                                "checkpoint (a fresh start when there is none, so a preemptible job can always pass it)."),
    bf16: bool = BF16_OPTION,
    report_to: str = typer.Option("none", "--report-to", help="Also log to: none | tensorboard | wandb (as TRL)."),
) -> None:
    """Train reflection and refinement with GRPO and R3's stage-wise rewards (LoRA on the LLM, the generation head in
    full; KL to the reference); the verifier scores every image unless --reward names a judge; training prompts are
    train-split prompts only."""
    from unigap.evaluate.judges import get_judge
    from unigap.metrics_log import parse_report_to
    from unigap.refine.grpo import train_grpo
    from unigap.refine.grpo_config import GRPOConfig
    from unigap.refine.grpo_config import VERIFIER_REWARDS

    settings = GRPOConfig.load(config, steps=steps, stages=stages, reward=reward, guard=False if no_guard else None,
                               lr=lr, num_generations=num_generations, beta=beta, scale_rewards=scale_rewards,
                               loss_type=loss_type, micro_batch_size=micro_batch_size,
                               eval_n=eval_n, eval_split=split, seed=seed, bf16=bf16 or None)
    warn_other_partition(model, settings.data_seed, CONFIG_SEED)
    backends = parse_report_to(report_to)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if no_guard and settings.reward in VERIFIER_REWARDS:
        raise UserError("--no-guard applies to a judge's reward (--reward self-pyes, base-pyes, clip:DIR, vlm:DIR); "
                        "the verifier's needs no guard")
    judge: dict = {"name": "verifier"}  # the loop's accuracy before and after, and the audit of a judge reward
    if settings.reward not in VERIFIER_REWARDS:  # a bad judge directory fails here, before anything is written
        judge["reward"] = get_judge(settings.reward).describe()
    with inputs_claimed(out, "refine train", model, contents=judge_claimed(judge.get("reward", {}), "reward")):
        report = guarded_run("refine-train", settings.to_dict(), settings.seed, judge, out, model,
                             weights_dtype(None, settings.bf16),
                             lambda um: train_grpo(um, settings, out, resume, backends))
    if report is None:
        return
    if report.get("change"):
        before, after = report["before"]["rounds"][-1]["accuracy"], report["after"]["rounds"][-1]["accuracy"]
        change = report["change"]
        p = "n/a" if change["p"] is None else f"{change['p']:.2g}"  # (no test below two prompts)
        typer.echo(f"accuracy after {settings.eval_rounds} rounds: {before:.3f} → {after:.3f} "
                   f"(paired Δ {change['delta']:+.3f}, p {p})")
    typer.echo(f"wrote {out / 'grpo.json'}")
