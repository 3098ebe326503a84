"""The signal-propagation study's statistics over network draws (issue 14): every comparison of
results.json is Student's paired t on the per-draw values results.json stores
(scipy.stats.ttest_rel against the constant reference), Holm's step-down procedure over the whole
family, and the tables results.md shows; on 128 x 64 inputs, 3- and 4-layer stacks, 3 draws."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import stats_report
from experiments.signal_propagation import main as study_main
from tests.stats_checks import check_holm

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = 3
DEPTH, DEEP_DEPTH = 3, 4


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("signal_propagation")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.signal_propagation",
         "--config=experiments/configs/signal_propagation.py", f"--workdir={workdir}",
         f"--config.depth={DEPTH}", f"--config.deep_depth={DEEP_DEPTH}", "--config.width=64",
         "--config.num_samples=128", "--config.bins=5", f"--config.seeds={SEEDS}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}



def test_the_family_is_every_factor_and_every_chapter_value_in_reach(study):
    comps = study["results"]["comparisons"]
    factors = [k for k, c in comps.items() if c["kind"] == "factor"]
    # 3 inits x 2 activations for the short stack, 2 inits for C2.
    assert len(factors) == 3 * 2 + 2
    chapter = sorted((k.split("/")[1], int(k.split("/")[2])) for k, c in comps.items()
                     if c["kind"] == "chapter")
    # Only the chapter's layers a 3-layer stack has: layer 1 of each init and layer 2 of "normal".
    assert chapter == [("he_normal", 1), ("normal", 1), ("normal", 2), ("xavier_normal", 1)]


def test_the_stored_values_are_the_draws(study):
    results = study["results"]
    assert results["seeds"] == list(range(SEEDS))
    for act, inits in results["studies"].items():
        for init, s in inits.items():
            c = results["comparisons"][f"factor/{act}/{DEPTH}/{init}"]
            assert c["seeds"] == list(range(SEEDS))
            assert c["arm_values"] == s["draws"]["factor"]
            # Draw 0 is the one the per-layer rows of results.json show.
            assert c["arm_values"][0] == pytest.approx(np.mean(s["ratio_measured"]), rel=1e-12)
            assert c["against_values"] == [pytest.approx(np.mean(s["ratio_theory"]))] * SEEDS
            # Independent draws: the factors are not all the same number.
            assert np.ptp(c["arm_values"]) > 0
    relu = results["studies"]["relu"]
    for init, claims in results["chapter_13_1"].items():
        for layer, (_, chapter_var) in claims.items():
            if int(layer) > DEPTH:
                continue
            c = results["comparisons"][f"chapter/{init}/{layer}"]
            assert c["arm_values"] == [v[int(layer) - 1] for v in relu[init]["draws"]["var"]]
            assert c["against_values"] == [chapter_var] * SEEDS


def test_comparisons_are_the_paired_t_of_the_stored_values(study):
    for c in study["results"]["comparisons"].values():
        a, b = c["arm_values"], c["against_values"]
        np.testing.assert_allclose(c["differences"], np.subtract(a, b), rtol=0, atol=1e-15)
        inf = c["inference"]
        assert inf["n"] == SEEDS
        assert inf["t"]["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (inf["t"]["low"], inf["t"]["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert min(c["differences"]) - 1e-15 <= inf["bootstrap"]["low"]
        assert inf["bootstrap"]["high"] <= max(c["differences"]) + 1e-15


def test_holm_over_the_whole_family(study):
    comps = list(study["results"]["comparisons"].values())
    check_holm(comps)


def test_results_md_shows_the_tables_and_the_verdicts(study):
    comps, md = study["results"]["comparisons"], study["md"]
    for kind, (scale, digits, unit) in study_main.UNITS.items():
        rows = [(c["label"], c["against"], c["inference"]) for c in comps.values()
                if c["kind"] == kind]
        assert stats_report.comparison_table(rows, scale=scale, digits=digits, unit=unit) in md
    for c in comps.values():
        scale, digits, unit = study_main.UNITS[c["kind"]]
        assert stats_report.formal(c["inference"], scale, digits, unit) in md
