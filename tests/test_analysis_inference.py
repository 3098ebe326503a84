"""`analysis.inference` against scipy and closed forms: paired t, the exact bootstrap, Holm's
adjustment, power, the minimum detectable effect and the seed planner."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from ml_practical.analysis import inference


def test_paired_t_equals_scipy_ttest_rel_and_the_t_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(0.98, 0.003, 5)
    b = a - rng.normal(0.002, 0.002, 5)
    out = inference.paired_t(a - b)
    ref = stats.ttest_rel(a, b)
    assert out["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (out["low"], out["high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    # The equation by hand: mean +- t_{0.975, 4} s / sqrt(5).
    d = a - b
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert out["half_width"] == pytest.approx(half, rel=1e-12)
    assert inference.paired_t(d, level=0.99)["half_width"] > half


def test_paired_t_edge_cases():
    one = inference.paired_t([0.01])
    assert one["p"] == 1.0 and math.isinf(one["half_width"])
    const = inference.paired_t([0.01, 0.01, 0.01])
    assert const["p"] == 0.0 and const["low"] == const["high"] == pytest.approx(0.01)
    assert inference.paired_t([0.0, 0.0])["p"] == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        inference.paired_t([0.1, float("nan")])
    with pytest.raises(ValueError, match="level"):
        inference.paired_t([0.1, 0.2], level=95)


def test_exact_bootstrap_is_the_enumerated_distribution():
    d = [0.004, -0.001, 0.006]
    out = inference.bootstrap_ci(d)
    assert out["exact"] and out["resamples"] == 27
    means = [np.mean([d[i] for i in idx]) for idx in itertools.product(range(3), repeat=3)]
    assert (out["low"], out["high"]) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    # Known case: the extremes are reachable (all draws = the min or the max, probability 1/27
    # each), and the 2.5 % quantile lies between the two smallest resampled means.
    assert min(d) <= out["low"] < out["high"] <= max(d)
    assert inference.bootstrap_ci([0.2, 0.2, 0.2])["low"] == pytest.approx(0.2)


def test_monte_carlo_bootstrap_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    d = rng.normal(0.5, 1.0, 30)
    mine = inference.bootstrap_ci(d, n_resamples=40_000, seed=3)
    assert not mine["exact"]
    ref = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=40_000,
                          random_state=np.random.default_rng(4)).confidence_interval
    assert mine["low"] == pytest.approx(ref.low, abs=0.02)
    assert mine["high"] == pytest.approx(ref.high, abs=0.02)
    # And, for 30 normal draws, close to the t interval.
    t = inference.paired_t(d)
    assert mine["low"] == pytest.approx(t["low"], abs=0.06)


def test_holm_known_example_and_properties():
    # Holm (1979)-style worked example: p = 0.01, 0.04, 0.03, 0.005 (m = 4).
    # Sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, 1*0.04 -> 0.06.
    got = inference.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])
    assert np.all(got >= [0.01, 0.04, 0.03, 0.005])           # never below the raw p
    np.testing.assert_allclose(inference.holm([0.5, 0.6]), [1.0, 1.0])
    nan = inference.holm([0.01, float("nan"), 0.02])
    assert math.isnan(nan[1]) and nan[0] == pytest.approx(0.02) and nan[2] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="probabilities"):
        inference.holm([1.5])


def test_power_against_simulation_and_the_normal_limit():
    # Simulated power of the paired t-test (the definition), 20,000 experiments of n = 5.
    rng = np.random.default_rng(2)
    delta, sd, n = 0.8, 1.0, 5
    d = rng.normal(delta, sd, (20_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    simulated = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
    assert inference.power(delta, sd, n) == pytest.approx(simulated, abs=0.015)
    assert inference.power(0.0, sd, n) == pytest.approx(0.05, abs=1e-9)  # the level under H0
    # Large n: the normal approximation (z_{0.975} + z_{0.8}) sd / sqrt(n).
    mde = inference.minimum_detectable_effect(1.0, 400)
    assert mde == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / 20, rel=0.01)


def test_mde_and_seeds_needed_are_each_others_inverse():
    sd = 0.3  # pp, e.g. a measured seed sd of differences
    for n in (3, 5, 10):
        mde = inference.minimum_detectable_effect(sd, n)
        assert inference.power(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
        assert inference.seeds_needed(mde * 1.0001, sd) <= n
    n = inference.seeds_needed(0.2, sd)
    assert inference.power(0.2, sd, n) >= 0.8 > inference.power(0.2, sd, n - 1)
    assert math.isinf(inference.minimum_detectable_effect(sd, 1))
    with pytest.raises(ValueError, match="zero difference"):
        inference.seeds_needed(0.0, sd)


def test_seed_planner_reads_a_results_json(tmp_path, capsys):
    import json

    from experiments import seed_plan

    results = {"contributions": [
        {"experiment": "b", "parent": "a", "test_accuracy": {"paired_differences": [0.004, 0.001, 0.007]}},
        {"experiment": "c", "parent": "b", "test_accuracy": {"paired_differences": [0.0, 0.0, 0.0]}},
    ]}
    rows = seed_plan.plan(results, 0.002)
    sd = float(np.std([0.004, 0.001, 0.007], ddof=1))
    assert rows[0]["sd"] == pytest.approx(sd)
    assert rows[0]["seeds_for_delta"] == inference.seeds_needed(0.002, sd)
    assert rows[0]["seeds_for_observed"] == inference.seeds_needed(0.004, sd)
    assert rows[0]["mde"] == pytest.approx(inference.minimum_detectable_effect(sd, 3))
    assert rows[1]["seeds_for_observed"] is None          # a zero difference: undefined
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert seed_plan.main([str(path), "--delta_pp=0.2"]) == 0
    out = capsys.readouterr().out
    assert "| b - a | 3 | +0.40 |" in out and json.loads(out.splitlines()[-1])["delta_pp"] == 0.2
    assert seed_plan.main([str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err


def test_compare_family_holm_and_decisions_match_scipy():
    rng = np.random.default_rng(3)
    diffs = {"big": 0.02 + 0.002 * rng.standard_normal(4), "null": 0.01 * rng.standard_normal(4),
             "mid": 0.004 + 0.003 * rng.standard_normal(4), "none": []}
    fam = inference.compare_family(diffs)
    ps = [stats.ttest_1samp(diffs[k], 0.0).pvalue for k in ("big", "null", "mid")]
    # Holm by hand: sort, multiply by (m - rank), running max, cap at 1.
    order = np.argsort(ps)
    adj = np.empty(3)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * ps[i]))
        adj[i] = running
    for k, a in zip(("big", "null", "mid"), adj):
        assert fam[k]["p_holm"] == pytest.approx(a, rel=1e-12)
        assert fam[k]["decision"] == ("differs" if a <= 0.05 else "undecided")
    assert fam["none"] == {"n": 0}
    assert fam["big"]["decision"] == "differs"


def test_decide_equivalence_margin_uses_the_interval():
    comp = inference.compare([0.001, -0.001, 0.0005, -0.0005])
    half = comp["t"]["half_width"]
    assert inference.decide(comp) == "undecided"
    assert inference.decide(comp, margin=half * 1.01) == "equivalent"
    assert inference.decide(comp, margin=half * 0.99) == "undecided"


def test_identical_differences_have_zero_sd_and_full_power():
    comp = inference.compare([0.1, 0.1, 0.1])  # 0.1 - mean(0.1s) rounds to ~1e-17 in numpy
    assert comp["t"]["sd"] == 0.0 and comp["t"]["p"] == 0.0
    assert comp["seeds_for_observed"] == 2 and comp["mde"] == 0.0
    # Far in the tail scipy's noncentral t gives NaN; the power there is 1.
    assert inference.power(1.0, 1e-9, 3) == 1.0
    assert inference.seeds_needed(1.0, 1e-9) == 2
