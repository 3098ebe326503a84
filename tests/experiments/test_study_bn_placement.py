"""The BN-placement study (experiments/bn_placement): the bias before BN is a no-op in training
mode and folds into the running mean in evaluation (on a CNN and an MLP, no training); end to end
on a tiny generated dataset (the MLP arm, three rows, 3 seeds vmapped, 2 epochs) its statistics
are scipy's on the stored per-seed accuracies, its accuracies and disagreements are the stored
predictions', its verdicts follow the equivalence rule, a rerun trains nothing, and the audit
checks read the same verdicts."""

import json
import math
import pathlib

import jax
import numpy as np
import pytest
from scipy import stats

from experiments import cli, stats_report
from experiments.audit.core import Context
from experiments.bn_placement import audit, bias, rows
from experiments.bn_placement import main as study_main
from experiments.configs import bn_placement as study_config
from ml_practical import config, loop
from ml_practical.models.cnn import CNN
from ml_practical.models.mlp import MLP
from tests.stats_checks import check_holm, check_paired_comparison
from tests.template_data import template_dataset

SEEDS = 3
ROWS = ("bn_before", "bn_before_bias", "bn_after")


def tiny_dataset():
    return template_dataset(noise=1.5)


def tiny_config(**study):
    raw = study_config.get_config()
    raw.data.source = "arrays"
    raw.data.limit_train = 0
    raw.model.widths = (4, 8)
    raw.mlp_widths = (16,)
    raw.cnn_seeds, raw.mlp_seeds = 0, SEEDS
    raw.only = ",".join(ROWS)
    raw.seed_mode = "vmap"
    raw.optim.warmup_steps = 0
    raw.train.num_epochs = 2
    raw.train.batch_size = 64
    raw.train.eval_batch_size = 128
    raw.train.progress = "never"
    for k, v in study.items():
        raw[k] = v
    return config.parse(raw, study=study_main.BNPlacementStudy)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("studies") / audit.STUDY_DIR
    dataset = tiny_dataset()
    start = cli.Start(cfg=tiny_config(), workdir=workdir, command="test")
    results = study_main.execute(start, dataset=dataset, quiet=True)
    return {"workdir": workdir, "results": results, "dataset": dataset,
            "on_disk": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}


# --------------------------------------------------------------------------- the bias, no training


@pytest.mark.parametrize("model", [
    CNN(widths=(4, 8), norm="batch", bias_before_bn=True, conv_backward="chunked",
        bn_backward="manual"),
    MLP(widths=(16, 8), norm="batch", bias_before_bn=True)], ids=["cnn", "mlp"])
def test_bias_before_bn_is_a_no_op_in_training_mode(model):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    r = bias.at_init(model, x, y, jax.random.key(0), bias_std=3.0)  # asserts: same kernels
    assert r["layers"] == ([f"conv_{i}" for i in range(2)] if isinstance(model, CNN)
                           else [f"dense_{i}" for i in range(2)])
    # BN(z + b) = BN(z) in training mode, for biases of std 3 ...
    assert r["train_max_abs_diff"] < 1e-5 * max(1.0, r["logit_scale"])
    # ... but not in evaluation at the initial running statistics, which have not absorbed b;
    assert r["eval_max_abs_diff_at_init"] > 1e-2
    # one training step moves the running mean by exactly (1 - momentum) b;
    assert r["running_mean_shift_error"] < 1e-5
    # and the gradient of the loss with respect to the bias is rounding.
    assert max(r["grad_ratio"].values()) < 1e-4


def test_a_trained_bias_folds_into_the_running_mean():
    model = MLP(widths=(16, 8), norm="batch", bias_before_bn=True)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 20)).astype(np.float32)
    v = model.init(jax.random.key(0), x, train=False)
    params = bias._plain(v["params"])
    for name in bias.biased_layers(params):
        params[name]["bias"] = params[name]["bias"] + rng.normal(0, 2, params[name]["bias"].shape)
    stats_ = v["batch_stats"]
    for _ in range(3):  # running statistics that saw z + b
        _, new = model.apply({"params": params, "batch_stats": stats_}, x, train=True,
                             mutable=["batch_stats"])
        stats_ = new["batch_stats"]
    variables = {"params": params, "batch_stats": stats_}
    r = bias.trained(model, variables, x, x[:32])
    assert r["train_max_abs_diff"] < 1e-5 * max(1.0, r["logit_scale"])
    assert r["eval_max_abs_diff_folded"] < 1e-5 * max(1.0, r["logit_scale"])
    assert r["eval_predictions_changed_folded"] == 0
    assert r["eval_max_abs_diff_unfolded"] > 1e-2
    # The folded variables are those of the model without biases: mu - b, per layer.
    folded = bias.drop_bias(variables, fold=True)
    for name in ("dense_0", "dense_1"):
        assert "bias" not in folded["params"][name]
        norm = f"norm_{name[-1]}"
        np.testing.assert_allclose(folded["batch_stats"][norm]["mean"],
                                   np.asarray(stats_[norm]["mean"]) - params[name]["bias"],
                                   rtol=0, atol=1e-6)
    assert bias.bias_stats(params)["dense_0"]["max_abs"] == pytest.approx(
        float(np.abs(params["dense_0"]["bias"]).max()))


# --------------------------------------------------------------------------- rules, constructed


@pytest.mark.parametrize("low, high, verdict", [
    (-0.0009, 0.0009, "confirmed"), (-0.001, 0.001, "confirmed"), (-0.002, 0.0005, "inconclusive"),
    (0.0005, 0.003, "inconclusive"), (0.0011, 0.004, "refuted"), (-0.01, -0.0011, "refuted")])
def test_claim_verdict_is_the_equivalence_reading_of_the_ci(low, high, verdict):
    assert rows.claim_verdict(low, high, 0.001) == verdict


def test_arms_that_disagree_make_the_claim_partly(tmp_path):
    assert rows.combined_verdict("confirmed", ["refuted"]) == "partly"
    assert rows.combined_verdict("refuted", ["confirmed"]) == "partly"
    assert rows.combined_verdict("confirmed", ["inconclusive"]) == "confirmed"
    assert rows.combined_verdict("inconclusive", ["refuted"]) == "inconclusive"
    arm = lambda m, lo, hi: {"n": 5, "mean": m, "sd": 0.001, "low": lo, "high": hi,
                             "seeds_for_equivalence": None}
    res = {"dataset": {"name": "made up"}, "arms": {},
           "claims": {"BN-14": {"primary": "mlp", "arms": {
               "mlp": arm(-0.0014, -0.0023, -0.0005), "cnn": arm(0.0117, 0.0087, 0.0146)}}}}
    (tmp_path / audit.STUDY_DIR).mkdir()
    (tmp_path / audit.STUDY_DIR / "results.json").write_text(json.dumps(res))
    finding = audit.check_BN_14(Context(studies=tmp_path))
    assert finding.verdict == "partly"
    assert finding.ci == (-0.0023, -0.0005)  # the ledger's arm
    assert "CNN refuted" in finding.note


def test_seeds_for_equivalence_is_the_smallest_n_whose_ci_fits():
    mean, sd, margin = 0.0004, 0.002, 0.001
    n = study_main.seeds_for_equivalence(mean, sd, margin)
    half = lambda k: stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)
    assert abs(mean) + half(n) <= margin < abs(mean) + half(n - 1)
    assert study_main.seeds_for_equivalence(0.0015, sd, margin) is None
    assert study_main.seeds_for_equivalence(0.0, 0.0, margin) == 2


def test_rows_and_comparisons_are_consistent():
    assert list(rows.ROWS) == list(rows.LABELS)
    assert set(rows.ROWS["bn_before"]) == set(rows.ROWS["bn_before_bias"])
    diff = {k for k in rows.ROWS["bn_before"]
            if rows.ROWS["bn_before"][k] != rows.ROWS["bn_before_bias"][k]}
    assert diff == {"model.bias_before_bn"}
    for row, against, _ in rows.COMPARISONS:
        assert row in rows.ROWS and against in rows.ROWS
    for claim in rows.CLAIMS.values():
        assert tuple(claim["comparison"]) in [(r, a) for r, a, _ in rows.COMPARISONS]
    assert rows.select_rows("no_norm, bn_before") == ["bn_before", "no_norm"]


def test_bad_study_fields_are_refused_naming_the_field():
    with pytest.raises(config.ConfigError, match="only: unknown row 'bn_middle'"):
        tiny_config(only="bn_before,bn_middle")
    with pytest.raises(config.ConfigError, match="cnn_seeds: 0 and mlp_seeds: 0"):
        tiny_config(mlp_seeds=0)
    with pytest.raises(config.ConfigError, match="seed_mode"):
        tiny_config(seed_mode="parallel")


def test_the_mlp_arm_shares_everything_but_the_model():
    cfg = tiny_config(cnn_seeds=2)
    cnn, mlp = (study_main.arm_config(cfg, a) for a in ("cnn", "mlp"))
    assert (cnn.model_name, mlp.model_name) == ("cnn", "mlp")
    assert mlp.model.widths == (16,) and mlp.data.placement == "device"
    assert mlp.optim == cnn.optim and mlp.train.num_epochs == cnn.train.num_epochs
    for f in study_main.SHARED_MODEL_FIELDS:
        assert getattr(mlp.model, f) == getattr(cnn.model, f)
    a = study_main.row_config(mlp, "bn_before_bias", 2)
    assert a.seed == 2 and a.model.bias_before_bn and a.model.norm_position == "before"
    assert not study_main.row_config(cnn, "bn_after_nobias", 0).model.use_bias


# --------------------------------------------------------------------------- end to end


def test_files_and_paired_runs(study):
    workdir = study["workdir"]
    for name in ("results.json", "results.md", "analysis.md", "accuracy.png", "differences.png"):
        assert (workdir / name).exists(), name
    for row in ROWS:
        for s in range(SEEDS):
            run = study_main.run_dir(workdir, "mlp", row, s)
            assert json.loads((run / "config.json").read_text())["seed"] == s
            assert (run / study_main.PREDICTIONS_FILE).exists()
    assert list(study["on_disk"]["arms"]) == ["mlp"]
    assert study["on_disk"]["seed_mode"] == "vmap"


def test_accuracies_and_disagreements_are_the_stored_predictions(study):
    workdir, ds, res = study["workdir"], study["dataset"], study["on_disk"]
    pred = {(row, s): np.load(study_main.run_dir(workdir, "mlp", row, s)
                              / study_main.PREDICTIONS_FILE) for row in ROWS for s in range(SEEDS)}
    for row in ROWS:
        for r in res["arms"]["mlp"]["runs"][row]:
            acc = float(np.mean(pred[(row, r["seed"])] == ds.test_y))
            assert r["test_accuracy_recomputed"] == pytest.approx(acc, abs=1e-12)
            assert r["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    d = res["disagreement"]["mlp"]
    for row in ("bn_before_bias", "bn_after"):
        want = [np.mean(pred[(row, s)] != pred[("bn_before", s)]) for s in range(SEEDS)]
        np.testing.assert_allclose(d[row]["values"], want, rtol=0, atol=1e-12)
    want = [np.mean(pred[("bn_before", s)] != pred[("bn_before", (s + 1) % SEEDS)])
            for s in range(SEEDS)]
    np.testing.assert_allclose(d["between_seeds"]["values"], want, rtol=0, atol=1e-12)


def test_row_intervals_and_comparisons_are_scipys(study):
    res = study["on_disk"]
    arm = res["arms"]["mlp"]
    for row, s in arm["rows"].items():
        values = [r["test_accuracy"] for r in arm["runs"][row]]
        assert s["values"] == values and s["mean"] == pytest.approx(np.mean(values))
        if np.ptp(values) > 0:
            lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                      scale=stats.sem(values))
            assert (s["low"], s["high"]) == pytest.approx((lo, hi), rel=1e-9)
    acc = {row: {r["seed"]: r["test_accuracy"] for r in runs} for row, runs in arm["runs"].items()}
    comps = res["comparisons"]
    assert [(c["row"], c["against"]) for c in comps] == [("bn_before_bias", "bn_before"),
                                                         ("bn_after", "bn_before")]
    for c in comps:
        a = [acc[c["row"]][s] for s in c["seeds"]]
        b = [acc[c["against"]][s] for s in c["seeds"]]
        check_paired_comparison(c, a, b)
    check_holm(comps)
    table = stats_report.comparison_table(
        [(f"MLP: {c['row']}", c["against"], c["inference"]) for c in comps], what="arm: row")
    assert table in study["md"]


def test_claims_follow_the_rule_and_the_audit_reads_them(study):
    res = study["on_disk"]
    for cid, fn in (("BN-13", audit.check_BN_13), ("BN-14", audit.check_BN_14)):
        claim = res["claims"][cid]
        a = claim["arms"]["mlp"]
        assert claim["primary"] == "mlp"  # the only arm that ran
        assert a["verdict"] == rows.claim_verdict(a["low"], a["high"], rows.CLAIMS[cid]["margin"])
        assert claim["verdict"] == a["verdict"]
        finding = fn(Context(studies=study["workdir"].parent))
        assert finding.verdict == a["verdict"]
        assert finding.ci == pytest.approx((a["low"], a["high"]))
    finding = audit.check_BN_14(Context(studies=study["workdir"].parent / "absent"))
    assert finding.verdict == "not run"


def test_the_trained_bias_is_redundant(study):
    for r in study["on_disk"]["arms"]["mlp"]["runs"]["bn_before_bias"]:
        f = r["fold"]
        assert f["eval_predictions_changed_folded"] == 0
        assert f["eval_max_abs_diff_folded"] < 1e-4 * max(1.0, f["logit_scale"])
        assert f["train_max_abs_diff"] < 1e-4 * max(1.0, f["logit_scale"])
        assert set(r["bias"]) == {"dense_0"}
    for r in study["on_disk"]["arms"]["mlp"]["runs"]["bn_before"]:
        assert r["bias"] == {}  # option A's default: no bias before BN


def test_a_rerun_trains_nothing(study, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(loop, "fit", refuse)
    monkeypatch.setattr(loop, "fit_seeds", refuse)
    start = cli.Start(cfg=tiny_config(), workdir=study["workdir"], command="test")
    again = study_main.execute(start, dataset=study["dataset"], quiet=True)
    assert again["comparisons"] == study["results"]["comparisons"]
    assert pathlib.Path(study["workdir"] / "results.json").exists()
