"""The MC-dropout study's paired statistics (issue 14): every comparison of results.json (MC minus
deterministic, on the test set and on the rotated test set) is Student's paired t on the per-seed
values results.json stores (scipy.stats.ttest_rel), which are each seed's own metrics, Holm's
step-down procedure over the whole family, and the tables results.md shows; on the embedded
digits, a 32-unit MLP, 3 seeds, T = 5."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import stats_report
from experiments.mc_dropout import main as mc_main
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = 3
SETS = ("test", "rotated_30deg")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mc_dropout")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.mc_dropout", "--config=experiments/configs/mc_dropout.py",
         f"--workdir={workdir}", "--config.data.source=digits", "--config.data.val_size=287",
         "--config.train.eval_batch_size=500", "--config.train.progress=never",
         "--config.train.num_epochs=6", "--config.train.batch_size=64",
         "--config.model.widths=(32,)", "--config.mc.num_samples=5", "--config.mc.batch_size=100",
         "--config.mc.time_loop=False", "--config.mc.rotate_degrees=30",
         f"--config.seeds={SEEDS}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}




def test_the_family_is_every_metric_on_both_sets(study):
    comps = study["results"]["comparisons"]
    assert sorted(comps) == sorted(f"{s}/{m}" for s in SETS for m in mc_main.METRICS)
    assert all((c["arm"], c["against"]) == ("mc_T5", "deterministic") for c in comps.values())


def test_the_stored_values_are_each_seeds_own(study):
    workdir, results = study["workdir"], study["results"]
    runs = {r["seed"]: r for r in results["runs"]}
    assert sorted(runs) == list(range(SEEDS))
    for seed in range(SEEDS):
        run_dir = workdir / "train" / f"seed_{seed}"
        assert json.loads((run_dir / "config.json").read_text())["seed"] == seed
        summary = json.loads((run_dir / "summary.json").read_text())
        # The deterministic prediction is the trained network's own test accuracy.
        assert runs[seed]["sets"]["test"]["deterministic"]["accuracy"] == pytest.approx(
            summary["test/accuracy"], abs=1e-6)
    read = {"accuracy": lambda m: m["accuracy"], "nll": lambda m: m["nll"],
            "ece": lambda m: m["ece_15bin"],
            "auroc_entropy": lambda m: m["auroc_error_detection"]["predictive_entropy"]}
    for c in results["comparisons"].values():
        assert c["seeds"] == list(range(SEEDS))
        f = read[c["metric"]]
        assert c["arm_values"] == [f(runs[s]["sets"][c["set"]]["mc_T5"]) for s in c["seeds"]]
        assert c["against_values"] == [f(runs[s]["sets"][c["set"]]["deterministic"])
                                       for s in c["seeds"]]
    # The rotated images are another distribution: the network does worse on them.
    for seed in range(SEEDS):
        sets = runs[seed]["sets"]
        det = {name: sets[name]["deterministic"]["accuracy"] for name in SETS}
        assert det[SETS[1]] < det["test"]


def test_comparisons_are_the_paired_t_of_the_stored_values(study):
    for c in study["results"]["comparisons"].values():
        a, b = c["arm_values"], c["against_values"]
        np.testing.assert_allclose(c["differences"], np.subtract(a, b), rtol=0, atol=1e-15)
        inf = c["inference"]
        assert inf["n"] == SEEDS
        check_p(inf["t"]["p"], a, b)
        if np.ptp(np.subtract(a, b)) > 0:
            ci = stats.ttest_rel(a, b).confidence_interval(0.95)
            assert (inf["t"]["low"], inf["t"]["high"]) == pytest.approx((ci.low, ci.high),
                                                                          rel=1e-9)


def test_holm_over_the_whole_family(study):
    comps = list(study["results"]["comparisons"].values())
    check_holm(comps)


def test_results_md_shows_the_tables_and_the_verdicts(study):
    comps, md = study["results"]["comparisons"], study["md"]
    for metric, (_, _, scale, digits, unit, _) in mc_main.METRICS.items():
        rows = [(f"{c['arm']}, {c['set']}", c["against"], c["inference"])
                for c in comps.values() if c["metric"] == metric]
        assert stats_report.comparison_table(rows, scale=scale, digits=digits, unit=unit) in md
    for c in comps.values():
        _, _, scale, digits, unit, _ = mc_main.METRICS[c["metric"]]
        assert stats_report.formal(c["inference"], scale, digits, unit) in md
