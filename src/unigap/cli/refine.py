"""`unigap refine`: generate → reflect → refine on held-out prompts, per-round metrics, oracle and best-of-N."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from unigap.cli.common import ADAPTER_OPTION, load
from unigap.errors import UserError

app = typer.Typer()


def _table(report: dict) -> Table:
    table = Table(title=f"refine ({report['config']['refiner_used']}, n = {report['config']['n_prompts']})")
    for column in ("round", "accuracy", "improved", "worse", "unchanged", "stopped"):
        table.add_column(column, justify="right", overflow="fold")
    for row in report["rounds"]:
        rates = [f"{row[k]['rate']:.3f}" if k in row and row[k]["rate"] is not None else "—"
                 for k in ("improved", "worse", "unchanged")]
        table.add_row(str(row["round"]), f"{row['accuracy']:.3f}", *rates, str(row.get("stopped", "—")))
    table.add_row("best of N", f"{report['best_of_n']['accuracy']:.3f}", "", "", "", "")
    table.add_row("oracle", f"{report['oracle']['accuracy']:.3f}", "", "", "", "")
    return table


@app.command("refine")
def refine_command(
    model: str = typer.Option("tiny", "--model", help='A checkpoint directory, or "tiny" (the shipped model).'),
    adapter: Path | None = ADAPTER_OPTION,
    prompts: str = typer.Option("test", "--prompts", help="A held-out split (test, val) or a file of prompts."),
    n: int = typer.Option(300, "--n", help="Prompts (at most n of a prompt file)."),
    rounds: int = typer.Option(3, "--rounds", help="Reflect/refine rounds after the first image (0 = one-shot)."),
    reflector: str = typer.Option("self", "--reflector", help="self (the model) | oracle (the exact diff)."),
    refiner: str = typer.Option("auto", "--refiner", help="auto | edit | regenerate (auto: edit when the model can)."),
    seed: int = typer.Option(0, "--seed", help="Draws the prompts and every sample."),
    out: Path = typer.Option(Path("runs/refine"), "--out", help="Output directory (refine.json, strips/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
) -> None:
    """Run the refine loop, the oracle reflector and best-of-N at the same budget; write OUT/refine.json."""
    from unigap.manifest import manifest, write_manifest
    from unigap.refine import RefineConfig, run_refine

    config = RefineConfig(n=n, rounds=rounds, reflector=reflector, refiner=refiner, prompts=prompts, seed=seed)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if (out / "settings.json").exists() and not resume:
        raise UserError(f"{out} already holds a refine run: pass --resume to continue it, or choose another --out")
    from unigap.evaluate.data import prompt_specs

    prompt_specs(config.prompts, config.n, config.seed, config.data_seed)  # a bad prompt file fails before the load
    with manifest("refine", {"model": model, "adapter": None if adapter is None else str(adapter),
                             **config.__dict__}, seeds=[seed], judge={"name": "verifier"}) as record:
        um = load(model, adapter)
        record["device"] = str(um.device)
        report = run_refine(um, config, out)
    write_manifest(out, record)
    Console().print(_table(report))
    typer.echo(f"wrote {out / 'refine.json'}")
