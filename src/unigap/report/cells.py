"""The report's table cells: numbers and p-values as the report prints them, and HTML tables built from escaped parts."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

DASH = "—"


class Safe(str):
    """HTML built here from escaped parts: a table cell that must not be escaped again."""


class Significant(Safe):
    """A cell shown in bold green: significant after Bonferroni, and better for the metric."""


class SignificantlyWorse(Safe):
    """A cell shown in bold red: significant after Bonferroni, and worse for the metric (a harm, not a gain)."""


def significance_verdict(significant: bool, delta: float | None, higher_is_better: bool) -> str:
    """How a Δ reads: "better", "worse" (significant, by the metric's direction: a rise in a rate that should fall
    is a harm) or "" (not significant), so that colour never shows a harm as a gain."""
    if not significant or delta is None:
        return ""
    return "better" if (delta > 0) == higher_is_better else "worse"


def significance_cell(text: Safe, verdict: str) -> Safe:
    """`text` as an HTML table cell styled by `significance_verdict`'s verdict."""
    return {"better": Significant, "worse": SignificantlyWorse}.get(verdict, Safe)(text)


def rich_significance(text: str, verdict: str) -> str:
    """`text` for a rich terminal table: marked * and coloured as `significance_cell` colours it, when significant."""
    style = {"better": "bold green", "worse": "bold red"}.get(verdict)
    return f"[{style}]{text}*[/{style}]" if style else text


_CLASS = {Significant: ' class="sig"', SignificantlyWorse: ' class="sig-worse"'}


def _cell(value: Any) -> str:
    return value if isinstance(value, Safe) else escape(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()) -> Safe:
    """A table; row i gets CSS class classes[i] (when given)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{escape(classes[i])}"' if i < len(classes) and classes[i] else ""
        cells = "".join(f"<td{_CLASS.get(type(v), '')}>{_cell(v)}</td>" for v in row)
        body.append(f"<tr{css}>{cells}</tr>")
    return Safe(
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A number for a table, or a dash where it is undefined."""
    if value is None:
        return DASH
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """p-values as the paper prints them: three decimals, two significant digits below 0.01 (Bonferroni's thresholds
    are printed so, and 0.0016 must not read as 0.002 beside "p < 0.0018"), scientific below 0.001."""
    if p is None:
        return DASH
    return f"{p:.3f}" if p >= 0.01 else f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def ci(interval: Sequence[float] | None, signed: bool = False, below: bool = False) -> str:
    """An interval in small grey type, after the value or (`below`) on its own line."""
    if not interval:
        return ""
    low, high = (escape(fmt(v, signed=signed)) for v in interval)
    return f'{"<br>" if below else " "}<span class="ci">[{low}, {high}]</span>'
