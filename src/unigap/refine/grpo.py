"""`unigap refine train`: R3's GRPO of generation, reflection and refinement, on a LoRA, resumable.

The "tree" schedule (SPEC §3): even rollouts train the generation stage (G images of each of P train prompts, a group
each); their images replace the rollout buffer (R3 clears it at each generation step), split into perfect (the
verifier's score 1, or the reward judge accepts) and imperfect; odd rollouts draw one buffered image per group
(`perfect_fraction` of them perfect), so they start from the current policy's images, and roll out G reflect +
refine branches from it, so each stage has its own group baseline (`unigap.refine.rollout`).
`stages="generate"` trains the generation stage alone (every rollout a generation one, no buffer). `num_iterations`
AdamW steps per rollout, one by default as in R3 (betas (0.9, 0.95), no weight decay, linear warm-up then a constant
rate), gradients clipped at 1.
Training prompts are train-split prompts only; the reward is the verifier's graded score of each image, or a judge's
score (`GRPOConfig.reward`).

Before training and after, the refine loop runs on `eval_n` held-out prompts with the same seeds (`run_loop`), so
`grpo.json` holds the per-round accuracy of both and the paired change of the final accuracy.

Under `accelerate launch` each process rolls out every `world`-th group of a step and the gradients are summed
(`unigap.distributed`); the groups' results are gathered in group order, so the log, the rollout buffer and the
weights are those of one process (the policy runs in eval mode: no dropout draws masks per process).

With a judge as the reward, the verifier audits the generation steps' images, and the guard stops the run (exit 3)
when the audited accuracy of the latest `audit_window` generation steps is below the first window's (`audit_guard`):
a reward that rises while the independent judge passes fewer images is being fooled (docs/experiments.md).

Files in OUT: log.jsonl (one row per step: `logged_keys`), checkpoint/checkpoint.pt (tensors, optimizer,
scheduler, RNG, the rollout buffer, the audits; atomic), train_config.json, the PEFT adapter, grpo.json (with
`guard`: its rule, or the record of the stop, `after` then null and no adapter written; and `alarm`, the first
stop the rule would have made, null if none, kept when a stopped run is continued with `--no-guard`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_constant_schedule_with_warmup

from unigap import distributed
from unigap.atomic import cached_json, claim_settings, path_settings, write_json
from unigap.errors import GuardStopped, UserError
from unigap.evaluate.data import distinct_prompts, held_out_pairs
from unigap.evaluate.generation import batch_seed
from unigap.evaluate.stats import paired_difference, welch
from unigap.manifest import read_record
from unigap.progress import progress
from unigap.model.checkpoint import model_identity
from unigap.model.editing import EDIT_SETTINGS
from unigap.refine.grpo_config import VERIFIER_REWARDS, GRPOConfig
from unigap.refine.loop import run_loop
from unigap.refine.metrics import round_metrics
from unigap.refine.rollout import (
    VERIFIER_REWARD, WEIGHT, Buffered, Rollout, batch_scale, generation_group, refine_group, reward_for, reward_key,
    rollout_loss,
)
from unigap.train.loop import (
    StepCallback, TrainingDiverged, checkpoint_step, holds_run, kept_checkpoint, optimizer_step, refuse_unless_resuming,
    run_steps,
)

def logged_keys(reward: str = VERIFIER_REWARD) -> tuple[str, ...]:
    """Every key a log row may hold, with the image reward named as `reward_key` names it (TRL's GRPO names:
    `reward`, `reward_std`, `frac_reward_zero_std`, `rewards/<reward>/mean|std`, `kl` only when β > 0, `entropy`,
    `clip_ratio/*`, `completions/mean_length|clipped_ratio`, per stage; beyond TRL's, `entropy/text` of the
    reflections and `entropy/image` of the images, each over its own tokens). Unlike TRL's, a row's stds are within
    each group of G samples, averaged over the step's groups (means are over all samples, as TRL's); with
    `num_iterations` > 1 the rewards are logged at the step that rolled out, the loss's keys at every step."""
    image = reward_key(reward)
    return (
        "step", "stage", "lr", "loss", "grad_norm", "kl", "entropy", "entropy/text", "entropy/image",
        "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "generate/reward",
        "generate/reward_std", "generate/frac_reward_zero_std", f"generate/rewards/{image}/mean",
        f"generate/rewards/{image}/std", "generate/audit/verifier_accuracy", "generate/audit/precision", "refine/reward",
        "refine/reward_std", "refine/frac_reward_zero_std", "refine/rewards/format/mean", "refine/rewards/format/std",
        "refine/rewards/delta/mean", "refine/rewards/delta/std", f"refine/rewards/{image}/mean",
        f"refine/rewards/{image}/std", "refine/stop_rate", "completions/mean_length", "completions/clipped_ratio",
    )  # fmt: skip


LOGGED_KEYS = logged_keys()  # with the default reward, the verifier's
RESULT_FILE = "grpo.json"
# what trains (as `unigap.model.UnifiedModel.add_lora` sets it up): the refine stage's image tokens come from the
# generation head, which every recorded run trained in full beside the LoRA
TRAINED = "LoRA on the LLM + the generation head (in full)"
SETTINGS_FILE = "settings.json"  # the run's settings, checked on --resume before the loop's "before" part is reused
# switches that change no number (only whether the run goes on; `micro_batch_size` only rounding: a run that ran out
# of memory resumes in smaller spans)
FREE_SETTINGS = ("guard", "micro_batch_size")
TRAIN_PROMPTS = 1000  # distinct train-split prompts groups are drawn from (all of them where there are fewer)
STEP_STREAM = 11
GUARD_P = 0.01  # one-sided Welch p below which a falling audit stops the run
AUDIT_KEY = "generate/audit/verifier_accuracy"


def audit_guard(audits: list[tuple[float, float]], window: int) -> dict[str, Any] | None:
    """The guard's verdict on the (audited accuracy, reward) of each generation step so far, checked as each window
    of `window` steps completes: None to go on, or the record of the stop when the latest window's accuracy is below
    the first window's (one-sided Welch test over the steps, p < `GUARD_P`)."""
    if len(audits) < 2 * window or len(audits) % window:
        return None
    first, latest = np.array(audits[:window]), np.array(audits[-window:])
    p = welch(latest[:, 0], first[:, 0], alternative="less")["p"]
    if p is None and window > 1 and latest[:, 0].max() < first[:, 0].min():
        p = 0.0  # both windows constant (Welch's test undefined) and the latest lower: a certain fall
    if p is None or not p < GUARD_P:  # undefined (both windows constant and not falling) goes on
        return None
    return {"generation_steps": len(audits), "window": window, "p": p, "threshold": GUARD_P,
            "verifier_accuracy": [float(first[:, 0].mean()), float(latest[:, 0].mean())],
            "reward": [float(first[:, 1].mean()), float(latest[:, 1].mean())]}


def first_alarm(audits: list[tuple[float, float]], window: int) -> dict[str, Any] | None:
    """The first stop `audit_guard` would have made on these audits, window by window: recorded whether the guard
    was on or not, so a run continued with `--no-guard` (or run without it) still says when it would have stopped."""
    for end in range(2 * window, len(audits) + 1, window):
        if (verdict := audit_guard(audits[:end], window)) is not None:
            return verdict
    return None


class GRPOTrainer:
    """R3's GRPO on a fresh LoRA of `um`; `train()` runs (or resumes) to `config.steps`."""

    def __init__(self, um: Any, config: GRPOConfig, out_dir: str | Path, report_to: tuple[str, ...] = ()) -> None:
        self.um, self.config, self.out_dir, self.report_to = um, config, Path(out_dir), report_to
        self.prompts = distinct_prompts(TRAIN_PROMPTS, config.seed, config.data_seed, split="train")
        self.reward = reward_for(config.reward)  # a local judge loads (and calibrates) here, before the seeded init
        torch.manual_seed(config.seed)
        um.add_lora(config.lora_rank, config.lora_alpha, config.lora_dropout)  # and the generation head: TRAINED
        self.named = [(name, p) for name, p in um.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=config.lr, weight_decay=0.0,
                                           betas=(config.adam_beta1, config.adam_beta2))
        self.scheduler = get_constant_schedule_with_warmup(self.optimizer, config.warmup_steps)
        self.buffer: list[Buffered] = []
        self.audits: list[tuple[float, float]] = []  # (verifier accuracy, reward) per generation step, with a judge
        self.guard: dict[str, Any] | None = None  # the guard's record once it stops the run
        # this process's groups of the latest rollout (group, rollout, the sampling policy's log-probs once known),
        # and its stage: `num_iterations` steps update on one rollout
        self.rollouts: list[tuple[int, Rollout, list[list[torch.Tensor]] | None]] = []
        self.stage = "generate"
        self.rolled_out_at: int | None = None  # every process's step of the latest rollout (a share may be empty)
        self.step = 0

    def train(self, resume: bool = False, show_progress: bool = True,
              on_step: StepCallback | None = None) -> None:
        """Run to `config.steps`; with `resume`, continue from the checkpoint (the rollout buffer included);
        `on_step(done, record)` after each step (the study's bar)."""
        c = self.config

        def step(index: int) -> dict[str, Any]:
            self.step = index
            return self._train_step()

        def restore(state: dict[str, Any]) -> None:
            self.buffer = [Buffered(prompt, tuple(tokens), score) for prompt, tokens, score in state["buffer"]]
            self.audits = [tuple(a) for a in state.get("audits", [])]
            self._check_guard(int(state["step"]))  # a checkpoint written at the step the guard stopped stops again

        def after(done: int, record: dict[str, Any]) -> None:
            update(done, _postfix(record))
            if on_step is not None:
                on_step(done, record)
            if AUDIT_KEY in record:
                self._check_guard(done)

        with progress("GRPO", c.steps, show_progress) as update:
            self.step = run_steps(
                self.out_dir, c, self.named, self.optimizer, self.scheduler, c.steps, c.checkpoint_every,
                step, resume, self.report_to, f"{self.out_dir.name}-grpo",
                extra_state=lambda: {"buffer": [(b.prompt, list(b.tokens), b.score) for b in self.buffer],
                                     "audits": [list(a) for a in self.audits]},
                restore_extra=restore, on_step=after, bf16=c.bf16, free_settings=FREE_SETTINGS,
                required_settings=EDIT_SETTINGS if self.um.supports_editing else (),  # (regenerating never edits)
            )  # fmt: skip
        if distributed.is_main():
            self.um.save_adapter(self.out_dir)

    def _check_guard(self, done: int) -> None:
        """Raise `GuardStopped` (its record in `self.guard`) when the audit guard stops the run after `done` steps."""
        c = self.config
        verdict = audit_guard(self.audits, c.audit_window) if c.guard else None
        if verdict is None:
            return
        self.guard = {"stopped": True, **verdict, "step": done}
        (a0, a1), (r0, r1) = verdict["verifier_accuracy"], verdict["reward"]
        kept = kept_checkpoint(self.out_dir, checkpoint_step(done, c.checkpoint_every, c.steps), "the last checkpoint",
                               "--resume --no-guard")
        raise GuardStopped(
            f"guard: the verifier passed {a0:.3f} of the training images in the first {c.audit_window} generation "
            f"steps and {a1:.3f} in the latest {c.audit_window} (one-sided Welch p {verdict['p']:.2g} < {GUARD_P}) "
            f"while the {c.reward} reward went {r0:.3f} → {r1:.3f}: stopped after {done} steps; {kept}")

    def _start(self, rng: np.random.Generator) -> Buffered:
        """A buffered image for a refine group: perfect with probability `perfect_fraction` (when there is one)."""
        perfect = [b for b in self.buffer if self.reward.perfect(b.score)]
        imperfect = [b for b in self.buffer if not self.reward.perfect(b.score)]
        pool = perfect if (rng.random() < self.config.perfect_fraction and perfect) or not imperfect else imperfect
        return pool[rng.integers(len(pool))]

    def _roll_out(self) -> list[dict[str, float]]:
        """A new rollout of the step's groups (this process's share kept in `self.rollouts`); every group's rollout
        metrics in group order. Every process draws every group's prompt or start image (the one-process draws)."""
        c = self.config
        rng = np.random.default_rng([c.seed, STEP_STREAM, self.step])
        self.rolled_out_at = self.step
        turn = self.step // c.num_iterations  # R3's tree alternates the stages rollout by rollout
        self.stage = "generate" if c.stages == "generate" or turn % 2 == 0 or not self.buffer else "refine"
        if self.stage == "generate":
            starts: list[Any] = [int(rng.integers(len(self.prompts))) for _ in range(c.prompts_per_step)]
        else:
            starts = [self._start(rng) for _ in range(c.prompts_per_step)]

        def mine() -> list[tuple[int, dict[str, float], list[Buffered], list[tuple[str, tuple]]]]:
            self.rollouts = []
            for group in distributed.shard(np.arange(c.prompts_per_step)).tolist():
                seed, start = batch_seed(c.seed, self.step * 1000 + group * 2), starts[group]
                if self.stage == "generate":
                    rollout = generation_group(self.um, start, self.prompts[start], c, seed, self.reward)
                else:
                    rollout = refine_group(self.um, start, self.prompts[start.prompt], c, seed, self.reward)
                self.rollouts.append((group, rollout, None))
            return [(group, rollout.metrics, rollout.buffered, [(part.kind, part.rewards) for part in rollout.parts])
                    for group, rollout, _ in self.rollouts]

        groups = sorted((row for rows in distributed.gather_results(mine) for row in rows), key=lambda row: row[0])
        if c.scale_rewards == "batch":  # each kind's rewards over every group of the step, every process's
            rewards: dict[str, list[float | None]] = {}
            for _, _, _, parts in groups:
                for kind, values in parts:
                    rewards.setdefault(kind, []).extend(values)
            scaled = batch_scale([rollout for _, rollout, _ in self.rollouts], rewards)
            self.rollouts = [(group, rollout, None)
                             for (group, _, _), rollout in zip(self.rollouts, scaled, strict=True)]
        if c.stages == "tree" and self.stage == "generate":  # R3's buffer: the latest generation step's images
            self.buffer = [b for _, _, buffered, _ in groups for b in buffered]
        return [metrics for _, metrics, _, _ in groups]

    def _train_step(self) -> dict[str, Any]:
        c = self.config
        fresh = self.rolled_out_at is None or self.step % c.num_iterations == 0
        metrics = self._roll_out() if fresh else []
        record: dict[str, Any] = {"step": self.step, "stage": self.stage, "lr": self.scheduler.get_last_lr()[0]}

        def update() -> list[tuple[int, float, dict[str, float]]]:
            mine = []
            for i, (group, rollout, old) in enumerate(self.rollouts):
                loss, old, own = rollout_loss(rollout, c, old, c.prompts_per_step)  # (back-propagated)
                self.rollouts[i] = (group, rollout, old)
                mine.append((group, loss, own))
            return mine

        groups = sorted((row for rows in distributed.gather_results(update) for row in rows), key=lambda row: row[0])
        if not all(np.isfinite([loss for _, loss, _ in groups])):
            raise TrainingDiverged(f"non-finite GRPO loss at step {self.step}: training stopped")
        distributed.sum_gradients([p for _, p in self.named])
        metrics = [m | own for m, (_, _, own) in zip(metrics, groups, strict=True)] if metrics else \
            [own for _, _, own in groups]
        record |= step_means(metrics)
        record["loss"] = float(np.mean([loss for _, loss, _ in groups]))
        record["grad_norm"] = optimizer_step(self.named, self.optimizer, self.scheduler, self.config.max_grad_norm,
                                             self.step)
        if AUDIT_KEY in record:
            self.audits.append((record[AUDIT_KEY], record["generate/reward"]))
        return record


def step_means(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the groups of a step that logged it, a group weighing `WEIGHT + key` (default 1): so
    a mean over images is per image when groups made different numbers of them."""
    keys = sorted({k for m in metrics for k in m if not k.startswith(WEIGHT)})
    return {k: float(np.average([m[k] for m in metrics if k in m],
                                weights=[m.get(WEIGHT + k, 1.0) for m in metrics if k in m])) for k in keys}


def _postfix(record: dict[str, Any]) -> str:
    """The progress bar's summary of a step: its stage's reward, and the verifier's audit where there is one."""
    reward = record.get(record["stage"] + "/reward")  # (a step reusing a rollout has no reward of its own)
    text = f"{record['stage']} " + (f"loss {record['loss']:.3f}" if reward is None else f"reward {reward:.3f}")
    audit = record.get(AUDIT_KEY)
    return text if audit is None else f"{text}, verifier {audit:.3f}"


def _loop_eval(um: Any, config: GRPOConfig, show_progress: bool) -> dict[str, Any]:
    """The refine loop on `eval_n` held-out prompts (fixed seeds): per-round metrics and per-prompt final verdicts."""
    specs = [spec for spec, _ in held_out_pairs(config.eval_n, config.seed, config.data_seed, split=config.eval_split)]
    trajectories = run_loop(um, specs, config.eval_rounds, "self", "auto", config.seed, config.cfg_scale,
                            config.temperature, progress=show_progress, edit_guidance=config.edit_guidance)
    return {"rounds": round_metrics(trajectories, config.eval_rounds),
            "final": [t.verdict_after(config.eval_rounds) for t in trajectories]}


def train_grpo(um: Any, config: GRPOConfig, out_dir: str | Path, resume: bool = False,
               report_to: tuple[str, ...] = (), show_progress: bool = True,
               on_step: StepCallback | None = None) -> dict[str, Any]:
    """The refine loop before training, GRPO (`on_step` as `GRPOTrainer.train`'s), the loop after it; `grpo.json`
    (written last) in OUT."""
    out = Path(out_dir)
    refuse_unless_resuming(out, resume)
    if (out / SETTINGS_FILE).exists() and not resume:
        raise UserError(f"{out} already holds a refine train run: pass --resume to continue it, or use a new --out")
    distributed.wait_for_everyone()  # every process has looked at OUT before the main one writes settings.json
    main = distributed.is_main()
    show_progress = show_progress and main
    # the loop before training is reused on --resume only under the settings that produced it (`EDIT_SETTINGS` for
    # why they are no defaults where the model edits). Written once, at the start: a checkpoint from before this file
    # existed is checked against its own settings when training resumes
    required = EDIT_SETTINGS if um.supports_editing else ()
    identity = model_identity(um)  # the base model, before any adapter of a resumed run is loaded
    defaults = {f.name: f.default for f in fields(GRPOConfig) if f.name not in required} | identity
    settings = {k: v for k, v in config.to_dict().items() if k not in FREE_SETTINGS} | identity
    claim_settings(out / SETTINGS_FILE, settings, "refine train", defaults, write=main and not holds_run(out),
                   paths=path_settings(config))
    before = cached_json(out / "parts" / "before.json", lambda: _loop_eval(um, config, show_progress),
                         write=main) if config.eval_n else None
    trainer = GRPOTrainer(um, config, out, report_to)
    report: dict[str, Any] = {"config": config.to_dict(), "trained_parameters": TRAINED, "before": before,
                              "after": None, "guard": None}
    if config.reward not in VERIFIER_REWARDS:
        report["guard"] = {"stopped": False, "active": config.guard, "rule": f"stop when the verifier's accuracy of "
                           f"the latest {config.audit_window} generation steps < the first's (Welch p < {GUARD_P})"}

    def write() -> None:
        if main:
            write_json(out / RESULT_FILE, report)

    stopped: GuardStopped | None = None
    try:
        trainer.train(resume, show_progress, on_step)  # a finished run: restored, not rerun
    except GuardStopped as exc:
        stopped = exc
    if report["guard"] is not None:  # a judge reward: the stop's record, if any, and the rule's first alarm
        report["guard"] |= {**(trainer.guard or {}), "alarm": first_alarm(trainer.audits, config.audit_window)}
    if stopped is not None:
        earlier = read_record(out / RESULT_FILE)  # a finished --no-guard run's result, resumed with the guard: kept
        if earlier is not None and (earlier.get("guard") or {}).get("stopped") is False:
            raise GuardStopped(f"{stopped}; {out / RESULT_FILE} keeps the result of the finished run, trained past "
                               "this alarm without the guard") from None
        write()
        raise stopped
    report["after"] = after = _loop_eval(um, config, show_progress) if config.eval_n else None
    if before and after:
        report["change"] = paired_difference(before["final"], after["final"])
    write()
    return report
