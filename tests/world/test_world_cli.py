"""`unigap world`: sample writes files, verify prints JSON, user mistakes exit 2 with one stderr line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unigap.cli import main
from unigap.world import load_dataset


def run_main(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_sample_then_verify(tmp_path, capsys):
    out_dir = tmp_path / "ds"
    code, out, _ = run_main(
        capsys, ["world", "sample", "--n", "5", "--seed", "1", "--out", str(out_dir), "--split", "test"]
    )
    assert code == 0 and out.strip() == f"wrote 5 samples to {out_dir / 'samples.jsonl'}"
    code, out, _ = run_main(capsys, ["world", "sample", "--n", "2", "--seed", "1", "--questions", "2", "--out",
                                     str(tmp_path / "asked")])
    assert code == 0 and out.strip() == (f"wrote 2 samples to {tmp_path / 'asked' / 'samples.jsonl'}, and 2 "
                                         f"question(s) per image to {tmp_path / 'asked' / 'questions.jsonl'}")
    rows = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all((out_dir / r["image"]).is_file() for r in rows)
    assert len(load_dataset(out_dir)) == 5

    image = out_dir / rows[0]["image"]
    code, out, _ = run_main(capsys, ["world", "verify", str(image), "--prompt", rows[0]["prompt"]])
    verdict = json.loads(out)
    assert code == 0 and verdict["satisfied"] is True and verdict["objects"]
    code, out, _ = run_main(capsys, ["world", "verify", str(image), "--prompt", "four purple squares"])
    verdict = json.loads(out)
    assert code == 0 and verdict["satisfied"] is False and "expected 4 purple square(s)" in verdict["reason"]


def test_sample_with_a_draw_seed_records_it(tmp_path, capsys):
    out_dir = tmp_path / "fresh"
    code, _, _ = run_main(capsys, ["world", "sample", "--n", "3", "--seed", "1", "--draw-seed", "2",
                                   "--out", str(out_dir)])
    rows = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert code == 0 and {(r["seed"], r["draw_seed"], r["split"]) for r in rows} == {(1, 2, "train")}
    assert manifest["seeds"] == [1, 2] and manifest["config"]["draw_seed"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["world", "sample", "--n", "0", "--seed", "1", "--out", "OUT"], "--n must be from 1 to 1,000,000, got 0"),
        (["world", "sample", "--n", "10000000000000", "--seed", "1", "--out", "OUT"], "--n must be from 1"),  # (hung)
        (["world", "sample", "--n", "1", "--seed", "1", "--out", "OUT", "--questions", "100000000000"],
         "--questions must be from 0 to 100"),  # (a 745 GiB allocation's traceback)
        (["world", "sample", "--n", "1000000", "--seed", "1", "--out", "OUT", "--questions", "100"],
         "--n × --questions must be at most 5,000,000 questions in all"),  # (~65 GB and 5 h, silent, then killed)
        (["world", "sample", "--n", "1", "--seed", "1", "--out", "MINE"], "holds questions.jsonl, images/000000.png "
         "that `unigap world sample` did not write"),  # (deleted and overwritten, exit 0)
        (["world", "sample", "--n", "2", "--seed", "1", "--out", "FILE"], "is a file"),
        (
            ["world", "sample", "--n", "2", "--seed", "1", "--out", "OUT", "--split", "dev"],
            "--split must be one of",
        ),
        (
            ["world", "sample", "--n", "2", "--seed", "1", "--out", "OUT", "--category", "x"],
            "--category must be one of",
        ),
        (["world", "sample", "--n", "2", "--seed", "1", "--out", "OUT", "--draw-seed", "-1"], "--draw-seed must be >= 0"),
        (["world", "verify", "MISSING", "--prompt", "a circle"], "image file not found"),
        (["world", "verify", "FILE", "--prompt", "a circle"], "cannot read"),
        (["world", "verify", "SMALL", "--prompt", "a circle"], "is 32x32, not the 64x64 canvas --size says; pass "
                                                              "--size 32"),
        (["world", "verify", "GOOD", "--prompt", "a pink elephant"], "cannot parse prompt"),
        (["world", "verify", "SHEET", "--prompt", "a circle"], "pass --size 128 to judge it at its own size, or if it "
         "is a grid of 64x64 images (`generate --n`), crop each tile"),  # (judged as one scene of every tile's objects)
        (["world", "verify", "WIDE", "--prompt", "a circle"], "is 128x64, not the 64x64 canvas --size says; if it is a "
         "grid of 64x64 images (`generate --n`), crop each tile"),  # (generate --n 2's sheet)
        (["world", "verify", "GOOD", "--prompt", "a circle", "--size", "0"],  # (a ZeroDivisionError traceback)
         "--size must be from 32 to 8192 pixels, got 0"),
        (["world", "verify", "TINY", "--prompt", "a circle"],  # (it hinted at --size 8, which was then refused)
         "is 8x8, not the 64x64 canvas --size says; a canvas is square, 32 to 8192 pixels"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("not an image")
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "good.png")
    Image.fromarray(np.full((128, 128, 3), 255, np.uint8)).save(tmp_path / "sheet.png")
    Image.fromarray(np.full((64, 128, 3), 255, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "mine" / "images").mkdir(parents=True)  # a user's folder: their questions and pictures
    (tmp_path / "mine" / "questions.jsonl").write_text('{"question": "mine"}\n')
    (tmp_path / "mine" / "images" / "000000.png").write_bytes(b"a user's picture")
    paths = {
        "OUT": tmp_path / "out",
        "MINE": tmp_path / "mine",
        "FILE": tmp_path / "file.txt",
        "MISSING": tmp_path / "nope.png",
        "SMALL": tmp_path / "small.png",
        "GOOD": tmp_path / "good.png",
        "SHEET": tmp_path / "sheet.png",
        "WIDE": tmp_path / "wide.png",
        "TINY": tmp_path / "tiny.png",
    }
    code, _out, err = run_main(capsys, [str(paths.get(a, a)) for a in args])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("unigap: error: ") and message in err
    assert "Traceback" not in err
    assert (tmp_path / "mine" / "questions.jsonl").read_text() == '{"question": "mine"}\n'


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from unigap.cli import main; main()",
            "world",
            "verify",
            str(tmp_path / "x.png"),
            "--prompt",
            "a circle",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"unigap: error: image file not found: {tmp_path / 'x.png'}"]


def test_a_sample_made_before_manifests_or_cut_off_before_one_is_still_rerun(tmp_path, capsys):
    """Its samples.jsonl's rows say what made it: only a folder of someone else's files is refused."""
    out = tmp_path / "w"
    args = ["world", "sample", "--n", "2", "--seed", "1", "--out", str(out)]
    assert run_main(capsys, args)[0] in (0, None)
    (out / "manifest.json").unlink()
    assert run_main(capsys, [*args[:3], "3", *args[4:]])[0] in (0, None)
    assert len(list((out / "images").glob("*.png"))) == 3
