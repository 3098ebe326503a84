"""Tests for ml_practical.lsuv: target variances, orthogonal start, forward order, BN, bad input."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import lsuv, models


def _batch(n=128, d=32, seed=1):
    # Features with different scales and offsets, so the first layer's variance is not 1 already.
    x = jax.random.normal(jax.random.key(seed), (n, d))
    return x * jnp.linspace(0.2, 3.0, d) + jnp.linspace(-1.0, 1.0, d)


def _mlp_preactivation_variances(model, variables, x):
    """Independent of LSUV's capture: the MLP's own sown pre-activations plus the logits."""
    logits, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    inter = state["intermediates"]
    out = [float(np.var(np.asarray(inter[f"dense_{i}"]["preact"][0])))
           for i in range(len(model.widths))]
    return out + [float(np.var(np.asarray(logits)))]


@pytest.fixture(scope="module")
def deep_mlp_result():
    model = models.MLP(widths=(64,) * 8, num_classes=10, hidden_init="xavier_normal")
    x = _batch()
    variables = model.init(jax.random.key(0), x, train=False)
    new, report = lsuv.lsuv(functools.partial(model.apply, train=False), variables, x,
                            target_var=2.0, tol=0.05, key=jax.random.key(3))
    return model, x, variables, new, report


def test_lsuv_reaches_the_target_variance_in_every_layer(deep_mlp_result):
    model, x, before, new, report = deep_mlp_result
    assert [r["layer"] for r in report] == [f"dense_{i}" for i in range(8)] + ["head"]
    assert all(r["converged"] for r in report)
    measured = _mlp_preactivation_variances(model, new, x)
    np.testing.assert_allclose(measured, 2.0, atol=0.05)
    np.testing.assert_allclose(measured, [r["var_after"] for r in report], rtol=1e-4)
    # Xavier on a ReLU net roughly halves the variance per layer: far from 2 before LSUV.
    assert _mlp_preactivation_variances(model, before, x)[-2] < 0.5


def test_lsuv_report_var_before_is_the_orthogonal_kernels_output_variance(deep_mlp_result):
    model, x, before, new, report = deep_mlp_result
    first = report[0]
    w = np.asarray(new["params"]["dense_0"]["kernel"]) / first["scale"]  # undo the rescaling
    b = np.asarray(new["params"]["dense_0"]["bias"])
    np.testing.assert_allclose(np.var(np.asarray(x) @ w + b), first["var_before"], rtol=1e-4)
    # With zero biases the output is linear in the kernel: one rescaling is exact.
    assert all(r["iterations"] == 1 for r in report)
    for r in report:
        np.testing.assert_allclose(r["scale"], np.sqrt(2.0 / r["var_before"]), rtol=1e-6)


def test_orthogonal_start_makes_square_kernels_orthogonal_before_scaling(deep_mlp_result):
    _, _, before, new, report = deep_mlp_result
    row = next(r for r in report if r["layer"] == "dense_3")
    w = np.asarray(new["params"]["dense_3"]["kernel"], np.float64)  # 64 x 64
    # W = s Q with Q orthogonal: W^T W = s^2 I, s the report's total scale.
    np.testing.assert_allclose(w.T @ w, row["scale"] ** 2 * np.eye(64), atol=1e-5 * row["scale"] ** 2)
    # A re-draw, not a rescaled copy of the Xavier kernel.
    w0 = np.asarray(before["params"]["dense_3"]["kernel"])
    assert abs(np.corrcoef(w.ravel(), w0.ravel())[0, 1]) < 0.1
    # Biases are untouched.
    np.testing.assert_array_equal(new["params"]["dense_3"]["bias"],
                                  before["params"]["dense_3"]["bias"])


@pytest.mark.parametrize("train", [False, True])
def test_lsuv_with_batchnorm_measures_before_bn_and_keeps_running_stats(train):
    model = models.MLP(widths=(32,) * 4, num_classes=5, norm="batch")
    x = _batch(64, 16, seed=2)
    variables = model.init(jax.random.key(0), x, train=False)
    # Running statistics that are not the init values, to see they come back untouched.
    stats = jax.tree.map(lambda s: s + 0.25, variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}
    new, report = lsuv.lsuv(functools.partial(model.apply, train=train), variables, x,
                            key=jax.random.key(1))
    assert [r["layer"] for r in report] == [f"dense_{i}" for i in range(4)] + ["head"]
    assert all(r["converged"] for r in report)
    for got, want in zip(jax.tree.leaves(new["batch_stats"]), jax.tree.leaves(stats)):
        np.testing.assert_array_equal(got, want)
    # Re-measure the Dense outputs (before BN) in the same mode.
    _, state = model.apply(new, x, train=train, mutable=["intermediates", "batch_stats"])
    for i in range(4):
        preact = state["intermediates"][f"dense_{i}"]["preact"][0]
        assert abs(float(np.var(np.asarray(preact))) - 1.0) < 0.1


class _OutOfOrder(nn.Module):
    """Submodules declared in the opposite order to the one they are called in; a conv first."""

    def setup(self):
        self.second = nn.Dense(8, bias_init=nn.initializers.normal(0.3))
        self.first = nn.Conv(6, (3, 3), bias_init=nn.initializers.normal(0.3))

    def __call__(self, x):
        h = jnp.tanh(self.first(x))
        return self.second(h.reshape((h.shape[0], -1)))


def test_lsuv_on_plain_flax_models_in_forward_order_with_biases():
    x = jax.random.normal(jax.random.key(4), (32, 5, 5, 2)) * 3.0
    model = _OutOfOrder()
    variables = model.init(jax.random.key(0), x)
    new, report = lsuv.lsuv(model.apply, variables, x, tol=0.02, key=jax.random.key(5))
    assert [r["layer"] for r in report] == ["first", "second"]
    assert all(r["converged"] for r in report)
    # Independent re-measurement with the layers applied on their own.
    p = new["params"]
    h = nn.Conv(6, (3, 3)).apply({"params": p["first"]}, x)
    y = nn.Dense(8).apply({"params": p["second"]}, jnp.tanh(h).reshape((32, -1)))
    assert abs(float(np.var(np.asarray(h))) - 1.0) < 0.02
    assert abs(float(np.var(np.asarray(y))) - 1.0) < 0.02
    # A conv kernel (3, 3, 2, 6) is orthogonal flattened to (18, 6): W^T W = s^2 I.
    w = np.asarray(p["first"]["kernel"]).reshape(18, 6)
    np.testing.assert_allclose(w.T @ w, report[0]["scale"] ** 2 * np.eye(6),
                               atol=1e-5 * report[0]["scale"] ** 2)

    seq = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(16), nn.relu, nn.Dense(3)])
    flat = x.reshape((32, -1))
    seq_vars = seq.init(jax.random.key(1), flat)
    seq_new, seq_report = lsuv.lsuv(seq.apply, seq_vars, flat, key=jax.random.key(2))
    assert [r["layer"] for r in seq_report] == ["layers_0", "layers_2", "layers_4"]
    h = flat
    for name in ("layers_0", "layers_2", "layers_4"):
        h = h @ seq_new["params"][name]["kernel"] + seq_new["params"][name]["bias"]
        assert abs(float(np.var(np.asarray(h))) - 1.0) < 0.1, name
        h = jax.nn.relu(h)


def test_layer_filter_and_no_orthogonal_start_only_rescale_the_chosen_kernels():
    model = models.MLP(widths=(16, 16), num_classes=4)
    x = _batch(64, 8, seed=3)
    variables = model.init(jax.random.key(0), x, train=False)
    new, report = lsuv.lsuv(functools.partial(model.apply, train=False), variables, x,
                            orthogonal_start=False, layer_filter=lambda n: n != "head")
    assert [r["layer"] for r in report] == ["dense_0", "dense_1"]
    for r in report:
        k0 = np.asarray(variables["params"][r["layer"]]["kernel"])
        np.testing.assert_allclose(new["params"][r["layer"]]["kernel"], r["scale"] * k0,
                                   rtol=1e-5)
    np.testing.assert_array_equal(new["params"]["head"]["kernel"],
                                  variables["params"]["head"]["kernel"])


def test_zero_output_variance_is_reported_not_divided_by():
    model = nn.Dense(4)
    x = jnp.zeros((8, 3))  # zero input, zero bias: the output variance is exactly 0
    variables = model.init(jax.random.key(0), x)
    new, report = lsuv.lsuv(model.apply, variables, x, key=jax.random.key(1))
    assert report == [{"layer": "(root)", "var_before": 0.0, "var_after": 0.0, "iterations": 0,
                       "scale": 1.0, "converged": False}]
    assert np.all(np.isfinite(np.asarray(new["params"]["kernel"])))


@pytest.mark.parametrize("kwargs, field", [
    (dict(tol=0.0), "tol"),
    (dict(tol=-0.1), "tol"),
    (dict(max_iter=0), "max_iter"),
    (dict(max_iter=2.5), "max_iter"),
    (dict(target_var=0.0), "target_var"),
    (dict(key=None), "key"),
    (dict(layer_filter="dense_0"), "layer_filter"),
])
def test_bad_arguments_raise_naming_the_field(kwargs, field):
    model = nn.Dense(4)
    x = jnp.ones((8, 3))
    variables = model.init(jax.random.key(0), x)
    args = dict(key=jax.random.key(1), **{k: v for k, v in kwargs.items() if k != "key"})
    if "key" in kwargs:
        args["key"] = kwargs["key"]
    with pytest.raises(ValueError, match=rf"^{field}:"):
        lsuv.lsuv(model.apply, variables, x, **args)
