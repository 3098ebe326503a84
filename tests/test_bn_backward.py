"""Tests for BatchNorm's hand-written backward (chapter question C1) in ml_practical.layers."""

# Against autodiff, finite differences in float64, the chapter's own NumPy backward, and a whole
# training step.

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import config, layers, models, train

EPS = 1e-5


def _bn_loss(backward, x, params, weights, **bn_kwargs):
    """A non-linear scalar of BatchNorm's training-mode output, so dy varies across the batch."""
    bn = layers.BatchNorm(backward=backward, epsilon=EPS, **bn_kwargs)
    stats = {"mean": jnp.zeros(x.shape[-1], x.dtype), "var": jnp.ones(x.shape[-1], x.dtype)}
    y, _ = bn.apply({"params": params, "batch_stats": stats}, x, train=True,
                    mutable=["batch_stats"])
    return jnp.sum(weights[0] * y) + 0.1 * jnp.sum(weights[1] * y**3)


# Jitted (one compile per configuration) because eager flax dispatches hundreds of tiny ops.
@functools.partial(jax.jit, static_argnames=("backward", "argnums", "use_scale", "use_bias",
                                             "axis_name"))
def _bn_grad(backward, x, params, weights, *, argnums=(1, 2), **bn_kwargs):
    return jax.grad(_bn_loss, argnums=argnums)(backward, x, params, weights, **bn_kwargs)


def _inputs(shape, dtype=jnp.float32, seed=0):
    kx, kw1, kw2, kg, kb = jax.random.split(jax.random.key(seed), 5)
    c = shape[-1]
    # Per-feature offsets and scales far from (0, 1): the normalization does real work.
    x = (jax.random.normal(kx, shape, dtype) * jnp.linspace(0.5, 4.0, c, dtype=dtype)
         + jnp.linspace(-3.0, 5.0, c, dtype=dtype))
    params = {"scale": 1.0 + 0.5 * jax.random.normal(kg, (c,), dtype),
              "bias": jax.random.normal(kb, (c,), dtype)}
    weights = (jax.random.normal(kw1, shape, dtype), jax.random.normal(kw2, shape, dtype))
    return x, params, weights


@pytest.mark.parametrize("shape", [(32, 6), (4, 5, 3, 7)], ids=["2d", "4d"])
def test_manual_gradients_equal_autodiff_float32(shape):
    x, params, weights = _inputs(shape)
    grads = {b: _bn_grad(b, x, params, weights) for b in ("autodiff", "manual")}
    (dx_a, dp_a), (dx_m, dp_m) = grads["autodiff"], grads["manual"]
    scale = float(jnp.max(jnp.abs(dx_a)))
    np.testing.assert_allclose(dx_m, dx_a, rtol=1e-4, atol=1e-5 * scale)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(dp_m[name], dp_a[name], rtol=1e-4,
                                   atol=1e-5 * float(jnp.max(jnp.abs(dp_a[name]))))
    # The chapter's property of the BN input gradient: it sums to zero per feature (shifting
    # every input of a feature by the same amount does not change the output).
    np.testing.assert_allclose(jnp.sum(dx_m, axis=tuple(range(len(shape) - 1))), 0.0,
                               atol=1e-4 * scale)


def test_manual_gradients_equal_central_finite_differences_float64():
    with jax.enable_x64(True):
        x, params, weights = _inputs((6, 3), jnp.float64, seed=1)
        f = lambda x, p: _bn_loss("manual", x, p, weights, param_dtype=jnp.float64)
        dx, dp = jax.jit(jax.grad(f, argnums=(0, 1)))(x, params)
        h = 1e-6

        def central(fun, arr):
            flat = np.asarray(arr).ravel()
            out = np.empty_like(flat)
            for i in range(flat.size):
                step = np.zeros_like(flat)
                step[i] = h
                up = fun(jnp.asarray((flat + step).reshape(arr.shape)))
                down = fun(jnp.asarray((flat - step).reshape(arr.shape)))
                out[i] = (float(up) - float(down)) / (2 * h)
            return out.reshape(arr.shape)

        f_jit = jax.jit(f)
        fd_x = central(lambda v: f_jit(v, params), x)
        fd_scale = central(lambda v: f_jit(x, {**params, "scale": v}), params["scale"])
        fd_bias = central(lambda v: f_jit(x, {**params, "bias": v}), params["bias"])
        assert dx.dtype == jnp.float64
        for got, want in ((dx, fd_x), (dp["scale"], fd_scale), (dp["bias"], fd_bias)):
            rel = np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want)
            assert rel < 1e-6, rel


def _chapter_numpy_backward(z, gamma, d_out, eps):
    """The chapter's `BatchNormLayer.backward` (section 13.3), verbatim apart from names."""
    mu, var = z.mean(axis=0), z.var(axis=0)
    z_hat = (z - mu) / np.sqrt(var + eps)
    m = z.shape[0]
    std_inv = 1.0 / np.sqrt(var + eps)
    d_gamma = np.sum(d_out * z_hat, axis=0)
    d_beta = np.sum(d_out, axis=0)
    dz_hat = d_out * gamma
    dvar = np.sum(dz_hat * (z - mu) * -0.5 * (var + eps) ** (-1.5), axis=0)
    dmu = np.sum(dz_hat * -std_inv, axis=0) + dvar * np.mean(-2 * (z - mu), axis=0)
    dz = dz_hat * std_inv + dvar * 2 * (z - mu) / m + dmu / m
    return dz, d_gamma, d_beta


def test_compact_backward_equals_the_chapters_staged_numpy_backward():
    with jax.enable_x64(True):
        x, params, (dy, _) = _inputs((10, 4), jnp.float64, seed=2)
        zeros = jnp.zeros(4, jnp.float64)

        @jax.jit
        def manual_vjp(x, g, b, dy):
            _, vjp = jax.vjp(lambda *a: layers.batch_norm_train(*a, EPS), x, g, b)
            return vjp((dy, zeros, zeros))

        dx, dgamma, dbeta = manual_vjp(x, params["scale"], params["bias"], dy)
        want = _chapter_numpy_backward(np.asarray(x), np.asarray(params["scale"]),
                                       np.asarray(dy), EPS)
        for got, ref in zip((dx, dgamma, dbeta), want):
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_vjp_is_complete_for_the_mean_and_variance_outputs():
    """Cotangents on the returned batch mean and variance (zero in training) are honoured too."""
    def reference(x, g, b):
        mean = jnp.mean(x, axis=0)
        var = jnp.mean((x - mean) ** 2, axis=0)
        return (x - mean) / jnp.sqrt(var + EPS) * g + b, mean, var

    with jax.enable_x64(True):
        x, params, (dy, _) = _inputs((9, 3), jnp.float64, seed=3)
        cot = (dy, jnp.array([0.3, -1.2, 2.0]), jnp.array([-0.7, 0.5, 1.1]))
        args = (x, params["scale"], params["bias"])

        @functools.partial(jax.jit, static_argnums=0)
        def pullback(fun, args, cot):
            return jax.vjp(fun, *args)[1](cot)

        manual = lambda *a: layers.batch_norm_train(*a, EPS)
        for got, want in zip(pullback(manual, args, cot), pullback(reference, args, cot)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_manual_backward_without_scale_or_bias():
    x, _, weights = _inputs((16, 5), seed=4)
    kw = dict(use_scale=False, use_bias=False)
    g_a = _bn_grad("autodiff", x, {}, weights, argnums=1, **kw)
    g_m = _bn_grad("manual", x, {}, weights, argnums=1, **kw)
    np.testing.assert_allclose(g_m, g_a, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(g_a))))


def test_manual_backward_with_axis_name_matches_global_batch_gradient():
    """Sharded over a vmap axis, the psum'd backward gives the unsharded batch's input gradient."""
    x, params, weights = _inputs((32, 4), seed=5)

    @functools.partial(jax.jit, static_argnums=0)
    def sharded_grads(backward):
        def shard(xs, w0, w1):
            return jax.grad(_bn_loss, argnums=(1, 2))(backward, xs, params, (w0, w1),
                                                      axis_name="batch")
        split = lambda a: a.reshape(4, 8, 4)
        dx, dp = jax.vmap(shard, axis_name="batch")(split(x), *map(split, weights))
        return dx.reshape(32, 4), jax.tree.map(lambda a: a.sum(0), dp)

    dx_full, dp_full = _bn_grad("autodiff", x, params, weights)
    scale = float(jnp.max(jnp.abs(dx_full)))
    for backward in ("autodiff", "manual"):
        dx, dp = sharded_grads(backward)
        np.testing.assert_allclose(dx, dx_full, rtol=1e-4, atol=1e-5 * scale)
        for name in ("scale", "bias"):
            np.testing.assert_allclose(dp[name], dp_full[name], rtol=1e-4, atol=1e-4)


def test_running_statistics_do_not_depend_on_the_backward():
    x, params, _ = _inputs((16, 3), seed=6)
    out = {}
    for backward in ("autodiff", "manual"):
        bn = layers.BatchNorm(backward=backward)
        stats = {"mean": jnp.zeros(3), "var": jnp.ones(3)}
        y, new = jax.jit(functools.partial(bn.apply, train=True, mutable=["batch_stats"]))(
            {"params": params, "batch_stats": stats}, x)
        out[backward] = (y, new["batch_stats"])
    np.testing.assert_allclose(out["manual"][0], out["autodiff"][0], atol=1e-6)
    for name in ("mean", "var"):
        np.testing.assert_allclose(out["manual"][1][name], out["autodiff"][1][name], atol=1e-6)
    np.testing.assert_allclose(out["manual"][1]["mean"], 0.1 * np.asarray(x).mean(0), rtol=1e-5)


def test_mlp_training_step_is_the_same_with_the_manual_backward():
    kx, ky = jax.random.split(jax.random.key(7))
    batch = {"image": jax.random.normal(kx, (32, 4, 4, 1)) * 2.0 + 1.0,
             "label": jax.random.randint(ky, (32,), 0, 3)}
    tx = optax.sgd(0.5)  # SGD: params move by lr * grad, so a gradient error shows 1:1
    states = {}
    for backward in ("autodiff", "manual"):
        model = models.MLP(widths=(24, 16), num_classes=3, norm="batch", bn_backward=backward)
        state = train.create_train_state(model, tx, jax.random.key(0), (4, 4, 1))
        step = jax.jit(functools.partial(train.train_step, model=model, tx=tx))
        for _ in range(2):
            state, metrics = step(state, batch)
        states[backward] = (state, metrics)
    (s_a, m_a), (s_m, m_m) = states["autodiff"], states["manual"]
    assert float(m_a["grad_norm"]) > 0.1  # the step actually moved the parameters
    np.testing.assert_allclose(m_m["grad_norm"], m_a["grad_norm"], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(s_m.params), jax.tree.leaves(s_a.params)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(s_m.batch_stats), jax.tree.leaves(s_a.batch_stats)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bad_backward_value_raises_naming_the_field():
    with pytest.raises(ValueError, match=r"BatchNorm\.backward: unknown 'numpy'.*'autodiff', "
                                         r"'manual'"):
        layers.BatchNorm(backward="numpy")
    # The MLP checks its fields when it is built (config.check_fields), naming the model field.
    with pytest.raises(config.ConfigError, match=r"model\.bn_backward: unknown 'numpy'.*"
                                                 r"'autodiff', 'manual'"):
        models.MLP(widths=(4,), norm="batch", bn_backward="numpy")
