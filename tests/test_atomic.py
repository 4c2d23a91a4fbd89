"""Run settings claimed for resuming (what an older run directory may continue under), and the cleanup of an
earlier run's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unigap.atomic import (claim_settings, entries, files_atomically, has_index, indexed_files_atomically,
                           listed_files, remove_replaced, write_json)
from unigap.errors import UserError


def test_claim_settings_accepts_a_setting_added_since_at_its_default(tmp_path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"n": 3}))
    claim_settings(path, {"n": 3, "judge": "verifier"}, "refine", {"judge": "verifier"})  # an older run resumes
    assert json.loads(path.read_text()) == {"n": 3, "judge": "verifier"}
    path.write_text(json.dumps({"n": 3}))
    with pytest.raises(UserError, match="other settings"):
        claim_settings(path, {"n": 3, "judge": "clip:/x"}, "refine", {"judge": "verifier"})
    with pytest.raises(UserError, match="other settings"):
        claim_settings(path, {"n": 4}, "refine", {"n": 4})  # a setting the run had is always compared


def test_claim_settings_names_each_difference_and_refuses_what_it_cannot_use(tmp_path) -> None:
    path = tmp_path / "run" / "settings.json"
    claim_settings(path, {"n": 3, "lr": 1e-4}, "study")
    with pytest.raises(UserError, match=r"holds a study run under other settings \(lr: 0.0001 → 0.001; n: 3 → 4\); "
                                        r"rerun with the same ones to resume it"):
        claim_settings(path, {"n": 4, "lr": 1e-3}, "study")
    path.write_text("{half")
    with pytest.raises(UserError, match="cannot read"):
        claim_settings(path, {"n": 3}, "study")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        claim_settings(tmp_path / "file" / "settings.json", {"n": 3}, "study")


def test_a_setting_removed_since_is_not_compared_and_an_absent_one_is_not_a_null(tmp_path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"n": 3, "strategies": ["a"]}))
    claim_settings(path, {"n": 3}, "study")  # "strategies" is no longer a setting
    assert json.loads(path.read_text()) == {"n": 3, "strategies": ["a"]}  # kept: another command must not erase it
    with pytest.raises(UserError, match=r"judge: \(absent\) → null"):
        claim_settings(path, {"n": 3, "judge": None}, "study")


def test_remove_replaced_deletes_only_what_the_earlier_index_listed_inside_the_owned_folder(tmp_path) -> None:
    owned = tmp_path / "images"
    owned.mkdir()
    for name in ("0000.png", "0001.png", "0002.png", "2024.png"):
        (owned / name).write_text(name)
    (tmp_path / "photo.png").write_text("a user's own file")
    index = tmp_path / "index.jsonl"
    rows = [{"file": f"images/{i:04d}.png"} for i in range(3)] + [{"file": "photo.png"}, {"file": "../outside"}]
    index.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n[1]\n")
    before = listed_files(index, ["file"])
    assert before == {"images/0000.png", "images/0001.png", "images/0002.png", "photo.png", "../outside"}
    assert listed_files(tmp_path / "missing.jsonl", ["file"]) == set()
    remove_replaced(tmp_path, before, {"images/0000.png"}, inside=owned)
    assert sorted(p.name for p in owned.iterdir()) == ["0000.png", "2024.png"]  # 2024.png was never listed
    assert (tmp_path / "photo.png").is_file()  # listed, but outside the folder the command owns
    (owned / "cat.png").write_text("listed by a user's own index")
    remove_replaced(tmp_path, {"images/cat.png", "images/2024.png"}, set(), inside=owned, named=r"\d{4,}\.png")
    assert sorted(p.name for p in owned.iterdir()) == ["0000.png", "cat.png"]  # not named as the command names


def test_files_atomically_replaces_each_file_whole_or_none(tmp_path) -> None:
    (tmp_path / "weights.bin").write_text("old")
    (tmp_path / "log.jsonl").write_text("kept")
    with pytest.raises(KeyboardInterrupt):  # killed while writing: the old files stay, no temporary is left
        with files_atomically(tmp_path) as staging:
            (staging / "weights.bin").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "weights.bin"]
    assert (tmp_path / "weights.bin").read_text() == "old"
    with files_atomically(tmp_path) as staging:
        (staging / "weights.bin").write_text("new")
        (staging / "config.json").write_text("{}")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"weights.bin": "new", "config.json": "{}",
                                                                  "log.jsonl": "kept"}
    (tmp_path / "gen").mkdir()  # PEFT saves a second adapter in a subfolder: its files join the old ones there
    (tmp_path / "gen" / "old.bin").write_text("old")
    with files_atomically(tmp_path) as staging:
        (staging / "gen").mkdir()
        (staging / "gen" / "weights.bin").write_text("gen")
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["old.bin", "weights.bin"]
    assert oct((tmp_path / "gen" / "weights.bin").stat().st_mode & 0o777) == "0o644"
    with pytest.raises(UserError, match="cannot write"):
        with files_atomically(tmp_path / "log.jsonl"):
            pass


def _indexed_set(directory, names: list[str], extra: str | None = None) -> None:
    """Write files `images/NAME` and their index (and an `extra` second index) through `indexed_files_atomically`."""
    with indexed_files_atomically(directory, {"more.jsonl": ["file"], "index.jsonl": ["file"]},
                                  inside=directory / "images", named=r"\d{4}\.png") as staging:
        (staging / "images").mkdir()
        for name in names:
            (staging / "images" / name).write_text(f"{extra or 'new'} {name}")
        (staging / "index.jsonl").write_text("".join(json.dumps({"file": f"images/{n}"}) + "\n" for n in names))
        if extra is not None:
            (staging / "more.jsonl").write_text(json.dumps({"file": "images/0000.png"}) + "\n")
        if extra == "killed":
            raise KeyboardInterrupt


def _tree(directory) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): p.read_text() for p in directory.rglob("*") if p.is_file()}


def test_indexed_files_atomically_never_leaves_an_index_over_another_runs_files(tmp_path, monkeypatch) -> None:
    _indexed_set(tmp_path, ["0000.png", "0001.png", "0002.png"], extra="first")
    before = _tree(tmp_path)
    assert set(before) == {"index.jsonl", "more.jsonl", "images/0000.png", "images/0001.png", "images/0002.png"}
    with pytest.raises(KeyboardInterrupt):  # a rerun interrupted while writing: the earlier set stays whole
        _indexed_set(tmp_path, ["0000.png"], extra="killed")
    assert _tree(tmp_path) == before and not any(p.name.startswith(".files.") for p in tmp_path.iterdir())
    (tmp_path / ".files.more.jsonl.abcdefgh.tmp").mkdir()  # what a writer killed outright leaves: not an entry
    (tmp_path / ".files.other.jsonl.abcdefgh.tmp").mkdir()  # another data file's writer, live: not touched
    (tmp_path / ".files.more.jsonl.b.jsonl.abcdefgh.tmp").mkdir()  # another, whose tag begins like this one's
    assert sorted(entries(tmp_path)) == ["images", "index.jsonl", "more.jsonl"]
    (tmp_path / "images" / "0001.png").unlink()
    (tmp_path / "images" / "0001.png").mkdir()  # a rename that would fail halfway: refused before any change
    with pytest.raises(IsADirectoryError):
        _indexed_set(tmp_path, ["0000.png", "0001.png"])
    assert _tree(tmp_path) == {k: v for k, v in before.items() if k != "images/0001.png"}
    (tmp_path / "images" / "0001.png").rmdir()
    renamed, real_replace = [], os.replace

    def killed_at_the_fourth_image(source, target):  # ^C among the renames
        renamed.append(Path(target).name)
        if Path(target).name == "0004.png":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed_at_the_fourth_image)
    with pytest.raises(KeyboardInterrupt):  # 0003.png: a file of this run that no index lists yet
        _indexed_set(tmp_path, ["0000.png", "0001.png", "0003.png", "0004.png"])
    monkeypatch.setattr(os, "replace", real_replace)
    assert renamed == [".index.jsonl.pending.tmp", "0000.png", "0001.png", "0003.png", "0004.png"]
    assert not (tmp_path / "index.jsonl").exists() and not (tmp_path / "more.jsonl").exists()
    assert has_index(tmp_path, "index.jsonl")  # the swap's list: a rerun is one of the same command
    _indexed_set(tmp_path, ["0000.png"])  # the next run removes what it does not list, the old run's and the killed one's
    assert _tree(tmp_path) == {"index.jsonl": '{"file": "images/0000.png"}\n', "images/0000.png": "new 0000.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".files.more.jsonl.b.jsonl.abcdefgh.tmp",
                                                           ".files.other.jsonl.abcdefgh.tmp", "images", "index.jsonl"]
    (tmp_path / "more.jsonl").mkdir()  # an index's name taken by a folder: refused before the work
    with pytest.raises(IsADirectoryError):
        with indexed_files_atomically(tmp_path, {"more.jsonl": ["file"], "index.jsonl": ["file"]}):
            raise AssertionError("the block ran")
    assert _tree(tmp_path) == {"index.jsonl": '{"file": "images/0000.png"}\n', "images/0000.png": "new 0000.png"}


def test_a_first_set_killed_among_its_renames_is_still_its_commands_folder(tmp_path, monkeypatch) -> None:
    """A first run into an empty folder killed among the renames leaves images and no index: the hidden list says
    whose they are (`generate --prompts` accepts the folder again) and the rerun removes those it does not list."""
    real_replace = os.replace

    def killed_at_the_second_image(source, target):
        if Path(target).name == "0001.png":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed_at_the_second_image)
    with pytest.raises(KeyboardInterrupt):
        _indexed_set(tmp_path, ["0000.png", "0001.png"])
    monkeypatch.setattr(os, "replace", real_replace)
    assert entries(tmp_path) == ["images"] and has_index(tmp_path, "index.jsonl")
    _indexed_set(tmp_path, ["0001.png"])
    assert _tree(tmp_path) == {"index.jsonl": '{"file": "images/0001.png"}\n', "images/0001.png": "new 0001.png"}


def test_indexed_files_atomically_writes_the_indexes_last_in_the_order_given(tmp_path, monkeypatch) -> None:
    """The last index marks the set complete (a study reads samples.jsonl so): written last, removed first."""
    indexes = {"questions.jsonl": ["image"], "samples.jsonl": ["image"]}
    (tmp_path / "questions.jsonl").write_text("{}\n")
    (tmp_path / "samples.jsonl").write_text("{}\n")
    events, real_replace, real_unlink = [], os.replace, Path.unlink
    monkeypatch.setattr(os, "replace", lambda source, target: (events.append(Path(target).name),
                                                                real_replace(source, target)))
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (events.append(f"-{self.name}"), real_unlink(self, *a, **k)))
    with indexed_files_atomically(tmp_path, indexes) as staging:
        for name in ("samples.jsonl", "questions.jsonl", "0.png"):
            (staging / name).write_text("{}\n")
    assert [e for e in events if not e.endswith(".tmp")] == ["-samples.jsonl", "-questions.jsonl", "0.png",
                                                             "questions.jsonl", "samples.jsonl"]
    with pytest.raises(RuntimeError, match="holds no samples.jsonl"):  # a set without its completeness mark
        with indexed_files_atomically(tmp_path, indexes) as staging:
            (staging / "questions.jsonl").write_text("{}\n")
    assert (tmp_path / "samples.jsonl").is_file() and (tmp_path / "0.png").is_file()


def test_write_json_refuses_nan_and_leaves_the_previous_file(tmp_path) -> None:
    path = write_json(tmp_path / "r.json", {"accuracy": 0.5})
    assert json.loads(path.read_text()) == {"accuracy": 0.5} and path.read_text().endswith("}\n")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(path, {"accuracy": float("nan")})
    assert json.loads(path.read_text()) == {"accuracy": 0.5} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_staging_folder_is_named_as_the_cleanup_of_killed_writers_matches(tmp_path) -> None:
    """The cleanup matches mkdtemp's 8 random characters exactly (so no tag's pattern reaches a longer tag's
    folders): should Python name them otherwise, killed writers' folders would pile up unseen."""
    import fnmatch

    with files_atomically(tmp_path) as staging:
        assert fnmatch.fnmatchcase(staging.name, ".files.????????.tmp")
    with indexed_files_atomically(tmp_path, {"a.jsonl": ["file"]}) as staging:
        assert fnmatch.fnmatchcase(staging.name, ".files.a.jsonl.????????.tmp")
        (staging / "a.jsonl").write_text("")


def test_save_report_is_on_disk_before_it_replaces_the_previous_report(tmp_path, monkeypatch) -> None:
    from unigap.evaluate.report import save_report

    path = tmp_path / "report.json"
    save_report({"a": 1}, path)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(path.read_text())  # the old report is still in place while the new one is synced
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    save_report({"a": 2}, path)
    assert synced == ['{\n  "a": 1\n}\n']
    assert json.loads(path.read_text()) == {"a": 2}


def test_a_record_that_is_no_json_object_is_one_line(tmp_path) -> None:
    for content in (b"\xff", b"[1]"):  # not UTF-8; JSON but no object
        (tmp_path / "settings.json").write_bytes(content)
        with pytest.raises(UserError, match=r"cannot read .*settings.json"):
            claim_settings(tmp_path / "settings.json", {"a": 1}, "refine")


def test_an_output_behind_a_folder_that_cannot_be_searched_is_one_line(tmp_path, monkeypatch) -> None:
    """Python 3.11's `Path.exists` raises PermissionError there (root, who runs the tests, is never refused)."""
    from unigap.atomic import check_creatable

    locked = tmp_path / "locked"
    real = Path.exists

    def exists(self: Path, *args, **kwargs) -> bool:
        if self == locked / "out" or locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    with pytest.raises(UserError, match=r"cannot write .*locked/out: Permission denied"):
        check_creatable(locked / "out")


def test_every_writer_puts_each_file_on_disk_before_it_is_in_place(tmp_path, monkeypatch) -> None:
    """A power loss must not leave a file renamed into place but empty: a pool round's tokens beside the index that
    marks the round done, a merged checkpoint's weights inside a folder that exists only when complete."""
    from unigap.atomic import directory_atomically, write_atomically

    synced: set[int] = set()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    def replace(src, dst) -> None:
        files = [Path(src)] if Path(src).is_file() else [p for p in Path(src).rglob("*") if p.is_file()]
        assert all(p.stat().st_ino in synced for p in files), f"{src} is renamed before it is on disk"
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomically(tmp_path / "tokens.safetensors", lambda tmp: tmp.write_bytes(b"t"))
    with directory_atomically(tmp_path / "merged") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "model.safetensors").write_bytes(b"w")
    with indexed_files_atomically(tmp_path / "set", {"samples.jsonl": ["file"]}) as staging:
        (staging / "000.png").write_bytes(b"p")
        (staging / "samples.jsonl").write_text(json.dumps({"file": "000.png"}) + "\n")
    assert (tmp_path / "merged" / "sub" / "model.safetensors").read_bytes() == b"w"
    assert (tmp_path / "set" / "000.png").read_bytes() == b"p"


def test_a_sets_files_are_on_disk_before_its_old_index_goes(tmp_path, monkeypatch) -> None:
    """A kill between the old index's removal and the new one's leaves no index: that window holds renames only,
    not an fsync per image."""
    def write_set(text: str) -> None:
        with indexed_files_atomically(tmp_path, {"samples.jsonl": ["file"]}) as staging:
            (staging / "000.png").write_text(text)
            (staging / "samples.jsonl").write_text(json.dumps({"file": "000.png"}) + "\n")

    write_set("old")
    index_there: list[bool] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (index_there.append((tmp_path / "samples.jsonl").is_file()),
                                                 real_fsync(fd))[1])
    write_set("new")
    assert index_there and all(index_there) and (tmp_path / "000.png").read_text() == "new"


def test_an_interrupted_first_write_leaves_no_empty_folders_of_its_own(tmp_path) -> None:
    """`generate --prompts FILE --out a/b` killed before its first image left `a/` and `a/b/` behind, empty."""
    (tmp_path / "mine").mkdir()
    out = tmp_path / "mine" / "a" / "b"
    with pytest.raises(KeyboardInterrupt), indexed_files_atomically(out, {"index.jsonl": ["file"]}):
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine"]  # the user's own folder stays
    with indexed_files_atomically(out, {"index.jsonl": ["file"]}) as staging:
        (staging / "index.jsonl").write_text("")
    assert (out / "index.jsonl").is_file()


def test_a_checkpoint_write_removes_what_a_killed_write_of_it_left(tmp_path) -> None:
    """A SIGKILL inside a checkpoint's write left its temporary, a checkpoint's size, for good."""
    from unigap.train.checkpoint import load_checkpoint, save_checkpoint

    directory = tmp_path / "checkpoint"
    directory.mkdir()
    stale = directory / ".checkpoint.pt.qdbvdw8g.tmp"
    stale.write_bytes(b"x" * 1000)
    other = directory / ".other.pt.qdbvdw8g.tmp"  # (another file's: not this writer's to remove)
    other.write_bytes(b"y")
    save_checkpoint(directory, {"step": 3})
    assert load_checkpoint(directory)["step"] == 3 and not stale.exists() and other.exists()


def test_a_path_setting_may_be_spelled_otherwise_on_resume(tmp_path, monkeypatch) -> None:
    """`--prompts ./p.txt` then `--prompts p.txt` (or its absolute path) named the same file, yet the resume was
    refused as a change of settings; a split name is not a path, whatever file of that name the folder holds."""
    from unigap.atomic import path_settings
    from unigap.selfimprove import SelfImproveConfig

    monkeypatch.chdir(tmp_path)
    for name in ("p.txt", "q.txt", "train"):
        Path(name).write_text("a red circle\n")
    Path("judge").mkdir()
    paths = path_settings(SelfImproveConfig)
    assert paths == {"prompts": ("train", "val", "test"), "audit": ()}
    path = tmp_path / "run" / "settings.json"
    claim_settings(path, {"prompts": "./p.txt", "audit": "clip:./judge", "n": 3}, "selfimprove", paths=paths)
    claim_settings(path, {"prompts": str(tmp_path / "p.txt"), "audit": "clip:judge", "n": 3}, "selfimprove",
                   paths=paths)
    with pytest.raises(UserError, match=r"prompts: .*p.txt\" → \"q.txt\""):
        claim_settings(path, {"prompts": "q.txt", "audit": "clip:judge", "n": 3}, "selfimprove", paths=paths)
    with pytest.raises(UserError, match=r"audit: \"clip:judge\" → \"vlm:judge\""):
        claim_settings(path, {"prompts": "p.txt", "audit": "vlm:judge", "n": 3}, "selfimprove", paths=paths)
    with pytest.raises(UserError, match=r"prompts: .*p.txt\" → \"p.txt\""):  # (not a path setting here)
        claim_settings(path, {"prompts": "p.txt", "audit": "clip:judge", "n": 3}, "selfimprove")
    split = tmp_path / "split" / "settings.json"
    claim_settings(split, {"prompts": "train"}, "selfimprove", paths=paths)
    with pytest.raises(UserError, match=r"prompts: \"train\" → \"./train\""):
        claim_settings(split, {"prompts": "./train"}, "selfimprove", paths=paths)


def test_a_checkpoints_path_setting_may_be_spelled_otherwise_on_resume(tmp_path, monkeypatch) -> None:
    """The same for a trainer's checkpoint (the GRPO reward's judge folder)."""
    from dataclasses import asdict, replace

    import torch

    from unigap.refine.grpo_config import GRPOConfig
    from unigap.train.checkpoint import save_checkpoint
    from unigap.train.loop import CHECKPOINT_DIR, resumed_state

    monkeypatch.chdir(tmp_path)
    Path("judge").mkdir()
    config = GRPOConfig(reward="verifier")
    state = {"config": asdict(config) | {"reward": "clip:./judge"}, "step": 1, "x": torch.zeros(1)}
    save_checkpoint(tmp_path / "out" / CHECKPOINT_DIR, state)
    resumed = resumed_state(tmp_path / "out", replace(config, reward="clip:judge"), resume=True)
    assert resumed is not None and resumed["config"]["reward"] == "clip:./judge"
    with pytest.raises(UserError, match=r"reward: \"clip:./judge\" → \"verifier\""):
        resumed_state(tmp_path / "out", config, resume=True)
    # and an SFT run's data files (the study's sft arm names them under its --out, however that was spelled)
    from unigap.train.sft_data import SFTConfig

    Path("d.jsonl").write_text("{}\n")
    sft = SFTConfig(gen_data="./d.jsonl")
    save_checkpoint(tmp_path / "sft" / CHECKPOINT_DIR, {"config": asdict(sft), "step": 1, "x": torch.zeros(1)})
    assert resumed_state(tmp_path / "sft", replace(sft, gen_data=str(tmp_path / "d.jsonl")), resume=True)


def test_a_folder_written_whole_clears_what_a_killed_writer_left(tmp_path) -> None:
    """A merge killed outright left its `.m.XXXXXXXX.tmp` (a checkpoint's size) at every kill, for good; another
    name's, or a longer name's, stays."""
    from unigap.atomic import directory_atomically

    for name in (".m.q8nc948i.tmp", ".m.extra.q8nc948i.tmp", ".mm.q8nc948i.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"w")
    with directory_atomically(tmp_path / "m") as staging:
        (staging / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.extra.q8nc948i.tmp", ".mm.q8nc948i.tmp", "m"]
