"""Progress for long work: a rich bar on a terminal, plain lines when the output goes to a file.

Why one helper: every long loop (evaluation, pretraining, training, the study) reports progress the same way,
and a log file must not fill with the bar's redraws (blank lines between carriage returns). On a terminal the bar
is rich's, on stderr; otherwise a line `description: done/total (info)` is printed to stderr about every tenth of
the work and at the end. Kept free of torch so the CLI's light modules can use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINES = 10  # plain-text updates per task


@contextmanager
def progress(description: str, total: int, show: bool = True, transient: bool = True) -> Iterator[Callable[..., None]]:
    """Yield `update(done, info="")`; shows a bar on a terminal, plain lines otherwise, nothing if not `show`."""
    if not show or total <= 0:
        yield lambda done, info="": None
        return
    if not sys.stderr.isatty():
        yield _plain(description, total)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=transient) as bar:
        task = bar.add_task(description, total=total, info="")
        yield lambda done, info="": bar.update(task, completed=done, info=info)


def _plain(description: str, total: int) -> Callable[..., None]:
    step = max(1, total // LINES)
    state = {"next": step, "printed": -1}

    def update(done: int, info: str = "") -> None:
        if done == state["printed"] or (done < state["next"] and done != total):
            return
        state["printed"], state["next"] = done, (done // step + 1) * step
        print(f"{description}: {done}/{total}" + (f" ({info})" if info else ""), file=sys.stderr, flush=True)

    return update
