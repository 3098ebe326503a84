"""The LSUV study's paired statistics (issue 14): every comparison of results.json is Student's
paired t on the per-seed values results.json stores (scipy.stats.ttest_rel), which are the runs'
own test accuracies and init variances, Holm's step-down procedure over the whole family (both
measures, both activations), and the tables results.md shows; on the embedded digits, a 4 x 32
MLP, 1 epoch, 3 seeds."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import stats_report
from experiments.lsuv import main as lsuv_main
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = 3
ACTIVATIONS = ("relu", "tanh")
OTHERS = ("xavier_normal", "he_normal")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lsuv")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.lsuv", "--config=experiments/configs/lsuv.py",
         f"--workdir={workdir}", "--config.data.source=digits", "--config.data.val_size=287",
         "--config.train.eval_batch_size=500", "--config.train.progress=never",
         "--config.train.num_epochs=1", "--config.model.widths=(32,32,32,32)",
         "--config.measure_batch_size=200", "--config.lsuv.batch_size=256",
         f"--config.activations={','.join(ACTIVATIONS)}", f"--config.seeds={SEEDS}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}




def test_the_family_is_lsuv_against_each_row_per_activation_and_measure(study):
    comps = study["results"]["comparisons"]
    assert sorted(comps) == sorted(f"{a}/{m}/lsuv-{o}" for a in ACTIVATIONS
                                   for m in lsuv_main.MEASURES for o in OTHERS)


def test_the_stored_values_are_the_runs_own(study):
    workdir, results = study["workdir"], study["results"]
    runs = {(r["activation"], r["init"], r["seed"]): r for r in results["runs"]}
    for c in results["comparisons"].values():
        assert c["seeds"] == list(range(SEEDS))
        for init, values in ((c["arm"], c["arm_values"]), (c["against"], c["against_values"])):
            for seed, v in zip(c["seeds"], values):
                run_dir = workdir / "runs" / c["activation"] / init / f"seed_{seed}"
                cfg = json.loads((run_dir / "config.json").read_text())
                # Paired: the same seed (batch order, init key) and this activation in each arm.
                assert cfg["seed"] == seed and cfg["model"]["activation"] == c["activation"]
                if c["measure"] == "test_accuracy":
                    summary = json.loads((run_dir / "summary.json").read_text())
                    assert v == summary["test/accuracy"]
                else:
                    var = np.array(list(runs[c["activation"], init, seed]
                                        ["variance_at_init"].values()))
                    assert v == pytest.approx(np.max(np.abs(np.log10(var))), rel=1e-12)


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
        assert min(c["differences"]) - 1e-15 <= inf["bootstrap"]["low"]
        assert inf["bootstrap"]["high"] <= max(c["differences"]) + 1e-15


def test_holm_over_the_whole_family(study):
    comps = list(study["results"]["comparisons"].values())
    check_holm(comps)


def test_results_md_shows_the_tables_and_the_verdicts(study):
    comps, md = study["results"]["comparisons"], study["md"]
    for measure, (_, _, scale, digits, unit) in lsuv_main.MEASURES.items():
        rows = [(f"{c['arm']}, {c['activation']}", c["against"], c["inference"])
                for c in comps.values() if c["measure"] == measure]
        assert stats_report.comparison_table(rows, scale=scale, digits=digits, unit=unit) in md
    for c in comps.values():
        _, _, scale, digits, unit = lsuv_main.MEASURES[c["measure"]]
        assert stats_report.formal(c["inference"], scale, digits, unit) in md
    for act in ACTIVATIONS:
        assert f"- {act}: " in md.split("matches or beats")[1]   # the chapter's claim, judged
