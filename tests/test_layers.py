"""Tests for ml_practical.layers: against flax.linen, numpy references and the chapter's numbers."""

import flax.linen as fnn
import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import layers

# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


class NumpyBatchNorm:
    """The chapter's Section 13.3 BatchNormLayer (forward only), in float64."""

    def __init__(self, n_features, gamma, beta, momentum=0.9, eps=1e-5):
        self.gamma, self.beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
        self.momentum, self.eps = momentum, eps
        self.running_mean = np.zeros(n_features)
        self.running_var = np.ones(n_features)

    def forward(self, z, training):
        z = np.asarray(z, np.float64)
        if training:
            mu, var = z.mean(axis=0), z.var(axis=0)
            self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
            self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        else:
            mu, var = self.running_mean, self.running_var
        return self.gamma * (z - mu) / np.sqrt(var + self.eps) + self.beta


def np_normalize(x, axes, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def bn_step(module, variables, x, train):
    """One apply; returns (output, variables with the updated batch_stats)."""
    if train:
        y, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return y, {**variables, "batch_stats": upd["batch_stats"]}
    return module.apply(variables, x, train=False), variables


def random_affine(key, features):
    k1, k2 = jax.random.split(key)
    return {"scale": 1.0 + 0.5 * jax.random.normal(k1, (features,)),
            "bias": jax.random.normal(k2, (features,))}


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------


def test_batchnorm_matches_flax_train_and_eval_after_updates():
    ours = layers.BatchNorm(momentum=0.9, epsilon=1e-5)
    ref = fnn.BatchNorm(momentum=0.9, epsilon=1e-5)
    x0 = jnp.zeros((16, 5))
    v_ours = ours.init(jax.random.key(0), x0, train=False)
    v_ours = {**v_ours, "params": random_affine(jax.random.key(1), 5)}
    # Same variable names, so flax's module reads the very same dict.
    v_ref = jax.tree.map(lambda a: a, v_ours)
    for step in range(5):
        x = 3.0 + 2.0 * jax.random.normal(jax.random.key(10 + step), (16, 5))
        y_ours, v_ours = bn_step(ours, v_ours, x, train=True)
        y_ref, upd = ref.apply(v_ref, x, use_running_average=False, mutable=["batch_stats"])
        v_ref = {**v_ref, "batch_stats": upd["batch_stats"]}
        np.testing.assert_allclose(y_ours, y_ref, atol=1e-5, rtol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(v_ours["batch_stats"][name], v_ref["batch_stats"][name],
                                   atol=1e-5, rtol=1e-5)
    # The running statistics must have moved from their 0 / 1 start towards 3 / 4.
    assert np.all(np.asarray(v_ours["batch_stats"]["mean"]) > 1.0)
    x_eval = 3.0 + 2.0 * jax.random.normal(jax.random.key(99), (7, 5))
    np.testing.assert_allclose(ours.apply(v_ours, x_eval, train=False),
                               ref.apply(v_ref, x_eval, use_running_average=True),
                               atol=1e-5, rtol=1e-5)


def test_batchnorm_matches_numpy_reference():
    ours = layers.BatchNorm()
    affine = random_affine(jax.random.key(2), 4)
    variables = {**ours.init(jax.random.key(0), jnp.zeros((8, 4)), train=False), "params": affine}
    ref = NumpyBatchNorm(4, affine["scale"], affine["bias"])
    for step in range(5):
        x = -1.0 + 0.5 * jax.random.normal(jax.random.key(step), (8, 4))
        y, variables = bn_step(ours, variables, x, train=True)
        np.testing.assert_allclose(y, ref.forward(x, training=True), atol=1e-5)
    np.testing.assert_allclose(variables["batch_stats"]["mean"], ref.running_mean, atol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["var"], ref.running_var, atol=1e-6)
    x = jax.random.normal(jax.random.key(50), (3, 4))
    np.testing.assert_allclose(ours.apply(variables, x, train=False),
                               ref.forward(x, training=False), atol=1e-5)


def test_batchnorm_chapter_worked_example():
    # Section 12.4 worked example: z = [2, 4, 6, 8] -> mu 5, var 5 -> z_hat = (z - 5) / sqrt(5).
    bn = layers.BatchNorm(epsilon=0.0)  # the chapter's eps = 0
    z = jnp.array([[2.0], [4.0], [6.0], [8.0]])
    variables = bn.init(jax.random.key(0), z, train=False)
    y, _ = bn_step(bn, variables, z, train=True)
    np.testing.assert_array_equal(np.round(np.asarray(y[:, 0]), 3),
                                  np.array([-1.342, -0.447, 0.447, 1.342], np.float32))


def test_batchnorm_exercise_b4():
    # z = [1, 3, 5, 7, 9], gamma 2, beta -1, eps = 0: mean 5, var 8, y = 2 (z - 5) / sqrt(8) - 1.
    bn = layers.BatchNorm(momentum=0.0, epsilon=0.0)  # momentum 0: running stats = batch stats
    z = jnp.array([1.0, 3.0, 5.0, 7.0, 9.0])[:, None]
    variables = bn.init(jax.random.key(0), z, train=False)
    variables = {**variables, "params": {"scale": jnp.array([2.0]), "bias": jnp.array([-1.0])}}
    y, variables = bn_step(bn, variables, z, train=True)
    np.testing.assert_allclose(variables["batch_stats"]["mean"], [5.0], rtol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["var"], [8.0], rtol=1e-6)
    expected = 2.0 * (np.array([1.0, 3.0, 5.0, 7.0, 9.0]) - 5.0) / np.sqrt(8.0) - 1.0
    np.testing.assert_allclose(y[:, 0], expected, atol=1e-5)


def test_batchnorm_two_pass_variance_survives_large_mean_where_flax_fails():
    x = 1e4 + jax.random.normal(jax.random.key(3), (256, 4), jnp.float32)
    true_var = np.asarray(x, np.float64).var(axis=0)
    ours = layers.BatchNorm(momentum=0.0)  # running var = this batch's var
    variables = ours.init(jax.random.key(0), x, train=False)
    y, variables = bn_step(ours, variables, x, train=True)
    np.testing.assert_allclose(variables["batch_stats"]["var"], true_var, rtol=0.05)
    np.testing.assert_allclose(np.asarray(y).std(axis=0), 1.0, rtol=0.05)

    # flax.linen (0.12.8, use_fast_variance=True default) uses E[x^2] - E[x]^2: x^2 ~ 1e8 has a
    # float32 spacing of 8, so the difference comes out as 0 or a multiple of 8, never ~1.
    ref = fnn.BatchNorm(momentum=0.0, epsilon=1e-5)
    _, upd = ref.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    flax_var = np.asarray(upd["batch_stats"]["var"])
    assert np.all(np.abs(flax_var - true_var) > 0.5), flax_var


def test_batchnorm_torch_compat_stores_unbiased_variance():
    m = 8
    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(4), (m, 3))
    xn = np.asarray(x, np.float64)
    compat = layers.BatchNorm(torch_compat=True)
    plain = layers.BatchNorm()
    variables = compat.init(jax.random.key(0), x, train=False)
    y_compat, v_compat = bn_step(compat, variables, x, train=True)
    y_plain, v_plain = bn_step(plain, variables, x, train=True)
    # torch: running_var = (1 - 0.1) * 1 + 0.1 * unbiased_var, starting from 1.
    unbiased = xn.var(axis=0, ddof=1)
    np.testing.assert_allclose(v_compat["batch_stats"]["var"], 0.9 * 1.0 + 0.1 * unbiased, rtol=1e-5)
    np.testing.assert_allclose(v_compat["batch_stats"]["mean"], 0.1 * xn.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(v_plain["batch_stats"]["var"], 0.9 + 0.1 * xn.var(axis=0), rtol=1e-5)
    # The normalization itself still uses the biased variance.
    np.testing.assert_allclose(y_compat, y_plain, atol=1e-6)
    np.testing.assert_allclose(y_plain, np_normalize(xn, 0, 1.0, 0.0, 1e-5), atol=1e-5)


def test_batchnorm_output_has_zero_mean_unit_variance_in_train_mode():
    # Exercise B3: with gamma 1, beta 0 the batch output has mean 0 and variance var/(var+eps) ~ 1.
    x = 7.0 + 3.0 * jax.random.normal(jax.random.key(5), (64, 6))
    bn = layers.BatchNorm()
    y, _ = bn_step(bn, bn.init(jax.random.key(0), x, train=False), x, train=True)
    y = np.asarray(y, np.float64)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=0), 1.0, atol=1e-5)


def test_batchnorm_on_conv_input_reduces_over_n_h_w():
    x = 1.0 + 2.0 * jax.random.normal(jax.random.key(6), (4, 5, 5, 3))
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    assert variables["params"]["scale"].shape == (3,)
    assert variables["batch_stats"]["mean"].shape == (3,)
    y, new = bn_step(bn, variables, x, train=True)
    xn = np.asarray(x, np.float64)
    np.testing.assert_allclose(y, np_normalize(xn, (0, 1, 2), 1.0, 0.0, 1e-5), atol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * xn.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * xn.var(axis=(0, 1, 2)),
                               atol=1e-6)
    y_ref, _ = fnn.BatchNorm(momentum=0.9, epsilon=1e-5).apply(
        variables, x, use_running_average=False, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_ref, atol=1e-5)


@pytest.mark.parametrize("torch_compat", [False, True])
def test_batchnorm_axis_name_gives_global_batch_statistics(torch_compat):
    x = 5.0 + 2.0 * jax.random.normal(jax.random.key(7), (32, 3))
    x = x * jnp.arange(32)[:, None] / 16.0  # shards with very different statistics
    kwargs = dict(torch_compat=torch_compat)
    full = layers.BatchNorm(**kwargs)
    sharded = layers.BatchNorm(axis_name="batch", **kwargs)
    variables = full.init(jax.random.key(0), x, train=True)
    variables = {**variables, "params": random_affine(jax.random.key(8), 3)}
    y_full, v_full = bn_step(full, variables, x, train=True)

    def shard_step(xs):
        return sharded.apply(variables, xs, train=True, mutable=["batch_stats"])

    y_sh, upd = jax.vmap(shard_step, axis_name="batch")(x.reshape(4, 8, 3))
    np.testing.assert_allclose(y_sh.reshape(32, 3), y_full, atol=1e-5)
    for name in ("mean", "var"):
        stats = np.asarray(upd["batch_stats"][name])  # one identical copy per shard
        np.testing.assert_allclose(stats, np.broadcast_to(v_full["batch_stats"][name], stats.shape),
                                   atol=1e-5, rtol=1e-5)
    # Sanity: a single shard's own statistics differ from the global ones.
    _, v_one = bn_step(full, variables, x[:8], train=True)
    assert not np.allclose(v_one["batch_stats"]["var"], v_full["batch_stats"]["var"], rtol=0.1)


def test_batchnorm_init_does_not_update_running_stats():
    x = 10.0 + jax.random.normal(jax.random.key(9), (16, 4))
    variables = layers.BatchNorm().init(jax.random.key(0), x, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(4))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(4))


def test_batchnorm_bfloat16_input_statistics_in_float32():
    x = (100.0 + jax.random.normal(jax.random.key(11), (64, 4))).astype(jnp.bfloat16)
    xn = np.asarray(x.astype(jnp.float32), np.float64)
    bn = layers.BatchNorm(momentum=0.0)
    variables = bn.init(jax.random.key(0), x, train=False)
    y, new = bn_step(bn, variables, x, train=True)
    assert new["batch_stats"]["mean"].dtype == jnp.float32
    # bf16 arithmetic (8-bit mantissa) would be off by ~0.4 at 100; float32 is exact to 1e-5.
    np.testing.assert_allclose(new["batch_stats"]["mean"], xn.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["var"], xn.var(axis=0), rtol=1e-4)
    assert y.dtype == jnp.float32  # bf16 input promoted with float32 params, as in flax.linen
    y16 = layers.BatchNorm(dtype=jnp.bfloat16).apply(variables, x, train=False)
    assert y16.dtype == jnp.bfloat16


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_batchnorm_rejects_bad_momentum(momentum):
    with pytest.raises(ValueError, match="momentum"):
        layers.BatchNorm(momentum=momentum)


@pytest.mark.parametrize("cls", [layers.BatchNorm, layers.LayerNorm, layers.GroupNorm,
                                 layers.InstanceNorm])
@pytest.mark.parametrize("epsilon", [-1e-5, float("inf"), float("nan")])
def test_norms_reject_negative_or_non_finite_epsilon(cls, epsilon):
    with pytest.raises(ValueError, match="epsilon.*finite number >= 0"):
        cls(epsilon=epsilon)


def test_batchnorm_epsilon_zero_is_the_worked_example_exactly():
    """Section 12.4's worked example uses eps = 0: z = [2, 4, 6, 8] -> (z - 5) / sqrt(5), and
    flax.linen.BatchNorm(epsilon=0) agrees; a constant feature then gives NaN (documented)."""
    z = jnp.array([2.0, 4.0, 6.0, 8.0])[:, None]
    bn = layers.BatchNorm(epsilon=0.0)
    y, _ = bn.apply(bn.init(jax.random.key(0), z, train=False), z, train=True,
                    mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y[:, 0]), (np.array([2, 4, 6, 8]) - 5) / np.sqrt(5),
                               rtol=1e-6)
    ref = fnn.BatchNorm(use_running_average=False, epsilon=0.0)
    y_ref, _ = ref.apply(ref.init(jax.random.key(0), z), z, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-6)
    const = jnp.ones((4, 1))
    y_const, _ = bn.apply(bn.init(jax.random.key(0), const, train=False), const, train=True,
                          mutable=["batch_stats"])
    assert np.isnan(np.asarray(y_const)).all()


@pytest.mark.parametrize("cls", [layers.LayerNorm, layers.GroupNorm, layers.InstanceNorm])
def test_per_sample_norms_with_epsilon_zero(cls):
    """eps = 0: unit variance over the normalized axes exactly (numpy), NaN on a constant input."""
    x = jax.random.normal(jax.random.key(1), (2, 3, 3, 4))
    kwargs = ({"num_groups": 2} if cls is layers.GroupNorm else
              {"axes": "all"} if cls is layers.LayerNorm else {})
    m = cls(epsilon=0.0, **kwargs)
    y = np.asarray(m.apply(m.init(jax.random.key(0), x, train=False), x, train=False), np.float64)
    xs = np.asarray(x, np.float64)
    if cls is layers.LayerNorm:
        axes = tuple(range(1, xs.ndim))
        ref = (xs - xs.mean(axes, keepdims=True)) / xs.std(axes, keepdims=True)
    elif cls is layers.InstanceNorm:
        ref = (xs - xs.mean((1, 2), keepdims=True)) / xs.std((1, 2), keepdims=True)
    else:
        g = xs.reshape(2, 3, 3, 2, 2)
        ref = ((g - g.mean((1, 2, 4), keepdims=True)) / g.std((1, 2, 4), keepdims=True)
               ).reshape(xs.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    const = jnp.ones_like(x)
    assert np.isnan(np.asarray(m.apply(m.init(jax.random.key(0), const, train=False), const,
                                       train=False))).all()


# ---------------------------------------------------------------------------------------------
# LayerNorm, GroupNorm, InstanceNorm
# ---------------------------------------------------------------------------------------------


def test_layernorm_matches_flax_and_numpy_and_ignores_train():
    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(12), (4, 3, 6))
    ln = layers.LayerNorm(epsilon=1e-5)
    variables = {"params": random_affine(jax.random.key(13), 6)}
    y_train = ln.apply(variables, x, train=True)
    y_eval = ln.apply(variables, x, train=False)
    np.testing.assert_array_equal(y_train, y_eval)
    y_ref = fnn.LayerNorm(epsilon=1e-5).apply(variables, x)
    np.testing.assert_allclose(y_train, y_ref, atol=1e-5)
    g, b = (np.asarray(variables["params"][k]) for k in ("scale", "bias"))
    np.testing.assert_allclose(y_train, np_normalize(x, -1, g, b, 1e-5), atol=1e-5)
    assert jax.tree.map(jnp.shape, ln.init(jax.random.key(0), x, train=False)) == {
        "params": {"scale": (6,), "bias": (6,)}}


@pytest.mark.parametrize("shape", [(2, 5, 5, 8), (3, 8)])
def test_groupnorm_matches_flax_and_numpy(shape):
    x = 1.0 + 2.0 * jax.random.normal(jax.random.key(14), shape)
    gn = layers.GroupNorm(num_groups=4, epsilon=1e-5)
    variables = {"params": random_affine(jax.random.key(15), 8)}
    y = gn.apply(variables, x, train=True)
    y_ref = fnn.GroupNorm(num_groups=4, epsilon=1e-5).apply(variables, x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    # numpy: view as (..., G, C/G) and reduce over all non-batch axes but the group index.
    xg = np.asarray(x, np.float64).reshape(shape[:-1] + (4, 2))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    z = np_normalize(xg, axes, 1.0, 0.0, 1e-5).reshape(shape)
    g, b = (np.asarray(variables["params"][k]) for k in ("scale", "bias"))
    np.testing.assert_allclose(y, g * z + b, atol=1e-5)


def test_groupnorm_rejects_num_groups_not_dividing_features():
    x = jnp.ones((2, 4, 4, 12))
    with pytest.raises(ValueError, match="num_groups"):
        layers.GroupNorm(num_groups=5).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="num_groups"):
        layers.GroupNorm(num_groups=0)


def test_instancenorm_equals_groupnorm_per_channel_and_numpy():
    x = -2.0 + 1.5 * jax.random.normal(jax.random.key(16), (3, 4, 5, 6))
    variables = {"params": random_affine(jax.random.key(17), 6)}
    y = layers.InstanceNorm(epsilon=1e-5).apply(variables, x, train=True)
    y_gn = layers.GroupNorm(num_groups=6, epsilon=1e-5).apply(variables, x, train=True)
    np.testing.assert_allclose(y, y_gn, atol=1e-6)
    g, b = (np.asarray(variables["params"][k]) for k in ("scale", "bias"))
    np.testing.assert_allclose(y, np_normalize(x, (1, 2), g, b, 1e-5), atol=1e-5)
    # With gamma 1, beta 0: every (sample, channel) slice has mean 0 and variance ~1.
    z = np.asarray(layers.InstanceNorm().apply({"params": {"scale": jnp.ones(6),
                                                            "bias": jnp.zeros(6)}}, x, train=False))
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(axis=(1, 2)), 1.0, atol=1e-4)


def test_instancenorm_rejects_rank2_input():
    with pytest.raises(ValueError, match="spatial"):
        layers.InstanceNorm().init(jax.random.key(0), jnp.ones((4, 3)), train=False)


def test_layernorm_axes_all_equals_groupnorm_one_group_and_numpy():
    x = 1.5 + 2.5 * jax.random.normal(jax.random.key(18), (3, 4, 5, 6))
    variables = {"params": random_affine(jax.random.key(19), 6)}
    ln = layers.LayerNorm(axes="all", epsilon=1e-5)
    assert jax.tree.map(jnp.shape, ln.init(jax.random.key(0), x, train=False)) == {
        "params": {"scale": (6,), "bias": (6,)}}  # gamma and beta per feature, as for "features"
    y = ln.apply(variables, x, train=True)
    np.testing.assert_array_equal(y, ln.apply(variables, x, train=False))
    y_gn = layers.GroupNorm(num_groups=1, epsilon=1e-5).apply(variables, x, train=True)
    np.testing.assert_allclose(y, y_gn, atol=1e-6)
    g, b = (np.asarray(variables["params"][k]) for k in ("scale", "bias"))
    np.testing.assert_allclose(y, np_normalize(x, (1, 2, 3), g, b, 1e-5), atol=1e-5)
    # Not the default: statistics over the features alone give a different output.
    y_features = layers.LayerNorm(epsilon=1e-5).apply(variables, x, train=True)
    assert not np.allclose(y, y_features, atol=1e-3)


def test_layernorm_rejects_unknown_axes():
    with pytest.raises(ValueError,
                       match=r"LayerNorm\.axes: unknown 'spatial'.*\['all', 'features'\]"):
        layers.LayerNorm(axes="spatial")


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_pure_norm_functions_equal_their_modules(affine):
    x = 0.5 + 2.0 * jax.random.normal(jax.random.key(20), (3, 4, 5, 8))
    params = random_affine(jax.random.key(21), 8) if affine else {}
    scale, bias = (params["scale"], params["bias"]) if affine else (None, None)
    kw = dict(epsilon=1e-5, use_scale=affine, use_bias=affine)
    apply = lambda module: module.apply({"params": params}, x, train=True)  # noqa: E731
    for axes in ("features", "all"):
        np.testing.assert_array_equal(layers.layer_norm(x, scale, bias, 1e-5, axes),
                                      apply(layers.LayerNorm(axes=axes, **kw)))
    np.testing.assert_array_equal(layers.layer_norm(x, scale, bias, 1e-5),
                                  apply(layers.LayerNorm(**kw)))  # default axes="features"
    for groups in (1, 4, 8):
        np.testing.assert_array_equal(layers.group_norm(x, groups, scale, bias, 1e-5),
                                      apply(layers.GroupNorm(num_groups=groups, **kw)))
    np.testing.assert_array_equal(layers.instance_norm(x, scale, bias, 1e-5),
                                  apply(layers.InstanceNorm(**kw)))


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def dropout_apply(rate, x, key, train=True):
    return layers.Dropout(rate).apply({}, x, train=train, rngs={"dropout": key})


def test_dropout_preserves_mean_and_scales_kept_units():
    rate = 0.2
    x = jnp.ones((100_000,))
    y = np.asarray(dropout_apply(rate, x, jax.random.key(0)))
    assert abs(y.mean() - 1.0) < 0.01
    kept = y[y != 0]
    np.testing.assert_array_equal(kept, np.float32(1.0) / np.float32(1.0 - rate))
    assert abs((y == 0).mean() - rate) < 0.01


def test_dropout_is_identity_in_eval_and_at_rate_zero():
    x = jax.random.normal(jax.random.key(1), (50, 7))
    np.testing.assert_array_equal(dropout_apply(0.5, x, jax.random.key(2), train=False), x)
    np.testing.assert_array_equal(dropout_apply(0.0, x, jax.random.key(2), train=True), x)
    # Eval needs no rng at all.
    np.testing.assert_array_equal(layers.Dropout(0.5).apply({}, x, train=False), x)


def test_dropout_gradient_is_mask_over_keep_prob():
    rate = 0.3
    x = 0.5 + jax.random.uniform(jax.random.key(3), (1000,))  # nonzero, so zeros mark drops
    key = jax.random.key(4)
    grad = jax.grad(lambda v: dropout_apply(rate, v, key).sum())(x)
    mask = np.asarray(dropout_apply(rate, x, key)) != 0
    np.testing.assert_array_equal(grad, mask.astype(np.float32) / np.float32(1.0 - rate))
    assert 0 < mask.sum() < mask.size


def test_dropout_variance_matches_exercise_b6():
    # Exercise B6: keep p = 0.6 (rate 0.4), constant input a: Var = a^2 (1 - p) / p.
    a, p = 3.0, 0.6
    y = np.asarray(dropout_apply(1.0 - p, jnp.full((100_000,), a), jax.random.key(5)), np.float64)
    expected = a**2 * (1 - p) / p
    assert abs(y.var() - expected) / expected < 0.03


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rejects_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match=r"rate.*\[0, 1\)"):
        layers.Dropout(rate)


def test_dropout_mask_depends_only_on_key():
    x = jnp.ones((1000,))
    a = dropout_apply(0.5, x, jax.random.key(6))
    b = dropout_apply(0.5, x, jax.random.key(6))
    c = dropout_apply(0.5, x, jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.asarray(a) != np.asarray(c)) > 0.3  # independent masks disagree ~half


def test_dropout_works_under_jit_with_bfloat16():
    x = jnp.ones((4096,), jnp.bfloat16)
    y = jax.jit(lambda v, k: dropout_apply(0.5, v, k))(x, jax.random.key(8))
    assert y.dtype == jnp.bfloat16
    assert set(np.unique(np.asarray(y, np.float32))) == {0.0, 2.0}


# The cheaper sampler: four 16-bit uniforms per Threefry-2x32 evaluation.


def test_threefry16_scales_by_the_quantized_keep_prob():
    rate = 0.2
    threshold = round(0.8 * 2**16)  # 52429: keep prob 0.80000305
    p_q = threshold / 2**16
    y = np.asarray(layers.Dropout(rate, sampler="threefry16").apply(
        {}, jnp.ones((400, 512)), train=True, rngs={"dropout": jax.random.key(0)}))
    kept = y[y != 0]
    np.testing.assert_array_equal(kept, np.float32(1.0) / np.float32(p_q))
    # Keep fraction within 4 standard errors of p_q over 204,800 units; E[y] = 1 likewise.
    se = np.sqrt(p_q * (1 - p_q) / y.size)
    assert abs((y != 0).mean() - p_q) < 4 * se
    assert abs(y.mean() - 1.0) < 4 * se / p_q


def test_threefry16_mask_follows_its_documented_layout():
    # Unit j of row i is field j % 4 of Threefry-2x32(k, (0, i * words + j // 4)), fields being
    # (hi & 0xFFFF, hi >> 16, lo & 0xFFFF, lo >> 16); computed here through jax's other entry
    # point to the cipher, which hashes the pairs (count[t], count[t + n/2]).
    rows, features, threshold = 3, 10, 30000
    words = 3  # ceil(10 / 4)
    key = jax.random.key(11)
    k = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
    m = rows * words
    counts = jnp.concatenate([jnp.zeros(m, jnp.uint32), jnp.arange(m, dtype=jnp.uint32)])
    out = np.asarray(jax.extend.random.threefry_2x32(jnp.asarray(k), counts))
    hi, lo = out[:m], out[m:]
    fields = np.stack([hi & 0xFFFF, hi >> 16, lo & 0xFFFF, lo >> 16], -1).reshape(rows, -1)
    expected = fields[:, :features] < threshold
    mask = layers._threefry16_keep_mask(key, (rows, features), threshold)
    np.testing.assert_array_equal(mask, expected)


def test_threefry16_rows_do_not_depend_on_the_batch_size():
    # Row i's mask depends only on (key, i): the first rows of a bigger batch draw the same mask,
    # so a batch split over devices draws it shard-locally.
    key = jax.random.key(2)
    small = layers._threefry16_keep_mask(key, (5, 7), 40000)
    big = layers._threefry16_keep_mask(key, (9, 7), 40000)
    np.testing.assert_array_equal(small, big[:5])


def test_threefry16_units_sharing_a_hash_are_uncorrelated():
    # Fields of one 64-bit output decide neighbouring units: their masks must be independent.
    mask = np.asarray(layers._threefry16_keep_mask(jax.random.key(4), (20_000, 8), 2**15), float)
    corr = np.corrcoef(mask.T)
    off_diagonal = corr[~np.eye(8, dtype=bool)]
    assert np.max(np.abs(off_diagonal)) < 4 / np.sqrt(20_000)


def test_threefry16_gradient_and_variance():
    rate = 0.4  # keep 0.6 -> p_q = 39322 / 65536
    p_q = round(0.6 * 2**16) / 2**16
    drop = layers.Dropout(rate, sampler="threefry16")
    key = jax.random.key(9)
    x = 0.5 + jax.random.uniform(jax.random.key(3), (1000,))
    grad = jax.grad(lambda v: drop.apply({}, v, train=True, rngs={"dropout": key}).sum())(x)
    mask = np.asarray(drop.apply({}, x, train=True, rngs={"dropout": key})) != 0
    np.testing.assert_array_equal(grad, mask.astype(np.float32) / np.float32(p_q))
    a = 3.0
    y = np.asarray(drop.apply({}, jnp.full((100_000,), a), train=True,
                              rngs={"dropout": jax.random.key(5)}), np.float64)
    expected = a**2 * (1 - p_q) / p_q
    assert abs(y.var() - expected) / expected < 0.03


def test_dropout_rejects_unknown_sampler_and_unrepresentable_rate():
    with pytest.raises(ValueError, match=r"Dropout.sampler.*\['bernoulli', 'threefry16'\]"):
        layers.Dropout(0.5, sampler="philox")
    with pytest.raises(ValueError, match="Dropout.rate"):
        layers.Dropout(1.0 - 2**-18, sampler="threefry16")
