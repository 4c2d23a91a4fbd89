"""User mistakes found by trying every command as a careless user would: each is one `unigap: error:` line, exit 2,
before any work, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigap.cli import main
from unigap.errors import UserError


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["world", "sample", "--n", "2", "--seed", "0"],
    ["selfimprove"], ["refine"], ["refine", "train"], ["pretrain", "--quick"], ["study", "--quick"], ["tune"],
    ["train", "--model", "tiny", "--objective", "sft", "--gen-data", "x.jsonl"],
    ["diagnose", "--model", "tiny", "--und", "u.jsonl", "--gen", "g.jsonl"],
    ["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2"],
])
def test_an_out_below_a_file_fails_before_any_work(tmp_path: Path, capsys, command: list[str]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x\n")
    out = blocker / ("x.jsonl" if command[0] == "prefs" else "x")
    code, err = _run(capsys, [*command, "--out", str(out)])
    assert code == 2 and err == f"unigap: error: cannot create {out}: {blocker} is a file\n"
    assert blocker.read_text() == "x\n"


def test_an_out_name_too_long_for_its_temporaries_fails_before_any_work(tmp_path: Path, capsys) -> None:
    """A file name that fits the file system's 255 bytes but not with the temporaries it is written through (a
    preference file's pending list, "..NAME.pending.tmp.XXXXXXXX.tmp") failed at the end of the run, its work lost."""
    from unigap.atomic import indexed_files_atomically

    fits = tmp_path / ("r" * 222 + ".jsonl")  # 228 bytes: 255 with the temporaries' 27
    with indexed_files_atomically(tmp_path, {fits.name: ["image"]}) as stage:  # (how `prefs build` writes it)
        (stage / fits.name).write_text("{}\n")
    assert fits.read_text() == "{}\n"
    out = tmp_path / ("r" * 223 + ".jsonl")
    code, err = _run(capsys, ["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2", "--out", str(out)])
    assert code == 2 and err == (f"unigap: error: cannot create {'r' * 40}… (229 bytes): at most 228 bytes fit in "
                                 "the name of a file written here (with the temporaries it is written through)\n")
    assert sorted(tmp_path.iterdir()) == [fits]
    folder = tmp_path / ("d" * 245)  # a run's folder has no temporary named after it
    code, err = _run(capsys, ["world", "sample", "--n", "1", "--seed", "0", "--out", str(folder)])
    assert code == 0 and folder.is_dir()


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "--model", "tiny", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["eval", "--model", "tiny", "--data-seed", "-1"], "--data-seed must be >= 0, got -1"),
    (["refine", "--seed", "-1"], "seed must be >= 0, got -1"),
    (["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2", "--data-seed", "-1"],
     "seed and data seed must be >= 0, got 0 and -1"),
    (["refine", "--refiner", "regenerate", "--edit-cfg", "3"], "--refiner regenerate never edits"),
    (["refine", "train", "--no-guard"], "--no-guard applies to a judge's reward"),
    (["selfimprove", "--method", "sft", "--curriculum-at", "1"], "curriculum-at applies to the curriculum methods"),
    (["generate", "--model", "tiny", "--prompt", "a red circle", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["refine", "train", "--split", "train"], "--split (eval_split) must be test or val, got 'train'"),
    (["eval", "--model", "tiny", "--edit-cfg", "-1"], "--edit-cfg must be a number from 0 to 1e+06, got -1.0"),
    (["eval", "--model", "tiny", "--prompts", "train"], "--prompts train: eval's held-out prompts are chosen by --split"),
    (["refine", "--edit-image-cfg", "-2"], "--edit-image-cfg must be a number from 0 to 1e+06, got -2.0"),
    (["tune", "--seed", "-1"], "seed and data seed must be >= 0, got -1 and 0"),
    (["prefs", "build", "--model", "tiny", "--kind", "gen-model", "--n", "2", "--cfg-scale", "-1"],
     "cfg scale must be a number from 0 to 1e+06 (or None: no guidance), got -1.0"),
    (["prefs", "build", "--model", "tiny", "--kind", "gen-real", "--n", "2", "--temperature", "-1"],
     "temperature must be >= 0 (0 = greedy) and finite (a positive one from 1e-06 to 1e+06), got -1.0"),
    (["refine", "--model", "tiny", "--edit-cfg", "1e38"], "--edit-cfg must be a number from 0 to 1e+06, got 1e+38"),
    (["selfimprove", "--prompts", "test"], "--prompts test: the test split is held out"),
    (["selfimprove", "--prompts", "nowhere.txt"], "--prompts must be a split (train) or a prompt file; nowhere.txt is "
                                                  "neither"),  # (the held-out splits are refused)
    (["study", "--methods", ""], "unknown arm or family ''"),
    (["refine", "--prompts", "train"], "--prompts train: refine measures the loop on held-out prompts"),
    (["refine", "--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["train", "--model", "tiny", "--objective", "und-sft", "--out", ""], "--out is empty; give a path"),
    (["world", "sample", "--n", "1", "--seed", "0", "--out="], "--out is empty; give a path"),
    (["eval", "--model", "tiny", "--temperature", "inf"],
     "Invalid value for '--temperature': inf is not a finite number (see `unigap eval --help`)"),
    (["refine", "train", "--lr", "nan"], "Invalid value for '--lr': nan is not a finite number"),
    (["merge", "--und", "u", "--gen", "g", "--lambda", "-inf"], "Invalid value for '--lambda': -inf is not a finite"),
    (["generate", "--model", "tiny", "--prompt", "a red circle", "--seed", str(2**64)],
     f"Invalid value for '--seed': {2**64} does not fit in 64 bits (see `unigap generate --help`)"),
    (["eval", "--model", "tiny", "--n", "abc"], "Invalid value for '--n'"),
    (["tune", "--lrs", "1e-4,inf"],
     "expected comma-separated finite numbers, got '1e-4,inf' (see `unigap tune --help`)"),
    (["selfimprove", "--audit", "none", "--no-guard"], "with --audit none there is no audit to keep"),
    (["selfimprove", "--judge", "clip:/nonexistent"], "clip judge directory /nonexistent does not exist"),  # (alias)
    (["prefs", "build", "--model", "tiny", "--kind", "gen-real", "--n", "2", "--fallback-gt"],
     "--fallback-gt applies to und pairs"),
    (["refine", "--seed", "1", "--n", "3", "train"],
     "--seed, --n before `train` would be ignored: put `train`'s options after it (`unigap refine train --help`)"),
    (["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2", "--margin", "-1"],
     "margin must be in (0, 1] (scores lie in [0, 1]; 0 would keep ties), got -1.0"),
    (["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2", "--margin", "0"], "got 0.0"),
    (["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2", "--batch-size", "0"],
     "--batch-size must be positive, got 0"),
    (["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2", "--answer-form", "word", "--questions",
      "q.jsonl"], "--answer-form picks ShapeWorld's questions; with --questions your own are asked as written"),
    (["prefs", "build", "--model", "tiny", "--kind", "gen-model", "--n", "2", "--answer-form", "word"],
     "--answer-form applies to und pairs; gen-model pairs have no answers"),
    (["world", "sample", "--n", "2", "--seed", "0", "--size", "99999"],
     "--size must be from 32 to 8192 pixels, got 99999"),
    (["train", "--model", "tiny", "--strategy", "joint", "--und", "missing.jsonl"],
     "strategy 'joint' needs gen preference pairs (--gen FILE)"),
    (["eval", "--model", "tiny", "--prompts", "nofile.txt"], "--prompts nofile.txt: no such prompt file"),
    (["eval", "--model", "tiny", "--prompts", "."], "--prompts .: a directory, not a prompt file"),
    (["train", "--model", "tiny", "--objective", "unimrg", "--dtype", "bfloat16", "--bf16"],
     "bf16 autocast (--bf16, or bf16 = true in --config) runs over float32 weights"),
])
def test_bad_values_are_one_line_and_write_nothing(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / ("out.jsonl" if args[0] == "prefs" else "out")
    code, err = _run(capsys, [*args, "--out", str(out)])
    assert code == 2 and err.startswith("unigap: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_bf16_autocast_loads_float32_weights_as_trl_does() -> None:
    """On a GPU the default weights are bfloat16, under which --bf16's autocast would change nothing."""
    from unigap.cli.common import weights_dtype

    assert weights_dtype(None, bf16=True) == weights_dtype("float32", bf16=True) == "float32"
    assert weights_dtype(None, bf16=False) is None and weights_dtype("bfloat16", bf16=False) == "bfloat16"


def test_help_still_works_after_a_group_and_with_no_arguments(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["refine", "train", "--help"])
    assert exit_.value.code == 0 and "Usage: unigap refine train" in capsys.readouterr().out
    code, err = _run(capsys, [])
    assert code == 2 and err == ""  # the help, on stdout
    code, err = _run(capsys, ["nosuch"])
    assert code == 2 and err == "unigap: error: No such command 'nosuch'. (see `unigap --help`)\n"


def test_file_outputs_refuse_a_folder_name_or_another_format(tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x\n")
    cases = [
        (["eval", "--model", "tiny", "--out", f"{tmp_path}/new/"],
         "names a directory, and `unigap eval` writes a file"),
        (["compare", "a.json", "--out", f"{tmp_path}/new/"], "names a directory, and `unigap compare` writes a file"),
        (["generate", "--model", "tiny", "--prompt", "a red circle", "--out", f"{tmp_path}/new/"], "names a directory"),
        (["generate", "--model", "tiny", "--prompt", "a red circle", "--out", str(tmp_path / "a.jpg")], "writes PNG"),
        (["generate", "--model", "tiny", "--prompts", str(prompts), "--out", str(tmp_path / "g.png")],
         "names a file, and `unigap generate` writes a folder there"),
        (["refine", "--n", "1", "--out", str(tmp_path / "r.json")],
         "names a file, and `unigap refine` writes a folder"),
        (["refine", "train", "--out", str(tmp_path / "g.JSON")], "`unigap refine train` writes a folder there (a file"),
        (["generate", "--model", "tiny", "--prompts", str(prompts), "--out", str(tmp_path / "other")],
         "holds files of something else than an earlier grid run"),
    ]
    for args, message in cases:
        code, err = _run(capsys, args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "prompts.txt"]
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["x.txt"]


def test_a_grid_rerun_leaves_another_metadata_jsonl_and_its_images_alone(tmp_path: Path, capsys) -> None:
    """Any folder holding a metadata.jsonl passed for an earlier grid run, whose PNGs a rerun replaces: a user's
    image-folder dataset lost its images."""
    prompts, mine = tmp_path / "prompts.txt", tmp_path / "mine"
    prompts.write_text("a red circle\n")
    mine.mkdir()
    (mine / "0000.png").write_bytes(b"not ours")
    (mine / "metadata.jsonl").write_text('{"file_name": "0000.png", "label": "mine"}\n')
    code, err = _run(capsys, ["generate", "--model", "tiny", "--prompts", str(prompts), "--out", str(mine)])
    assert code == 2 and "holds files of something else than an earlier grid run" in err
    assert (mine / "0000.png").read_bytes() == b"not ours"


def test_a_config_with_inf_is_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "inf.toml"
    config.write_text("lr = inf\n")
    code, err = _run(capsys, ["selfimprove", "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 2 and err == "unigap: error: config key lr must be a finite number, got inf\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "setting", "says"), [
    (["selfimprove"], "temperature = 1e-38", "temperature must be >= 0 (0 = greedy) and finite (a positive one "
                                             "from 1e-06 to 1e+06), got 1e-38"),
    (["selfimprove"], "temperature = 1e39", "temperature must be >= 0 (0 = greedy) and finite (a positive one "
                                            "from 1e-06 to 1e+06), got 1e+39"),
    (["selfimprove"], "loss_cfg_scale = 1e38", "loss-cfg-scale must be a number from 0 to 1e+06 (or None"),
    (["refine", "train"], "edit_image_cfg_scale = 1e38", "edit-image-cfg-scale must be a number from 0 to 1e+06"),
    (["refine", "train"], "temperature = 1e-300", "temperature must be >= 0 (0 = greedy) and finite (a positive one"),
])
def test_a_config_sampling_setting_that_overflows_the_logits_is_one_line(tmp_path: Path, capsys, command, setting,
                                                                         says) -> None:
    """(Refused only once the model had loaded and sampled: torch's "probability tensor contains either inf, nan or
    element < 0".)"""
    config = tmp_path / "c.toml"
    config.write_text(setting + "\n")
    code, err = _run(capsys, [*command, "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 2 and err.startswith(f"unigap: error: {says}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["selfimprove"], ["refine", "train"]])
def test_a_config_seed_beyond_64_bits_is_one_line(tmp_path: Path, capsys, command: list[str]) -> None:
    """As the flags refuse it: torch's `manual_seed` raised its overflow once the model had loaded."""
    config = tmp_path / "big.toml"
    config.write_text("seed = 99999999999999999999999\n")
    code, err = _run(capsys, [*command, "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 2 and err == "unigap: error: config key seed does not fit in 64 bits, got 99999999999999999999999\n"
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bin.toml"
    config.write_bytes(b"\xff\xfe")
    code, err = _run(capsys, ["selfimprove", "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 2 and err.startswith(f"unigap: error: cannot read config {config}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_preference_outputs_that_cannot_be_written_fail_first(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "dd.jsonl"
    folder.mkdir()
    code, err = _run(capsys, ["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2", "--out", str(folder)])
    assert code == 2 and f"output path {folder} is a directory" in err and not any(folder.iterdir())
    (tmp_path / "xx_images").write_text("x\n")
    code, err = _run(capsys, ["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "2",
                              "--out", str(tmp_path / "xx.jsonl")])
    assert code == 2 and f"{tmp_path / 'xx_images'} is a file" in err and not (tmp_path / "xx.jsonl").exists()


def test_world_sample_without_questions_drops_an_earlier_runs_questions(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    for extra in (["--questions", "1"], []):
        with pytest.raises(SystemExit) as exit_:
            main(["world", "sample", "--n", "2", "--seed", "0", "--out", str(out), *extra])
        assert exit_.value.code in (0, None)
    assert (out / "samples.jsonl").is_file() and not (out / "questions.jsonl").exists()


@pytest.mark.parametrize(("command", "hint"), [
    (["eval", "--model", "tiny"], "(free text needs --judge clip:DIR or vlm:DIR)"),
    (["refine"], "(free text needs --judge clip:DIR or vlm:DIR)"),
    (["selfimprove"], "(free text needs --judge clip:DIR or vlm:DIR, or --judge none with --labels self or poor)"),
])
def test_a_free_text_prompt_names_the_fix(tmp_path: Path, capsys, command: list[str], hint: str) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na photo of a dog\n")
    code, err = _run(capsys, [*command, "--prompts", str(prompts), "--out", str(tmp_path / "out")])
    assert code == 2 and err.startswith(f"unigap: error: {prompts}:2: ") and err.count("\n") == 1, err
    assert err.rstrip().endswith(hint)
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_fewer_samples_leaves_no_earlier_images(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000007.png").write_text("a user's own file, named like a sample\n")
    for n in ("3", "2", "1"):
        with pytest.raises(SystemExit) as exit_:
            main(["world", "sample", "--n", n, "--seed", "0", "--out", str(out)])
        assert exit_.value.code in (0, None)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000007.png"]


def test_an_interrupted_rerun_leaves_the_earlier_dataset_whole(tmp_path: Path, capsys, monkeypatch) -> None:
    from unigap.world import dataset

    out = tmp_path / "w"
    main_ok = ["world", "sample", "--n", "3", "--questions", "1", "--out", str(out)]
    with pytest.raises(SystemExit):
        main([*main_ok, "--seed", "0"])
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = dataset.render_pil
    calls = []

    def render_then_stop(scene):  # ^C while the second image of the rerun is drawn
        calls.append(scene)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(scene)

    monkeypatch.setattr(dataset, "render_pil", render_then_stop)
    code, err = _run(capsys, [*main_ok, "--seed", "1"])
    assert code == 130 and err == "unigap: interrupted\n"
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier index still lists its own images: none was replaced, nothing was added


def test_a_directory_given_as_a_file_says_so(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "picture.png"
    folder.mkdir()
    code, err = _run(capsys, ["world", "verify", str(folder), "--prompt", "a red circle"])
    assert code == 2 and err == f"unigap: error: {folder} is a directory, not an image file\n"
    pairs = tmp_path / "pairs.jsonl"
    pairs.mkdir()
    code, err = _run(capsys, ["prefs", "export", str(pairs), "--out", str(tmp_path / "trl.jsonl")])
    assert code == 2 and err == f"unigap: error: {pairs} is a directory, not a preference file\n"


@pytest.mark.parametrize("command", [
    ["train", "--model", "tiny", "--strategy", "joint", "--und", "u.jsonl", "--gen", "g.jsonl"],
    ["merge", "--und", "u", "--gen", "g"], ["refine"], ["diagnose", "--model", "tiny", "--und", "u", "--gen", "g"],
])
def test_a_file_where_a_command_writes_a_directory_fails_first(tmp_path: Path, capsys, command: list[str]) -> None:
    existing = tmp_path / "g.png"
    existing.write_bytes(b"png")
    code, err = _run(capsys, [*command, "--out", str(existing)])
    assert code == 2 and err == f"unigap: error: --out {existing} is a file, not a directory\n"
    assert existing.read_bytes() == b"png"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nothing can be created")
@pytest.mark.parametrize("command", [["eval", "--model", "tiny"], ["world", "sample", "--n", "2", "--seed", "0"]])
def test_an_out_that_cannot_be_written_fails_first(capsys, command: list[str]) -> None:
    """(Permissions would not do for the test: root, which CI may be, ignores them.)"""
    out = Path("/proc/unigap-test/r.json" if command[0] == "eval" else "/proc/unigap-test")
    code, err = _run(capsys, [*command, "--out", str(out)])
    assert code == 2 and err == f"unigap: error: cannot write {out}: /proc is not writable\n"


def test_files_saved_with_a_byte_order_mark_read_as_without(tmp_path: Path) -> None:
    """Windows and Excel's "UTF-8" exports start with a BOM; it is not part of the first prompt or column name."""
    from unigap.data.tables import read_table
    from unigap.evaluate.data import read_prompt_file

    prompts = tmp_path / "p.txt"
    prompts.write_text("\ufeffa red circle\na blue square\n", encoding="utf-8")
    assert read_prompt_file(prompts) == [(1, "a red circle"), (2, "a blue square")]
    for name, text in (("q.csv", "image,question,answer\nx.png,What?,red\n"),
                       ("q.jsonl", '{"image": "x.png", "question": "What?", "answer": "red"}\n')):
        table = tmp_path / name
        table.write_text("\ufeff" + text, encoding="utf-8")
        [(where, row)] = read_table(table)
        assert where == f"{table}:2" if name.endswith("csv") else f"{table}:1"
        assert row["image"] == "x.png"


def test_compare_given_a_binary_file_is_one_line(tmp_path: Path, capsys) -> None:
    picture, other = tmp_path / "g.png", tmp_path / "h.png"
    for path in (picture, other):
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
    code, err = _run(capsys, ["compare", str(picture), str(other)])
    assert code == 2 and err.startswith(f"unigap: error: cannot read {picture}: 'utf-8' codec") and err.count("\n") == 1


def test_a_resumed_run_must_read_the_same_model_and_data_by_content(tmp_path: Path, capsys) -> None:
    import shutil

    from unigap.cli.common import claim_inputs
    from unigap.model.loading import resolve_checkpoint

    data, run = tmp_path / "pairs.jsonl", tmp_path / "run"
    data.write_text("a\n")
    claim_inputs(run, "train", "tiny", und=data, gen=None)
    claim_inputs(run, "train", "tiny", und=tmp_path / "pairs.jsonl", gen=None)  # the same: it resumes
    data.write_text("b\n")
    with pytest.raises(UserError, match=r"holds a train run under other inputs \(compared by file name and content\) \(und: "):
        claim_inputs(run, "train", "tiny", und=data, gen=None)
    data.write_text("a\n")
    with pytest.raises(UserError, match=r"gen: null → "):  # a file it did not read then
        claim_inputs(run, "train", "tiny", und=data, gen=data)
    retrained = tmp_path / "tiny-copy"
    shutil.copytree(resolve_checkpoint("tiny"), retrained)
    with (retrained / "model.safetensors").open("r+b") as weights:  # other weights under the same files
        weights.seek(-1, 2)
        last = weights.read(1)
        weights.seek(-1, 2)
        weights.write(bytes([last[0] ^ 1]))
    with pytest.raises(UserError, match=r"model_weights: "):
        claim_inputs(run, "train", str(retrained), und=data, gen=None)
    legacy = tmp_path / "legacy"  # a run from before inputs were recorded: nothing vouches for them now
    (legacy / "checkpoint").mkdir(parents=True)
    (legacy / "checkpoint" / "checkpoint.pt").write_bytes(b"")
    (legacy / "log.jsonl").write_text("")
    claim_inputs(legacy, "train", "tiny", und=data, gen=None)
    assert not (legacy / "inputs.json").exists()
    (legacy / "checkpoint" / "checkpoint.pt").unlink()  # (finished: its manifest names the command)
    (legacy / "manifest.json").write_text('{"command": "train"}')
    claim_inputs(legacy, "train", "tiny", und=data, gen=None)
    with pytest.raises(UserError, match="holds files no `unigap refine train` run wrote"):  # (another command's)
        claim_inputs(legacy, "refine train", "tiny")
    probed = tmp_path / "probed"  # empty but for another process's instant write test: a new run, recorded
    (probed / ".unigap-probe-x1").mkdir(parents=True)
    claim_inputs(probed, "train", "tiny", und=data, gen=None)
    assert (probed / "inputs.json").is_file()
    # the commands claim them: refine resumed on an edited prompt file is refused, not mixed
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = ["refine", "--n", "2", "--rounds", "0", "--prompts", str(prompts), "--out", str(tmp_path / "r")]
    assert _run(capsys, args)[0] in (0, None)
    prompts.write_text("a red circle\na green square\n")
    code, err = _run(capsys, [*args, "--resume"])
    assert code == 2 and "holds a refine run under other inputs (compared by file name and content) (prompts: " in err


def test_a_split_name_is_claimed_as_the_split_not_a_folder_of_that_name(tmp_path: Path, monkeypatch) -> None:
    import json

    from unigap.cli.common import claim_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").mkdir()  # a user's folder named like the split: `--prompts train` still reads the split
    (tmp_path / "train" / "x.txt").write_text("a")
    claim_inputs(tmp_path / "run", "selfimprove", "tiny", prompts="train")
    assert json.loads((tmp_path / "run" / "inputs.json").read_text())["prompts"] == "train"
    (tmp_path / "train" / "x.txt").write_text("b")
    claim_inputs(tmp_path / "run", "selfimprove", "tiny", prompts="train")  # it resumes


def test_another_commands_output_is_not_written_into(tmp_path: Path, capsys) -> None:
    dataset = tmp_path / "world"
    assert _run(capsys, ["world", "sample", "--n", "2", "--seed", "0", "--out", str(dataset)])[0] in (0, None)
    manifest = (dataset / "manifest.json").read_text()
    for command in (["train", "--model", "tiny", "--objective", "unimrg"], ["refine", "train"], ["selfimprove"]):
        code, err = _run(capsys, [*command, "--out", str(dataset)])
        assert code == 2 and err == f"unigap: error: --out {dataset} holds the output of `unigap world sample`; " \
                                    "choose another --out\n"
    assert (dataset / "manifest.json").read_text() == manifest
    assert _run(capsys, ["world", "sample", "--n", "2", "--seed", "0", "--out", str(dataset)])[0] in (0, None)
    from unigap.cli import _check_out, _command

    def check(argv: list[str]) -> None:
        _check_out(argv, *_command(argv))

    (dataset / "manifest.json").write_text('{"command": "selfimprove"}')
    check(["selfimprove", "--prompts", "train", "--out", str(dataset)])  # "train" is a value, not a subcommand
    with pytest.raises(UserError, match="holds the output of `unigap selfimprove`"):
        check(["refine", "train", "--out", str(dataset)])
    from unigap.cli.common import claim_inputs

    unfinished = tmp_path / "unfinished"  # no manifest yet: the inputs record names the command
    claim_inputs(unfinished, "refine", "tiny", prompts="test")
    with pytest.raises(UserError, match="holds the output of `unigap refine`"):
        check(["refine", "train", "--out", str(unfinished)])
    check(["refine", "--out", str(unfinished)])
    study = tmp_path / "study"  # a study records its settings first, its manifest when it finishes
    study.mkdir()
    (study / "study.json").write_text("{}")
    with pytest.raises(UserError, match="holds the output of `unigap study`"):
        check(["train", "--out", str(study)])
    check(["study", "--out", str(study)])
    inputs = unfinished / "inputs.json"  # a file command's --out onto a run's records
    with pytest.raises(UserError, match=rf"^--out {inputs} is the output of `unigap refine`; choose another --out$"):
        check(["eval", "--model", "tiny", "--out", str(inputs)])
    with pytest.raises(UserError, match=rf"^--out {dataset / 'manifest.json'} is the output of `unigap selfimprove`"):
        check(["compare", "--out", str(dataset / "manifest.json")])
    report = tmp_path / "eval.json"  # a report with its manifest inside, as eval writes
    report.write_text('{"understanding": {}, "manifest": {"command": "eval"}}')
    check(["eval", "--model", "tiny", "--out", str(report)])  # eval's own: a rerun may replace it
    with pytest.raises(UserError, match="is the output of `unigap eval`"):
        check(["compare", "--out", str(report)])
    result = unfinished / "refine.json"  # a result that names no command: its folder's command wrote it
    result.write_text('{"rounds": []}')
    with pytest.raises(UserError, match="is the output of `unigap refine`"):
        check(["eval", "--model", "tiny", "--out", str(result)])
    compared = study / "compared.json"  # compare's own result, in another command's folder: a rerun may replace it
    compared.write_text('{"results": {}, "manifest": {"command": "compare"}}')
    check(["compare", "--out", str(compared)])
    assert _command(["refine", "--prompts", "val"]) == ("refine", None)
    assert _command(["prefs", "export", "a.jsonl"]) == ("prefs", "export") and _command(["--help"]) == ("", None)


def test_broken_adapters_and_weights_are_one_line_and_never_reach_for_the_hub(tmp_path: Path, capsys) -> None:
    import shutil

    import numpy as np
    from PIL import Image

    from unigap.model import load_model
    from unigap.model.loading import resolve_checkpoint

    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    um = load_model("tiny")
    um.add_lora(4, 8.0, 0.0)
    um.save_adapter(tmp_path / "adapter")
    capsys.readouterr()  # (the load's progress bar)
    ask = ["ask", "--model", "tiny", "--image", str(image), "--question", "What color is the circle?", "--adapter"]
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tmp_path / "adapter" / "adapter_config.json", config_only)  # PEFT would look for the weights online
    code, err = _run(capsys, [*ask, str(config_only)])
    assert code == 2 and err == (f"unigap: error: {config_only} holds no PEFT adapter (adapter_config.json + "
                                 "adapter_model.safetensors or adapter_model.bin)\n")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    code, err = _run(capsys, [*ask, str(tmp_path / "adapter")])
    assert code == 2 and err.startswith(f"unigap: error: cannot read the adapter in {tmp_path / 'adapter'}")
    assert err.count("\n") == 1
    model = tmp_path / "model"
    shutil.copytree(resolve_checkpoint("tiny"), model)
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:1000])
    code, err = _run(capsys, ["ask", "--model", str(model), "--image", str(image), "--question", "What?"])
    assert code == 2 and err.startswith(f"unigap: error: cannot read the weights in {model}") and err.count("\n") == 1


@pytest.mark.parametrize(("edit", "says"), [
    ({"intermediate_size": 1024}, "hold 12 tensor(s) of another shape than its config.json gives (first: model."
     "language_model.layers.0.mlp.down_proj.weight, [256, 512] in the weights, [256, 1024] by config.json)"),
    ({"num_hidden_layers": 5}, "lack 9 tensor(s) its config.json calls for (first: model.language_model.layers.4."),
])
def test_weights_that_do_not_fit_their_config_are_refused_not_filled_at_random(tmp_path: Path, capsys, edit: dict,
                                                                                says: str) -> None:
    """(transformers would load them with a warning, the misfits initialised at random.)"""
    import json
    import shutil

    from PIL import Image

    from unigap.model.loading import resolve_checkpoint

    model = tmp_path / "model"
    shutil.copytree(resolve_checkpoint("tiny"), model)
    config = json.loads((model / "config.json").read_text())
    config["text_config"] |= edit
    (model / "config.json").write_text(json.dumps(config))
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    code, err = _run(capsys, ["ask", "--model", str(model), "--image", str(tmp_path / "x.png"), "--question", "What?"])
    assert code == 2 and err.startswith(f"unigap: error: the weights in {model} {says}") and err.count("\n") == 1, err


def test_weights_the_config_has_no_place_for_are_dropped_with_a_warning(tmp_path: Path) -> None:
    import json
    import shutil

    from unigap.errors import UnigapWarning
    from unigap.model import load_model
    from unigap.model.loading import resolve_checkpoint

    model = tmp_path / "model"
    shutil.copytree(resolve_checkpoint("tiny"), model)
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 3
    (model / "config.json").write_text(json.dumps(config))
    with pytest.warns(UnigapWarning, match=r"hold 9 tensor\(s\) its config.json has no place for \(first: model\."
                      r"language_model\.layers\.3\.input_layernorm\.weight\); loaded without them"):
        um = load_model(model)
    assert len(um.model.model.language_model.layers) == 3


def test_unigaps_warnings_are_one_line_like_its_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    (tmp_path / "tiny").mkdir()
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "blank.png")
    done = subprocess.run([sys.executable, "-m", "unigap.cli", "ask", "--model", "tiny", "--image", "blank.png",
                           "--question", "How many photo objects are there?"], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    assert done.stderr.splitlines() == [
        "unigap: warning: 'tiny' names the shipped model, not the directory tiny/ here (pass ./tiny to load that)",
        "unigap: warning: the tokenizer does not know 'photo': each reads as <unk>"]


@pytest.mark.parametrize(("args", "patched", "hint"), [
    (["train", "--model", "tiny", "--objective", "und-sft"], "unigap.cli.train.inputs_claimed",
     "unigap: interrupted; rerun it with --resume to continue\n"),
    (["pretrain", "--quick"], "unigap.pretrain.pretrain", "unigap: interrupted; rerun the same command to continue\n"),
    (["world", "sample", "--n", "2", "--seed", "0"], "unigap.cli.world.write_dataset", "unigap: interrupted\n"),
    (["generate", "--model", "tiny", "--prompt", "a red circle", "--layout", "grid"],
     "unigap.cli.inference._generate_grids", "unigap: interrupted\n"),  # (only the geneval layout resumes)
])
def test_ctrl_c_says_how_to_continue(tmp_path: Path, capsys, monkeypatch, args: list[str], patched: str,
                                     hint: str) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(patched, interrupted)
    code, err = _run(capsys, [*args, "--out", str(tmp_path / ("out.png" if args[0] == "generate" else "out"))])
    assert code == 130 and err == hint


def test_bf16_from_a_config_with_bfloat16_weights_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bf16.toml"
    config.write_text("bf16 = true\n")
    out = tmp_path / "out"
    code, err = _run(capsys, ["train", "--model", "tiny", "--objective", "und-sft", "--dtype", "bfloat16", "--config",
                              str(config), "--out", str(out)])
    assert code == 2 and "bf16 = true in --config" in err and err.count("\n") == 1 and not out.exists()


def test_a_librarys_long_message_is_cut_to_one_readable_line() -> None:
    from unigap.errors import FIRST_LINE_CHARS, first_line

    assert first_line(RuntimeError("Error(s) in loading:\n\tsize mismatch for w\n\tmore")) == \
        "Error(s) in loading: size mismatch for w"
    assert first_line(ValueError("one line\nand a second")) == "one line" and first_line(KeyError()) == "KeyError"
    long = first_line(RuntimeError("Missing key(s): " + ", ".join(f"layer.{i}" for i in range(500))))
    assert len(long) == FIRST_LINE_CHARS and long.endswith("…") and "\n" not in long


def test_a_model_that_fails_to_load_leaves_no_record_that_refuses_the_corrected_command(tmp_path, capsys) -> None:
    """The record of a run's inputs is taken back when nothing of the run was written: a fixed --model then starts."""
    import shutil

    from unigap.model.loading import resolve_checkpoint

    broken = tmp_path / "broken"
    shutil.copytree(resolve_checkpoint("tiny"), broken)
    (broken / "tokenizer.json").unlink()
    out = tmp_path / "runs" / "run"
    args = ["refine", "--n", "1", "--rounds", "0", "--out", str(out)]
    code, err = _run(capsys, [*args, "--model", str(broken)])
    assert code == 2 and "tokenizer" in err and not (tmp_path / "runs").exists()  # (nor the folders it made)
    code, err = _run(capsys, [*args, "--model", "tiny"])
    assert code == 0 and (out / "inputs.json").is_file() and (out / "refine.json").is_file(), err


def test_a_ctrl_c_before_the_command_runs_is_one_line_not_a_traceback(capsys, monkeypatch) -> None:
    import builtins

    import unigap.__main__ as entry
    from unigap import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_check_out", interrupted)  # while the command line is checked
    code, err = _run(capsys, ["world", "sample", "--n", "2", "--seed", "0", "--out", "x"])
    assert code == 130 and err == "unigap: interrupted\n"
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *args, **kwargs: interrupted() if name == "unigap.cli"
                        else real_import(name, *args, **kwargs))  # while the CLI is imported (the console script)
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    assert exit_.value.code == 130 and capsys.readouterr().err == "unigap: interrupted\n"


@pytest.mark.parametrize(("entry", "says"), [
    ("samples.jsonl/", "samples.jsonl is a directory, where unigap needs a file"),
    ("images", "images is a file, where unigap needs a directory"),
    ("manifest.json/", "manifest.json is a directory, where unigap needs a file"),
])
def test_an_entry_of_the_wrong_kind_inside_out_is_one_line(tmp_path: Path, capsys, entry: str, says: str) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / entry).mkdir() if entry.endswith("/") else (out / entry).write_text("a user's own file")
    code, err = _run(capsys, ["world", "sample", "--n", "2", "--seed", "0", "--out", str(out)])
    assert code == 2 and err == f"unigap: error: {out}/{says}; move it away or choose another path\n"


def test_an_entry_in_the_way_outside_the_paths_given_keeps_its_traceback(tmp_path: Path) -> None:
    """(unigap's own folder of the wrong kind would be its bug, not the user's mistake.)"""
    from unigap.cli import _in_the_way

    inside = IsADirectoryError(21, "Is a directory", str(tmp_path / "out" / "samples.jsonl"))
    (tmp_path / "out" / "samples.jsonl").mkdir(parents=True)
    assert _in_the_way(inside, ["world", "sample", "--out", str(tmp_path / "out")]).startswith(
        f"{tmp_path / 'out' / 'samples.jsonl'} is a directory, where unigap needs a file")
    assert _in_the_way(inside, ["world", "sample", f"--out={tmp_path / 'other'}"]) is None
    assert _in_the_way(FileExistsError(17, "File exists"), ["--out", str(tmp_path)]) is None


def test_sigterm_ends_a_run_as_an_interrupt_does(tmp_path: Path, capsys, monkeypatch) -> None:
    """`kill` or a scheduler's preemption: SIGTERM ran no `finally` (a study lost the attempt's time, staged files
    stayed) and left no message; now it is ^C's one line and exit 130, and the handler before is restored."""
    import os
    import signal

    from unigap.world import dataset

    out = tmp_path / "w"
    real, calls = dataset.render_pil, []

    def render_then_terminate(scene):
        calls.append(scene)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(scene)

    monkeypatch.setattr(dataset, "render_pil", render_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    code, err = _run(capsys, ["world", "sample", "--n", "3", "--seed", "0", "--out", str(out)])
    assert code == 130 and err == "unigap: interrupted\n" and signal.getsignal(signal.SIGTERM) is before
    assert not out.exists() or not any(p.name.endswith(".tmp") for p in out.iterdir())  # staging removed


def test_a_commands_default_out_is_checked_as_a_typed_one(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("")  # a file where `refine` puts its default runs/refine
    code, err = _run(capsys, ["refine", "--n", "1", "--rounds", "0"])
    assert code == 2 and err == "unigap: error: cannot create runs/refine: runs is a file\n"
    assert _run(capsys, ["refine", "--help"])[0] in (0, None)  # help reads no --out
    # the study's default depends on --quick: it was never checked, and the study began in another command's folder
    (tmp_path / "runs").unlink()
    (tmp_path / "runs" / "study-quick").mkdir(parents=True)
    (tmp_path / "runs" / "study-quick" / "manifest.json").write_text('{"command": "tune"}')
    code, err = _run(capsys, ["study", "--quick"])
    assert code == 2 and err == "unigap: error: --out runs/study-quick holds the output of `unigap tune`; choose " \
                                "another --out\n"
    assert _run(capsys, ["train", "--out", "runs/study-quick", "--help"])[0] in (0, None)  # help writes nothing
    (tmp_path / "runs" / "refine" / "settings.json").mkdir(parents=True)  # where refine writes its settings: the
    code, err = _run(capsys, ["refine", "--n", "1", "--rounds", "0", "--resume"])  # default --out's: a traceback
    assert code == 2 and err == ("unigap: error: --out runs/refine holds files no `unigap refine` run wrote "
                                 "(settings.json); choose an empty or new folder\n"), err


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path: Path, capsys) -> None:
    code, err = _run(capsys, ["world", "sample", "--n", "1", "--seed", "0", "--out", str(tmp_path / ("a" * 300))])
    assert code == 2 and err.startswith("unigap: error: File name too long: ") and err.count("\n") == 1


@pytest.mark.parametrize(("args", "patched", "hint"), [
    (["pretrain", "--quick"], "unigap.pretrain.pretrain", "; rerun the same command to continue"),
    (["world", "sample", "--n", "2", "--seed", "0"], "unigap.cli.world.write_dataset", ""),
])
@pytest.mark.parametrize(("error", "says"), [
    (OSError(28, "No space left on device", "/data/run/x.tmp"), "No space left on device: /data/run/x.tmp"),
    (OSError(30, "Read-only file system"), "Read-only file system"),
])
def test_a_file_system_that_refuses_a_write_mid_run_is_one_line(tmp_path: Path, capsys, monkeypatch, args, patched,
                                                               hint, error, says) -> None:
    """A full disk or a folder turned read-only after the up-front checks: one line, exit 1, how to go on."""
    def refused(*args, **kwargs):
        raise error

    monkeypatch.setattr(patched, refused)
    code, err = _run(capsys, [*args, "--out", str(tmp_path / "out")])
    assert (code, err) == (1, f"unigap: error: {says}{hint}\n")


def test_a_full_disk_at_a_reports_write_is_the_same_line_not_bad_input(tmp_path: Path, capsys, monkeypatch) -> None:
    """The report writer turned every OSError into a `UserError` (exit 2, "bad input", no way to continue)."""
    from unigap import atomic

    def full(path, write):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_atomically", full)
    out = tmp_path / "eval.json"
    code, err = _run(capsys, ["eval", "--model", "tiny", "--n", "2", "--out", str(out)])
    assert (code, err.splitlines()[-1]) == (1, f"unigap: error: No space left on device: {out}") and not out.exists()


@pytest.mark.parametrize("error", [
    "torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total capacity)')",
    "RuntimeError(\"[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 1099511627776 bytes\")",
])
def test_running_out_of_memory_is_one_line_with_what_to_lower(tmp_path: Path, capsys, monkeypatch, error) -> None:
    """A GPU's out-of-memory error ended in a traceback: a state a smaller batch avoids, not unigap's bug."""
    import torch

    def out_of_memory(*args, **kwargs):
        raise eval(error, {"torch": torch})

    monkeypatch.setattr("unigap.pretrain.pretrain", out_of_memory)
    code, err = _run(capsys, ["pretrain", "--quick", "--out", str(tmp_path / "out")])
    assert code == 1 and err.count("\n") == 1 and err.startswith("unigap: error: out of memory (")
    assert err.endswith("a smaller --batch-size (or --n), where the command takes one, may fit; rerun the same "
                        "command to continue\n")
    monkeypatch.setattr("unigap.pretrain.pretrain", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # (any other RuntimeError keeps its traceback)
        main(["pretrain", "--quick", "--out", str(tmp_path / "other")])


def test_other_os_errors_keep_their_traceback(tmp_path: Path, monkeypatch) -> None:
    """(An errno that is not the file system refusing a write is unigap's bug, not the user's to fix.)"""
    def broken(*args, **kwargs):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr("unigap.cli.world.write_dataset", broken)
    with pytest.raises(OSError, match="Invalid argument"):
        main(["world", "sample", "--n", "2", "--seed", "0", "--out", str(tmp_path / "out")])


def test_a_soup_of_adapters_that_do_not_read_writes_no_folder(tmp_path: Path, capsys) -> None:
    """The adapters were read inside the soup's atomic folder, whose parents were made first."""
    out = tmp_path / "deep" / "soups"
    code, err = _run(capsys, ["merge", "--und", str(tmp_path / "u"), "--gen", str(tmp_path / "g"), "--out", str(out)])
    assert code == 2 and err.count("\n") == 1 and "holds no PEFT adapter" in err
    assert not (tmp_path / "deep").exists()


def test_a_config_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    """As the prompt and data files may (a Windows editor writes one): it was 'Invalid statement (at line 1)'."""
    from unigap.train.config import TrainConfig

    config = tmp_path / "bom.toml"
    config.write_bytes("\ufeffstrategy = 'joint'\nsteps = 3\n".encode())
    assert TrainConfig.load(config).steps == 3


def test_a_failed_first_start_is_cleaned_up_by_the_main_process_only(tmp_path: Path, monkeypatch) -> None:
    """Under accelerate every process fails alike: the main process wrote the record and takes it back; another one
    removing it too raced it to a FileNotFoundError, a traceback in place of the one-line error."""
    from unigap import distributed
    from unigap.cli import common

    out = tmp_path / "run"

    def main_writes(out: Path, *args, **kwargs) -> dict:  # (what the main process does meanwhile)
        out.mkdir()
        (out / common.INPUTS_FILE).write_text("{}")
        return {}

    monkeypatch.setattr(common, "claim_inputs", main_writes)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with pytest.raises(UserError, match="does not fit"), common.inputs_claimed(out, "refine", "tiny"):
        raise UserError("the adapter does not fit")
    assert (out / common.INPUTS_FILE).is_file()  # the main process's to remove


def test_a_text_holding_an_image_tokens_string_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """A prompt or question the model cannot take (the text of one of its image tokens) failed with a traceback
    after the model loaded, and one too long for its context ran on positions it never saw; each is named
    (FILE:LINE where it has one) before anything is written."""
    from unigap.world import render_pil, sample_scene

    image = tmp_path / "scene.png"
    render_pil(sample_scene(0)).save(image)
    (tmp_path / "p.txt").write_text("a red circle\na blue square <begin_of_image>\n")
    (tmp_path / "free.txt").write_text("a blue square <begin_of_image>\n")  # (train on free text: no held-out prompt)
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": str(image), "question": "how many <image_placeholder>?",
                                                  "answer": "1"}) + "\n")
    (tmp_path / "trl.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [  # TRL's und pairs
        {"prompt": "how many circles are there?", "chosen": "1", "rejected": "2", "images": [str(image)]},
        {"prompt": "how many <image_placeholder>?", "chosen": "1", "rejected": "2", "images": [str(image)]}]))
    for args, message in [
        (["generate", "--prompts", tmp_path / "p.txt", "--out", tmp_path / "grid"],
         "p.txt:2: generation prompts must not contain image tokens, got 'a blue square <begin_of_image>'"),
        (["generate", "--prompt", "a red circle " * 150, "--out", tmp_path / "long.png"],  # (positions it never saw)
         "--prompt: 452 tokens and its image 63: 515 positions, more than the model's context of 512"),
        (["ask", "--image", image, "--question", "how many circles " * 150],
         "--question: with its image: 517 positions, more than the model's context of 512"),
        (["ask", "--image", image, "--question", "how many <image_placeholder>?"],
         "--question: the understanding prompt holds 65 image placeholder tokens, expected 64"),
        (["eval", "--n", "2", "--questions", tmp_path / "q.jsonl", "--out", tmp_path / "e.json"],
         "q.jsonl:1: the understanding prompt holds 65 image placeholder tokens"),
        # each of these failed once it had written its run's first files, which a rerun then refused
        (["selfimprove", "--prompts", tmp_path / "free.txt", "--judge", "none", "--n-prompts", "2", "--out",
          tmp_path / "si"], "free.txt:1: generation prompts must not contain image tokens"),
        (["train", "--objective", "sft", "--und-data", tmp_path / "q.jsonl", "--out", tmp_path / "sft"],
         "q.jsonl:1: the understanding prompt holds 65"),
        (["train", "--strategy", "und-only", "--und", tmp_path / "trl.jsonl", "--out", tmp_path / "dpo"],
         "trl.jsonl:2: the understanding prompt holds 65"),
        (["prefs", "build", "--kind", "und", "--questions", tmp_path / "q.jsonl", "--n", "1", "--out",
          tmp_path / "pairs.jsonl"], "q.jsonl:1: the understanding prompt holds 65"),
    ]:
        words = 2 if args[0] == "prefs" else 1  # (prefs build)
        code, err = _run(capsys, [*map(str, args[:words]), "--model", "tiny", *map(str, args[words:])])
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["free.txt", "p.txt", "q.jsonl", "scene.png",
                                                                "trl.jsonl"]


def test_an_adapter_trained_on_other_base_weights_is_warned_of(tmp_path: Path) -> None:
    """(Applied to another checkpoint of the same shapes it loaded without a word, its generation head replacing
    that model's.)"""
    import json
    import warnings

    from unigap.cli.common import INPUTS_FILE, load
    from unigap.errors import UnigapWarning
    from unigap.model import load_model
    from unigap.model.checkpoint import weights_fingerprint
    from unigap.model.loading import resolve_checkpoint

    um = load_model("tiny")
    um.add_lora(rank=2, alpha=4)
    adapter = um.save_adapter(tmp_path / "adapter")
    with warnings.catch_warnings():  # no record (another tool's adapter): nothing said
        warnings.simplefilter("error", UnigapWarning)
        load("tiny", adapter)
        (adapter / INPUTS_FILE).write_text(json.dumps({"model_weights": weights_fingerprint(resolve_checkpoint("tiny"))}))
        load("tiny", adapter)  # its own base
    (adapter / INPUTS_FILE).write_text(json.dumps({"model_weights": "0123456789abcdef"}))
    with pytest.warns(UnigapWarning, match=r"adapter .* was trained on other base weights \(0123456789abcdef\) than "
                                           r"--model tiny \(\w+\): it applies, and its trained parts replace"):
        load("tiny", adapter)


def test_a_data_seed_other_than_the_models_pretraining_seed_is_warned_of(tmp_path: Path, capsys, monkeypatch) -> None:
    """`eval --data-seed 3` on `tiny` measured 173 of its 200 test prompts among the prompts it was pretrained on."""
    import warnings

    from unigap.cli.common import load, warn_other_partition
    from unigap.errors import UnigapWarning

    with pytest.warns(UnigapWarning, match=r"--data-seed 3: tiny was pretrained on partition 0's train split; "
                                           r"partition 3's splits mix its training and held-out prompts \(--data-seed "
                                           r"0 keeps them apart\)"):
        warn_other_partition("tiny", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnigapWarning)
        warn_other_partition("tiny", 0)
        warn_other_partition(str(tmp_path), 3)  # (no pretraining record: a checkpoint unigap did not pretrain)
    prompts = tmp_path / "p.txt"  # a prompt file's eval still asks the split's questions
    prompts.write_text("a red circle\n")
    with pytest.warns(UnigapWarning, match="--data-seed 3: tiny was pretrained"):
        code, _ = _run(capsys, ["eval", "--model", "tiny", "--data-seed", "3", "--prompts", str(prompts), "--n", "1",
                                "--out", str(tmp_path / "e.json")])
    assert code == 0
    (tmp_path / "tiny").mkdir()  # a folder named like the shipped model: that is said once, not by each helper
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UnigapWarning) as caught:
        warn_other_partition("tiny", 0)
        load("tiny", None)
    assert sum("names the shipped model" in str(w.message) for w in caught) == 1
    out = tmp_path / "pairs.jsonl"  # said by the command, and the work goes on
    with pytest.warns(UnigapWarning, match="--data-seed 3: tiny was pretrained"):
        code, _ = _run(capsys, ["prefs", "build", "--model", "tiny", "--kind", "und", "--n", "1", "--data-seed", "3",
                                "--fallback-gt", "--out", str(out)])
    assert code == 0 and out.is_file()


@pytest.mark.parametrize("command", [["train", "--objective", "und-sft"], ["selfimprove"], ["refine", "train"]])
def test_a_config_files_data_seed_other_than_the_models_is_warned_of(tmp_path: Path, capsys, command) -> None:
    """UniMRG, self-improvement and GRPO read `data_seed` from --config and said nothing: `tiny` under partition 1
    trains on 122 of partition 0's 151 held-out prompts' scenes and evaluates on its training prompts."""
    from unigap.errors import UnigapWarning

    config = tmp_path / "c.toml"
    config.write_text("data_seed = 1\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("x")  # (refused after the warning, before any work)
    with pytest.warns(UnigapWarning, match=r"data_seed = 1: tiny was pretrained on partition 0's train split; .* "
                                           r"\(data_seed = 0 keeps them apart\)"):
        code, err = _run(capsys, [*command, "--model", "tiny", "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 2 and "holds files no `unigap" in err, err


def test_a_training_run_refuses_an_out_it_would_write_over(tmp_path: Path, capsys) -> None:
    """`train --out` a model's own folder wrote its adapter there, which transformers then loaded with the model for
    good; a user's data folder lost its README to PEFT's card; and `eval --prompts p.json --out p.json` wrote the
    report over the prompts."""
    import shutil

    from unigap.model.loading import resolve_checkpoint

    model, data, mine = tmp_path / "mymodel", tmp_path / "data", tmp_path / "mine"
    shutil.copytree(resolve_checkpoint("tiny"), model)
    before = sorted(p.name for p in model.iterdir())
    _run(capsys, ["world", "sample", "--n", "2", "--seed", "0", "--out", str(data)])
    mine.mkdir()
    (mine / "README.md").write_text("my dataset card")
    for out, says in ((model, f"--out {model} is a folder this command reads (--model); choose another --out"),
                      (mine, f"--out {mine} holds files no `unigap train` run wrote (README.md); choose an empty or "
                             "new folder")):
        code, err = _run(capsys, ["train", "--model", str(model), "--objective", "sft", "--gen-data",
                                  str(data / "samples.jsonl"), "--steps", "1", "--out", str(out)])
        assert (code, err) == (2, f"unigap: error: {says}\n")
    assert sorted(p.name for p in model.iterdir()) == before and (mine / "README.md").read_text() == "my dataset card"
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": "a red square"}\n')
    code, err = _run(capsys, ["eval", "--model", "tiny", "--n", "2", "--prompts", str(prompts), "--out", str(prompts)])
    assert (code, err) == (2, f"unigap: error: --out {prompts} is a file this command reads (--prompts); choose "
                              "another --out\n")
    assert prompts.read_text() == '{"prompt": "a red square"}\n'


def test_an_out_named_like_a_split_the_shipped_model_or_a_number_is_no_input(tmp_path: Path, capsys,
                                                                              monkeypatch) -> None:
    """The reruns a name or a number made look like inputs were refused ("--out val is a folder this command reads
    (--split)"); and a long prompt, no file name, failed the check with ENAMETOOLONG once --out existed."""
    monkeypatch.chdir(tmp_path)
    for out in ("val", "2"):
        for _ in range(2):  # (the rerun)
            code, err = _run(capsys, ["world", "sample", "--split", "val", "--n", "2", "--seed", "0", "--out", out])
            assert code in (0, None) and not err, err
    prompt = "a red circle above a blue square " * 9
    for _ in range(2):
        code, err = _run(capsys, ["generate", "--model", "tiny", "--prompt", prompt, "--out", "img.png"])
        assert code in (0, None) and not err, err


def test_an_input_named_like_a_split_or_a_number_is_still_an_input(tmp_path: Path, monkeypatch) -> None:
    """The name exemption applied to every flag: `--questions test --out test` would write the report over the
    questions; a settings.json let `train` into another command's folder."""
    from unigap.cli import _check_out
    from unigap.cli.common import claim_inputs

    monkeypatch.chdir(tmp_path)
    for name in ("test", "2024"):
        Path(name).write_text("q")
        with pytest.raises(UserError, match=f"--out {name} is a file this command reads \\(--questions\\)"):
            _check_out(["eval", "--questions", name, "--out", name], "eval", None)
    other = tmp_path / "refine-run"
    other.mkdir()
    (other / "settings.json").write_text("{}")
    (other / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="holds files no `unigap train` run wrote"):
        claim_inputs(other, "train", "tiny", write=False)
    claim_inputs(other, "refine", "tiny", write=False)  # (refine's own, from before inputs records)


def test_a_run_from_before_inputs_records_resumes_and_a_hidden_file_is_no_run(tmp_path: Path) -> None:
    """A geneval or refine run killed before runs kept inputs.json holds its settings record and no checkpoint: its
    resume was refused; a new folder holding only a .gitkeep was refused as "files no run wrote"."""
    from unigap.cli.common import claim_inputs

    legacy = tmp_path / "gv"
    (legacy / "00000" / "samples").mkdir(parents=True)
    (legacy / "settings.json").write_text("{}")
    claim_inputs(legacy, "generate", "tiny", None, write=False)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / ".gitkeep").write_text("")
    claim_inputs(kept, "selfimprove", "tiny")
    assert (kept / "inputs.json").is_file()  # (a new run: recorded)


def test_the_meta_device_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    """(It passed the device check, built the corpora, then failed in the VQ with a NotImplementedError.)"""
    code, err = _run(capsys, ["pretrain", "--quick", "--device", "meta", "--out", str(tmp_path / "out")])
    assert (code, err) == (2, "unigap: error: device 'meta' holds no data to compute with; give cpu or cuda\n")
    assert not (tmp_path / "out").exists()
