"""`unigap eval`: measure a model's understanding, generation and the gap between them, as JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from unigap.errors import UserError
from unigap.cli.common import (
    ADAPTER_OPTION,
    EDIT_CFG_OPTION,
    EDIT_IMAGE_CFG_OPTION,
    JUDGE_OPTION,
    MODEL_OPTION,
    edit_guidance_kwargs,
    load,
    print_table,
    require_non_negative,
    require_positive,
    require_sampling,
    warn_other_partition,
)

app = typer.Typer()


@app.command("eval")
def eval_command(
    model: str = MODEL_OPTION,
    adapter: Path | None = ADAPTER_OPTION,
    n: int = typer.Option(200, "--n", help="Held-out questions, and held-out prompts (one image each)."),
    seed: int = typer.Option(0, "--seed", help="Draws the items, questions and image samples."),
    data_seed: int = typer.Option(
        0, "--data-seed", help="Seed of the train/val/test partition (the training data's seed)."
    ),
    out: Path = typer.Option(..., "--out", help="Report file (JSON), written atomically."),
    batch_size: int = typer.Option(32, "--batch-size", help="Items per model call."),
    cfg: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale for generation (1 = none)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Image sampling temperature (0 = greedy)."),
    split: str = typer.Option("test", "--split", help="Held-out split: test, or val to choose settings."),
    prompts: str | None = typer.Option(None, "--prompts", help="A prompt file (text lines, or JSONL with a "
                                       '"prompt" field) for generation, instead of held-out prompts (at most n).'),
    questions: Path | None = typer.Option(None, "--questions", help="Your understanding data (JSONL/CSV/Parquet "
                                          "or a save_to_disk folder: image, question, answer or answers) instead "
                                          "of held-out questions (at most n); adds the VQA soft score."),
    judge: str = JUDGE_OPTION,
    edit_cfg: float | None = EDIT_CFG_OPTION,
    edit_image_cfg: float | None = EDIT_IMAGE_CFG_OPTION,
) -> None:
    """Write the metrics report to OUT and print a summary table."""
    from unigap import distributed
    from unigap.evaluate import check_output_file, evaluate, save_report, summary_table, vq_fidelity
    from unigap.evaluate.data import HELD_OUT_SPLITS, SPLITS
    from unigap.manifest import manifest

    require_positive("--n", n)
    require_positive("--batch-size", batch_size)
    require_sampling(cfg, temperature)
    require_non_negative("--seed", seed)
    require_non_negative("--data-seed", data_seed)
    edit_guidance = edit_guidance_kwargs(edit_cfg, edit_image_cfg)
    check_output_file(out, ".json")
    if split not in HELD_OUT_SPLITS:
        raise UserError(f"--split must be one of {', '.join(HELD_OUT_SPLITS)}, got {split!r}")
    if prompts in SPLITS:  # (the report would record --split's prompts, not these)
        raise UserError(f"--prompts {prompts}: eval's held-out prompts are chosen by --split; --prompts takes a file")
    if prompts is not None and not Path(prompts).is_file():  # (prompt_specs' message offers splits, which eval refuses)
        what = "a directory, not a" if Path(prompts).is_dir() else "no such"
        raise UserError(f"--prompts {prompts}: {what} prompt file")
    from unigap.evaluate.data import FREE_TEXT_HINT, prompt_lines, prompt_specs
    from unigap.data.understanding import read_understanding_data

    # a bad file fails before the load
    from unigap.evaluate.judges import check_judge_name, get_judge

    check_judge_name(judge, independent=True)
    if prompts is None or questions is None:  # (a split's prompts or questions: a file's are the user's)
        warn_other_partition(model, data_seed)
    specs = None if prompts is None else prompt_specs(prompts, n, seed, data_seed, free_text=judge != "verifier",
                                                      free_text_hint=FREE_TEXT_HINT)
    items = None if questions is None else read_understanding_data(questions, n)
    chosen = get_judge(judge, independent=True)  # loaded (a local judge calibrated) before anything is written
    settings = {"model": model, "prompts": prompts, "questions": None if questions is None else str(questions),
                "adapter": None if adapter is None else str(adapter), "n": n, "seed": seed, "data_seed": data_seed,
                "batch_size": batch_size, "cfg": cfg, "temperature": temperature, "split": split, "judge": judge,
                **edit_guidance}
    with manifest("eval", settings, seeds=[seed], judge=chosen.describe()) as record:
        um = load(model, adapter)
        um.prompts.check_texts(prompts=prompt_lines(prompts),
                               questions=[(item.where, item.question.text) for item in items or ()])
        record["device"] = str(um.device)
        report = evaluate(
            um, n, seed, data_seed=data_seed, batch_size=batch_size, cfg_scale=cfg, temperature=temperature, split=split,
            prompts=specs, questions=items, judge=chosen, **edit_guidance,
        )
        # the VQ is never trained after pretraining (adapters leave it alone), so this reads the base model's tokenizer
        report["vq_reconstruction"] = vq_fidelity(um, n, seed, data_seed, batch_size, split=split)
    if not distributed.is_main():  # under `accelerate launch` the processes share the batches; one writes
        return
    report["config"].update(model=model, adapter=None if adapter is None else str(adapter))
    report["manifest"] = record
    save_report(report, out)
    print_table(summary_table(report))
    if "judged_generation" in report:
        judged = report["judged_generation"]
        extra = "".join(f", mean {key[5:]} {value['mean']:.3f}" for key, value in judged.items()
                        if key.startswith("mean_") and value["mean"] is not None)
        typer.echo(f"generation accuracy by {judged['judge']}: {judged['accuracy']:.3f} (n = {judged['n']}{extra})"
                   if judged["accuracy"] is not None else f"{judged['judge']} decided no image")
    typer.echo(f"wrote {out}")
