"""Markdown cells for the statistics every study report states (`analysis.inference`).

A study builds its comparisons as per-seed paired differences, runs
`inference.compare_family` over the table (Holm's adjustment is over that family), and renders
the rows with `comparison_table`; `formal` gives the same numbers as one sentence for an analysis.
Values are in the study's own unit; `scale` turns them into the unit printed (100 for accuracy
fractions shown in percentage points). results.json holds non-finite floats as the strings
"inf" / "nan" (`run_files.to_jsonable`), so every cell accepts those too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

HEADER = ("Δ (mean ± sd of paired Δ) | 95 % CI, paired t | 95 % CI, bootstrap | p (Holm) | "
          "detectable at 80 % | seeds for this Δ | decision")


def number(x: float | str, scale: float = 100.0, digits: int = 2, sign: bool = False) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "-"
    return f"{scale * x:{'+' if sign else ''}.{digits}f}"


def interval(low: float | str, high: float | str, scale: float = 100.0, digits: int = 2) -> str:
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"[{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"


def p_value(p: float | str | None) -> str:
    if p is None or math.isnan(float(p)):
        return "-"
    p = float(p)
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def seeds(n: int | float | str | None) -> str:
    """A `compare` seed count: None is undefined (zero difference), inf is more than the cap."""
    return "-" if n is None else ("> 1000" if float(n) == math.inf else str(int(float(n))))


def cells(comp: Mapping[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """The HEADER's cells for one comparison of `compare_family` (no leading/trailing pipe)."""
    if not comp.get("n"):
        return " | ".join(["no common seed"] + ["-"] * 6)
    t, boot = comp["t"], comp["bootstrap"]
    return " | ".join([
        f"{number(t['mean'], scale, digits, True)} ± {number(t['sd'], scale, digits)}",
        interval(t["low"], t["high"], scale, digits),
        interval(boot["low"], boot["high"], scale, digits),
        p_value(comp.get("p_holm")), number(comp["mde"], scale, digits),
        seeds(comp["seeds_for_observed"]), str(comp.get("decision", "-"))])


def comparison_table(rows: Sequence[tuple[str, str, Mapping[str, Any]]], *, what: str = "comparison",
                     scale: float = 100.0, digits: int = 2, unit: str = "pp") -> str:
    """A markdown table, one line per (label, against, comparison)."""
    head = HEADER.replace("Δ (", f"Δ {unit} (")
    lines = [f"| {what} | against | {head} |", "|---|---|" + "---|" * 7]
    lines += [f"| {label} | {against} | {cells(comp, scale, digits)} |"
              for label, against, comp in rows]
    return "\n".join(lines) + "\n"


def formal(comp: Mapping[str, Any], scale: float = 100.0, digits: int = 2, unit: str = "pp") -> str:
    """"Δ = x unit, 95 % CI [a, b] (paired t, n seeds), Holm p = y: decision"."""
    if not comp.get("n"):
        return "no seed in common"
    t = comp["t"]
    return (f"Δ = {number(t['mean'], scale, digits, True)} {unit}, 95 % CI "
            f"{interval(t['low'], t['high'], scale, digits)} {unit} (paired t, {comp['n']} seeds), "
            f"Holm-adjusted p = {p_value(comp.get('p_holm'))}: {comp.get('decision', '-')}")
