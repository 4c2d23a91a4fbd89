"""`unigap selfimprove`: the model judges its own images and learns from its verdicts (SPEC §2, arXiv 2507.16663).

`run(um, config, out)` reads as the algorithm:
  0. measure the base model on held-out prompts (the "before", its images kept for the win rate);
  1-3. sample N images per training prompt, judge them, split into accepted, rejected and a discard pool;
  7. audit a sample of the labels against the independent judge (the guard: stop when precision is too low);
  4-5. train a LoRA: SFT on the accepted images, or DPO on accepted vs rejected with an NLL term;
  6. with a curriculum, after the replay epoch regenerate and re-judge the discard pool with the improved model;
     newly accepted prompts join the training set;
  8. measure the trained model on the same held-out prompts and sampling seeds (the "after").

Files in OUT: `settings.json`, `before.json` / `after.json` (`unigap eval` reports), `pool/` (see
`unigap.selfimprove.pool`), `epochs.jsonl` (one row per epoch: loss, training-set size, discard pool, the
validation probe), `checkpoint/` (per epoch), `adapter/` (PEFT; the last finished epoch), `figures/epochs.png`,
and `selfimprove.json` last. Each stage is skipped when its file exists, so `resume` continues a killed run.

Under `accelerate launch` the processes share the sampling batches and each training batch (`unigap.distributed`);
they hold the same results and weights, and the main process writes them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from unigap import distributed
from unigap.atomic import cached_json, claim_settings, path_settings, write_json
from unigap.errors import GuardStopped, UnigapWarning, UserError
from unigap.evaluate import evaluate
from unigap.evaluate.critique import win_rate as understanding_win_rate
from unigap.evaluate.data import prompt_lines, prompt_specs, training_prompt_specs
from unigap.evaluate.generation import generate_and_judge
from unigap.evaluate.judges import get_judge
from unigap.evaluate.report import HEADLINES, load_images, save_images
from unigap.evaluate.stats import paired_difference, summarize, with_ci
from unigap.manifest import read_record
from unigap.model.checkpoint import model_identity
from unigap.metrics_log import MetricLogger, read_log
from unigap.progress import progress as progress_bar
from unigap.selfimprove.config import TRAINABLE, SelfImproveConfig, labeller
from unigap.selfimprove.figures import epochs_plot
from unigap.selfimprove.pool import Sample, audit_metrics, label_round
from unigap.selfimprove.train import UNTRAINED, dpo_pairs, train_epoch
from unigap.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from unigap.train.loop import RECOMPUTE_SETTINGS, TrainingDiverged

FREE_TEXT_HINT = " (free text needs --judge clip:DIR or vlm:DIR, or --judge none with --labels self or poor)"

RESULT_FILE = "selfimprove.json"
EPOCHS_FILE = "epochs.jsonl"
METRICS = ("generation_accuracy", "understanding_accuracy", "nonunification", "weak_generation")


@dataclass
class Data:
    """The training data so far: every labelling round's samples, and what they make."""

    rounds: list[list[Sample]] = field(default_factory=list)
    pairs: list[Any] = field(default_factory=list)

    @property
    def sft(self) -> list[Sample]:
        return [s for samples in self.rounds for s in samples if s.accepted]

    @property
    def discard(self) -> list[int]:
        accepted = {s.prompt_index for s in self.sft}
        return sorted({s.prompt_index for s in self.rounds[0]} - accepted)


def run(um: Any, config: SelfImproveConfig, out: str | Path, progress: bool = True,
        report_to: Sequence[str] = ()) -> dict[str, Any]:
    """Self-improve `um` in place (it gains a LoRA adapter) and write the run to OUT; returns `selfimprove.json`'s
    content. Raises `GuardStopped` after writing it when the audit stops the run. `report_to`: per-epoch rows also
    to TensorBoard / W&B (`unigap.metrics_log`)."""
    if um.peft is not None:  # before any image is sampled: add_lora would refuse only after the first round
        raise UserError("self-improvement adds and trains its own LoRA adapter, and this model already has one: "
                        "merge it into a checkpoint first (`unigap merge --model DIR --adapter ADAPTER`) or pass the "
                        "model without it")
    out = Path(out)
    main = distributed.is_main()
    progress = progress and main
    specs = training_prompts(config)
    um.prompts.check_texts(prompts=prompt_lines(config.prompts))  # (before anything is written or sampled)
    _check_settings(out, config, len(specs), model_identity(um))

    before = cached_json(out / "before.json", lambda: _evaluate(um, config, out, "before", progress),
                         write=main) if config.eval_n else None
    data = Data([label_round(um, specs, range(len(specs)), config, 0, out, progress)])
    audits = [{"round": 0, "epoch": 0, **audit_metrics(data.rounds[0])}]
    _guard(out, config, audits, before)

    torch.manual_seed(config.seed)  # the LoRA init and the dropout stream
    um.add_lora(config.lora_rank, config.lora_alpha, config.lora_dropout, train_generation_head=False,
                trained_modules=TRAINABLE[config.trainable], gradient_checkpointing=config.gradient_checkpointing)
    params = [p for p in um.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.objective == "dpo":
        data.pairs = dpo_pairs(um, data.rounds[0], config)
    logged = _read_epochs(out)
    start, saved = _resume(um, optimizer, out)
    distributed.own_random_stream(config.seed, start)
    distributed.wait_for_everyone()  # every process has read the run's state before the main one writes more
    # the checkpoint holds its epochs' rows: one it saved just before a kill could not log is logged now
    epochs = saved if saved is not None else logged[: start + 1]
    kept = min(len(logged), len(epochs))
    logger = MetricLogger(out / EPOCHS_FILE, report_to, resume_step=kept if epochs else None,
                          run_name=f"{out.name}-selfimprove") if main else None
    if not epochs:
        epochs = [_epoch_row(um, config, 0, data, UNTRAINED, 0, progress)]
    for row in epochs[kept:] if logger else ():
        logger.log(row["step"], row)
    for epoch in range(1, config.epochs + 1):
        joined = 0
        if epoch - 1 == config.replay_epoch:  # replay after the replay epoch, before the next one trains
            discard = data.discard
            data.rounds.append(label_round(um, specs, discard, config, 1, out, progress))
            joined = len(discard) - len(data.discard)
            audits.append({"round": 1, "epoch": epoch - 1, **audit_metrics(data.rounds[1])})
            _guard(out, config, audits, before)
            if config.objective == "dpo":
                data.pairs += dpo_pairs(um, data.rounds[1], config)
        if epoch <= start:
            continue
        size = len(data.sft) if config.objective == "sft" else len(data.pairs)
        with progress_bar(f"epoch {epoch}/{config.epochs}", size, progress) as update:
            try:
                record = train_epoch(um, optimizer, config, epoch, data.sft, data.pairs, update)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc}; {_kept(out, epoch - 1)}") from None
        if not record["steps"] and main:  # (a judge that accepts nothing: the run would end as if it had trained)
            what = ("none of the images was accepted" if config.objective == "sft" else
                    "no prompt has both an accepted and a rejected image")
            kept = "the epoch before's" if epoch > 1 else "an untrained one (the base model's outputs)"
            warnings.warn(f"epoch {epoch} trained nothing: {what} (see pool/); its adapter is {kept}",
                          UnigapWarning, stacklevel=2)
        epochs.append(_epoch_row(um, config, epoch, data, record, joined, progress))
        if logger:
            _save_epoch(um, optimizer, out, epoch, epochs)
            logger.log(epoch, epochs[-1])  # last: the row marks the epoch done
        distributed.own_random_stream(config.seed, epoch)  # as a resume from this epoch's checkpoint would
    if logger:
        logger.close()

    after = cached_json(out / "after.json", lambda: _evaluate(um, config, out, "after", progress),
                        write=main) if before else None
    result = _result(config, before, after, epochs, audits, guard=None)
    result["win_rate"] = win_rate(um, before, out) if before else None
    if main:
        write_json(out / RESULT_FILE, result)
    return result


def training_prompts(config: SelfImproveConfig) -> list[Any]:
    """The prompts self-improvement trains on (`--prompts`); a prompt file holding a held-out ShapeWorld prompt is
    refused: training on it would leak into the before/after evaluation, which draws from the test split. Free text
    (a real checkpoint's prompts) is read where no label or audit needs the verifier."""
    free_text = "verifier" not in (config.audit, labeller(config) if config.labels == "verifier" else None)
    return training_prompt_specs(config.prompts, config.n_prompts, config.seed, config.data_seed, free_text,
                                 FREE_TEXT_HINT, "self-improvement trains on")


# -- stages --------------------------------------------------------------------------------------


def _check_settings(out: Path, config: SelfImproveConfig, n_prompts: int, model: dict[str, str | None]) -> None:
    """Refuse to continue a run made under other settings or by another model (`UnifiedModel.fingerprint`; a run
    from before it was recorded is not refused); the guard and gradient checkpointing are free (they change no
    number), so a stopped run can be continued with `--no-guard --resume`."""
    settings = {**config.to_dict(), "n_prompts_used": n_prompts, **model}
    claim_settings(out / "settings.json", settings, "selfimprove", defaults={"bf16": False, **model},
                   free=("guard", *RECOMPUTE_SETTINGS), write=distributed.is_main(), paths=path_settings(config))


def _evaluate(um: Any, config: SelfImproveConfig, out: Path, name: str, progress: bool) -> dict[str, Any]:
    """`unigap eval` (no critique) on held-out test prompts; the images go to OUT/images/<name>/."""

    def save(images: list[Image.Image]) -> None:
        if distributed.is_main():
            save_images(images, out / "images" / name)

    return evaluate(um, config.eval_n, config.seed, data_seed=config.data_seed, cfg_scale=config.cfg_scale,
                    temperature=config.temperature, critique=False, progress=progress, on_images=save)


def _epoch_row(um: Any, config: SelfImproveConfig, epoch: int, data: Data, record: dict[str, Any],
               joined: int, progress: bool = False) -> dict[str, Any]:
    """An epoch's log row, with the validation probe (generation accuracy and non-unification; its bar shown with
    `progress`: minutes of sampling on a real checkpoint)."""
    row = {"step": epoch, "epoch": epoch, **record, "sft_examples": len(data.sft), "pairs": len(data.pairs),
           "discard_pool": len(data.discard), "joined": joined}
    if config.epoch_eval_n:
        specs = prompt_specs("val", config.epoch_eval_n, config.seed, config.data_seed)
        _, records = generate_and_judge(um, specs, config.seed, config.sample_batch, config.cfg_scale,
                                        config.temperature, progress)
        row["val_generation_accuracy"] = summarize([r["verified"] for r in records], "value")["value"]
        row["val_nonunification"] = summarize([r["self_rejected"] for r in records], "value")["value"]
    return row


def _read_epochs(out: Path) -> list[dict[str, Any]]:
    return read_log(out / EPOCHS_FILE)


def _resume(um: Any, optimizer: torch.optim.Optimizer, out: Path) -> tuple[int, list[dict[str, Any]] | None]:
    """The last finished epoch (0 for a fresh run), its weights and optimiser state restored, and the log rows of the
    epochs up to it (None for a fresh run, or a checkpoint from before checkpoints held them)."""
    if not (out / "checkpoint" / "checkpoint.pt").is_file():
        return 0, None
    state = load_checkpoint(out / "checkpoint")
    named = dict(um.model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            named[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), state.get("epochs")


def _kept(out: Path, epoch: int) -> str:
    """What a run stopped in `epoch + 1` leaves to go on from."""
    if not epoch:
        return "no epoch had finished, so nothing was saved"
    return (f"epoch {epoch}'s adapter is kept in {out / 'adapter'} and its checkpoint in {out / 'checkpoint'} "
            f"(--resume continues from it; {EPOCHS_FILE} shows the epochs before)")


def _save_epoch(um: Any, optimizer: torch.optim.Optimizer, out: Path, epoch: int, epochs: list[dict]) -> None:
    """The figure, the adapter (replacing the previous epoch's) and the checkpoint (with the epochs' log rows), in
    that order: a run killed after its last checkpoint resumes past every epoch, so nothing would draw it again. The
    caller then logs the row."""
    epochs_plot(epochs, out / "figures" / "epochs.png")
    um.save_adapter(out / "adapter")  # each file replaced whole
    trainable = {name: p.detach().clone() for name, p in um.model.named_parameters() if p.requires_grad}
    save_checkpoint(out / "checkpoint", {"epoch": epoch, "trainable": trainable, "epochs": epochs,
                                         "optimizer": optimizer.state_dict(), "rng": rng_state()})


GUARD_ALPHA = 0.05  # the guard stops on evidence, not on a handful of audited images


def _alarm(config: SelfImproveConfig, audit: dict[str, Any]) -> dict[str, Any] | None:
    """What the guard stops on, for one audit: the accepted images correct less often than the model's images
    overall, precision below the base rate by a one-sided binomial test at `GUARD_ALPHA` (a replay round re-judges
    only the hardest prompts, where 0 of 1-5 accepted images may be correct by chance); None when it passes."""
    from scipy.stats import binomtest

    precision, threshold = audit["precision"], audit["base_rate"]["value"]
    if config.audit == "none" or precision["value"] is None or threshold is None:
        return None
    n = precision["n"]
    p = binomtest(round(precision["value"] * n), n, threshold, alternative="less").pvalue  # (≥ 0.5 when not below)
    if p >= GUARD_ALPHA:
        return None
    return {"precision": precision["value"], "n": n, "threshold": threshold, "p": p, "alpha": GUARD_ALPHA,
            "round": audit["round"], "epoch": audit["epoch"]}


def _guard(out: Path, config: SelfImproveConfig, audits: list[dict[str, Any]], before: dict[str, Any] | None) -> None:
    """Stop the run (`GuardStopped`, after writing `selfimprove.json`) when the latest audit raises the alarm
    (`_alarm`); the adapter in OUT is then the one trained before that audit."""
    alarm = _alarm(config, audits[-1]) if config.guard else None
    if alarm is None:
        return
    last_epoch = alarm["epoch"]
    epochs = _read_epochs(out)
    earlier = read_record(out / RESULT_FILE)  # a finished --no-guard run's result, resumed with the guard: kept
    finished = earlier is not None and (earlier.get("guard") or {}).get("stopped") is False
    if distributed.is_main() and not finished:
        write_json(out / RESULT_FILE, _result(config, before, None, epochs, audits, {"stopped": True, **alarm}))
    trained = max((row["epoch"] for row in epochs), default=0)  # beyond last_epoch: a --no-guard run resumed with it
    kept = f"the adapter of epoch {last_epoch} is kept in {out / 'adapter'}" if last_epoch else "no adapter was trained"
    if trained > last_epoch:
        kept = f"{out / 'adapter'} holds epoch {trained}'s adapter, trained past this audit without the guard"
    if finished:
        kept += f", and {out / RESULT_FILE} the result of that finished run"
    raise GuardStopped(
        f"guard: label precision {alarm['precision']:.2f} (n = {alarm['n']}) against the {config.audit} is below the "
        f"base rate {alarm['threshold']:.2f} of the model's own images after labelling round {alarm['round']} "
        f"(one-sided binomial p = {alarm['p']:.2g}): stopped; {kept} (--resume --no-guard goes on past it)"
    )


# -- results -------------------------------------------------------------------------------------


HEADLINE = {"generation_accuracy": "generation", "understanding_accuracy": "understanding",
            "nonunification": "nonunification", "weak_generation": "weak_generation"}  # selfimprove.json's → eval's
VALUE_KEY = {section: key for section, key, _ in HEADLINES}  # each eval metric's value key


def headline(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The four numbers of an eval report that self-improvement moves, as metric objects with their 95% CI (None:
    not measured)."""
    if report is None:
        return None
    return {name: with_ci(dict(report[section]), VALUE_KEY[section]) for name, section in HEADLINE.items()}


def win_rate(um: Any, before: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The understanding win rate (`unigap.evaluate.critique.win_rate`) on the base model's held-out images, which
    the before-evaluation kept (None where they are gone)."""
    records = before["records"]["generation"]
    images = load_images(out / "images" / "before", len(records))
    return None if images is None else understanding_win_rate(um, images, records)  # (eval's batches: 32)


def _result(config: SelfImproveConfig, before: dict[str, Any] | None, after: dict[str, Any] | None,
            epochs: list[dict[str, Any]], audits: list[dict[str, Any]], guard: dict[str, Any] | None) -> dict[str, Any]:
    judge = None if config.audit == "none" else get_judge(config.audit, independent=True).describe()
    result: dict[str, Any] = {
        "config": {**config.to_dict(), "judge": judge},  # the audit's judge: name, directory, threshold
        "trained_parameters": f"LoRA on the LLM{''.join(' + ' + m for m in TRAINABLE[config.trainable])}",
        "before": headline(before),
        "after": headline(after),
        "epochs": epochs,
        "audits": audits,
        # a run that went on: the first audit that would have stopped it (under --no-guard), or null
        "guard": guard or {"stopped": False, "rule": "stop when audited precision < audited base rate (one-sided "
                                                     f"binomial p < {GUARD_ALPHA})",
                           "alarm": next(filter(None, (_alarm(config, audit) for audit in audits)), None)},
        "win_rate": None,  # measured after training (`win_rate`); none for a run the guard stopped
    }
    if after is not None:
        pairs = {"generation_accuracy": ("generation", "verified"), "nonunification": ("generation", "self_rejected"),
                 "understanding_accuracy": ("understanding", "correct")}
        result["paired"] = {
            name: paired_difference([r[key] for r in before["records"][kind]], [r[key] for r in after["records"][kind]])
            for name, (kind, key) in pairs.items()
        }
    return result
