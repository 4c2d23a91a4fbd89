"""The metric logger: JSONL rows, truncation on resume, the optional backends and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigap.errors import UserError
from unigap.metrics_log import MetricLogger, parse_report_to


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_and_resume_truncation(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    logger = MetricLogger(path)
    for step in range(4):
        logger.log(step, {"loss": 1.0 / (step + 1), "note": "x"})
    logger.close()
    assert [r["step"] for r in _rows(path)] == [0, 1, 2, 3] and _rows(path)[1] == {"step": 1, "loss": 0.5, "note": "x"}
    MetricLogger(path, resume_step=2).log(2, {"loss": 9.0})  # resumed at step 2: rows 2-3 of the killed run go
    assert [(r["step"], r["loss"]) for r in _rows(path)] == [(0, 1.0), (1, 0.5), (2, 9.0)]
    with path.open("a") as handle:
        handle.write('{"step": 3, "lo')  # a run killed while writing a row
    MetricLogger(path, resume_step=3).log(3, {"loss": 7.0})  # the torn row goes with the steps it resumes
    assert [(r["step"], r["loss"]) for r in _rows(path)] == [(0, 1.0), (1, 0.5), (2, 9.0), (3, 7.0)]
    MetricLogger(path)  # a fresh run starts an empty log
    assert path.read_text() == ""


def test_report_to_names_and_missing_packages(monkeypatch) -> None:
    assert parse_report_to("none") == () and parse_report_to(None) == ()
    with pytest.raises(UserError, match="--report-to must be none or some of tensorboard, wandb, got 'mlflow'"):
        parse_report_to("mlflow")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(UserError, match="pip install wandb"):
        parse_report_to("tensorboard,wandb")


def test_tensorboard_receives_the_numbers(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricLogger(tmp_path / "log.jsonl", report_to=("tensorboard",))
    logger.log(0, {"loss": 0.7, "accuracy": 0.5, "flag": True, "name": "x"})
    logger.log(1, {"loss": 0.6, "accuracy": 0.75})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "accuracy"}
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([0.7, 0.6])


def test_a_resumed_runs_tensorboard_curve_holds_the_redone_steps_once(tmp_path: Path) -> None:
    """The killed run's events for the steps a resumed one redoes stayed in its event file: zig-zag curves."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for resume_step, losses in ((None, range(5)), (2, range(12, 15))):
        logger = MetricLogger(tmp_path / "log.jsonl", report_to=("tensorboard",), resume_step=resume_step)
        for step, loss in zip(range(resume_step or 0, 5), losses):
            logger.log(step, {"loss": float(loss)})
        logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 0.0), (1, 1.0), (2, 12.0), (3, 13.0),
                                                                   (4, 14.0)]


def test_a_job_whose_stages_resume_sends_each_stage_step_to_tensorboard_once(tmp_path: Path) -> None:
    """Pretraining appends (its stages resume themselves): a stage's steps redone after its checkpoint, and a one-off
    row written again on every resume, reached TensorBoard twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def run(rows: list[tuple[str, int, float]], report_to: tuple[str, ...] = ("tensorboard",)) -> None:
        logger = MetricLogger(tmp_path / "log.jsonl", report_to=report_to, append=True)
        # as pretraining does: the joint stage resumed from its step 10, the one-off row written again
        logger.keep_rows(lambda row: not (row["stage"] == "joint" and row["step"] > 10 or row["stage"] == "fidelity"))
        for stage, step, loss in rows:
            logger.log(step, {"stage": stage, "loss": loss}, prefix=f"{stage}/")
        logger.close()

    run([("fidelity", 0, 0.5), ("joint", 10, 1.0), ("joint", 20, 2.0)])  # killed after step 20
    run([("fidelity", 0, 0.5), ("joint", 20, 2.0), ("joint", 30, 3.0)])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("joint/loss")] == [(10, 1.0), (20, 2.0), (30, 3.0)]
    assert [(e.step, e.value) for e in events.Scalars("fidelity/loss")] == [(0, 0.5)]
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("joint", 10), ("fidelity", 0), ("joint", 20), ("joint", 30)]
    run([("fidelity", 0, 0.5), ("joint", 20, 2.5), ("joint", 30, 3.0)])  # redone on another device: new numbers sent
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert (20, 2.5) in [(e.step, e.value) for e in events.Scalars("joint/loss")]
    assert [(e.step, e.value) for e in events.Scalars("fidelity/loss")] == [(0, 0.5)]


def test_a_job_resumed_with_a_backend_it_ran_without_sends_it_every_row(tmp_path: Path) -> None:
    """(The rows the first run logged to its file alone reached no backend, and were not sent on resume either.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for report_to, steps in (((), (10, 20)), (("tensorboard",), (20, 30))):
        logger = MetricLogger(tmp_path / "log.jsonl", report_to=report_to, append=True)
        logger.keep_rows(lambda row: row["step"] <= 10)
        for step in steps:
            logger.log(step, {"stage": "joint", "loss": step / 10}, prefix="joint/")
        logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("joint/loss")] == [(20, 2.0), (30, 3.0)]


class _FakeRun:
    def __init__(self, **init: object) -> None:
        self.init, self.axes, self.rows = init, [], []

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.axes.append((name, step_metric))

    def log(self, row: dict, step: int | None = None) -> None:
        assert step is None  # W&B ignores a row whose step is below its latest: stages count from 0 each
        self.rows.append(row)

    def finish(self) -> None:
        pass


def test_wandb_gets_a_step_axis_per_stage_and_a_resumed_run_its_own_run(tmp_path: Path, monkeypatch) -> None:
    import importlib.util
    import sys
    import types

    runs: list[_FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "wandb" else real(name))
    path = tmp_path / "log.jsonl"
    logger = MetricLogger(path, report_to=("wandb",))
    logger.log(5600, {"loss": 0.1}, prefix="vq/")
    logger.log(10, {"loss": 0.2}, prefix="vision/")  # a later stage at a lower step: its own axis
    logger.log(20, {"loss": 0.3}, prefix="vision/")
    run = runs[0]
    assert run.rows == [{"vq/loss": 0.1, "vq/step": 5600}, {"vision/loss": 0.2, "vision/step": 10},
                        {"vision/loss": 0.3, "vision/step": 20}]
    assert run.axes == [("vq/step", None), ("vq/*", "vq/step"), ("vision/step", None), ("vision/*", "vision/step")]
    MetricLogger(path, report_to=("wandb",), resume_step=20)
    MetricLogger(path, report_to=("wandb",))
    assert runs[1].init["id"] == run.init["id"] != runs[2].init["id"]  # resumed: the same W&B run; fresh: a new one


def test_a_row_damaged_since_it_was_written_is_one_line_naming_it(tmp_path: Path) -> None:
    """(A resumed run read a damaged log row as a JSONDecodeError traceback; a half-written last row is a kill's.)"""
    from unigap.atomic import cached_json
    from unigap.errors import UserError
    from unigap.metrics_log import read_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0}\n{"step": 1, "lo\n{"step": 2}\n{"step": 3, "lo')
    with pytest.raises(UserError, match=r"cannot read .*log.jsonl:2: Unterminated string .* move it away"):
        read_log(log)
    log.write_text('{"step": 0}\n{"step": 1, "lo')
    assert read_log(log) == [{"step": 0}]
    part = tmp_path / "part.json"
    part.write_text('{"accuracy": 0.')
    with pytest.raises(UserError, match=r"cannot read .*part.json: "):
        cached_json(part, lambda: {"accuracy": 1.0})
