"""One metric logger for the training loops: a JSONL file on disk, and TensorBoard or Weights & Biases when asked.

`--report-to` takes TRL's names: `none` (the default), `tensorboard`, `wandb`, comma-separated. Neither backend is
a dependency: asking for one that is not installed is a one-line `UserError` naming the pip package. The JSONL file
is the record unigap itself reads; a resumed run drops the rows from the step it resumes at, so no step appears
twice. Kept free of torch: the backends are imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unigap.atomic import write_text_atomically
from unigap.errors import UserError

BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # name -> the package it needs
WANDB_ID_FILE = "wandb_run_id.txt"  # beside the log: the W&B run a resumed job goes on in
TENSORBOARD_DIR = "tensorboard"  # beside the log: the event files
LOGGER_FILES = (TENSORBOARD_DIR, "wandb", WANDB_ID_FILE)  # what the backends write beside the log, from the start


def parse_report_to(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`none` / `tensorboard,wandb` / a list → the backends, checked to be known and installed."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or ()) if v.strip()]
    names = [n for n in names if n != "none"]
    for name in names:
        if name not in BACKENDS:
            raise UserError(f"--report-to must be none or some of {', '.join(BACKENDS)}, got {name!r}")
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise UserError(f"--report-to {name} needs the {BACKENDS[name]} package: pip install {BACKENDS[name]}")
    return tuple(dict.fromkeys(names))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log appended to row by row, less a last row a killed writer left half-written (no
    newline yet); none when there is no file. A row damaged otherwise is a `UserError` naming its line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig") if path.is_file() else ""
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines.pop()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:  # (a JSONDecodeError, or an integer of more digits than Python converts)
            raise UserError(f"cannot read {path}:{number}: {getattr(exc, 'msg', exc)} (damaged since it was "
                            f"written: move it away to redo what it records)") from None
    return rows


def keep_log_rows(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSONL log with the rows `keep` accepts (`read_log`'s: a half-written last row goes), before a
    resumed job appends again."""
    if Path(path).is_file():
        write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in read_log(path) if keep(row)))


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """A row's numbers, as the backends get them (not its step, flags or text)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class MetricLogger:
    """`log(step, record)` appends a JSON line to `path` and sends the record's numbers to the backends."""

    def __init__(self, path: str | Path, report_to: Sequence[str] = (), resume_step: int | None = None,
                 run_name: str | None = None, append: bool = False) -> None:
        """A fresh log (`resume_step` None), a resumed one (rows from `resume_step` on dropped), or with `append`
        the file as it is (a job whose stages resume themselves)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # with `append`, the numbers of each (stage, step) an earlier run logged: a stage that resumes logs its steps
        # after the checkpoint again, and a backend that already holds them is not sent them twice (TensorBoard's
        # purge would hide every other stage's steps too)
        self._earlier = {(row.get("stage"), row.get("step")): _numbers(row) for row in read_log(self.path)} \
            if append else {}
        if append:  # less a row a killed run left half-written, which the next row would be appended to
            self.keep_rows(lambda row: True)
        elif resume_step is None:
            self.path.write_text("")
        else:  # a resumed run: keep only the steps before the one it resumes at
            self.keep_rows(lambda row: row["step"] < resume_step)
        self._writers: list[Any] = []
        for name in parse_report_to(report_to):
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                # the steps from the one a run (re)starts at hide what a killed run wrote for them: no zig-zag curves
                purge = None if append else resume_step or 0
                held = (self.path.parent / TENSORBOARD_DIR).is_dir()  # (an earlier run wrote to it)
                self._writers.append(("tensorboard", SummaryWriter(log_dir=str(self.path.parent / TENSORBOARD_DIR),
                                                                   purge_step=purge), held))
            else:
                import wandb

                # a resumed run goes on in the same W&B run (its id kept beside the log); a fresh one starts its own
                id_file = self.path.parent / WANDB_ID_FILE
                held = id_file.is_file() and (append or resume_step is not None)  # (the same W&B run goes on)
                run_id = id_file.read_text().strip() if held else uuid.uuid4().hex[:16]
                write_text_atomically(id_file, run_id)
                run = wandb.init(project="unigap", name=run_name, dir=str(self.path.parent), id=run_id,
                                 resume="allow")
                self._writers.append(("wandb", run, held))
        self._wandb_axes: set[str] = set()  # the prefixes whose own step axis W&B has been told about

    def keep_rows(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite the file with the rows `keep` accepts, less a last row a killed run left half-written: before a
        resumed run logs again the steps it redoes."""
        keep_log_rows(self.path, keep)

    def log(self, step: int, record: dict[str, Any], prefix: str = "") -> None:
        """One row; the backends see its numbers under `prefix` + key (e.g. a pretraining stage's name)."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **{k: v for k, v in record.items() if k != "step"}}) + "\n")
        raw = _numbers(record)
        numbers = {prefix + k: v for k, v in raw.items()}
        again = self._earlier.get((record.get("stage"), step)) == raw  # (logged before, with these numbers)
        for name, writer, held in self._writers:
            if again and held:
                continue
            if name == "tensorboard":
                for key, value in numbers.items():
                    writer.add_scalar(key, value, step)
            else:  # W&B drops rows logged at a step below its latest: each prefix gets its own step axis, since a
                # job's stages (pretraining's) each count from 0
                if prefix not in self._wandb_axes:
                    writer.define_metric(f"{prefix}step")
                    writer.define_metric(f"{prefix}*", step_metric=f"{prefix}step")
                    self._wandb_axes.add(prefix)
                writer.log(numbers | {f"{prefix}step": step})

    def close(self) -> None:
        for name, writer, _ in self._writers:
            writer.close() if name == "tensorboard" else writer.finish()
        self._writers = []
