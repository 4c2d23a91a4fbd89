"""Names the command line shows in its help: kept free of torch so `unigap --help` stays fast."""

from __future__ import annotations

from collections.abc import Iterable

from unigap.errors import UserError
from unigap.registry import Registry

TASKS: tuple[str, ...] = ("und", "gen")
SINGLE_TASK: dict[str, str] = {"und-only": "und", "gen-only": "gen"}
# strategy name -> torchjd.aggregation class
TORCHJD: dict[str, str] = {
    "upgrad": "UPGrad",
    "mgda": "MGDA",
    "dualproj": "DualProj",
    "imtl-g": "IMTLG",
    "aligned-mtl": "AlignedMTL",
}
SPEC_STRATEGIES: tuple[str, ...] = (*SINGLE_TASK, "joint", "pcgrad", "grad-weighted", "length-norm", "fixed")
# strategy name -> its factory, imported when a strategy is built: "module:function", called as
# `factory(name, settings)` (`unigap.train.strategies.build_strategy`); SPEC §1's seven first, then torchjd's
STRATEGIES: Registry[str] = Registry("strategy")
for _name in SPEC_STRATEGIES:
    STRATEGIES.register(_name, "unigap.train.strategies:" + ("single_task" if _name in SINGLE_TASK else
                                                             _name.replace("-", "_")))
for _name in TORCHJD:
    STRATEGIES.register(_name, "unigap.train.strategies:torchjd")
SOUP_LAMBDAS: tuple[float, ...] = (0.3, 0.5, 0.7)


def trained_tasks(strategy: str) -> tuple[str, ...]:
    """The tasks a strategy optimises (a single-task run still logs the other task's loss when given its pairs)."""
    return (SINGLE_TASK[strategy],) if strategy in SINGLE_TASK else TASKS


def check_pair_tasks(strategy: str, given: Iterable[str]) -> None:
    """`UserError` unless preference pairs are given for every task the strategy trains."""
    given = set(given)
    missing = [task for task in trained_tasks(strategy) if task not in given]
    if missing:
        flags = " and ".join(f"--{task} FILE" for task in missing)
        raise UserError(f"strategy {strategy!r} needs {' and '.join(missing)} preference pairs ({flags})")
