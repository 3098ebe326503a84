"""The zero-init study's paired statistics (issue 14): every comparison of results.json is
Student's paired t on the per-seed accuracies results.json stores (scipy.stats.ttest_rel), Holm's
step-down procedure over the table, and the table results.md shows; on the embedded digits, a
16-unit MLP, 1 epoch and 3 seeds."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import stats_report
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASES = ("zeros", "constant", "constant_dropout", "he")
SEEDS = 3


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("zero_init")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.zero_init", "--config=experiments/configs/zero_init.py",
         f"--workdir={workdir}", "--config.data.source=digits", "--config.data.val_size=287",
         "--config.train.eval_batch_size=500", "--config.train.progress=never",
         "--config.train.num_epochs=1", "--config.model.widths=(16,)",
         f"--config.only={','.join(CASES)}", f"--config.seeds={SEEDS}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}




def test_comparisons_are_the_paired_t_of_the_stored_accuracies(study):
    results = study["results"]
    assert results["seeds"] == list(range(SEEDS))
    acc = {name: {r["seed"]: r["test/accuracy"] for r in case["runs"]}
           for name, case in results["cases"].items()}
    comps = results["comparisons"]
    assert [(c["case"], c["against"]) for c in comps] == [
        ("zeros", "he"), ("constant", "he"), ("constant_dropout", "he"),
        ("constant_dropout", "constant")]
    for c in comps:
        assert c["seeds"] == list(range(SEEDS))
        a = [acc[c["case"]][s] for s in c["seeds"]]
        b = [acc[c["against"]][s] for s in c["seeds"]]
        np.testing.assert_allclose(c["differences"], np.subtract(a, b), rtol=0, atol=1e-15)
        inf = c["inference"]
        assert inf["n"] == SEEDS
        check_p(inf["t"]["p"], a, b)
        if np.ptp(np.subtract(a, b)) > 0:
            ci = stats.ttest_rel(a, b).confidence_interval(0.95)
            assert (inf["t"]["low"], inf["t"]["high"]) == pytest.approx((ci.low, ci.high),
                                                                          rel=1e-9)
        # The exact bootstrap cannot leave the range of the observed differences.
        assert min(c["differences"]) - 1e-15 <= inf["bootstrap"]["low"]
        assert inf["bootstrap"]["high"] <= max(c["differences"]) + 1e-15


def test_holm_over_the_table(study):
    comps = study["results"]["comparisons"]
    check_holm(comps)


def test_results_md_shows_the_table_and_the_verdicts(study):
    comps, md = study["results"]["comparisons"], study["md"]
    table = stats_report.comparison_table(
        [(c["case"], c["against"], c["inference"]) for c in comps], what="case")
    assert table in md
    for c in comps:
        assert stats_report.formal(c["inference"]) in md


def test_seeds_are_paired_and_the_symmetry_holds_in_every_seed(study):
    workdir, cases = study["workdir"], study["results"]["cases"]
    for name in CASES:
        for seed in range(SEEDS):
            cfg = json.loads((workdir / "runs" / name / f"seed_{seed}" / "config.json").read_text())
            assert cfg["seed"] == seed
    for r in cases["constant"]["runs"]:
        assert r["final"]["dense_0"]["spread"] == 0.0
        assert r["final"]["dense_0"]["distinct_units"] == 1
    assert all(r["final"]["dense_0"]["distinct_units"] == 16 for r in cases["he"]["runs"])
