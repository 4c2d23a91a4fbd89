"""`unigap tune`: choose the DPO defaults (`unigap.train.defaults`) on the validation split, as one command that
can be rerun whenever the shipped model changes.

Why: generation DPO on rendered-scene pairs over-optimises the shipped model (its loss goes to 0 while the chosen
images become *less* likely: the rejected ones are pushed down, not the chosen pulled up), and lowers generation
accuracy. The procedure compares what the field uses against that, side by side, on validation prompts only:

* the pairs: `gen-real` (a rendered scene chosen, the model's own sample rejected) against the on-policy
  `gen-model` (two of the model's own samples, the verifier's better one chosen);
* RPO's NLL term on the chosen (`nll_weight`), the learning rate and β: a grid of `gen-only` DPO runs;
* the log-probs the loss compares: conditional-only (`gen_cfg_scale` 0) or under the CFG mixture the images are
  sampled from (`gen_cfg_scale` 5: guidance multiplies a move of the conditional logits by its scale);
* pairs per optimiser step (`batch_size`; the paper's 1 makes each step one noisy pair);
* checkpoint selection (early stopping): each run's generation accuracy on the validation prompts every
  `eval_every` steps, paired with the base model's on the same prompts and sampling seeds;
* a KL budget: a checkpoint whose drift from the reference on the pair images (the mean of |log π − log π_ref| over
  the chosen and the rejected, in nats per image, over the steps since the last evaluation) exceeds `kl_budget` is
  not eligible. Each step logs its pairs' mean shift, so at more than one pair per step shifts of opposite sign
  within a step cancel: the drift is then a lower bound.

The chosen setting is the eligible (run, checkpoint) with the highest validation generation accuracy; the report
says plainly when even that one does not beat the base. Only
generation DPO is tuned: understanding DPO does not move on the shipped model (docs/experiments.md), so the same
learning rate, β and steps serve both tasks.

Layout of OUT (resumable: a finished part is skipped on a rerun of the same command)::

    tune.json               the settings and the model's weights; a rerun under other ones is refused, except that
                            the grid's values and the KL budget may change (finished grid points are reused)
    pairs/<kind>.jsonl      the generation pairs of each kind (train prompts, the base model)
    base.json               the base model's validation records
    runs/<run>/curve.json   one grid point: its validation curve and training diagnostics (its DPO log.jsonl beside)
    results.json            every curve, and the chosen setting
"""

from __future__ import annotations

import gc
import itertools
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from unigap.atomic import claim_settings, path_setting, path_settings, read_json, write_text_atomically
from unigap.errors import UserError
from unigap.model.loading import EMBEDDED
from unigap.prefs.kinds import GEN_KINDS
from unigap.train.config import check_field_types
from unigap.train.defaults import OVEROPTIMISED_LOSS, TUNE_GRID, TUNE_RUN

# the grid's axes: TuneConfig field, the TrainConfig setting of a grid point, its tag in the run's name, and the value
# that is left out of the name (and assumed by a run tuned before that axis existed)
AXES: tuple[tuple[str, str, str, Any], ...] = (
    ("kinds", "gen_kind", "", None), ("lrs", "lr", "lr", None), ("betas", "beta", "beta", None),
    ("nll_weights", "nll_weight", "nll", None), ("cfg_scales", "gen_cfg_scale", "cfg", 0.0),
    ("pair_batches", "batch_size", "bs", 1),
)
# settings that choose which runs there are, or which of them is chosen, but change no run's numbers: free to change
# on a rerun of the same directory (a grid point's folder is named for its settings; a new one is trained, a known
# one reused)
SELECTION_ONLY = ("kl_budget", *(axis for axis, *_ in AXES))
SETTINGS_FILE, BASE_FILE, RESULTS_FILE, CURVE_FILE = "tune.json", "base.json", "results.json", "curve.json"


@dataclass(frozen=True)
class TuneConfig:
    """The grid, the budget of each run, and the validation evaluation."""

    model: str = field(default="tiny", metadata=path_setting(EMBEDDED))
    kinds: tuple[str, ...] = TUNE_GRID["kinds"]
    lrs: tuple[float, ...] = TUNE_GRID["lrs"]
    nll_weights: tuple[float, ...] = TUNE_GRID["nll_weights"]
    betas: tuple[float, ...] = TUNE_GRID["betas"]
    cfg_scales: tuple[float, ...] = TUNE_GRID["cfg_scales"]  # gen_cfg_scale: 0 scores conditional-only log-probs
    pair_batches: tuple[int, ...] = TUNE_GRID["pair_batches"]  # pairs per optimiser step (TrainConfig.batch_size)
    steps: int = TUNE_RUN["steps"]
    eval_every: int = TUNE_RUN["eval_every"]
    n: int = TUNE_RUN["n"]  # validation prompts per evaluation
    gen_pairs: int = TUNE_RUN["gen_pairs"]
    kl_budget: float | None = None
    seed: int = 0  # the training seed (data order, LoRA init), and the validation prompts' draw and sampling seed
    data_seed: int = 0  # the train/validation partition: the model's pretraining seed
    sample_batch_size: int = 32  # images per sampling batch (validation evaluation); not a training setting

    def __post_init__(self) -> None:
        check_field_types(self)
        unknown = [kind for kind in self.kinds if kind not in GEN_KINDS]
        if unknown or not self.kinds:
            raise UserError(f"unknown pair kind {', '.join(unknown) or '(none)'}; expected some of {', '.join(GEN_KINDS)}")
        if not all(getattr(self, axis) for axis, *_ in AXES):
            raise UserError("the grid needs at least one value on each axis")
        if not (all(v > 0 for v in (*self.lrs, *self.betas)) and all(v >= 0 for v in (*self.nll_weights,
                                                                                    *self.cfg_scales))):
            raise UserError("learning rates and betas must be > 0, NLL weights and CFG scales >= 0")  # (NaN fails)
        if not all(isinstance(b, int) and 1 <= b <= self.gen_pairs for b in self.pair_batches):
            raise UserError(f"pairs per step must be positive integers up to the pairs ({self.gen_pairs}), got "
                            f"{', '.join(map(str, self.pair_batches))}")
        for name in ("steps", "eval_every", "n", "gen_pairs", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seed < 0 or self.data_seed < 0:
            raise UserError(f"seed and data seed must be >= 0, got {self.seed} and {self.data_seed}")
        if self.eval_every > self.steps:
            raise UserError(f"eval_every ({self.eval_every}) must not exceed steps ({self.steps})")
        if self.kl_budget is not None and not self.kl_budget > 0:
            raise UserError(f"kl_budget must be > 0, got {self.kl_budget}")
        self.grid()  # (refuses a grid that names two points alike)

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point: its TrainConfig settings, and a name that tags each one (but an axis at its usual
        value, so names stay those of runs tuned before that axis existed)."""
        points = []
        for values in itertools.product(*(getattr(self, axis) for axis, *_ in AXES)):
            tags = [value if isinstance(value, str) else f"{tag}{value:g}"
                    for (_, _, tag, usual), value in zip(AXES, values) if value != usual]
            points.append({"name": "_".join(tags), **{key: value for (_, key, _, _), value in zip(AXES, values)}})
        names = [point["name"] for point in points]
        if len(set(names)) < len(names):  # one run folder for two points: the second would read the first's curve
            twice = sorted({name for name in names if names.count(name) > 1})
            raise UserError(f"the grid names {', '.join(twice)} more than once (a value repeated, or two values "
                            "alike to 6 significant digits)")
        return points

    def to_dict(self) -> dict[str, Any]:
        """As JSON reads it back (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))


def _write_json(path: Path, value: Any) -> None:
    write_text_atomically(path, json.dumps(value, indent=2))


def _window(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return float(np.mean(values)) if values else None


def diagnostics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The generation DPO diagnostics of a window of log records (means): the DPO loss (without the NLL term), the
    policy's shift against the reference on the chosen and the rejected images, their mean absolute shift (the drift
    the KL budget bounds: of each step's mean shift, a record holding its pairs' means), and whether it
    over-optimises."""
    loss = _window(rows, "gen_dpo_loss")
    shifts = {side: [r[f"gen/logps/{side}"] - r[f"gen/ref_logps/{side}"] for r in rows
                     if r.get(f"gen/logps/{side}") is not None and r.get(f"gen/ref_logps/{side}") is not None]
              for side in ("chosen", "rejected")}
    shift = {side: float(np.mean(values)) if values else None for side, values in shifts.items()}
    drift = [abs(v) for values in shifts.values() for v in values]
    overoptimised = None if loss is None or shift["chosen"] is None else loss < OVEROPTIMISED_LOSS and shift["chosen"] < 0
    return {"loss": loss, "chosen_shift": shift["chosen"], "rejected_shift": shift["rejected"],
            "kl": float(np.mean(drift)) if drift else None, "overoptimised": overoptimised}


def choose(curves: Sequence[dict[str, Any]], kl_budget: float | None) -> dict[str, Any] | None:
    """The eligible (run, checkpoint) with the highest validation accuracy (ties: the first in grid order, then the
    earlier step): within the KL budget; None when no checkpoint is. It may not beat the base: see `delta`."""
    best = None
    for curve in curves:
        for point in curve["points"]:
            if kl_budget is not None and (point["kl"] is None or point["kl"] > kl_budget):
                continue
            if best is None or point["accuracy"] > best["accuracy"]:
                best = {"name": curve["name"], **{key: curve.get(key, usual) for _, key, _, usual in AXES}, **point}
    return best


def tune(config: TuneConfig, out: str | Path, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run (or resume) the procedure in `out`; returns (and writes) results.json's content."""
    from unigap.evaluate.data import held_out_pairs
    from unigap.model import load_model
    from unigap.model.checkpoint import weights_fingerprint
    from unigap.model.loading import default_dtype_name, resolve_checkpoint
    from unigap.prefs.build import BuildOptions, build_preferences
    from unigap.prefs.rows import load_pairs, write_rows

    out = Path(out)
    weights = weights_fingerprint(resolve_checkpoint(config.model))  # a mistyped --model fails before OUT is claimed
    settings = {k: v for k, v in config.to_dict().items() if k not in SELECTION_ONLY}
    dtype = default_dtype_name()
    claim_settings(out / SETTINGS_FILE, settings | {"model_weights": weights, "model_dtype": dtype}, "tuning",
                   {f.name: f.default for f in fields(TuneConfig)} | {"model_dtype": dtype},  # (added since: unknown)
                   paths=path_settings(config))
    specs = [spec for spec, _ in held_out_pairs(config.n, config.seed, config.data_seed, split="val")]
    base_file = out / BASE_FILE
    if not base_file.is_file():
        progress("base model on the validation prompts")
        _write_json(base_file, {"verified": _verified(load_model(config.model), specs, config)})
    base = read_json(base_file)["verified"]
    pairs: dict[str, list[Any]] = {}
    for kind in config.kinds:
        path = out / "pairs" / f"{kind}.jsonl"
        if not path.is_file():
            progress(f"{kind} pairs")
            options = BuildOptions(kind, config.gen_pairs, config.data_seed, config.model, batch_size=8,
                                   data_seed=config.data_seed)
            write_rows(path, build_preferences(load_model(config.model), options))
        pairs[kind] = load_pairs(path, "gen")
    curves = []
    for point in config.grid():
        curve_file = out / "runs" / point["name"] / CURVE_FILE
        if not curve_file.is_file():
            progress(point["name"])
            _write_json(curve_file, {**point, "points": _run(config, point, pairs[point["gen_kind"]], specs, base,
                                                              curve_file.parent, progress)})
            gc.collect()  # the run's model and optimiser go before the next one loads
        curves.append(_reused(read_json(curve_file), point))
    results = {"config": config.to_dict(), "base": {"n": len(base), "accuracy": float(np.mean(base))},
               "runs": curves, "chosen": choose(curves, config.kl_budget)}
    _write_json(out / RESULTS_FILE, results)
    return results


def _reused(curve: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A finished run's curve, if it was trained at this grid point: a name rounds its values to 6 significant
    digits, so a rerun's value that rounds alike would otherwise be reported with the other value's run."""
    for _, key, _, usual in AXES:
        if curve.get(key, usual) != point[key]:
            raise UserError(f"runs/{point['name']} was trained with {key} {curve.get(key, usual)}, not {point[key]}; "
                            "give that value, or another --out")
    return curve


def _verified(um: Any, specs: Sequence[Any], config: TuneConfig) -> list[bool]:
    """The verifier's verdict on one image per validation prompt (the same sampling seeds for every model)."""
    from unigap.evaluate.generation import generate_and_judge

    um.model.eval()
    _, records = generate_and_judge(um, specs, config.seed, config.sample_batch_size, progress=False)
    return [bool(r["verified"]) for r in records]


def _run(config: TuneConfig, point: dict[str, Any], pairs: list[Any], specs: Sequence[Any], base: list[bool],
         run_dir: Path, progress: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """One grid point: gen-only DPO from scratch (a run killed midway starts again: minutes, not worth resuming),
    evaluated every `eval_every` steps and at the end, each evaluation a `progress` line; its log.jsonl stays in
    `run_dir`."""
    from unigap.evaluate.stats import paired_difference
    from unigap.model import load_model
    from unigap.train.config import TrainConfig
    from unigap.train.trainer import DPOTrainer

    shutil.rmtree(run_dir, ignore_errors=True)
    um = load_model(config.model)
    settings = TrainConfig(strategy="gen-only", steps=config.steps, seed=config.seed, checkpoint_every=config.steps,
                           **{key: point[key] for _, key, _, _ in AXES if key != "gen_kind"})
    trainer = DPOTrainer(um, settings, [], pairs, run_dir)
    window: list[dict[str, Any]] = []  # the log records since the last evaluation
    points: list[dict[str, Any]] = []

    def on_step(step: int, record: dict[str, Any]) -> None:
        window.append(record)
        if step % config.eval_every == 0 or step == config.steps:
            after = _verified(um, specs, config)
            change = paired_difference(base, after)
            points.append({"step": step, "accuracy": float(np.mean(after)), "delta": change["delta"],
                           "ci95": change["ci95"], "p": change["p"], **diagnostics(window)})
            progress(f"{point['name']}: step {step}/{config.steps}, accuracy {points[-1]['accuracy']:.3f}")
            window.clear()
            um.model.train()  # LoRA dropout back on

    trainer.train(on_step=on_step)
    shutil.rmtree(trainer.checkpoint_dir, ignore_errors=True)
    return points


def table(results: dict[str, Any]) -> list[list[str]]:
    """One row per grid point at its best eligible checkpoint, and the base: for a printed or Markdown table."""
    def fmt(value: float | None, digits: int = 3, sign: bool = False) -> str:
        return "–" if value is None else f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"

    rows = [["base", "–", fmt(results["base"]["accuracy"]), "–", "–", "–", "–", "–", "–", "–"]]
    budget = results["config"]["kl_budget"]
    for curve in results["runs"]:
        best = choose([curve], budget)
        final = curve["points"][-1]
        rows.append([
            curve["name"], "–" if best is None else str(best["step"]), "–" if best is None else fmt(best["accuracy"]),
            "–" if best is None else fmt(best["delta"], sign=True),
            "–" if best is None or best["p"] is None else f"{best['p']:.2g}", fmt(final["accuracy"]), fmt(final["loss"]),
            fmt(final["chosen_shift"], 1, True), fmt(final["rejected_shift"], 1, True),
            "yes" if final["overoptimised"] else "no",
        ])
    return rows


TABLE_HEADER = ["run", "best step", "val gen acc", "Δ vs base (paired)", "p", "final acc", "final DPO loss",
                "chosen Δlogp", "rejected Δlogp", "over-optimised"]
