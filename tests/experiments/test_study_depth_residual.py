"""The depth and residual study end to end on the embedded digits (ResNet-8 and its plain CNN,
width x0.25, 1 epoch, 3 seeds): the grid's structure, the gradient probe against a numpy
recomputation, the paired statistics against scipy, Holm per depth, the verdict rule of EXP-06 on
constructed inputs and the audit check."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from experiments import stats_report
from experiments.audit.core import Context
from experiments.configs import depth_residual as study_config
from experiments.depth_residual import audit, gradients, report
from experiments.depth_residual import main as dr
from ml_practical import config as config_lib
from ml_practical import train as train_lib
from ml_practical.analysis.activations import sown_by_layer
from tests.stats_checks import check_holm, check_paired_comparison

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = 3
ROWS = ("he_bn", "fixup", "he_nonorm", "plain_bn")
GRAD_BATCH = 64
# The digits are 8 x 8: no downsampling, every test image; scans not unrolled (tiny programs
# compile faster rolled, and the speed of these 8 steps does not matter).
OVERRIDES = {"data.source": "digits", "data.val_size": 287, "data.limit_train": 0,
             "data.placement": "device", "train.eval_batch_size": 500, "train.unroll": False,
             "train.progress": "never", "train.num_epochs": 1, "rows": ",".join(ROWS),
             "depths": "8", "deep_rows": "", "deep_depths": "", "seeds": SEEDS,
             "downsample": 1, "test_size": 0, "grad_batch": GRAD_BATCH}


def study_cfg(**extra):
    raw = study_config.get_config()
    for key, value in {**OVERRIDES, **extra}.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config_lib.parse(raw, study=dr.DepthResidualStudy)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("depth_residual")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.depth_residual",
         "--config=experiments/configs/depth_residual.py", f"--workdir={workdir}"]
        + [f"--config.{k}={v}" for k, v in OVERRIDES.items()],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text(),
            "analysis": (workdir / "analysis.md").read_text()}


def test_files_and_grid(study):
    workdir, res = study["workdir"], study["results"]
    for name in ("results.json", "results.md", "analysis.md", "curves.png", "accuracy.png",
                 "grad_norms.png"):
        assert (workdir / name).stat().st_size > 0, name
    assert res["rows"] == list(ROWS) and res["depths"] == [8] and res["seeds"] == [0, 1, 2]
    for row in ROWS:
        for seed in range(SEEDS):
            cfg = json.loads((workdir / "runs" / row / "depth_8" / f"seed_{seed}" /
                              "config.json").read_text())
            assert cfg["seed"] == seed  # paired: seed s gives every cell the same batch order
            m = cfg["model"]
            if row == "plain_bn":
                # The ResNet-8 (n = 1) without stem and shortcuts: 3 stages of 2 convs at its
                # stage widths, stride-2 downsampling, BatchNorm.
                assert m["name"] == "cnn" and m["convs_per_stage"] == 2
                assert m["widths"] == [8, 16, 32] and m["pool"] == "none" and m["norm"] == "batch"
            else:
                assert m["name"] == "resnet" and m["depth"] == 8
                assert (m["residual"], m["norm"]) == {
                    "he_bn": ("standard", "batch"), "fixup": ("fixup", "none"),
                    "he_nonorm": ("standard", "none")}[row]
    layers = {row: res["cells"][row]["8"]["runs"][0]["layers"] for row in ROWS}
    # ResNet-8: stem, 3 blocks x 2 convs, head (shortcut A has no conv); plain: 6 convs, head.
    assert layers["he_bn"][0] == "stem/conv" and layers["he_bn"][-1] == "head"
    assert len(layers["he_bn"]) == 8 and len(layers["plain_bn"]) == 7
    assert layers["plain_bn"] == [f"conv_{j}" for j in range(6)] + ["head"]


def test_comparisons_are_paired_t_of_the_stored_accuracies(study):
    res = study["results"]
    acc = {row: {r["seed"]: r["test/accuracy"] for r in res["cells"][row]["8"]["runs"]}
           for row in ROWS}
    comps = res["comparisons"]["8"]
    assert [(c["case"], c["against"]) for c in comps] == [
        ("fixup", "he_bn"), ("he_nonorm", "he_bn"), ("plain_bn", "he_bn")]
    for c in comps:
        a = [acc[c["case"]][s] for s in c["seeds"]]
        b = [acc[c["against"]][s] for s in c["seeds"]]
        check_paired_comparison(c, a, b)
    check_holm(comps)  # Holm over the comparisons of one depth
    table = stats_report.comparison_table(
        [(f"`{c['case']}`", f"`{c['against']}`", c["inference"]) for c in comps], what="row")
    assert table in study["md"]
    # The cell's interval is Student's t over the seeds' accuracies.
    for row in ROWS:
        values = list(acc[row].values())
        cell = res["cells"][row]["8"]["test_accuracy"]
        assert cell["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        if np.ptp(values) > 0:
            ci = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                  scale=stats.sem(values))
            assert (cell["low"], cell["high"]) == pytest.approx(ci, rel=1e-9)


def test_probe_head_gradient_matches_numpy(study):
    """The probe's head norm at init equals ||f^T (softmax(f W + b) - onehot) / N|| computed in
    numpy from the network's last features f (train mode), for every row; Fixup's convs all get
    an exactly zero gradient at init (its classifier starts at 0)."""
    cfg = study_cfg()
    ds = dr.study_dataset(cfg)
    x, y = ds.train_x[:GRAD_BATCH], ds.train_y[:GRAD_BATCH]
    for row in ROWS:
        cell = dr.cell_config(cfg, row, 8, seed=1)
        state = train_lib.create_train_state(cell.model, optax.identity(), jax.random.PRNGKey(1),
                                             ds.train_x.shape[1:])
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits, mut = cell.model.apply(variables, jnp.asarray(x), train=True,
                                       mutable=["batch_stats", "intermediates"])
        sown = sown_by_layer(mut["intermediates"])
        last = sown[max(sown, key=gradients.forward_key)]["act"]  # the block before the pool
        f = np.asarray(last, np.float64).mean(axis=(1, 2))
        w = np.asarray(state.params["head"]["kernel"], np.float64)
        b = np.asarray(state.params["head"]["bias"], np.float64)
        np.testing.assert_allclose(f @ w + b, np.asarray(logits), rtol=1e-4, atol=1e-5)
        z = f @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = f.T @ (p - np.eye(10)[y]) / len(y)
        run = dr.run_files.RunFiles(study["workdir"] / "runs" / row / "depth_8" / "seed_1",
                                    tensorboard=False)
        probe = run.read_json(dr.PROBE_INIT_FILE)
        assert probe["layers"][-1] == "head"
        assert probe["norms"][-1] == pytest.approx(np.linalg.norm(grad), rel=1e-4)
        if row == "fixup":
            assert all(n == 0.0 for n in probe["norms"][:-1]) and probe["norms"][-1] > 0
            assert probe["logit_std"] == 0.0


def test_a_finished_run_is_read_back_not_trained(study):
    cfg = study_cfg()
    for row in ROWS:
        run_dir = study["workdir"] / "runs" / row / "depth_8" / "seed_2"
        cell = dr.cell_fields(cfg.study, row, 8)
        assert dr.finished(run_dir, dr.cell_config(cfg, row, 8, 2), cell)
        assert not dr.finished(run_dir, dr.cell_config(cfg, row, 8, 1), cell)  # another seed
        assert not dr.finished(run_dir, dr.cell_config(cfg, row, 8, 2), {**cell, "downsample": 2})
        # The study's own fields are not the run's: another grid reuses the run.
        other = study_cfg(depths="8,20", seeds=5)
        assert dr.finished(run_dir, dr.cell_config(other, row, 8, 2),
                           dr.cell_fields(other.study, row, 8))
        record = dr.run_record(run_dir)
        assert record["seed"] == 2 and len(record["probe"]) == 2  # init and epoch 1
        assert record["steps_run"] == len(record["step_loss"]) > 0


def test_audit_check_states_the_study_verdict(study, tmp_path):
    studies = study["workdir"].parent / "studies"
    studies.mkdir(exist_ok=True)
    link = studies / "depth_residual"
    if not link.exists():
        link.symlink_to(study["workdir"])
    finding = audit.check_EXP_06(Context(studies=studies))
    claim = study["results"]["claims"][0]
    assert claim["id"] == "EXP-06" and finding.verdict == claim["verdict"]
    assert finding.ci == pytest.approx(tuple(claim["ci"]))
    assert audit.check_EXP_06(Context(studies=tmp_path)).verdict == "not run"
    assert f"**Verdict: {claim['verdict']}.**" in study["analysis"]


def _cell(values, unstable=()):
    runs = [{"seed": s, "test/accuracy": v, "skipped_steps": 0, "steps_run": 10,
             "stop_reason": "max_epochs"} for s, v in enumerate(values)]
    return {"runs": runs, "test_accuracy": report.mean_ci(values),
            "unstable_seeds": list(unstable), "failed_seeds": [], "skipped_steps": 0,
            "steps_run": 10 * len(values)}


@pytest.mark.parametrize("fixup, nonorm, unstable, verdict", [
    # Fixup 0.1 pt below He + BN, tight; no-norm unstable: confirmed.
    ([0.979, 0.980, 0.981], [0.97, 0.98, 0.99], [1], "confirmed"),
    # Fixup 2 pt below, tight: refuted whatever no-norm does.
    ([0.960, 0.961, 0.959], [0.97, 0.98, 0.99], [1], "refuted"),
    # Fixup's interval straddles -0.5 pt: inconclusive.
    ([0.990, 0.960, 0.985], [0.97, 0.98, 0.99], [1], "inconclusive"),
    # No-norm stable and as good as He + BN: refuted (the claim needs it unstable or worse).
    ([0.979, 0.980, 0.981], [0.9801, 0.9811, 0.9821], [], "refuted"),
])
def test_exp06_rule_on_constructed_inputs(fixup, nonorm, unstable, verdict):
    he_bn = [0.980, 0.981, 0.982]
    cells = {"he_bn": {"56": _cell(he_bn)}, "fixup": {"56": _cell(fixup)},
             "he_nonorm": {"56": _cell(nonorm, unstable)}}
    out = {"cells": cells, "comparisons": report.compare_depths(cells)}
    assert report.claim_exp06(out)["verdict"] == verdict


def test_bad_study_fields_name_the_field():
    with pytest.raises(config_lib.ConfigError, match="depths"):
        study_cfg(depths="8,9")
    with pytest.raises(config_lib.ConfigError, match="deep_rows"):
        study_cfg(deep_rows="resnet_bn")
