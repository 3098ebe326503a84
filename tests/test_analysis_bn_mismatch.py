"""analysis.bn_mismatch against numpy recomputations on a tiny BatchNorm MLP and CNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical.analysis import bn_mismatch
from ml_practical.models import CNN, MLP

EPS = 1e-5


def _model_and_vars(norm="batch", seed=0):
    model = MLP(widths=(6, 5), num_classes=3, norm=norm, norm_epsilon=EPS)
    x = np.random.default_rng(seed).normal(size=(24, 4)).astype(np.float32)
    variables = jax.device_get(model.init(jax.random.PRNGKey(seed), jnp.asarray(x), train=False))
    variables = jax.tree.map(np.asarray, variables)
    if norm == "batch":  # running statistics far from anything the data give
        rng = np.random.default_rng(seed + 1)
        for name in ("norm_0", "norm_1"):
            stats = variables["batch_stats"][name]
            stats["mean"] = rng.normal(size=stats["mean"].shape).astype(np.float32)
            stats["var"] = rng.uniform(0.5, 2.0, size=stats["var"].shape).astype(np.float32)
        for name in ("norm_0", "norm_1"):  # gamma, beta away from 1, 0
            p = variables["params"][name]
            p["scale"] = rng.uniform(0.5, 1.5, size=p["scale"].shape).astype(np.float32)
            p["bias"] = rng.normal(size=p["bias"].shape).astype(np.float32) * 0.3
    return model, variables, x


def _bn(z, mean, var, p):
    return p["scale"] * (z - mean) / np.sqrt(var + EPS) + p["bias"]


def _forward(variables, x, *, train, group=None):
    """numpy MLP 4-6-5-3 (BN before ReLU, no bias before BN); returns (BN inputs, logits)."""
    p, s = variables["params"], variables.get("batch_stats", {})
    x = x.astype(np.float64)
    inputs = []
    h = x
    for i in range(2):
        z = h @ p[f"dense_{i}"]["kernel"]
        inputs.append(z)
        if train:
            g = group or len(z)
            zg = z.reshape(-1, g, z.shape[-1])
            mu, var = zg.mean(1, keepdims=True), zg.var(1, keepdims=True)
            y = _bn(zg, mu, var, p[f"norm_{i}"]).reshape(z.shape)
        else:
            y = _bn(z, s[f"norm_{i}"]["mean"], s[f"norm_{i}"]["var"], p[f"norm_{i}"])
        h = np.maximum(y, 0.0)
    return inputs, h @ p["head"]["kernel"] + p["head"]["bias"]


def test_normalization_error_is_the_affine_map_between_the_two_normalizations():
    rng = np.random.default_rng(0)
    z = rng.normal(2.0, 3.0, size=(5000, 4))
    m, v = rng.normal(size=4), rng.uniform(0.5, 4.0, size=4)
    mu, var = z.mean(0), z.var(0)
    err = bn_mismatch.normalization_error(m, v, mu, var, EPS)
    zhat = (z - mu) / np.sqrt(var + EPS)
    zhat_eval = (z - m) / np.sqrt(v + EPS)
    np.testing.assert_allclose(zhat_eval, err["scale"] * zhat + err["offset"], rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(err["rms"], np.sqrt(np.mean((zhat_eval - zhat) ** 2, axis=0)),
                               rtol=1e-10)
    exact = bn_mismatch.normalization_error(mu, var, mu, var, EPS)
    np.testing.assert_allclose(exact["rms"], 0.0, atol=1e-12)
    np.testing.assert_allclose(exact["scale"], 1.0)


@pytest.mark.parametrize("train", [False, True])
def test_input_statistics_match_numpy(train):
    model, variables, x = _model_and_vars()
    got = bn_mismatch.input_statistics(model, variables, x, train=train)
    inputs, _ = _forward(variables, x, train=train)
    assert list(got) == ["norm_0", "norm_1"]
    for name, z in zip(got, inputs):
        np.testing.assert_allclose(got[name]["mean"], z.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[name]["var"], z.var(0), rtol=1e-4, atol=1e-5)
        assert got[name]["count"] == len(x)


def test_running_stat_mismatch_combines_the_pieces():
    model, variables, x = _model_and_vars()
    got = bn_mismatch.running_stat_mismatch(model, variables, x, eps=EPS)
    inputs, _ = _forward(variables, x, train=False)
    for i, name in enumerate(("norm_0", "norm_1")):
        s = variables["batch_stats"][name]
        err = bn_mismatch.normalization_error(s["mean"], s["var"], inputs[i].mean(0),
                                              inputs[i].var(0), EPS)
        assert got[name]["mean_rms"] == pytest.approx(np.mean(err["rms"]), rel=1e-4)
        assert got[name]["max_rms"] == pytest.approx(np.max(err["rms"]), rel=1e-4)
        assert got[name]["mean_abs_offset"] == pytest.approx(np.mean(np.abs(err["offset"])),
                                                             rel=1e-4)
        assert got[name]["mean_abs_log_scale"] == pytest.approx(
            np.mean(np.abs(np.log(err["scale"]))), rel=1e-3)


@pytest.mark.parametrize("bn_batch", [4, 5])
def test_evaluate_modes_matches_numpy_and_leaves_the_running_statistics(bn_batch):
    model, variables, x = _model_and_vars()
    y = np.random.default_rng(3).integers(0, 3, size=len(x))
    before = jax.tree.map(np.copy, variables["batch_stats"])
    # piece_rows 8: several pieces, the last completed with copies (24 // 5 * 5 = 20 rows).
    got = bn_mismatch.evaluate_modes(model, variables, x, y, bn_batch=bn_batch, piece_rows=8)
    rows = len(x) // bn_batch * bn_batch
    assert got["rows"] == rows
    xs, ys = x[:rows], y[:rows]
    _, logits_e = _forward(variables, xs, train=False)
    _, logits_t = _forward(variables, xs, train=True, group=bn_batch)

    def nll(logits):
        logits = logits - logits.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(rows), ys]))

    assert got["eval"]["accuracy"] == pytest.approx(np.mean(logits_e.argmax(1) == ys))
    assert got["train"]["accuracy"] == pytest.approx(np.mean(logits_t.argmax(1) == ys))
    assert got["eval"]["loss"] == pytest.approx(nll(logits_e), rel=1e-4)
    assert got["train"]["loss"] == pytest.approx(nll(logits_t), rel=1e-4)
    assert got["agreement"] == pytest.approx(np.mean(logits_e.argmax(1) == logits_t.argmax(1)))
    assert got["accuracy_gap"] == pytest.approx(got["eval"]["accuracy"]
                                                - got["train"]["accuracy"])
    jax.tree.map(np.testing.assert_array_equal, before, variables["batch_stats"])


def test_a_model_without_batch_norm_has_one_mode():
    model, variables, x = _model_and_vars(norm="layer")
    y = np.zeros(len(x), int)
    got = bn_mismatch.evaluate_modes(model, variables, x, y, bn_batch=4)
    assert got["train"] == got["eval"] and got["agreement"] == 1.0
    assert bn_mismatch.running_stat_mismatch(model, variables, x, eps=EPS) == {}


def test_cnn_statistics_are_over_batch_and_space():
    model = CNN(widths=(4,), num_classes=3, norm="batch")
    x = np.random.default_rng(0).normal(size=(6, 5, 5, 1)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
    got = bn_mismatch.input_statistics(model, variables, x)
    z = np.asarray(model.apply(variables, jnp.asarray(x), train=False,
                               capture_intermediates=True, mutable=["intermediates"])[1]
                   ["intermediates"]["conv_0"]["__call__"][0], np.float64)
    assert got["norm_0"]["count"] == 6 * 5 * 5
    np.testing.assert_allclose(got["norm_0"]["mean"], z.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["norm_0"]["var"], z.var((0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_refusals():
    model, variables, x = _model_and_vars()
    with pytest.raises(ValueError, match="bn_batch"):
        bn_mismatch.evaluate_modes(model, variables, x, np.zeros(len(x), int), bn_batch=0)
    with pytest.raises(ValueError, match="more than"):
        bn_mismatch.evaluate_modes(model, variables, x, np.zeros(len(x), int), bn_batch=100)
