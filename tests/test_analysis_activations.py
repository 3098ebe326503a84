"""Tests for ml_practical.analysis.activations: per-layer activation and gradient statistics."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import loop, models
from ml_practical.analysis import activations
from tests.conftest import tiny


def _relu(x):
    return np.maximum(x, 0.0)


@pytest.fixture(scope="module")
def small_mlp():
    model = models.MLP(widths=(8, 6), num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 5))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    return model, variables, x


# ------------------------------------------------------------------------------------------------
# activation_stats, grad_norms, epoch_stats


def test_activation_stats_equal_numpy(small_mlp):
    model, variables, x = small_mlp
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    z0 = np.asarray(x, np.float64) @ p["dense_0"]["kernel"] + p["dense_0"]["bias"]
    a0 = _relu(z0)
    z1 = a0 @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
    a1 = _relu(z1)
    got = activations.activation_stats(model, variables, x, bins=10)
    assert list(got) == ["dense_0", "dense_1"]
    for layer, (z, a) in zip(got, ((z0, a0), (z1, a1))):
        s = got[layer]
        assert s["preact"]["mean"] == pytest.approx(z.mean(), rel=1e-5, abs=1e-6)
        assert s["preact"]["var"] == pytest.approx(z.var(), rel=1e-5)
        assert s["act"]["mean"] == pytest.approx(a.mean(), rel=1e-5)
        assert s["act"]["var"] == pytest.approx(a.var(), rel=1e-5)
        assert s["act"]["zero_fraction"] == pytest.approx((a == 0).mean(), abs=1e-7)
        counts, edges = np.histogram(z, bins=10)
        np.testing.assert_array_equal(s["preact"]["hist"][0], counts)
        np.testing.assert_allclose(s["preact"]["hist"][1], edges, rtol=1e-5, atol=1e-6)
        # The activation histogram covers the non-zero values.
        counts, edges = np.histogram(a[a != 0], bins=10)
        np.testing.assert_array_equal(s["act"]["hist"][0], counts)
        np.testing.assert_allclose(s["act"]["hist"][1], edges, rtol=1e-5, atol=1e-6)


def test_dead_fraction_is_exact_on_a_constructed_layer():
    model = models.MLP(widths=(4,), num_classes=2)
    x = jnp.abs(jax.random.normal(jax.random.PRNGKey(0), (50, 3))) + 0.1  # all inputs > 0
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    # Units 0 and 1 have all-negative weights on positive inputs: zero for every sample (dead).
    # Unit 2 is always positive; unit 3 = x_0 - x_1 is zero for some samples only (not dead).
    kernel = np.array([[-1.0, -2.0, 1.0, 1.0], [-1.0, -2.0, 1.0, -1.0], [-1.0, -2.0, 1.0, 0.0]],
                      np.float32)
    params = dict(variables["params"])
    params["dense_0"] = {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(4)}
    s = activations.activation_stats(model, {"params": params}, x, bins=0)["dense_0"]["act"]
    z3 = np.asarray(x)[:, 0] - np.asarray(x)[:, 1]
    assert 0 < (z3 <= 0).sum() < len(z3)  # the construction does what it says
    assert s["dead_fraction"] == 0.5
    assert s["zero_fraction"] == pytest.approx((2 * 50 + (z3 <= 0).sum()) / 200, abs=1e-7)


def test_grad_norms_equal_per_layer_numpy_norms():
    rng = np.random.default_rng(0)
    grads = {"dense_0": {"kernel": rng.normal(size=(5, 4)), "bias": rng.normal(size=4)},
             "dense_10": {"kernel": rng.normal(size=(4, 3))},
             "dense_2": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)},
             "head": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=2)}}
    got = activations.grad_norms(jax.tree.map(jnp.asarray, grads))
    assert list(got) == ["dense_0", "dense_2", "dense_10", "head"]  # depth order, not string order
    for name, sub in grads.items():
        want = math.sqrt(sum(float(np.sum(np.square(v))) for v in sub.values()))
        assert got[name] == pytest.approx(want, rel=1e-6)
    # The per-layer squares add up to optax's global norm (what clip_by_global_norm uses).
    total = math.sqrt(sum(v * v for v in got.values()))
    assert total == pytest.approx(float(optax.tree.norm(jax.tree.map(jnp.asarray, grads))),
                                  rel=1e-6)


def test_epoch_stats_match_activation_stats_and_autodiff(small_mlp):
    model, variables, x = small_mlp
    labels = jnp.arange(64) % 3
    got = activations.epoch_stats(model, variables, x, labels)
    acts = activations.activation_stats(model, variables, x, bins=0)
    for layer in ("dense_0", "dense_1"):
        assert got[f"stats/{layer}/act_var"] == pytest.approx(acts[layer]["act"]["var"], rel=1e-6)
        assert got[f"stats/{layer}/preact_mean"] == pytest.approx(
            acts[layer]["preact"]["mean"], rel=1e-5, abs=1e-7)
    grads = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x, train=False), labels).mean()))(variables["params"])
    for module, value in activations.grad_norms(grads).items():
        assert got[f"stats/{module}/grad_norm"] == pytest.approx(value, rel=1e-5)


def test_stats_logger_schedule_and_validation(small_mlp):
    model, variables, x = small_mlp
    labels = jnp.zeros(64, jnp.int32)
    log = activations.make_stats_logger(model, x, labels, every=2)
    assert log(1, variables["params"], {}) == {}
    out = log(2, variables["params"], {})
    assert out["stats/time_s"] > 0 and "stats/dense_1/dead_fraction" in out
    assert activations.make_stats_logger(model, x, labels, every=0)(2, None, None) == {}
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="train.stats_every"):
            activations.make_stats_logger(model, x, labels, every=bad)
    with pytest.raises(ValueError, match="bins"):
        activations.activation_stats(model, variables, x, bins=-3)


def test_fit_logs_stats_into_metrics_jsonl(tmp_path, tiny_dataset):
    # One epoch, so the returned (best) state is the state the epoch-1 statistics were taken on.
    cfg = tiny(**{"train.stats_every": 1, "train.num_epochs": 1})
    result = loop.fit(cfg, tmp_path, dataset=tiny_dataset)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    state = result.state
    acts = activations.activation_stats(
        cfg.model, {"params": state.params, "batch_stats": state.batch_stats},
        jnp.asarray(tiny_dataset.train_x[:activations.STATS_BATCH_SIZE]), bins=0)
    assert record["stats/dense_0/act_var"] == pytest.approx(acts["dense_0"]["act"]["var"], rel=1e-5)
    assert record["stats/dense_0/dead_fraction"] == acts["dense_0"]["act"]["dead_fraction"]
    assert record["stats/head/grad_norm"] > 0
