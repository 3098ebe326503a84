"""The BN x learning-rate study (experiments/bn_lr): the grid's definitions on constructed
inputs; end to end on a tiny generated dataset (the CNN, BN and none, 3 rates, 3 seeds vmapped,
1 epoch) every stored number is recomputed from the run files (the initial loss from the model
itself), the largest rates and ratios by an independent reading of the runs, the statistics by
scipy, and the audit check reads the same verdict; a rerun trains nothing."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from experiments import cli, stats_report
from experiments.audit.core import Context
from experiments.bn_lr import audit, grid
from experiments.bn_lr import main as study_main
from experiments.configs import bn_lr as study_config
from ml_practical import config, run_files
from ml_practical import data as data_lib
from ml_practical import train as train_lib
from tests.stats_checks import check_holm, check_p
from tests.template_data import template_dataset

SEEDS = 3
LRS = (0.1, 1.0, 10.0)


def tiny_dataset():
    return template_dataset(noise=1.0)


def tiny_config(**study):
    raw = study_config.get_config()
    raw.data.source = "arrays"
    raw.data.limit_train = 0
    raw.data.placement = "device"
    raw.train.unroll = False
    raw.model.widths = (4, 8)
    raw.archs = "cnn"
    raw.seeds = SEEDS
    raw.seed_mode = "vmap"
    raw.lr_min, raw.lr_max, raw.lr_per_decade = 0.1, 10.0, 1
    raw.threshold = 0.5
    raw.train.num_epochs = 1
    raw.train.batch_size = 32
    raw.train.eval_batch_size = 128
    for k, v in study.items():
        raw[k] = v
    return config.parse(raw, study=study_main.BNLrStudy)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("studies") / audit.STUDY_DIR
    dataset = tiny_dataset()
    start = cli.Start(cfg=tiny_config(), workdir=workdir, command="test")
    results = study_main.execute(start, dataset=dataset, quiet=True)
    return {"workdir": workdir, "results": results, "dataset": dataset, "cfg": start.cfg,
            "on_disk": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}


# --------------------------------------------------------------------------- rules, constructed


def test_the_grid_is_exact_powers_of_ten():
    assert grid.exponents(1e-3, 10.0, 2) == list(range(-6, 3))
    lrs = grid.learning_rates(1e-3, 10.0, 2)
    assert len(lrs) == 9 and lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(10.0)
    np.testing.assert_allclose(np.diff(np.log10(lrs)), 0.5, rtol=0, atol=1e-12)
    assert [grid.lr_name(x) for x in lrs[:3]] == ["0.001", "0.00316", "0.01"]
    with pytest.raises(ValueError, match="lr_min: 0.002 is not on the grid"):
        grid.exponents(0.002, 10.0, 2)
    with pytest.raises(ValueError, match="lr_min"):
        grid.exponents(10.0, 1.0, 2)


@pytest.mark.parametrize("bn, none, outcome", [
    (1.0, 0.1, ">= 10"),            # two grid steps at x sqrt(10)
    (10 ** 0.5, 1.0, "< 10"),       # one step: 3.16
    (10.0, 0.1, ">= 10"),           # BN censored at the top: the true ratio is only larger
    (10.0, 10 ** 0.5, "undetermined"),  # BN censored and below 10: the next rate could pass
    (0.1, 10.0, "< 10"),            # none censored at the top, BN below: the ratio only shrinks
    (10.0, 10.0, "undetermined"),   # both censored
    (None, 0.1, "undetermined"), (1.0, None, "undetermined")])
def test_seed_outcome_accounts_for_censoring(bn, none, outcome):
    assert grid.seed_outcome(bn, none, lr_max=10.0, factor=10.0) == outcome


@pytest.mark.parametrize("outcomes, verdict", [
    ([">= 10"] * 3, "confirmed"), (["< 10"] * 3, "refuted"),
    ([">= 10", ">= 10", "< 10"], "inconclusive"), ([">= 10", "undetermined"], "inconclusive"),
    ([], "inconclusive")])
def test_claim_verdict_counts_seeds(outcomes, verdict):
    assert grid.claim_verdict(outcomes, 10.0) == verdict


@pytest.mark.parametrize("verdicts, overall", [
    (["confirmed", "confirmed"], "confirmed"), (["refuted", "refuted"], "refuted"),
    (["confirmed", "refuted"], "partly"), (["confirmed", "inconclusive"], "inconclusive")])
def test_overall_verdict(verdicts, overall):
    assert grid.overall_verdict(verdicts) == overall


def _run(lr, **kw):
    base = {"lr": lr, "stop_reason": "max_epochs", "initial_loss": 2.4, "final_train_loss": 1.0,
            "final_train_accuracy": 0.7, "test_accuracy": 0.6, "val_accuracy": 0.6}
    return {**base, **kw}


def test_stable_diverged_collapsed():
    majority, h = 0.11, 2.3
    assert grid.label_entropy([0, 1, 2, 3] * 5) == pytest.approx(math.log(4))
    assert grid.is_stable(_run(1.0), majority, h)
    # The guard stopped it, or the loss is not finite: diverged.
    assert grid.is_diverged(_run(1.0, stop_reason="non_finite"))
    assert grid.is_diverged(_run(1.0, final_train_loss=math.inf))
    # A network that predicts one class: its loss ~ ln 10 is below the initial, yet not stable.
    dead = _run(1.0, final_train_loss=2.302, final_train_accuracy=0.112)
    assert grid.is_collapsed(dead, majority) and not grid.is_stable(dead, majority, h)
    # The loss went up; or it fell from a high initial loss, but not below the label entropy.
    assert not grid.is_stable(_run(1.0, final_train_loss=2.5), majority, h)
    assert not grid.is_stable(_run(1.0, initial_loss=2.7, final_train_loss=2.45,
                                   final_train_accuracy=0.13), majority, h)
    runs = [_run(0.1, stable=True), _run(1.0, stable=True), _run(10.0, stable=False)]
    assert grid.largest_stable_lr(runs) == 1.0
    runs = [_run(0.1, test_accuracy=0.9), _run(1.0, test_accuracy=0.79),
            _run(10.0, test_accuracy=0.81)]
    assert grid.largest_lr_reaching(runs, 0.8) == 10.0   # the rates below need not qualify
    assert grid.largest_lr_reaching(runs, 0.95) is None


def test_best_by_val_takes_the_smallest_rate_on_a_tie():
    runs = [_run(1.0, val_accuracy=0.8), _run(0.1, val_accuracy=0.8),
            _run(10.0, val_accuracy=math.nan)]
    assert grid.best_by_val(runs)["lr"] == 0.1


def test_the_resnet_arm_shares_the_cnn_fields():
    cfg = config.parse(study_config.get_config(), study=study_main.BNLrStudy)
    resnet = study_main.arch_config(cfg, "resnet")
    assert resnet.model_name == "resnet"
    assert (resnet.model.depth, resnet.model.width_multiplier) == (8, 0.5)
    for name in grid.SHARED_MODEL_FIELDS:
        assert getattr(resnet.model, name) == getattr(cfg.model, name), name
    assert resnet.optim == cfg.optim and resnet.data == cfg.data and resnet.train == cfg.train
    run = study_main.run_config(resnet, "none", 10 ** 0.5, 2)
    assert (run.model.norm, run.optim.learning_rate, run.seed) == ("none", 10 ** 0.5, 2)


def test_a_bad_field_is_refused_naming_it():
    for field, value, message in (("lr_min", 0.002, "lr_min: 0.002 is not on the grid"),
                                  ("archs", "cnn,mlp", "archs: unknown 'mlp'"),
                                  ("threshold", 95, "threshold")):
        raw = study_config.get_config()
        raw[field] = value
        with pytest.raises(config.ConfigError, match=message):
            config.parse(raw, study=study_main.BNLrStudy)


# --------------------------------------------------------------------------- end to end


def _runs(results, **where):
    return [r for r in results["runs"] if all(r[k] == v for k, v in where.items())]


def test_grid_structure_and_pairing(study):
    results, workdir = study["results"], study["workdir"]
    assert results["learning_rates"] == pytest.approx(list(LRS))
    assert len(results["runs"]) == 2 * len(LRS) * SEEDS
    keys = {(r["arch"], r["norm"], round(r["log10_lr"], 9), r["seed"]) for r in results["runs"]}
    assert keys == {("cnn", n, float(k), s) for n in grid.NORMS for k in (-1, 0, 1)
                    for s in range(SEEDS)}
    for r in results["runs"]:
        saved = json.loads((study_main.run_dir(workdir, r["arch"], r["norm"], r["lr"], r["seed"])
                            / "config.json").read_text())
        assert saved["seed"] == r["seed"]
        assert saved["optim"]["learning_rate"] == pytest.approx(r["lr"])
        assert (saved["model"]["norm"], saved["optim"]["name"]) == (r["norm"], "sgd")


def test_records_are_the_run_files(study):
    workdir, majority = study["workdir"], study["results"]["majority_class_share"]
    y = study["dataset"].train_y
    assert majority == pytest.approx(np.bincount(y).max() / 256)
    p = np.bincount(y) / len(y)
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    assert study["results"]["label_entropy"] == pytest.approx(entropy)
    for r in study["results"]["runs"]:
        d = study_main.run_dir(workdir, r["arch"], r["norm"], r["lr"], r["seed"])
        summary = json.loads((d / "summary.json").read_text())
        history = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert r["test_accuracy"] == summary["test/accuracy"]
        assert r["initial_loss"] == history[0]["train/initial_loss"]
        assert r["final_train_loss"] == pytest.approx(float(history[-1]["train/loss"]),
                                                      nan_ok=True)
        assert r["skipped_steps"] == sum(h["train/skipped_steps"] for h in history)
        finite = math.isfinite(r["final_train_loss"])
        stable = (summary["stop_reason"] != "non_finite" and finite
                  and r["final_train_loss"] < min(r["initial_loss"], entropy)
                  and r["final_train_accuracy"] > majority + grid.COLLAPSE_MARGIN)
        assert r["stable"] == stable


def test_initial_loss_is_the_loss_of_the_initial_parameters(study):
    """Recomputed from the model: seed 1's initial state on epoch 1's first batch, train mode."""
    dataset = study["dataset"]
    arch_cfg = study_main.arch_config(study["cfg"], "cnn")
    for norm in grid.NORMS:
        cfg = study_main.run_config(arch_cfg, norm, 1.0, 1)
        state = train_lib.create_train_state(cfg.model, optax.sgd(1.0), jax.random.PRNGKey(1),
                                             dataset.train_x.shape[1:])
        idx = data_lib.batch_indices(1, 1, len(dataset.train_y), cfg.train.batch_size)[0]
        apply = jax.jit(functools.partial(cfg.model.apply, train=True, mutable=["batch_stats"]))
        logits, _ = apply({"params": state.params, "batch_stats": state.batch_stats},
                          jnp.asarray(dataset.train_x[idx]))
        loss = float(optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.asarray(dataset.train_y[idx])).mean())
        [r] = _runs(study["results"], norm=norm, lr=1.0, seed=1)
        assert r["initial_loss"] == pytest.approx(loss, rel=1e-5)


def test_largest_rates_and_ratios(study):
    results = study["results"]
    x = results["claim"]["threshold"]
    for e in results["archs"]["cnn"]["per_seed"]:
        largest = {}
        for norm in grid.NORMS:
            rs = _runs(results, arch="cnn", norm=norm, seed=e["seed"])
            reach = [r["lr"] for r in rs if r["test_accuracy"] >= x]
            stable = [r["lr"] for r in rs if r["stable"]]
            largest[norm] = (max(reach) if reach else None, max(stable) if stable else None)
            assert e[norm]["largest_lr_reaching"] == largest[norm][0]
            assert e[norm]["largest_stable_lr"] == largest[norm][1]
            by_val = max(sorted(rs, key=lambda r: r["lr"]), key=lambda r: r["val_accuracy"])
            assert e[norm]["best_test_accuracy"] == by_val["test_accuracy"]
        for i, what in enumerate(("reaching", "stable")):
            bn, none = largest["batch"][i], largest["none"][i]
            expect = None if bn is None or none is None else bn / none
            assert e[f"ratio_{what}"] == (None if expect is None else pytest.approx(expect))
    outcomes = [e["outcome_reaching"] for e in results["archs"]["cnn"]["per_seed"]]
    assert results["archs"]["cnn"]["verdict"] == grid.claim_verdict(outcomes, 10.0)
    assert results["claim"]["verdict"] == grid.overall_verdict([results["archs"]["cnn"]["verdict"]])


def test_comparisons_are_scipy_on_the_stored_values(study):
    results = study["results"]
    per_seed = {e["seed"]: e for e in results["archs"]["cnn"]["per_seed"]}
    get = {"best_test_accuracy": lambda e: e["best_test_accuracy"],
           "log10_largest_lr_reaching": lambda e: None if e["largest_lr_reaching"] is None
           else math.log10(e["largest_lr_reaching"]),
           "log10_largest_stable_lr": lambda e: None if e["largest_stable_lr"] is None
           else math.log10(e["largest_stable_lr"])}
    for family in ("main", "per_lr"):
        comps = results["comparisons"][family]
        for c in comps:
            if family == "main":
                pairs = [(get[c["metric"]](per_seed[s]["batch"]), get[c["metric"]](per_seed[s]["none"]))
                         for s in sorted(per_seed)]
                pairs = [p for p in pairs if None not in p]
            else:
                pairs = [(_runs(results, norm="batch", lr=c["lr"], seed=s)[0]["test_accuracy"],
                          _runs(results, norm="none", lr=c["lr"], seed=s)[0]["test_accuracy"])
                         for s in range(SEEDS)]
            a, b = (list(v) for v in zip(*pairs)) if pairs else ([], [])
            np.testing.assert_allclose(c["differences"], np.subtract(a, b), rtol=0, atol=1e-12)
            if len(a) < 2:
                continue
            inf = c["inference"]
            check_p(inf["t"]["p"], a, b)
            if np.ptp(np.subtract(a, b)) > 0:
                ci = stats.ttest_rel(a, b).confidence_interval(0.95)
                assert (inf["t"]["low"], inf["t"]["high"]) == pytest.approx((ci.low, ci.high),
                                                                              rel=1e-9)
        check_holm([c for c in comps if c["inference"].get("n", 0) >= 2])
    assert len(results["comparisons"]["per_lr"]) == len(LRS)


def test_results_md_shows_the_tables(study):
    md, results = study["md"], study["on_disk"]
    for metric in ("best_test_accuracy", "log10_largest_lr_reaching"):
        rows = [(c["arch"], "none", c["inference"]) for c in results["comparisons"]["main"]
                if c["metric"] == metric]
        scale, unit = (100.0, "pp") if metric == "best_test_accuracy" else (1.0, "decades")
        assert stats_report.comparison_table(rows, what="arch", scale=scale, unit=unit,
                                             digits=2) in md
    assert "## Robustness" in md and "## Verdicts" in md
    for name in results["figures"]:
        assert (study["workdir"] / name).read_bytes()[:4] == b"\x89PNG"
    assert "BN-10" in (study["workdir"] / "analysis.md").read_text()


def test_audit_reads_the_same_verdict(study, tmp_path):
    finding = audit.check_BN_10(Context(studies=study["workdir"].parent))
    results = study["on_disk"]
    assert finding.verdict == results["claim"]["verdict"]
    assert finding.artefact.endswith("bn_lr/results.json")
    assert audit.check_BN_10(Context(studies=tmp_path)).verdict == "not run"
    # Constructed: every seed two grid steps apart, in both architectures -> confirmed; one
    # architecture at one step -> partly.
    res = json.loads(json.dumps(results))
    res["learning_rates"] = [0.01, 0.1, 1.0, 10.0]
    seed = {"batch": {"largest_lr_reaching": 1.0}, "none": {"largest_lr_reaching": 0.01},
            "ratio_stable": None}
    res["archs"] = {"cnn": {"per_seed": [seed] * 3}, "resnet": {"per_seed": [seed] * 3}}
    (tmp_path / audit.STUDY_DIR).mkdir()
    (tmp_path / audit.STUDY_DIR / "results.json").write_text(json.dumps(res))
    assert audit.check_BN_10(Context(studies=tmp_path)).verdict == "confirmed"
    res["archs"]["resnet"]["per_seed"] = [{**seed, "none": {"largest_lr_reaching": 10 ** -0.5}}] * 3
    (tmp_path / audit.STUDY_DIR / "results.json").write_text(json.dumps(res))
    assert audit.check_BN_10(Context(studies=tmp_path)).verdict == "partly"


def test_a_rerun_trains_nothing(study, capsys):
    start = cli.Start(cfg=study["cfg"], workdir=study["workdir"], command="test")
    lines = []
    again = study_main.execute(start, dataset=study["dataset"], log=lines.append, quiet=True)
    assert len(lines) == 2 * len(LRS) and all("[read back" in s for s in lines)
    same = lambda runs: json.dumps(run_files.to_jsonable(runs), sort_keys=True)
    assert same(again["runs"]) == same(study["results"]["runs"])
