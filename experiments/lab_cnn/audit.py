"""The lab on a CNN in the audit: the CNN's result for the lab's table claims (section 21).

`check_lab_cnn` reads <studies>/lab_cnn/results.json (or another workdir of the study, e.g.
lab_cnn_cifar10) and states, for each step of the lab's table (rows 2-7 against the row before),
the CNN's mean paired difference with its 95 % interval and Holm-adjusted p, next to the chapter's
step, and how many of the MLP's verdicts change on the CNN. Not registered here: the audit's
registry decides which ledger row it feeds (EXP-03 is the MLP's; this is the same claim on a CNN).
"""

from __future__ import annotations

from experiments import stats_report
from experiments.audit.core import Context, Finding, not_run

COMMAND = ("python -m experiments.lab_cnn --config=experiments/configs/lab_cnn.py "
           "--workdir=checkpoints/lab_cnn --config.data.data_dir=../shared/data/mnist")
# a claim's verdict (main.chapter_claims) -> the step's outcome as EXP-03 counts it
_OUTCOME = {"confirmed": "+", "refuted": "-", "inconclusive": "0"}


def _overall(outcomes: list[str]) -> str:
    """EXP-03's rule: every step helps -> confirmed; some do -> partly; none helps and some are
    refuted -> refuted; else inconclusive."""
    if outcomes and all(o == "+" for o in outcomes):
        return "confirmed"
    if "+" in outcomes:
        return "partly"
    return "refuted" if "-" in outcomes else "inconclusive"


def _pp(x) -> str:
    return stats_report.number(x, 100.0, 2, True)


def check_lab_cnn(ctx: Context, study_dir: str = "lab_cnn") -> Finding:
    """The lab's table claims (each of rows 2-7 improves on the row before it) on the CNN."""
    res = ctx.results(study_dir)
    if res is None:
        return not_run(study_dir, COMMAND, ctx)
    claims = [c for c in res.get("chapter", []) if c["family"] == "cnn"]
    cnn = res.get("families", {}).get("cnn")
    if cnn is None or not claims:
        return Finding("inconclusive", "-", f"read {ctx.path(study_dir)}",
                       note=f"no CNN step of the lab's rows 2-7 ran; run: {COMMAND}")
    outcomes = [_OUTCOME[c["verdict"]] for c in claims]
    steps = "; ".join(
        f"{c['experiment']}: Δ {_pp(c['mean'])} pp "
        f"{stats_report.interval(c['low'], c['high'])} (Holm p "
        f"{stats_report.p_value(c['p_holm'])}; chapter {100 * c['chapter_step']:+.1f}, "
        f"{'inside' if c['chapter_inside_ci'] else 'outside'} the CI): {c['verdict']}"
        for c in claims)
    both = [c for c in res.get("conclusions", []) if c.get("verdict_change") is not None]
    changed = [f"{c['experiment']} ({c['mlp']['verdict']} -> {c['cnn']['verdict']})"
               for c in both if c["verdict_change"] != "same"]
    study = res["study"]
    ds = study["dataset"]
    head = (f"{cnn['study']['model']['description']} on {ds['name']} ({ds['num_train']} train, "
            f"{len(study['seeds'])} seeds): ")
    change = (f". Against the MLP (same data, epochs and seeds): {len(changed)} of "
              f"{len(both)} step verdicts change" + (f" ({', '.join(changed)})" if changed else "")
              if both else "")
    first = claims[0]
    return Finding(
        _overall(outcomes), head + steps + change,
        f"read {ctx.path(study_dir)}: chapter[*] (the CNN's steps: paired t over seeds, Holm over "
        "the family's steps, `inference.decide` with the study's equivalence margin)",
        ci=(float(first["low"]), float(first["high"])), artefact=ctx.path(study_dir),
        note="The chapter's lab is an MLP; this is its table on a CNN. A step is confirmed when "
             "it helps (Holm-adjusted paired t at 0.05), refuted when it hurts or lies inside the "
             "equivalence margin while the chapter's step is larger; overall as EXP-03: all "
             "confirmed -> confirmed, some -> partly.")
