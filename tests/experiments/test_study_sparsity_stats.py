"""The sparsity study's paired statistics (issue 14): every comparison of results.json is Student's
paired t on the per-seed metrics results.json stores (scipy.stats.ttest_rel), Holm's step-down
procedure over the three metrics' comparisons, and the tables results.md shows; 3 problem seeds,
600 steps."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import stats_report
from experiments.sparsity import main as sparsity
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = 3


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sparsity")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.sparsity", "--config=experiments/configs/sparsity.py",
         f"--workdir={workdir}", "--config.fit.steps=600", f"--config.seeds={SEEDS}",
         "--config.seed=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}




def _value(run, metric):
    return run["test_mse"] if metric == "test_mse" else run["support"][metric]


def test_comparisons_are_the_paired_t_of_the_stored_metrics(study):
    results = study["results"]
    seeds = [4, 5, 6]  # `seed` is the first problem seed
    assert results["seeds"] == seeds
    assert [p["seed"] for p in results["problems"]] == seeds
    pens = results["penalties"]
    comps = results["comparisons"]
    assert len(comps) == len(sparsity.METRICS) * len(sparsity.COMPARISONS)
    for c in comps:
        assert c["seeds"] == seeds
        a, b = ([_value(r, c["metric"]) for r in pens[k]["runs"]] for k in (c["penalty"],
                                                                             c["against"]))
        np.testing.assert_allclose(c["differences"], np.subtract(a, b), rtol=0, atol=1e-12)
        check_p(c["inference"]["t"]["p"], a, b)


def test_holm_over_the_three_tables(study):
    comps = study["results"]["comparisons"]
    check_holm(comps)


def test_results_md_shows_the_tables_and_the_verdicts(study):
    comps, md = study["results"]["comparisons"], study["md"]
    for metric, (_, unit, digits) in sparsity.METRICS.items():
        rows = [(c["penalty"], c["against"], c["inference"]) for c in comps
                if c["metric"] == metric]
        assert stats_report.comparison_table(rows, what="penalty", scale=1.0, digits=digits,
                                             unit=unit) in md
    for c in comps:
        _, unit, digits = sparsity.METRICS[c["metric"]]
        assert stats_report.formal(c["inference"], scale=1.0, digits=digits, unit=unit) in md


def test_each_seed_is_its_own_problem_and_run(study):
    results, workdir = study["results"], study["workdir"]
    supports = [tuple(p["support"]) for p in results["problems"]]
    assert len(set(supports)) == SEEDS  # three different random supports
    for name in sparsity.PENALTY_ORDER:
        for seed in results["seeds"]:
            assert (workdir / "runs" / name / f"seed_{seed}" / "summary.json").exists()
