"""The seed planner: how many seeds each comparison of a finished study needs.

Run:  python -m experiments.seed_plan <workdir>/results.json [--delta_pp=0.2] [--power=0.8]
                                      [--alpha=0.05]

Reads a study's results.json (a study whose "contributions" carry each comparison's per-seed
paired differences of test accuracy: the ablation) and prints, per comparison, the measured sd of
the paired differences, the smallest true difference the study's seeds detect at the given power
(`analysis.inference.minimum_detectable_effect`), and the seeds a true difference of
`--delta_pp` percentage points, and of the observed one, would need
(`analysis.inference.seeds_needed`: the paired t-test's power from the noncentral t). The sd is
a pilot estimate from few seeds and itself uncertain: treat the answer as an order of magnitude.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

from ml_practical.analysis import inference

MAX_SEEDS = 1000


def plan(results: dict, delta: float, *, power: float = 0.8, alpha: float = 0.05) -> list[dict]:
    """One row per contribution: {"experiment", "parent", "n", "mean", "sd", "mde",
    "seeds_for_delta", "seeds_for_observed"} (accuracies as fractions; a seed count is inf when
    more than MAX_SEEDS would be needed, None when undefined: a zero difference, no sd)."""
    rows = []
    for c in results.get("contributions", []):
        d = [float(x) for x in c["test_accuracy"]["paired_differences"]]
        if not d:  # no seed in common: nothing to plan from
            rows.append({"experiment": c["experiment"], "parent": c["parent"], "n": 0,
                         "mean": math.nan, "sd": math.nan, "mde": math.inf,
                         "seeds_for_delta": None, "seeds_for_observed": None})
            continue
        comp = inference.compare(d, alpha=alpha, target_power=power, max_seeds=MAX_SEEDS)
        sd = comp["t"]["sd"]
        rows.append({"experiment": c["experiment"], "parent": c["parent"], "n": comp["n"],
                     "mean": comp["mean"], "sd": sd, "mde": comp["mde"],
                     "seeds_for_delta": inference.seeds_for(delta, sd, alpha, power, MAX_SEEDS),
                     "seeds_for_observed": comp["seeds_for_observed"]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a study's results.json")
    parser.add_argument("--delta_pp", type=float, default=0.2,
                        help="the difference to detect, in percentage points of accuracy")
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    path = pathlib.Path(args.results)
    if not 0 < args.power < 1 or not 0 < args.alpha < 1:
        print(f"error: --power {args.power} / --alpha {args.alpha}: expected values in (0, 1)",
              file=sys.stderr)
        return 2
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"error: {path}: cannot read a results.json ({e})", file=sys.stderr)
        return 2
    if not results.get("contributions"):
        print(f"error: {path}: no \"contributions\" with per-seed paired differences; the seed "
              "planner reads a study that reports them (experiments.ablation)", file=sys.stderr)
        return 2
    rows = plan(results, args.delta_pp / 100.0, power=args.power, alpha=args.alpha)
    fmt = lambda n: "-" if n is None else (f"> {MAX_SEEDS}" if n == math.inf else str(n))
    print(f"| comparison | seeds | Δ (pp) | sd of Δ (pp) | detectable at power {args.power:g} "
          f"(pp) | seeds for {args.delta_pp:g} pp | seeds for the observed Δ |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['experiment']} - {r['parent']} | {r['n']} | {100 * r['mean']:+.2f} | "
              f"{100 * r['sd']:.2f} | {100 * r['mde']:.2f} | {fmt(r['seeds_for_delta'])} | "
              f"{fmt(r['seeds_for_observed'])} |")
    print(json.dumps({"results": str(path), "delta_pp": args.delta_pp, "power": args.power,
                      "alpha": args.alpha, "rows": rows}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
