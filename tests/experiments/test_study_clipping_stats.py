"""The clipping study's paired statistics (issue 14): every comparison of results.json is Student's
paired t on the per-seed values results.json stores (scipy.stats.ttest_rel), Holm's step-down
procedure over both metrics' comparisons, and the tables results.md shows; on the embedded digits,
a 16-unit MLP, 1 epoch, 3 seeds, a learning rate that trains and one that kills the ReLUs."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import stats_report
from experiments.clipping import main as clipping
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
LRS = (0.1, 100.0)
SEEDS = 3


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clipping")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.clipping", "--config=experiments/configs/clipping.py",
         f"--workdir={workdir}", "--config.data.source=digits", "--config.data.val_size=287",
         "--config.train.eval_batch_size=500", "--config.train.progress=never",
         "--config.train.num_epochs=1", "--config.model.widths=(16,)",
         "--config.train.batch_size=64", f"--config.learning_rates={','.join(map(str, LRS))}",
         f"--config.seeds={SEEDS}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}




def test_comparisons_are_the_paired_t_of_the_stored_values(study):
    results = study["results"]
    assert results["seeds"] == list(range(SEEDS))
    value = {(r["lr"], r["clip"], r["seed"], m): r[m] for r in results["runs"]
             for m in clipping.METRICS}
    comps = results["comparisons"]
    assert len(comps) == len(clipping.METRICS) * len(LRS) * len(clipping.COMPARISONS)
    for c in comps:
        assert c["seeds"] == list(range(SEEDS))
        a = [value[(c["lr"], c["clip"], s, c["metric"])] for s in c["seeds"]]
        b = [value[(c["lr"], c["against"], s, c["metric"])] for s in c["seeds"]]
        np.testing.assert_allclose(c["differences"], np.subtract(a, b), rtol=0, atol=1e-15)
        check_p(c["inference"]["t"]["p"], a, b)
    # The share of skipped steps is that of the run's own step records, whose clip statistics
    # cover the applied steps only.
    for r in results["runs"]:
        assert r["skipped_fraction"] == r["summary"]["skipped_steps"] / r["steps_run"]
        assert r["summary"]["steps"] + r["summary"]["skipped_steps"] == r["steps_run"]
    for r in (r for r in results["runs"] if "steps" in r):
        assert len(r["steps"]["skipped"]) == r["steps_run"]
        assert sum(r["steps"]["skipped"]) == r["summary"]["skipped_steps"]


def test_holm_over_both_tables(study):
    comps = study["results"]["comparisons"]
    check_holm(comps)


def test_results_md_shows_the_tables_and_the_verdicts(study):
    comps, md = study["results"]["comparisons"], study["md"]
    for metric, (_, scale, unit) in clipping.METRICS.items():
        rows = [(f"lr {c['lr']:g} {c['clip']}", c["against"], c["inference"])
                for c in comps if c["metric"] == metric]
        assert stats_report.comparison_table(rows, what="clip", scale=scale, unit=unit) in md
    for c in comps:
        _, scale, unit = clipping.METRICS[c["metric"]]
        assert stats_report.formal(c["inference"], scale=scale, unit=unit) in md


def test_runs_are_paired_by_seed_and_figures_come_from_the_first(study):
    workdir, runs = study["workdir"], study["results"]["runs"]
    assert len(runs) == len(LRS) * 3 * SEEDS
    for r in runs:
        cfg = json.loads((workdir / "runs" / f"lr{r['lr']:g}_{r['clip']}" / f"seed_{r['seed']}"
                          / "config.json").read_text())
        assert cfg["seed"] == r["seed"] and cfg["optim"]["clip"] == r["clip"]
        assert ("steps" in r) == (r["seed"] == 0)


def test_good_steps_drops_the_records_the_guard_did_not_apply():
    # On a skipped step the clip slot did not run: its record repeats the previous step's.
    steps = {"skipped": np.array([0.0, 1.0, 1.0, 0.0]), "raw_norm": np.array([1.0, 5.0, 5.0, 3.0]),
             "raw_layer_norms": {"dense_0": np.array([0.5, 4.0, 4.0, 2.0])}}
    good = clipping.good_steps(steps)
    assert good["raw_norm"].tolist() == [1.0, 3.0]
    assert good["raw_layer_norms"]["dense_0"].tolist() == [0.5, 2.0]
    assert good["skipped"].tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(clipping._masked(steps["raw_norm"], steps["skipped"]),
                                  [1.0, np.nan, np.nan, 3.0])
