"""Gradient diagnostics (SPEC §1): do understanding and generation gradients conflict, and how
unequal are their magnitudes — overall, per layer, per LoRA factor and module kind, and against the
understanding target length. `unigap diagnose` is the command line front end.
"""

from unigap.diagnose.gradients import (
    GradientCollector,
    GradientLog,
    LossFn,
    ParameterSet,
    collect,
    full_parameter_set,
    lora_parameter_set,
    task_gradient,
)
from unigap.diagnose.run import REPORT, dpo_loss_fn, run_diagnostics, shared_parameters, write_report
from unigap.diagnose.stats import analyse

__all__ = [
    "REPORT",
    "GradientCollector",
    "GradientLog",
    "LossFn",
    "ParameterSet",
    "analyse",
    "collect",
    "dpo_loss_fn",
    "full_parameter_set",
    "lora_parameter_set",
    "run_diagnostics",
    "shared_parameters",
    "task_gradient",
    "write_report",
]
