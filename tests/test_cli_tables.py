"""Results tables print whole when stdout is a file or a pipe (rich would assume 80 columns and cut numbers)."""

from __future__ import annotations

from rich.table import Table

from unigap.cli.common import print_table


def test_a_wide_table_into_a_pipe_keeps_every_cell_whole(capsys) -> None:
    cells = [f"+0.{i:03d} [-0.020, +0.050]" for i in range(8)]
    table = Table(*(f"metric number {i}" for i in range(8)))
    table.add_row(*cells)
    print_table(table)
    out = capsys.readouterr().out
    assert all(cell in out for cell in cells) and "…" not in out
    assert max(len(line) for line in out.splitlines()) > 80
