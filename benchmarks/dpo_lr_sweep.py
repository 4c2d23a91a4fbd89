"""DPO learning rate for a model: und-only and gen-only runs at several learning rates, evaluated on held-out items.

Why: the multi-task DPO paper's lr 1e-6 is tuned for a 7B model's LoRA; the tiny model needs its own (the study's
default, `unigap.study.FULL.lr`, now comes from `unigap tune`; this sweep came first). Each run is exactly a study
job (the study's `train_strategy` builder: its preference pairs, its step budget, seed 0, then `unigap.evaluate` on
`--n` items), so the numbers carry over. Finished runs in `--work` are reused; a sweep of other steps, n or model
there is refused.

    python benchmarks/dpo_lr_sweep.py [--model tiny] [--lrs 3e-5 1e-4 3e-4] [--steps 150] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from _common import check_model, machine, positive_float, positive_int, run_main, write_result

from unigap.atomic import claim_settings
from unigap.report import BASE
from unigap.study import FULL, StudyRunner
from unigap.study.builders import train_strategy

TASKS = ("und", "gen")


def _row(runner: StudyRunner, method: str, lr: float | None) -> dict:
    report = json.loads((runner.run_dir(method, 0) / "eval.json").read_text())
    row = {
        "method": method,
        "lr": lr,
        "understanding": report["understanding"]["accuracy"],
        "generation": report["generation"]["accuracy"],
        "nonunification": report["nonunification"]["score"],
    }
    log = runner.run_dir(method, 0) / "log.jsonl"
    if log.is_file():
        steps = [json.loads(line) for line in log.read_text().splitlines()][-20:]
        for task in TASKS:
            losses = [s[f"{task}_dpo_loss"] for s in steps if f"{task}_dpo_loss" in s]
            row[f"{task}_dpo_loss_last20"] = sum(losses) / len(losses) if losses else None
    return row


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--lrs", type=positive_float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    parser.add_argument("--steps", type=positive_int, default=FULL.steps)
    parser.add_argument("--n", type=positive_int, default=FULL.n)
    parser.add_argument("--work", type=Path, default=Path("runs/dpo-lr-sweep"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dpo_lr_sweep.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = options()
    args = parser.parse_args(argv)
    check_model(parser, args.model)  # (before --work records it as the sweep's)

    config = FULL.scaled(model=args.model, steps=args.steps, n=args.n)
    # (its runs are named by lr alone: another sweep's would be reused as this one's)
    claim_settings(args.work / "sweep.json", {"model": args.model, "steps": args.steps, "n": args.n}, "lr sweep")
    rows = []
    with Progress(console=Console(stderr=True)) as progress:
        base = StudyRunner(config, args.work / BASE, progress)
        for task in TASKS:
            if not base.prefs_file(task).is_file():
                base.build_pairs(task)
        if not (base.run_dir(BASE, 0) / "eval.json").is_file():
            base.evaluate_base(0)
        rows.append(_row(base, BASE, None))
        for lr in args.lrs:
            runner = StudyRunner(config.scaled(lr=lr), args.work / f"lr{lr:g}", progress)
            for task in TASKS:
                runner.prefs_file(task).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base.prefs_file(task), runner.prefs_file(task))
            # (the base's evaluation and images too: an arm's win rate is on them, where its runner looks)
            shutil.copytree(base.run_dir(BASE, 0), runner.run_dir(BASE, 0), dirs_exist_ok=True)
            for strategy in ("und-only", "gen-only"):
                if not (runner.run_dir(strategy, 0) / "eval.json").is_file():
                    train_strategy(runner, strategy, 0)
                rows.append(_row(runner, strategy, lr))

    table = Table(title=f"DPO lr sweep: {args.model}, {args.steps} steps, seed 0, n = {args.n}")
    columns = ("method", "lr", "understanding", "generation", "nonunification", "und_dpo_loss_last20",
               "gen_dpo_loss_last20")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*("—" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                        for c in columns))
    Console().print(table)
    result = {
        "model": args.model,
        "steps": args.steps,
        "n": args.n,
        "ln2": math.log(2),
        **machine(),
        "rows": rows,
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    run_main(options(), main)
