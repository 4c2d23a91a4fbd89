"""`unigap diagnose`: task conflict and magnitude imbalance of the per-task DPO gradients (SPEC §1)."""

from __future__ import annotations

from pathlib import Path
import typer
from rich.table import Table

from unigap.atomic import entries
from unigap.cli.common import (ADAPTER_OPTION, MODEL_OPTION, apply_adapter, check_adapter, load, print_table,
                               require_non_negative, require_positive)
from unigap.errors import UserError
from unigap.progress import progress
from unigap.report.reference import PAPER_GRADIENTS

app = typer.Typer()

MIN_PAIRS = 4  # two intra-task couples per task: the fewest a Welch test can use


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def summary_table(report: dict) -> Table:
    """The headline numbers, next to the paper's Janus-Pro-7B values (SPEC §1)."""
    inter, intra, weights = report["inter"], report["intra"], report["weighting"]
    table = Table(title=f"Gradient diagnostics, {report['n']} single-pair batches")
    for column in ("quantity", "mean", "95% CI", "Janus-Pro-7B (paper)"):
        table.add_column(column, justify="right", overflow="fold")

    def ci(key: str, section: dict) -> str:
        bounds = section.get(key)
        return "—" if not bounds else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"

    und_welch, gen_welch = intra["welch_und_vs_inter"], intra["welch_gen_vs_inter"]
    paper = PAPER_GRADIENTS["Janus-Pro-7B"]
    table.add_row("cos(g_U, g_G)", _fmt(inter.get("cos_mean")), ci("cos_ci95", inter), f"{paper['cos']:g}")
    table.add_row("ρ = ‖g_U‖/‖g_G‖", _fmt(inter.get("ratio_mean")), ci("ratio_ci95", inter), f"{paper['ratio']:g}")
    table.add_row("CV of ρ", _fmt(inter.get("ratio_cv"), ".2f"), "", f"≈{paper['ratio_cv']:g}")
    table.add_row("intra cos und", _fmt(intra["und_cos_mean"]), ci("und_cos_ci95", intra), f"{paper['und_cos']:+g}")
    table.add_row("intra cos gen", _fmt(intra["gen_cos_mean"]), ci("gen_cos_ci95", intra), f"{paper['gen_cos']:+g}")
    table.add_row(
        "Welch und vs inter: t, p", f"{_fmt(und_welch['t'], '.2f')}, {_fmt(und_welch['p'], '.2g')}", "", "9.37, <1e-17"
    )
    table.add_row(
        "Welch gen vs inter: t, p", f"{_fmt(gen_welch['t'], '.2f')}, {_fmt(gen_welch['p'], '.2g')}", "", "2.72, 0.007"
    )
    table.add_row(
        "grad-weighted w_U",
        _fmt(weights["grad_weighted_w_und_mean"], ".3f"),
        ci("grad_weighted_w_und_ci95", weights),
        "≈0.93",
    )
    return table


def _earlier_run(out: Path) -> bool:
    """Whether `out` holds an earlier diagnose run, which a rerun replaces: by its manifest (written before the run's
    first file, and again when it ends), or, from before that, by its report's sections."""
    from unigap.diagnose.run import REPORT
    from unigap.manifest import MANIFEST_FILE, read_record

    made = (read_record(out / MANIFEST_FILE) or {}).get("command") == "diagnose"
    return made or {"inter", "intra", "weighting"} <= set(read_record(out / REPORT) or {})


@app.command("diagnose")
def diagnose_command(
    model: str = MODEL_OPTION,
    adapter: Path | None = ADAPTER_OPTION,
    und: Path = typer.Option(..., "--und", help="Understanding preference file (.jsonl or .parquet)."),
    gen: Path = typer.Option(..., "--gen", help="Generation preference file (.jsonl or .parquet)."),
    pairs: int = typer.Option(200, "--pairs", help="Single-pair batches (one und + one gen pair each)."),
    out: Path = typer.Option(..., "--out", help="Output directory: diagnostics.json and PNG figures."),
    seed: int = typer.Option(0, "--seed", help="Draws the batches, the sweep probes and a fresh LoRA's init."),
    full_params: bool = typer.Option(
        False, "--full-params", help="Gradients on the LLM's own weights instead of its LoRA."
    ),
    sweep_probes: int = typer.Option(
        16, "--sweep-probes", help="ShapeWorld probes per answer length in the length sweep (0 = skip)."
    ),
    beta: float = typer.Option(0.1, "--beta", help="DPO β of the per-task losses."),
) -> None:
    """Per-task DPO gradients over N batches: cosines, norm ratio, calibration, per layer, length sweep.

    Without --adapter a fresh LoRA (r 64, α 128, B = 0) is attached, i.e. the base model at step 0.
    """
    if pairs < MIN_PAIRS:
        raise UserError(f"--pairs must be at least {MIN_PAIRS} (two intra-task couples per task), got {pairs}")
    require_non_negative("--seed", seed)
    require_non_negative("--sweep-probes", sweep_probes)
    require_positive("--beta", beta)
    if full_params and adapter is not None:
        raise UserError("--full-params measures the base LLM's own weights; it cannot be combined with --adapter")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    earlier = _earlier_run(out)
    if entries(out) and not earlier:  # (its figures' names would replace, or remove, a user's files)
        raise UserError(f"--out {out} holds files of something else than an earlier diagnose run; choose an empty or "
                        "new folder")

    from unigap.diagnose import run_diagnostics, shared_parameters, write_report
    from unigap.manifest import manifest, write_manifest
    from unigap.prefs.rows import check_pair_file, pairs_of
    from unigap.train.dpo import DPOOptions

    files = {"und": und, "gen": gen}
    rows = {task: check_pair_file(path, task) for task, path in files.items()}  # a malformed row fails before the load
    for task, found in rows.items():  # as do too few
        if len(found) < 2:
            raise UserError(f"{files[task]}: intra-task cosines need at least 2 pairs, found {len(found)}")
    if adapter is not None:
        check_adapter(model, adapter)  # before the slow load
    um = load(model, None)
    # TRL rows need the model, and are converted as the batches draw them (a large file is mostly never drawn); the
    # rows' builder is compared with the base model, whose references DPO uses: with the adapter attached every file
    # read as another model's, its references all recomputed
    data = {task: pairs_of(rows[task], path, task, um, on_use=True) for task, path in files.items()}
    if adapter is not None:
        apply_adapter(um, adapter)
    try:
        params = shared_parameters(um, full_params, seed)
    except ValueError as exc:  # e.g. an adapter with no LoRA on the LLM's decoder layers
        raise UserError(f"cannot diagnose this model: {exc}") from None
    for task in ("und", "gen"):  # (once the inputs are known good)
        if len(data[task]) < pairs:  # each pair is used once before any twice: the batches repeat some
            typer.echo(f"unigap: warning: {pairs} batches from {len(data[task])} {task} pairs reuse "
                       f"{pairs - len(data[task])} of them, so the {task} samples are not independent and the tests "
                       f"overstate their evidence; pass "
                       + (f"--pairs {len(data[task])} or fewer, or " if len(data[task]) >= MIN_PAIRS else "")
                       + f"a {task} file with more pairs", err=True)
    total, done = pairs + 2 * sweep_probes, [0]

    def advance() -> None:
        done[0] += 1
        update(done[0])

    settings = {"model": model, "adapter": None if adapter is None else str(adapter), "und": str(und), "gen": str(gen),
                "pairs": pairs, "seed": seed, "sweep_probes": sweep_probes, "beta": beta, "full_params": full_params}
    with manifest("diagnose", settings, seeds=[seed]) as record, progress("gradients", total) as update:
        record["device"] = str(um.device)
        if not earlier:  # (unfinished: no end time) the folder is this command's before any figure; an
            write_manifest(out, record)  # earlier run's manifest stays with its report until this one replaces both
        report = run_diagnostics(
            um,
            params,
            data["und"],
            data["gen"],
            pairs,
            seed,
            sweep_probes=sweep_probes,
            options=DPOOptions(beta=beta),
            progress=advance,
        )
    report |= {"model": model, "adapter": None if adapter is None else str(adapter), "und": str(und), "gen": str(gen)}
    path = write_report(report, out)
    write_manifest(out, record)
    print_table(summary_table(report))
    typer.echo(f"wrote {path} and its PNG figures")
