"""Progress reporting: plain lines (not a redrawn bar) when stderr is not a terminal."""

from __future__ import annotations

from unigap.progress import progress


def test_plain_progress_prints_about_ten_lines_and_the_end(capsys) -> None:
    with progress("work", 95) as update:
        for done in range(0, 96, 5):
            update(done, "ok")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "work: 95/95 (ok)"
    assert 8 <= len(lines) <= 12 and all(line.startswith("work: ") for line in lines)
    assert "" not in lines


def test_hidden_progress_prints_nothing(capsys) -> None:
    with progress("work", 10, show=False) as update:
        update(10)
    assert capsys.readouterr().err == ""
