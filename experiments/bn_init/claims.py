"""The verdict rules of the study, fixed before it ran: from the comparisons' statistics to the
chapter's claims (used by the report and by `audit.check_BN_12`; no jax).

Each comparison is an `analysis.inference.compare_family` entry over per-seed differences of
natural-log step counts (see `grid`). The rules:

  speed, per optimizer and measure (He + BN against small random + BN; Δ = log steps of small
    minus log steps of He, so exp(Δ) is He's speed-up):
      "holds"     Holm's decision is "differs", Δ > 0, the paired-t 95 % CI of the speed-up lies
                  at or above LEDGER_SPEEDUP (the ledger's "He >= 1.5x faster"), and no He run
                  is censored;
      "fails"     the CI's upper end is below LEDGER_SPEEDUP (a 1.5x speed-up is excluded; this
                  includes He being slower), and no small-random run is censored;
      "undecided" otherwise.
    Censoring: a censored run counts as the budget, below its true steps. A censored He run
    makes He look faster than it is, a censored small-random run makes small look faster than
    it is; so each verdict is only drawn when the censoring cannot have produced it.
    Per optimizer the speed part combines its measures: "holds" if every measure holds, "fails"
    if every one fails, otherwise "undecided" (stricter than either measure alone).
  sensitivity, per optimizer (spread of log steps over the inits, no norm minus BN):
      "holds" Holm "differs" with Δ > 0 (BN narrows the spread) and no BN run censored; "fails"
      Holm "differs" with Δ < 0 (BN widens it) and no run without a norm censored; "undecided"
      otherwise. (A censored run shrinks its norm's spread, so it can fake a narrower spread for
      that norm, never a wider one.)
  A part over the optimizers: "holds" when it holds under every optimizer, "fails" when it fails
  under at least one, otherwise "undecided".
  BN-12 (the ledger: "BN reduces init sensitivity, but He + BN converges 'significantly faster'
  than BN + random init"; this study is its part (c), part (b) being the quick check's weight-
  scale invariance): "confirmed" if both parts hold, "partly" if one holds and the other fails,
  "refuted" if one fails and the other does not hold, otherwise "inconclusive".
  The Sec 18 myth ("BN eliminates the need for careful initialization"; the chapter calls it a
  myth because He + BN is faster): the chapter's rebuttal is "confirmed" when the speed part
  holds, "refuted" when it fails, otherwise "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.bn_init.grid import LEDGER_SPEEDUP


def ratio_ci(comp: Mapping[str, Any]) -> tuple[float, float, float]:
    """(exp(mean), exp(low), exp(high)) of a log-difference comparison's paired-t interval."""
    t = comp["t"]
    return (math.exp(float(t["mean"])), math.exp(float(t["low"])), math.exp(float(t["high"])))


def speed_status(comp: Mapping[str, Any], threshold: float = LEDGER_SPEEDUP) -> str:
    """A speed comparison's status (results.json's entry: "inference", "arm_censored" (small
    random), "against_censored" (He))."""
    inf = comp["inference"]
    if not inf.get("n"):
        return "undecided"
    ratio, low, high = ratio_ci(inf)
    if (inf.get("decision") == "differs" and ratio > 1.0 and low >= threshold
            and not any(comp["against_censored"])):
        return "holds"
    if high < threshold and not any(comp["arm_censored"]):
        return "fails"
    return "undecided"


def sensitivity_status(comp: Mapping[str, Any]) -> str:
    """A sensitivity comparison's status (results.json's entry: "inference", "arm" (no norm),
    "against" (BN), "censored": {norm: censored runs})."""
    inf = comp["inference"]
    if not inf.get("n") or inf.get("decision") != "differs":
        return "undecided"
    if float(inf["t"]["mean"]) > 0:
        return "holds" if comp["censored"][comp["against"]] == 0 else "undecided"
    return "fails" if comp["censored"][comp["arm"]] == 0 else "undecided"


def combine_measures(statuses: Sequence[str]) -> str:
    """One optimizer's speed part from its measures: all hold / all fail / otherwise undecided."""
    if statuses and all(s == "holds" for s in statuses):
        return "holds"
    if statuses and all(s == "fails" for s in statuses):
        return "fails"
    return "undecided"


def combine_optimizers(statuses: Mapping[str, str]) -> str:
    """A part over the optimizers: holds under every one / fails under one / otherwise undecided."""
    values = list(statuses.values())
    if not values:
        return "undecided"
    if any(s == "fails" for s in values):
        return "fails"
    return "holds" if all(s == "holds" for s in values) else "undecided"


def bn12_verdict(speed: str, sensitivity: str) -> str:
    parts = {speed, sensitivity}
    if parts == {"holds"}:
        return "confirmed"
    if parts == {"holds", "fails"}:
        return "partly"
    if "fails" in parts:
        return "refuted"
    return "inconclusive"


def myth_verdict(speed: str) -> str:
    return {"holds": "confirmed", "fails": "refuted"}.get(speed, "inconclusive")


def judge(comparisons: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The verdicts from the study's comparisons ({name: {"kind", "optimizer", "measure",
    "inference", censored runs}}, as results.json stores them).

    Returns:
      {"speed": {optimizer: {"by_measure": {measure: status}, "status"}}, "sensitivity":
       {optimizer: status}, "speed_part", "sensitivity_part", "BN-12", "myth"}.
    """
    speed: dict[str, dict[str, Any]] = {}
    sensitivity: dict[str, str] = {}
    for c in comparisons.values():
        if c["kind"] == "speed":
            entry = speed.setdefault(c["optimizer"], {"by_measure": {}})
            entry["by_measure"][c["measure"]] = speed_status(c)
        elif c["kind"] == "sensitivity":
            sensitivity[c["optimizer"]] = sensitivity_status(c)
    for entry in speed.values():
        entry["status"] = combine_measures(list(entry["by_measure"].values()))
    speed_part = combine_optimizers({o: e["status"] for o, e in speed.items()})
    sensitivity_part = combine_optimizers(sensitivity)
    return {"speed": speed, "sensitivity": sensitivity, "speed_part": speed_part,
            "sensitivity_part": sensitivity_part,
            "BN-12": bn12_verdict(speed_part, sensitivity_part),
            "myth": myth_verdict(speed_part)}
