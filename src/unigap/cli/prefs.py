"""`unigap prefs`: build preference pairs for multi-task DPO (rules in `unigap.prefs.build`).

torch/transformers are imported inside the command, so `unigap --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from unigap.cli.common import MODEL_OPTION, warn_other_partition
from unigap.progress import progress
from unigap.prefs.kinds import KINDS, MARGIN, check_output

app = typer.Typer(help="Preference pairs for multi-task DPO.", no_args_is_help=True)


@app.command()
def build(
    model: str = MODEL_OPTION,
    kind: str = typer.Option(..., "--kind", help=" | ".join(KINDS)),
    n: int = typer.Option(..., "--n", help="Number of pairs to keep."),
    seed: int = typer.Option(0, "--seed", help="Seed: the candidates drawn from the train split, their questions "
                             "and samples all follow from it."),
    data_seed: int = typer.Option(0, "--data-seed", help="The partition into train/val/test splits, as eval's: "
                                  "keep it at the one you evaluate on (default 0), so no pair is of a held-out "
                                  "prompt."),
    out: Path = typer.Option(..., "--out", help="Output file, .jsonl or .parquet."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (und answers; gen-real)."),
    margin: float = typer.Option(MARGIN, "--margin", help="Minimum score margin (und, gen-model by the verifier)."),
    fallback_gt: bool = typer.Option(False, "--fallback-gt", help="und: ground truth as chosen when the two "
                                     "samples' scores differ by less than --margin."),
    cfg_scale: float = typer.Option(5.0, "--cfg-scale", help="CFG scale for image sampling (1 = none)."),
    max_candidates: int | None = typer.Option(None, "--max-candidates", help="Candidates to try (default 4n)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Candidates per model call."),
    answer_form: str = typer.Option("any", "--answer-form", help="und: any (every question kind) | word | sentence "
                                    "(the same questions, answered in one word or in a full sentence)."),
    questions: Path | None = typer.Option(None, "--questions", help="und: your own questions (JSONL/CSV/Parquet or a "
                                          "save_to_disk folder: image, question, answer or answers) as candidates; "
                                          "answers scored by the VQA soft score."),
    prompts: Path | None = typer.Option(None, "--prompts", help="gen-model: your prompts (plain lines, JSONL with a "
                                        "`prompt` field, or GenEval's metadata) as candidates, in order."),
    judge: str = typer.Option("verifier", "--judge", help="gen-model: who scores the two images: verifier (graded, "
                              "kept by --margin) | clip:DIR | vlm:DIR (a local judge: kept when it accepts exactly "
                              "one; free-text prompts too)."),
) -> None:
    """Sample, score and filter pairs; write them with reference log-probs under the base model."""
    from unigap import distributed
    from unigap.errors import UserError
    from unigap.model import load_model
    from unigap.evaluate.judges import VERIFIER, get_judge
    from unigap.prefs.build import (BuildOptions, build_preferences, candidate_prompts, candidate_questions, shortfall,
                                    summary)
    from unigap.prefs.rows import check_replaceable, write_rows

    check_output(out)
    check_replaceable(out, questions, prompts)  # (a user's questions, a world sample's data: not pairs to replace)

    if fallback_gt and kind != "und":  # (the study passes it for every kind; a user means und pairs by it)
        raise UserError(f"--fallback-gt applies to und pairs (ground truth as the chosen answer); {kind} pairs have no "
                        "answers")
    options = BuildOptions(
        kind, n, seed, model, temperature, margin, fallback_gt, cfg_scale, max_candidates, batch_size, answer_form,
        None if questions is None else str(questions), None if prompts is None else str(prompts), judge, data_seed,
    )
    # a bad row, prompt line or judge directory fails before the model loads
    items = None if options.questions is None else candidate_questions(options)
    specs = None if options.prompts is None else candidate_prompts(options)
    chosen = None if judge == VERIFIER else get_judge(judge, independent=True)
    if specs is None and items is None:  # (the train split's candidates: a file's are the user's)
        warn_other_partition(model, data_seed)
    um = load_model(model)
    main = distributed.is_main()  # under `accelerate launch` the processes share the batches; one writes
    with progress(f"{kind} pairs", n, main) as update:
        rows = build_preferences(um, options, lambda kept, tried: update(kept, f"{tried} tried"), items, specs, chosen)
    if main:
        path = write_rows(out, rows)
        typer.echo(f"wrote {len(rows)} pairs to {path}: {summary(rows)}")
        if len(rows) < n:
            short = shortfall(options, len(items or specs or ()))  # (of a file: its rows read as candidates)
            typer.echo(f"unigap: warning: {len(rows)} of the {n} pairs asked for: {short}", err=True)


@app.command()
def export(
    source: Path = typer.Argument(..., help="A preference file written by `prefs build` (.jsonl/.parquet)."),
    out: Path = typer.Option(..., "--out", help="Output file, .jsonl (images in <stem>_images/) or .parquet."),
    model: str | None = typer.Option(None, "--model", help="Generation pairs only: the model that built them "
                                     "(its VQ decodes their images)."),
) -> None:
    """Write the pairs in TRL's column convention (prompt, chosen, rejected, images; generation pairs as prompt,
    chosen_image, rejected_image), loadable with `datasets` and TRL's DPOTrainer, and by `unigap train`."""
    from unigap.errors import UserError
    from unigap.prefs.rows import check_one_convention, check_replaceable, read_located_rows, row_image, write_rows
    from unigap.prefs.trl import check_ids, check_trl_export, is_trl_row, to_trl

    check_output(out)
    if out.resolve() == source.resolve():
        raise UserError("--out must differ from the source file")
    check_replaceable(out)
    located = read_located_rows(source)
    rows = [row for _, row in located]
    check_one_convention(source, located)
    if is_trl_row(rows[0]):
        raise UserError(f"{source} is already in TRL's convention")
    check_trl_export(rows, model)
    decoded: list = [(None, None)] * len(rows)
    if model is not None and any(row["kind"] != "und" for row in rows):
        import torch

        from unigap.model import load_model

        um = load_model(model)
        for where, row in located:
            if row["kind"] != "und":
                check_ids(um, where, row)  # another model's tokens: one line, before anything is written
        for i, row in enumerate(rows):
            if row["kind"] != "und":
                decoded[i] = tuple(um.decode_tokens(torch.tensor([row["chosen_ids"], row["rejected_ids"]])))
    trl = [to_trl(row, row_image(row, source.parent, where) if row["kind"] == "und" else None, *images)
           for (where, row), images in zip(located, decoded, strict=True)]
    path = write_rows(out, trl)
    typer.echo(f"wrote {len(trl)} pairs in TRL's convention to {path}")
