"""`unigap selfimprove`: the model judges its own images and learns from its verdicts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from unigap.cli.common import (BF16_OPTION, CONFIG_SEED, GRADIENT_CHECKPOINTING_OPTION, print_table,
                               warn_other_partition, weights_dtype)
from unigap.errors import UserError

app = typer.Typer()


def _fmt(metric: dict | None, key: str = "value", scale: float = 1.0) -> str:
    if not metric or metric.get(key) is None:
        return "—"
    return f"{scale * metric[key]:.3f}"


def _table(result: dict) -> Table:
    from unigap.selfimprove.run import HEADLINE, VALUE_KEY

    table = Table(title=f"selfimprove ({result['config']['method']}, labels {result['config']['labels']})")
    for column in ("metric", "before", "after", "paired Δ [95% CI]", "p"):
        table.add_column(column, justify="right", overflow="fold")
    for name, section in HEADLINE.items():
        key = VALUE_KEY[section]
        paired = result.get("paired", {}).get(name)
        if not paired or paired["delta"] is None:
            delta = "—"
        elif paired["ci95"] is None:  # (every item moved alike: the sign test, no interval; one item: no test)
            delta = f"{paired['delta']:+.3f}" + (" (sign test)" if paired.get("test") == "sign" else "")
        else:
            delta = f"{paired['delta']:+.3f} [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]"
        table.add_row(name.replace("_", " "), _fmt((result["before"] or {}).get(name), key),
                      _fmt((result["after"] or {}).get(name), key), delta, _fmt(paired, "p"))
    win = result.get("win_rate") or {}
    # 50 is no change; where no answer changed there is no rate at all
    before, after = ("—", "—") if win.get("value") is None else ("50", f"{win['value']:.1f}")
    table.add_row("understanding win rate (0–100)", before, after, f"n = {win.get('n', 0)}", "")
    return table


@app.command("selfimprove")
def selfimprove_command(
    model: str = typer.Option("tiny", "--model", help='A checkpoint directory, or "tiny" (the shipped model).'),
    prompts: str | None = typer.Option(None, "--prompts", help="train (training prompts, the default) or a prompt "
                                       "file (free text too, with --judge clip:DIR or vlm:DIR, or --judge none and "
                                       "--labels self or poor)."),
    n_prompts: int = typer.Option(None, "--n-prompts", help="Training prompts (default 300)."),
    samples: int = typer.Option(None, "--samples", help="Images sampled per prompt (default 10)."),
    method: str = typer.Option(None, "--method", help="sft | dpo | curriculum-sft (default) | curriculum-dpo."),
    labels: str = typer.Option(None, "--labels", help="self (default) | verifier (the independent judge, --judge, "
                               "labels: the upper bound) | poor."),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs (default 4)."),
    curriculum_at: int = typer.Option(None, "--curriculum-at", help="Replay epoch (default: half-way)."),
    trainable: str = typer.Option(None, "--trainable", help="llm (default) | llm+aligners | llm+aligners+vision "
                                  "(the paper's ablation; on Janus the image-token losses reach only the generation "
                                  "aligner of these)."),
    audit: str = typer.Option(None, "--audit", "--judge", help="The independent judge that audits labels: verifier "
                              "(default) | clip:DIR | vlm:DIR (a local CLIP/SigLIP or image-text-to-text model, as "
                              "`unigap eval --judge`) | none. `--judge` is the same option, named as elsewhere."),
    no_guard: bool = typer.Option(False, "--no-guard", help="Audit and log, but never stop the run."),
    eval_n: int = typer.Option(None, "--eval-n", help="Held-out prompts for before/after (default 300; the per-epoch "
                               "validation probe's size is epoch_eval_n, set in --config)."),
    config_file: Path | None = typer.Option(None, "--config", help="A TOML file of settings (flags win)."),
    seed: int = typer.Option(None, "--seed", help="Draws the prompts and every sample (default 0)."),
    out: Path = typer.Option(Path("runs/selfimprove"), "--out", help="Output directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    report_to: str = typer.Option("none", "--report-to", help="Also log epochs to: none | tensorboard | wandb."),
    bf16: bool = BF16_OPTION,
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING_OPTION,
) -> None:
    """Sample, self-judge, train on the verdicts; write OUT/selfimprove.json (exit 3 when the guard stops it)."""
    from unigap.metrics_log import parse_report_to
    from unigap.selfimprove import SelfImproveConfig, run

    backends = parse_report_to(report_to)

    config = SelfImproveConfig.load(
        config_file, prompts=prompts, n_prompts=n_prompts, samples=samples, method=method, labels=labels,
        epochs=epochs, curriculum_at=curriculum_at, trainable=trainable, audit=audit,
        guard=False if no_guard else None, eval_n=eval_n, seed=seed, bf16=bf16 or None,
        gradient_checkpointing=gradient_checkpointing or None,
    )
    warn_other_partition(model, config.data_seed, CONFIG_SEED)
    dtype = weights_dtype(None, config.bf16)
    if no_guard and config.audit == "none":
        raise UserError("--no-guard keeps the audit but not its stop; with --audit none there is no audit to keep")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if (out / "settings.json").exists() and not resume:
        raise UserError(f"{out} already holds a selfimprove run: pass --resume to continue it, or choose another --out")
    from unigap import distributed

    distributed.wait_for_everyone()  # under `accelerate launch`: every process has checked OUT before one writes
    from unigap.cli.common import guarded_run, inputs_claimed, judge_claimed
    from unigap.selfimprove.run import training_prompts

    training_prompts(config)  # a bad file, or a held-out prompt in it, fails before the model loads
    from unigap.evaluate.judges import get_judge

    # a bad judge directory fails before anything is written; the audit reuses this loaded (calibrated) judge
    judge = {"name": "none"} if config.audit == "none" else get_judge(config.audit, independent=True).describe()
    with inputs_claimed(out, "selfimprove", model, contents=judge_claimed(judge, "audit"), prompts=config.prompts):
        result = guarded_run("selfimprove", config.to_dict(), config.seed, judge, out, model, dtype,
                             lambda um: run(um, config, out, report_to=backends))
    if result is None:
        return
    print_table(_table(result))
    typer.echo(f"wrote {out / 'selfimprove.json'}")
