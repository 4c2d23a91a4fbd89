"""Names the command line shows in its help: kept free of torch so `unigap --help` stays fast."""

from __future__ import annotations

SINGLE_TASK: dict[str, str] = {"und-only": "und", "gen-only": "gen"}
# strategy name -> torchjd.aggregation class
TORCHJD: dict[str, str] = {
    "upgrad": "UPGrad",
    "mgda": "MGDA",
    "dualproj": "DualProj",
    "imtl-g": "IMTLG",
    "aligned-mtl": "AlignedMTL",
}
STRATEGIES: tuple[str, ...] = (
    "und-only",
    "gen-only",
    "joint",
    "pcgrad",
    "grad-weighted",
    "length-norm",
    "fixed",
    *TORCHJD,
)
SOUP_LAMBDAS: tuple[float, ...] = (0.3, 0.5, 0.7)
