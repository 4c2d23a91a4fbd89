"""`run_study`: the study as a list of jobs, each finished exactly when its output file exists (`unigap.report`
builds the report from them).

Why jobs keyed by output files: a killed study is resumed by running the same command again. Finished
jobs are skipped, a training run killed midway continues from its checkpoint (`DPOTrainer`), and every
output is written atomically, so a file that exists is complete. Each job is a plain call into the
library (prefs, train, merge, diagnose, evaluate, selfimprove; the arms' builders are in `unigap.study.builders`),
so the study has no second implementation of anything.

Layout of OUT (what `unigap.report.load_study` reads)::

    study.json                          the settings; a rerun under other settings is refused
    jobs.jsonl                          seconds each job took, appended as it finishes
    prefs/und.jsonl, prefs/gen.jsonl    preference pairs from the base model (data_seed)
    base/seed<k>/eval.json              the base model evaluated with seed k
    base/seed0/diagnostics.json (+PNG)  gradient diagnostics of the base model
    answer-length/                      the answer-length probe (`unigap.study.answer_length`; with P1's und-only)
    <arm>/seed<k>/                      eval.json of each arm (`unigap.arms`), with what its builder keeps
                                        (adapter and log.jsonl of a DPO strategy, selfimprove/ of a P2 arm)
    results.json, results.csv, *.png, report.html   written by `unigap.report.build_report` (`unigap study` calls it)
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from unigap.atomic import claim_settings, path_settings
from unigap.errors import UserError
from unigap.manifest import read_record
from unigap.metrics_log import keep_log_rows
from unigap.study.results import ANSWER_LENGTH_FILE, BASE, DIAGNOSTICS_FILE, EVAL_FILE, JOBS_FILE, STUDY_FILE
from unigap.study.config import FULL, StudyConfig
from unigap.train.loop import CHECKPOINT_DIR
from unigap.arms import ARMS, FAMILIES

WEIGHTS_KEY = "model_weights"  # in study.json: the weights_fingerprint of the model the study ran on
DTYPE_KEY = "model_dtype"  # and the dtype it ran in

PREFS_DIR = "prefs"


@dataclass(frozen=True)
class Job:
    """One step of the study; done when `output` exists. `scratch`: its resume checkpoint, dropped once `output` is
    written (by the runner, so that a kill between the two leaves no checkpoint behind for ever)."""

    name: str
    output: Path
    run: Callable[[], None]
    scratch: Path | None = None


class StudyRunner:
    """The jobs of one study in OUT, and how to run each one."""

    def __init__(self, config: StudyConfig, out: Path, progress: Progress) -> None:
        self.config, self.out, self.progress = config, out, progress
        self._pairs: dict[str, list[Any]] = {}
        self._memo: dict[Any, Any] = {}

    def run_dir(self, method: str, seed: int) -> Path:
        return self.out / method / f"seed{seed}"

    def prefs_file(self, task: str) -> Path:
        return self.out / PREFS_DIR / f"{task}.jsonl"

    def jobs(self) -> list[Job]:
        """In the order of the study: base evaluation, data and diagnostics (when an arm that trains on the preference
        pairs runs), then per seed every arm in registry order."""
        from unigap.study.builders import check_options

        c = self.config
        for name in c.methods:  # (an arm its builder cannot build fails now, not after the jobs before it)
            check_options(ARMS[name], c)
        jobs = [Job(f"base, seed {k}", self.eval_file(BASE, k), partial(self.evaluate_base, k)) for k in range(c.seeds)]
        if any(ARMS[name].needs_pairs for name in c.methods):  # preference pairs and their gradients
            jobs += [Job(f"{task} pairs", self.prefs_file(task), partial(self.build_pairs, task)) for task in ("und", "gen")]
            jobs.append(Job("gradient diagnostics", self.run_dir(BASE, 0) / DIAGNOSTICS_FILE, self.diagnose))
        for k in range(c.seeds):
            jobs += [Job(f"{name}, seed {k}", self.eval_file(name, k), partial(ARMS[name].build(), self, name, k),
                         self.run_dir(name, k) / CHECKPOINT_DIR) for name in c.methods_in_order()]
        if "und-only" in c.methods:  # the question P1 leaves open: does answer length decide understanding DPO?
            from unigap.study.answer_length import answer_length

            jobs.append(Job("answer length", self.out / ANSWER_LENGTH_FILE, partial(answer_length, self)))
        return jobs

    # -- the study's own jobs (the arms' are in `unigap.study.builders`) ------------------------

    def evaluate_base(self, seed: int) -> None:
        """The base model evaluated, its images kept: trained arms judge them for the understanding win rate."""
        from unigap.evaluate.report import save_images

        self.evaluate(self.model(), BASE, seed, on_images=lambda images: save_images(images, self.base_images(seed)))

    def build_pairs(self, task: str) -> None:
        from unigap.prefs.build import BuildOptions, build_preferences
        from unigap.prefs.rows import write_rows

        c = self.config
        kind, n = ("und", c.und_pairs) if task == "und" else (c.gen_kind, c.gen_pairs)
        options = BuildOptions(kind, n, c.data_seed, c.model, fallback_gt=c.und_fallback_gt, batch_size=8,
                               data_seed=c.data_seed)
        with self.bar(f"{kind} pairs", n) as update:
            rows = build_preferences(self.model(), options, lambda kept, tried: update(kept))
        write_rows(self.prefs_file(task), rows)

    def diagnose(self) -> None:
        from unigap.diagnose import run_diagnostics, shared_parameters, write_report
        from unigap.train.dpo import DPOOptions

        c = self.config
        um = self.model()
        params = shared_parameters(um, full_params=False, seed=0)
        with self.bar("gradients", c.diagnose_pairs + 2 * c.sweep_probes) as update:
            report = run_diagnostics(
                um, params, self.pairs("und"), self.pairs("gen"), c.diagnose_pairs, 0,
                sweep_probes=c.sweep_probes, options=DPOOptions(beta=c.beta), progress=update,
            )  # fmt: skip
        report |= {"model": c.model, "adapter": None, "und": str(self.prefs_file("und")), "gen": str(self.prefs_file("gen"))}
        write_report(report, self.run_dir(BASE, 0))

    # -- helpers -----------------------------------------------------------------------------

    def pairs(self, task: str) -> list[Any]:
        """The study's preference pairs of one task, read once."""
        if task not in self._pairs:
            from unigap.prefs.rows import load_pairs

            if not self.prefs_file(task).is_file():  # built only for arms that say they train on them
                raise UserError(f"no preference pairs in {self.prefs_file(task)}: the arms that read them are "
                                "registered with needs_pairs=True")

            self._pairs[task] = load_pairs(self.prefs_file(task), task)
        return self._pairs[task]

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """`make()` once per study process under `key`: data several jobs share (it depends on settings only)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def model(self) -> Any:
        """A fresh copy of the base model: training and adapters change the one they are given."""
        from unigap.model import load_model

        return load_model(self.config.model)

    def eval_file(self, method: str, seed: int) -> Path:
        return self.run_dir(method, seed) / EVAL_FILE

    def base_images(self, seed: int) -> Path:
        return self.run_dir(BASE, seed) / "images"

    def evaluation(self, um: Any, seed: int, on_images: Callable[[list[Any]], None] | None = None) -> dict[str, Any]:
        """`um` evaluated as every arm is: the study's n items of seed `seed`, no critique."""
        from unigap.evaluate import evaluate

        c = self.config
        return evaluate(um, c.n, seed, data_seed=c.data_seed, batch_size=c.batch_size, critique=False,
                        progress=False, on_images=on_images)  # the study shows its own bars

    def win_rate(self, um: Any, seed: int) -> dict[str, Any] | None:
        """A trained arm's understanding win rate on the base model's images of this seed
        (`unigap.evaluate.critique.win_rate`); None where the base's images were not kept (a study begun before)."""
        from unigap.evaluate.critique import win_rate
        from unigap.evaluate.report import load_images

        records = read_record(self.eval_file(BASE, seed))["records"]["generation"]
        images = load_images(self.base_images(seed), len(records))
        return None if images is None else win_rate(um, images, records, self.config.batch_size)

    def evaluate(self, um: Any, method: str, seed: int, on_images: Callable[[list[Any]], None] | None = None,
                 notes: dict[str, Any] | None = None) -> None:
        """`evaluation` into the arm's eval.json (last: it marks the job done), with the win rate of a trained arm
        and the builder's `notes` (what the report must know about how the arm came to be)."""
        from unigap.evaluate import save_report

        report = self.evaluation(um, seed, on_images)
        report["config"].update(model=self.config.model, method=method)
        self.add_win_rate(report, um, method, seed)
        save_report(report | (notes or {}), self.eval_file(method, seed))

    def add_win_rate(self, report: dict[str, Any], um: Any, method: str, seed: int) -> None:
        """A trained arm's report gains its `win_rate`, the SPEC's rate of arms that train (an inference-time arm's
        model is the base's; a post-hoc one, a soup or the oracle, trains nothing of its own: none)."""
        if method in ARMS and ARMS[method].kind == "trained":
            report["win_rate"] = self.win_rate(um, seed)

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A bar for one job's inner loop, removed when the job ends: `update(done)`, or `update()` for one more."""
        task = self.progress.add_task(description, total=total)

        def update(done: int | None = None) -> None:
            self.progress.update(task, completed=done) if done is not None else self.progress.advance(task)

        try:
            yield update
        finally:
            self.progress.remove_task(task)


def claim(config: StudyConfig, out: Path, weights: str, edit_guidance: dict[str, float] | None = None,
          dtype: str | None = None) -> list[str]:
    """Write OUT/study.json, or check that the study already in OUT ran under the same settings and
    on the same weights (`weights`: the model's `weights_fingerprint`) in the same `dtype` (a GPU's bf16 default, a
    CPU's float32: a study from before it was recorded is not checked); returns the arms this run adds to it.
    `edit_guidance`: the edit scales the reason-reflect-refine arms use (the library's), recorded so that a study from
    before they existed, whose arms edited under plain CFG at 5, is not resumed under them. The arms only choose which
    jobs run (each arm's runs are its own folders, and the report reads every arm there), so a rerun with other
    --methods adds arms, and study.json lists every arm asked of the folder."""
    earlier = (read_record(out / STUDY_FILE) or {}).get("methods") or []
    methods = [*earlier, *(m for m in config.methods_in_order() if m not in earlier)]  # (the soups it runs too)
    recorded = {WEIGHTS_KEY: weights, **(edit_guidance or {}), **({DTYPE_KEY: dtype} if dtype else {})}
    defaults = FULL.to_dict() | {WEIGHTS_KEY: weights, DTYPE_KEY: dtype}  # a study from before a setting: its default
    settings = config.to_dict() | recorded | {"methods": methods}
    # a setting no arm asked of the folder before reads (its family's budget, the edit scales) changed none of its
    # numbers: recorded afresh for the arms this run may add, not held to values recorded while nothing used them
    # (an arm not registered here, a user's, may read any of them)
    ran = set(FAMILIES) if any(m not in ARMS for m in earlier) else {ARMS[m].family for m in earlier}
    unused = [name for name, families in (StudyConfig.families_using() | dict.fromkeys(edit_guidance or {}, ("p3",))
                                          ).items() if not ran & set(families)]
    defaults |= {name: settings[name] for name in unused}
    free = ("methods", "grpo_micro_batch_size", *unused)  # (the latter changes only rounding)
    claim_settings(out / STUDY_FILE, settings, "study", defaults, free=free, paths=path_settings(config))
    return methods[len(earlier):] if earlier else []


def run_study(config: StudyConfig, out: str | Path, show_progress: bool = True) -> Path:
    """Run (or resume) every job of the study in `out` (returned): what `unigap.report.build_report` reads."""
    from unigap.model.checkpoint import weights_fingerprint
    from unigap.model.editing import EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE, EDIT_SETTINGS
    from unigap.model.loading import default_dtype_name, resolve_checkpoint

    out = Path(out)
    directory = resolve_checkpoint(config.model)  # a mistyped --model fails here, before study.json pins it
    added = claim(config, out, weights_fingerprint(directory),
                  dict(zip(EDIT_SETTINGS, (EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE))),
                  default_dtype_name())
    if added and show_progress:  # (a rerun that left out --methods adds the default arms: say so before hours of jobs)
        print(f"study: adding {', '.join(added)} to the study in {out}", file=sys.stderr, flush=True)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
    )  # fmt: skip
    lines = show_progress and not sys.stderr.isatty()  # to a file: a line per job (rich would draw only at the end)
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress or lines) as progress:
        runner = StudyRunner(config, out, progress)
        jobs = runner.jobs()
        overall = progress.add_task("study", total=len(jobs))
        keep_log_rows(out / JOBS_FILE, lambda row: True)  # a row a kill cut off would take the next one with it
        for index, job in enumerate(jobs):
            if not job.output.is_file():
                progress.update(overall, description=f"study: {job.name}")
                if lines:
                    print(f"study: job {index + 1}/{len(jobs)}: {job.name}", file=sys.stderr, flush=True)
                started = time.perf_counter()
                try:
                    job.run()
                    if not job.output.is_file():  # a builder's bug: its arm would be missing from the report
                        raise RuntimeError(f"the job {job.name!r} ended without writing {job.output}")
                finally:  # an interrupted attempt's time too: the report's wall column is what the arm cost
                    row = {"job": job.name, "seconds": time.perf_counter() - started}
                    with (out / JOBS_FILE).open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row | ({} if job.output.is_file() else {"interrupted": True})) + "\n")
            if job.scratch is not None:  # (the adapter and log stay)
                shutil.rmtree(job.scratch, ignore_errors=True)
            progress.advance(overall)
    return out
