"""The result tables of the README and of docs/experiments.md, generated from the results JSON so they cannot go stale.

Each table sits in one of `DOCUMENTS` between `<!-- table:NAME -->` and `<!-- /table -->`; this script rewrites what
is between the markers from its source file, and `--check` exits 1 (printing the table names) when a document
differs from what the files say. `make readme-tables` runs it.

    python docs/readme_tables.py [--check]

Sources: the shipped model's `pretrain.json` and its evaluation (`docs/results/tiny_eval.json`, written by
`unigap eval --model tiny --n 500 --seed 7 --out docs/results/tiny_eval.json`), and the benchmarks' JSON in
`benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from unigap.atomic import write_text_atomically

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = (README, ROOT / "docs" / "experiments.md")
TINY = ROOT / "src" / "unigap" / "assets" / "tiny"
EVAL = ROOT / "docs" / "results" / "tiny_eval.json"
LATER_CODING = ROOT / "docs" / "results" / "recipe_probe_polish_gentle.json"  # `pretrain.json` of that probe run
BENCH = ROOT / "benchmarks" / "results"
DPO_TUNE = ROOT / "docs" / "results" / "dpo_tune.json"
DPO_TUNE_N1000 = [ROOT / "docs" / "results" / f"dpo_tune_n1000{part}.json" for part in ("", "_cfg", "_bs8")]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _auc_within(judge: dict[str, Any]) -> str:
    """The self-judge's within-category AUC with its interval, from the categories' AUCs (a report from before the
    interval was recorded has their standard errors)."""
    from unigap.evaluate.critique import within_auc

    within = within_auc(judge["auc_by_category"])
    low, high = within["ci95"]
    return f"{within['auc']:.3f} [{low:.3f}, {high:.3f}] ({within['pairs']} pairs)"


def _value(metric: dict[str, Any], key: str) -> str:
    """A share with its Wilson interval (within [0, 1], unlike value ± 1.96 stderr near 0 or 1) and n."""
    from unigap.evaluate.stats import with_ci

    if metric is None or metric.get(key) is None:
        return "—"
    low, high = with_ci(dict(metric), key)["ci95"]
    return f"{metric[key]:.3f} [{low:.3f}, {high:.3f}] (n = {metric['n']})"


def model_card() -> str:
    """Size, data, training time and the held-out metrics of the shipped model."""
    recorded = _load(TINY / "pretrain.json")
    config = recorded["config"]
    minutes = {name: recorded[f"{name}_seconds"] / 60 for name in ("corpus", "vq", "vision", "joint")}
    steps = f"joint {minutes['joint']:.1f} ({config['steps']} steps)"
    if config.get("polish_steps"):
        minutes["polish"] = recorded["polish_seconds"] / 60
        steps += f", polish {minutes['polish']:.1f} ({config['polish_steps']} steps)"
    if "tokenize_seconds" in recorded:
        minutes["tokenize"] = recorded["tokenize_seconds"] / 60
        coding = f", VQ-coding the corpora and the VQ check {minutes['tokenize']:.1f}"
    else:  # a run from before it was timed: the same corpora coded by the same VQ in a later probe run
        later = _load(LATER_CODING)["tokenize_seconds"] / 60
        coding = f" + VQ-coding the corpora and the VQ check, {later:.1f} (timed separately)"
        minutes["tokenize"] = later
    report = _load(EVAL)
    judge = report["self_judge"]
    rows = [
        ("model", f"Janus classes, {config['num_layers']}-layer {config['hidden_size']}-wide Llama, "
                  f"{config['vision_layers']}-layer {config['vision_hidden_size']}-wide vision tower, "
                  f"64×64 images, 64 image tokens, codebook {config['codebook_size']}"),
        ("training data", f"{config['scenes']} prompted + {config['understanding_scenes']} random scenes, "
                          f"{config['critique_scenes']} critique pictures, {config['edit_pairs']} edit pairs "
                          "(train split only; no generated image)"),
        ("training time (2 CPU threads)", f"{sum(minutes.values()):.0f} min: VQ {minutes['vq']:.1f}, "
                                               f"vision {minutes['vision']:.1f}, corpora {minutes['corpus']:.1f}, "
                                               f"{steps}{coding}"),
        ("understanding accuracy", _value(report["understanding"], "accuracy")),
        ("generation accuracy (verifier)", _value(report["generation"], "accuracy")),
        ("non-unification", _value(report["nonunification"], "score")),
        ("self-judge AUC within categories", _auc_within(judge)),
        ("self-judge precision (P(yes) ≥ 0.5)", _value(judge["precision"], "precision")),
        ("reflection: stops on correct images", _value(report["reflect"]["stop_when_correct"], "rate")),
        ("reflection: valid edit on fixable failed images", _value(report["reflect"]["valid_edit_rate"], "rate")),
        ("edit accuracy (exact instructions)", _value(report["edit"], "accuracy")),
        ("VQ reconstructions the verifier accepts", _value(report["vq_reconstruction"], "accuracy")),
    ]
    table = ["| | shipped `tiny` |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    command = f"`unigap eval --model tiny --n {report['config']['n']} --seed {report['config']['seed']} --out card.json`"
    return "\n".join(table) + (f"\n\nMetrics: {command} on held-out test prompts (in brackets: a 95% interval, "
                                 "Wilson's, or for the AUC the normal one of its Hanley-McNeil error).")


def damage_agreement() -> str:
    result = _load(BENCH / "damage_agreement.json")
    kinds: dict[str, list[dict[str, Any]]] = {}
    for row in result["by_damage"]:
        kinds.setdefault(row["damage"].split(":")[0], []).append(row)
    lines = ["| damage | pictures | verdicts agree |", "|---|---|---|"]
    for kind, rows in kinds.items():
        prompts = sum(r["prompts"] for r in rows)
        agree = sum(r["verdicts_agree"] * r["prompts"] for r in rows) / prompts
        lines.append(f"| {kind} | {sum(r['pictures'] for r in rows)} | {agree:.3f} |")
    overall = result["overall"]
    lines.append(f"| all | {overall['pictures']} | {overall['verdicts_agree']:.3f} |")
    return "\n".join(lines)


def sampling() -> str:
    result = _load(BENCH / "sampling.json")
    lines = ["| batch | unigap tokens/s | transformers tokens/s | ratio | ms per step (floor) | greedy tokens equal |",
             "|---|---|---|---|---|---|"]
    for row in result["results"]:
        lines.append(f"| {row['batch_size']} | {row['unigap_tokens_per_s']:.0f} | {row['transformers_tokens_per_s']:.0f} "
                     f"| {row['speed_ratio']:.2f}× | {row['unigap_ms_per_step']:.1f} ({row['floor_ms_per_step']:.1f}) "
                     f"| {'yes' if row['greedy_tokens_equal'] else 'no'} |")
    return "\n".join(lines) + f"\n\n`{result['model']}` model, {result['device']} {result['dtype']}, {result['torch_threads']} threads."


def benchmarks() -> str:
    """The README's digest: sampling against transformers on the CPU and the GPU, and the DPO step's best MFU."""
    cpu, gpu = _load(BENCH / "sampling.json"), _load(BENCH / "sampling_janus_pro_1b.json")
    dpo = _load(BENCH / "dpo_step_janus_pro_1b.json")

    def ratios(result: dict[str, Any]) -> str:
        rows = result["results"]
        return (" / ".join(f"{row['speed_ratio']:.2f}×" for row in rows) + " at batch "
                + " / ".join(str(row["batch_size"]) for row in rows))

    best = ", ".join(f"{row['mfu']:.1%} at {row['batch_size']} pairs per task (π_ref {reference})"
                     for reference, row in dpo["best_mfu"].items())
    return "\n".join([
        "| benchmark | model, device | result |", "|---|---|---|",
        f"| sampling vs transformers' `generate` | `{cpu['model']}`, {cpu['device']} {cpu['dtype']} | {ratios(cpu)} |",
        f"| sampling vs transformers' `generate` | Janus-Pro-1B shape, {gpu['device_name']} {gpu['dtype']} | {ratios(gpu)} |",
        f"| DPO step MFU | Janus-Pro-1B shape, {dpo['device_name']} {dpo['dtype']} | {best} |",
    ])


def sampling_gpu() -> str:
    """`benchmarks/janus_pro_gpu.sh`: sampling on a random Janus-Pro-1B-shaped model on a GPU, graphs and eager."""
    result = _load(BENCH / "sampling_janus_pro_1b.json")
    lines = ["| batch | unigap ms/step (CUDA graphs) | unigap eager | transformers | ratio | floor: compute, memory "
             "| greedy: first differing step |", "|---|---|---|---|---|---|---|"]
    for row in result["results"]:
        first = row["greedy_first_difference"]
        first = "—" if first is None else f"{first:.1f} of {row['image_tokens']}"
        lines.append(f"| {row['batch_size']} | {row['unigap_ms_per_step']:.1f} | {row['unigap_eager_ms_per_step']:.1f} "
                     f"| {row['transformers_ms_per_step']:.1f} | {row['speed_ratio']:.2f}× | "
                     f"{row['floor_ms_per_step']:.2f}, {row['memory_floor_ms_per_step']:.2f} | "
                     f"{first} |")
    tokens = result["results"][0]["image_tokens"]
    return "\n".join(lines) + f"\n\n{result['device_name']}, {result['dtype']}, {tokens} image tokens, CFG {result['cfg_scale']}."


def dpo_mfu() -> str:
    """`benchmarks/janus_pro_gpu.sh`: the joint DPO step's MFU on a random Janus-Pro-1B-shaped model."""
    result = _load(BENCH / "dpo_step_janus_pro_1b.json")
    lines = ["| pairs per task | π_ref | s/step | TFLOP/step | MFU | peak memory of the batch size, GiB |",
             "|---|---|---|---|---|---|"]
    for row in result["results"]:
        if row.get("out_of_memory"):
            lines.append(f"| {row['batch_size']} | out of memory | | | | |")
            continue
        lines.append(f"| {row['batch_size']} | {row['reference']} | {row['seconds_per_step']:.2f} | "
                     f"{row['flops_per_step'] / 1e12:.1f} | {row['mfu']:.1%} | {row['peak_memory_gib']:.0f} |")
    return "\n".join(lines) + (f"\n\n{result['device_name']}, {result['dtype']}, LoRA rank {result['lora_rank']}, "
                               f"peak {result['peak_tflops']:.0f} TFLOP/s ({result['peak_source']}); an 8192² matmul "
                               f"ran at {result['measured_matmul_tflops']:.0f}.")


def sampling_compile() -> str:
    """`benchmarks/sampling_compile.py`: the decoding step eager against `torch.compile`d, with the compile cost."""
    result = _load(BENCH / "sampling_compile.json")
    lines = ["| batch | eager ms/step | compiled ms/step | speed-up | compile (first call), s "
             "| greedy tokens equal | pays back after images |", "|---|---|---|---|---|---|---|"]
    for row in result["results"]:
        pays = "never" if row["break_even_images"] is None else f"{row['break_even_images']:.0f}"
        lines.append(f"| {row['batch_size']} | {row['eager_ms_per_step']:.2f} | {row['compiled_ms_per_step']:.2f} | "
                     f"{row['speedup']:.2f}× | {row['first_call_s']:.1f} | {'yes' if row['greedy_tokens_equal'] else 'no'} "
                     f"| {pays} |")
    return "\n".join(lines) + (f"\n\n`{result['model']}` model, {result['device']} {result['dtype']}, "
                               f"{result['torch_threads']} threads, torch {result['torch']}.")


def sampling_profile() -> str:
    """`benchmarks/sampling_profile.py`: each operator group's share of a profiled sampling step."""
    result = _load(BENCH / "sampling_profile.json")
    groups = ("matmul", "attention", "sampling", "other")
    lines = ["| batch | ms/step (profiled) | " + " | ".join(groups) + " | matmul GFLOP/s |", "|---|---|---|---|---|---|---|"]
    for row in result["results"]:
        shares = " | ".join(f"{row[f'{g}_share']:.0%}" for g in groups)
        lines.append(f"| {row['batch_size']} | {row['profiled_ms_per_step']:.1f} | {shares} | {row['matmul_gflops']:.0f} |")
    return "\n".join(lines) + (f"\n\n`{result['model']}` model, {result['device']} {result['dtype']}, "
                               f"{result['torch_threads']} threads; a 2048 × 2048 matmul ran at "
                               f"{result['matmul_gflops_2048']:.0f} GFLOP/s in the same run.")


def pretrain_speed() -> str:
    """`benchmarks/pretrain_speed.py`: seconds per step of each pretraining stage, and the full recipe projected."""
    result = _load(BENCH / "pretrain_speed.json")
    lines = ["| stage | ms per step | full recipe steps | projected min |", "|---|---|---|---|"]
    for row in result["stages"]:
        step = "" if row["seconds_per_step"] is None else f"{1000 * row['seconds_per_step']:.0f}"
        lines.append(f"| {row['stage']} | {step} | {row['full_steps'] or ''} | {row['projected_seconds'] / 60:.1f} |")
    lines.append(f"| total | | | {result['projected_minutes']:.0f} |")
    where = result.get("device_name", result["device"])
    return "\n".join(lines) + (f"\n\n{where}, {result['dtype']}, {result['torch_threads']} threads; a 2048 × 2048 "
                               f"matmul ran at {result['matmul_gflops']:.0f} GFLOP/s in the same run.")


STUDY_P4 = ROOT / "docs" / "results" / "study_p4.json"
STUDY_P2 = ROOT / "docs" / "results" / "study_p2.json"
# Janus-Pro-7B in the paper (arXiv 2507.16663): T2I-CompBench++ overall and non-unification, by method
PAPER_P2 = {"base": ("35.21", "26.22"), "self-sft": ("43.29", "16.98"), "self-curriculum-sft": ("44.18", "—"),
            "self-dpo": ("35.44", "—"), "self-verifier": ("44.78", "—")}


def self_improvement() -> str:
    """The P2 arms of `unigap study --methods p2` beside the paper's Janus-Pro-7B numbers: generation with the
    study's test (paired on the same items, Bonferroni over arms × 4 metrics) and Welch's (the paper's,
    uncorrected), non-unification, the understanding win rate, and whether poor labels co-degraded."""
    result = _load(STUDY_P2)
    lines = ["| arm | generation | Δ (p, Bonferroni) | Welch p | non-unification | Δ (p, Bonferroni) "
             "| understanding | win rate (n) | paper: gen / non-unif. |", "|---" * 9 + "|"]

    def cell(metric: dict[str, Any], delta: bool) -> str:
        if not delta:
            return f"{metric['pooled']:.3f}"
        mark = "**" if metric.get("significant") else ""
        return f"{mark}{metric['delta']:+.3f}{mark} ({metric['p_bonferroni']:.2g})"

    def welch(metric: dict[str, Any]) -> str:
        return _p(metric["welch"]["p"])

    wins = result.get("win_rates") or {}
    for method in result["methods"]:
        m = result["results"][method]
        gen, non, und = m["generation.accuracy"], m["nonunification.score"], m["understanding.accuracy"]
        base = method == result["base"]
        paper = " / ".join(PAPER_P2.get(method, ("—", "—")))
        win = wins.get(method)
        won = "—" if not win or win["value"] is None else f"{win['value']:.1f} ({win['n']})"
        lines.append(f"| {method} | {cell(gen, False)} | {'' if base else cell(gen, True)} "
                     f"| {'' if base else welch(gen)} | {cell(non, False)} | {'' if base else cell(non, True)} "
                     f"| {cell(und, False)} | {'' if base else won} | {paper} |")
    seeds, n = len(result["seeds"]), result["config"].get("n")
    notes = (f"\n\n{seeds} seeds × {n} held-out items; the paired test against the base on the same items, "
             f"Bonferroni over {result['bonferroni']['tests']} tests (bold: significant); Welch's p as the paper "
             "tests, uncorrected. Win rate: among the base's images whose self-judge verdict the arm "
             "changed, the share it now gets right, × 100 (50 = no change), pooled over seeds.")
    co = result.get("co_degradation")
    return "\n".join(lines) + notes + (f" {co['sentence']}" if co else "")


def unimrg() -> str:
    """`unimrg` against `und-sft` and the base from `unigap study --methods p4`: understanding overall and per question
    kind, and generation; the last row is the paired test of unimrg − und-sft (Δ and p)."""
    result = _load(STUDY_P4)
    [c] = [c for c in result["comparisons"] if c["arm"] == "unimrg"]
    names = [n for n in c["metrics"] if not n.startswith("weak_generation")]
    labels = [c["metrics"][n]["label"].replace(" questions", "").replace(" accuracy", "").replace(" score", "")
              for n in names]
    lines = ["| arm | " + " | ".join(labels) + " |", "|---" * (len(names) + 1) + "|"]

    def level(method: str, name: str) -> str:
        if name.count(".") == 2:
            value = result["understanding_by_kind"][method][name.split(".")[2]]["accuracy"]
        else:
            value = result["results"][method][name]["pooled"]
        return "—" if value is None else f"{value:.3f}"

    for method in ("base", "und-sft", "unimrg"):
        lines.append(f"| {method} | " + " | ".join(level(method, n) for n in names) + " |")
    cells = []
    for name in names:
        row = c["metrics"][name]
        mark = "**" if row["significant"] else ""
        p = "—" if row["p"] is None else f"{row['p']:.2g}"
        cells.append("—" if row["delta"] is None else f"{mark}{row['delta']:+.3f}{mark} ({p})")
    lines.append("| unimrg − und-sft (p) | " + " | ".join(cells) + " |")
    seeds, n = len(result["seeds"]), result["config"].get("n")
    return "\n".join(lines) + (f"\n\n{seeds} seeds × {n} held-out items per arm; paired test on the same items, bold: "
                               f"significant after Bonferroni over {c['tests']} tests (p < {c['alpha_corrected']:.2g}).")


STUDY_FULL = ROOT / "docs" / "results" / "study_full.json"
# the p3 arms rerun on their own after edits' guidance changed (`unigap study --methods p3`); each arm's numbers depend
# only on the base model and its seeds (the base rows of both files agree), so the merge is what the full command gives
STUDY_P3 = ROOT / "docs" / "results" / "study_p3.json"


def full_study_result() -> dict[str, Any]:
    """`study_full.json` with its p3 arms, their comparisons and their claims replaced by `study_p3.json`'s; the p3
    arms' significance recomputed over all of the full study's tests."""
    result, p3 = _load(STUDY_FULL), _load(STUDY_P3)
    shared = ("model_weights", "seeds", "n", "data_seed", "refine_rounds", "grpo_steps")
    if p3["results"][p3["base"]] != result["results"][result["base"]] or any(
            p3["config"][k] != result["config"][k] for k in shared):
        raise SystemExit(f"{STUDY_P3} and {STUDY_FULL} disagree on the base model or the settings: they cannot be merged")
    from unigap.report.stats import corrected

    alpha, tests = result["bonferroni"]["alpha"], result["bonferroni"]["tests"]
    arms = [arm["name"] for arm in p3["arms"] if arm.get("family") == "p3"]
    for arm in arms:
        metrics = {}
        for name, m in p3["results"][arm].items():
            p_bonferroni, significant = corrected(m["p"], tests, alpha)
            metrics[name] = {**m, "significant": significant, "p_bonferroni": p_bonferroni}
        result["results"][arm] = metrics
        result["jobs_seconds"] += p3["wall_seconds"][arm] - result["wall_seconds"][arm]
        result["wall_seconds"][arm] = p3["wall_seconds"][arm]
    result["comparisons"] = [c for c in result.get("comparisons", []) if c["arm"] not in arms] + [
        c for c in p3.get("comparisons", []) if c["arm"] in arms]  # (refine − best-of-n, refine-grpo − refine)
    p3_claims = {c["arm"]: c for c in p3["claims"] if c["family"] == "p3"}
    result["claims"] = [p3_claims.get(c["arm"], c) if c["family"] == "p3" else c for c in result["claims"]]
    return _with_seed_level(result)


def _with_seed_level(result: dict[str, Any]) -> dict[str, Any]:
    """The seed-level test on every row and claim of results written before the report computed it, from the
    per-seed values the results keep (the function the report uses)."""
    from unigap.report.claims import verdicts
    from unigap.report.stats import seed_level

    def means(method: str, metric: str) -> dict[int, float | None]:
        return {s["seed"]: s["value"] for s in result["results"][method][metric]["per_seed"]}

    for method in result["methods"][1:]:
        for metric, row in result["results"][method].items():
            row.setdefault("seed_level", seed_level(means(method, metric), means(result["base"], metric)))
    for comparison in result.get("comparisons", []):
        for metric, row in comparison["metrics"].items():
            if metric in result["results"][comparison["arm"]]:
                row.setdefault("seed_level", seed_level(means(comparison["arm"], metric),
                                                        means(comparison["baseline"], metric)))
    recomputed = verdicts(result)
    decided = ("verdict", "delta", "p")
    if [[c[k] for k in decided] for c in recomputed] != [[c[k] for k in decided] for c in result["claims"]]:
        raise SystemExit("the claims recorded in the results differ from the claims recomputed from them")
    result["claims"] = recomputed
    return result


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def _minutes(wall_seconds: dict[str, float], method: str) -> str:
    """An arm's wall time in minutes; — where none was recorded (as the study's report shows it), not 0.0."""
    seconds = wall_seconds.get(method)
    return "—" if seconds is None else f"{seconds / 60:.1f}"


METRIC_WORDS = {"understanding.accuracy": "understanding", "generation.accuracy": "generation",
                "nonunification.score": "non-unification"}
# the README's shorter table: each family's main arms (docs/experiments.md has every arm)
HEADLINE_ARMS = ("und-only", "gen-only", "joint", "grad-weighted", "soup-0.5", "self-curriculum-sft", "sft", "refine",
                 "refine-oracle", "best-of-n", "refine-grpo", "und-sft", "unimrg")


def study_headline() -> str:
    return full_study(HEADLINE_ARMS)


def full_study(arms: tuple[str, ...] | None = None) -> str:
    """The arms (default: every arm) of `unigap study --methods p1,p2,p3,p4`: Δ vs the base per headline metric
    (bold: significant after Bonferroni over all arms × metrics) and wall time."""
    result = full_study_result()
    families = {arm["name"]: arm.get("family", "other") for arm in result["arms"]}
    lines = ["| arm | family | Δ understanding (p) | Δ generation (p) | Δ non-unification (p) | wall (min) |",
             "|---|---|---|---|---|---|"]
    base = result["results"][result["base"]]
    lines.append(f"| base (level) | | {base['understanding.accuracy']['pooled']:.3f} | "
                 f"{base['generation.accuracy']['pooled']:.3f} | {base['nonunification.score']['pooled']:.3f} | "
                 f"{_minutes(result['wall_seconds'], 'base')} |")

    def cell(metric: dict[str, Any]) -> str:
        if metric["delta"] is None:
            return "—"
        mark = "**" if metric["significant"] else ""
        return f"{mark}{metric['delta']:+.3f}{mark} ({_p(metric['p'])})"

    for method in result["methods"][1:]:
        if arms is not None and method not in arms:
            continue
        m = result["results"][method]
        lines.append(f"| {method} | {families[method]} | {cell(m['understanding.accuracy'])} | "
                     f"{cell(m['generation.accuracy'])} | {cell(m['nonunification.score'])} | "
                     f"{_minutes(result['wall_seconds'], method)} |")
    seeds, n = len(result["seeds"]), result["config"].get("n")
    weak = [f"{method} {METRIC_WORDS[name]} ({_p(m['seed_level']['p'])})"
            for method in result["methods"][1:] if arms is None or method in arms
            for name, m in result["results"][method].items()
            if name in METRIC_WORDS and m["significant"] and m["seed_level"]["p"] is not None
            and m["seed_level"]["p"] >= 0.05]  # (None: the same Δ on every seed, no test needed)
    over_seeds = (f" Over the {seeds} seeds' Δ instead (the paired test on seed means, {seeds - 1} df, which also "
                  f"counts the variation between training runs), these bold cells reach no p < 0.05: {', '.join(weak)}."
                  if weak else "")
    return "\n".join(lines) + (f"\n\n{seeds} seeds × {n} held-out items; the paired test against the base on the "
                               f"same items, bold: significant after Bonferroni over all "
                               f"{result['bonferroni']['tests']} tests (arms × metrics, the unchanged understanding of inference-time arms "
                               f"included: strict); wall: an arm's minutes summed "
                               f"over its seeds; all jobs together "
                               f"{result['jobs_seconds'] / 3600:.1f} h.{over_seeds}")


def claims() -> str:
    """Each paper's claim, its published numbers and our deciding test, from the full study (the verdict: the test
    corrected within the claim's family, or the arm-against-baseline comparison)."""
    result = full_study_result()
    lines = ["| paper | claim | published | here: Δ (p; over seeds p) | verdict |", "|---|---|---|---|---|"]
    for c in result["claims"]:
        published = "; ".join(f"{what}: {value}" for what, value in c["published"])
        seeds = f"; seeds {_p(c['seed_level']['p'])}" if c.get("seed_level") else ""
        ours = ("—" if c.get("delta") is None
                else f"{c['arm']} − {c['against']}: {c['delta']:+.3f} ({_p(c['p'])}{seeds})")
        lines.append(f"| {c['paper']} | {c['claim']} | {published} | {ours} | **{c['verdict']}** |")
    return "\n".join(lines)


def dpo_tune(*paths: Path) -> str:
    """`unigap tune`'s grids on the validation split (several runs of it on the same prompts: one table, each grid
    point once): each run at its best checkpoint, and the best of them all."""
    from unigap.study.tune import AXES, TABLE_HEADER, choose, table

    results = [_load(path) for path in paths]
    c, axes = results[0]["config"], {axis for axis, *_ in AXES}
    curves: dict[str, dict] = {}
    for path, result in zip(paths, results):
        shared = {k: v for k, v in result["config"].items() if k not in axes}
        if shared != {k: v for k, v in c.items() if k not in axes} or result["base"] != results[0]["base"]:
            raise SystemExit(f"{path} was not tuned under the same settings as {paths[0]}: one table cannot hold both")
        for curve in result["runs"]:
            if curves.setdefault(curve["name"], curve) != curve:
                raise SystemExit(f"{path}: run {curve['name']} differs from the same run in another file")
    merged = {**results[0], "runs": list(curves.values()), "chosen": choose(list(curves.values()), c["kl_budget"])}
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table(merged)]
    chosen, label = merged["chosen"], "chosen" if len(paths) == 1 else "best of them all"
    pick = ("no checkpoint within the KL budget" if chosen is None else
            f"{label}: `{chosen['name']}` at step {chosen['step']} ({chosen['accuracy']:.3f}, {chosen['delta']:+.3f} "
            f"vs the base, paired p {_p(chosen['p'])})")
    return "\n".join(lines) + (f"\n\nn = {c['n']} validation prompts, seed {c['seed']}, {c['gen_pairs']} pairs per "
                               f"kind, evaluated every {c['eval_every']} of {c['steps']} steps; {pick}.")


TABLES: dict[str, Callable[[], str]] = {"model-card": model_card, "damage-agreement": damage_agreement, "sampling": sampling,
                                        "sampling-compile": sampling_compile, "sampling-profile": sampling_profile,
                                        "sampling-gpu": sampling_gpu, "dpo-mfu": dpo_mfu, "benchmarks": benchmarks,
                                        "pretrain-speed": pretrain_speed,
                                        "self-improvement": self_improvement, "unimrg": unimrg, "full-study": full_study,
                                        "study-headline": study_headline,
                                        "claims": claims, "dpo-tune": partial(dpo_tune, DPO_TUNE),
                                        "dpo-tune-n1000": partial(dpo_tune, *DPO_TUNE_N1000)}
# a table's body never holds "<!-- ", so an empty table cannot swallow the text up to the next table's end
PATTERN = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>(?:(?!<!-- ).)*?)\n?<!-- /table -->", re.DOTALL)


def render(text: str) -> tuple[str, list[str]]:
    """The README with every table regenerated, and the names of the tables that changed."""
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"a document names an unknown table {name!r}; known: {', '.join(TABLES)}")
        body = TABLES[name]()
        if body != match["body"]:
            changed.append(name)
        return match.group(1) + body + "\n<!-- /table -->"

    return PATTERN.sub(replace, text), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a document's tables are stale")
    args = parser.parse_args()
    stale = []
    for document in DOCUMENTS:
        text, changed = render(document.read_text(encoding="utf-8"))  # (not the locale's: written as UTF-8)
        stale += [f"{document.name}: {name}" for name in changed]
        if not args.check:
            write_text_atomically(document, text)  # an interrupted run leaves the document as it was
    if args.check and stale:
        print("stale tables: " + ", ".join(stale))
        sys.exit(1)
    if not args.check:
        print("tables: " + (", ".join(stale) + " regenerated" if stale else "up to date"))


if __name__ == "__main__":
    main()
