"""Tests for ml_practical.optim: the chain against optax and the chapter's update equations."""

import math
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ml_practical import config, losses, optim


def _cfg(**overrides):
    """An `OptimConfig` built (and checked) from plain SGD at lr 0.1 plus `overrides`."""
    fields = dict(name="sgd", learning_rate=0.1)
    fields.update(overrides)
    return config.build(config.OptimConfig, fields)


def _params():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    return {
        "Dense_0": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jax.random.normal(k2, (4,))},
        "BatchNorm_0": {"scale": 1.0 + 0.1 * jax.random.normal(k3, (4,)), "bias": jax.random.normal(k4, (4,))},
    }


def _grads(seed, scale=1.0):
    leaves, treedef = jax.tree.flatten(_params())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, w.shape) for k, w in zip(keys, leaves)])


def _run(tx, params, grads_seq):
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


# --------------------------------------------------------------------------- reference equality


@pytest.mark.parametrize(
    "overrides, reference",
    [
        (dict(name="sgd"), optax.sgd(0.1)),
        (dict(name="momentum", momentum=0.8), optax.sgd(0.1, momentum=0.8)),
        (dict(name="adam", b1=0.8, b2=0.99, eps=1e-6), optax.adam(0.1, b1=0.8, b2=0.99, eps=1e-6)),
    ],
)
def test_plain_optimizers_equal_optax(overrides, reference):
    grads_seq = [_grads(s) for s in range(4)]
    got = _run(optim.make_optimizer(_cfg(**overrides)), _params(), grads_seq)
    want = _run(reference, _params(), grads_seq)
    assert _max_diff(got, want) < 1e-6


def test_config_may_be_built_from_dict_configdict_or_fields():
    grads_seq = [_grads(s) for s in range(3)]
    fields = dict(name="momentum", learning_rate=0.05, weight_decay=0.01)
    want = _run(optim.make_optimizer(config.build(config.OptimConfig,
                                                  ml_collections.ConfigDict(fields))),
                _params(), grads_seq)
    for cfg in (config.build(config.OptimConfig, fields), config.OptimConfig(**fields)):
        assert _max_diff(_run(optim.make_optimizer(cfg), _params(), grads_seq), want) == 0.0
    # The library takes the typed section only: a raw mapping or attribute object is refused.
    for raw in (fields, ml_collections.ConfigDict(fields), types.SimpleNamespace(**fields)):
        with pytest.raises(TypeError, match="OptimConfig"):
            optim.make_optimizer(raw)


def test_sgd_coupled_l2_equals_decoupled_decay_and_chapter_update():
    lr, lam = 0.1, 0.3
    params, grads = _params(), _grads(1)
    coupled = _run(optim.make_optimizer(_cfg(learning_rate=lr, l2=lam)), params, [grads])
    decoupled = _run(optim.make_optimizer(_cfg(learning_rate=lr, weight_decay=lam)), params, [grads])
    # Chapter 12.2.2: w <- w - lr * (g + lambda * w) on kernels; biases/scales get the plain step.
    w, g = np.asarray(params["Dense_0"]["kernel"]), np.asarray(grads["Dense_0"]["kernel"])
    np.testing.assert_allclose(coupled["Dense_0"]["kernel"], w - lr * (g + lam * w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(decoupled["Dense_0"]["kernel"], w - lr * (g + lam * w), rtol=1e-6, atol=1e-7)
    b, gb = np.asarray(params["Dense_0"]["bias"]), np.asarray(grads["Dense_0"]["bias"])
    np.testing.assert_allclose(coupled["Dense_0"]["bias"], b - lr * gb, rtol=1e-6, atol=1e-7)
    assert _max_diff(coupled, decoupled) < 1e-6


def test_adamw_equals_optax_adamw_with_mask_and_schedule():
    cfg = _cfg(name="adamw", learning_rate=0.01, weight_decay=0.05, schedule="warmup_cosine", warmup_steps=2)
    total = 8
    grads_seq = [_grads(s) for s in range(6)]
    got = _run(optim.make_optimizer(cfg, total_steps=total), _params(), grads_seq)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.01, warmup_steps=2, decay_steps=total, end_value=0.0)
    want = _run(optax.adamw(schedule, weight_decay=0.05, mask=losses.default_mask), _params(), grads_seq)
    assert _max_diff(got, want) < 1e-6


def test_adam_with_coupled_l2_differs_from_adamw():
    grads_seq = [_grads(s) for s in range(5)]
    l2_run = _run(optim.make_optimizer(_cfg(name="adam", learning_rate=0.01, l2=0.5)), _params(), grads_seq)
    wd_run = _run(optim.make_optimizer(_cfg(name="adamw", learning_rate=0.01, weight_decay=0.5)), _params(), grads_seq)
    # Adam normalizes the coupled l2 * w away with the gradient; AdamW applies lr * wd * w untouched.
    diff = float(jnp.max(jnp.abs(l2_run["Dense_0"]["kernel"] - wd_run["Dense_0"]["kernel"])))
    assert diff > 1e-3
    # Biases are outside the mask, so both runs are plain Adam there.
    assert float(jnp.max(jnp.abs(l2_run["Dense_0"]["bias"] - wd_run["Dense_0"]["bias"]))) < 1e-7


# --------------------------------------------------------------------------- clipping (chapter 12.7)


def _clipped(grads, **overrides):
    """With plain SGD at lr=1 the update is exactly -(clipped gradient)."""
    tx = optim.make_optimizer(_cfg(learning_rate=1.0, **overrides))
    updates, _ = tx.update(grads, tx.init(_params()), _params())
    return jax.tree.map(lambda u: -u, updates)


def test_global_norm_clipping_caps_norm_and_keeps_direction():
    tau = 1.0
    grads = _grads(3, scale=5.0)
    assert float(optax.tree.norm(grads)) > tau
    clipped = _clipped(grads, clip="global_norm", clip_value=tau)
    assert float(optax.tree.norm(clipped)) <= tau + 1e-6
    g, c = _flat(grads), _flat(clipped)
    cosine = float(g @ c / (jnp.linalg.norm(g) * jnp.linalg.norm(c)))
    assert abs(cosine - 1.0) < 1e-6
    # The chapter's numpy clip_by_norm.
    np.testing.assert_allclose(c, np.asarray(g) * tau / np.linalg.norm(np.asarray(g)), rtol=1e-5)


def test_global_norm_clipping_leaves_small_gradients_unchanged():
    grads = _grads(4)
    grads = jax.tree.map(lambda g: 0.5 * g / optax.tree.norm(grads), grads)  # norm 0.5 < tau
    clipped = _clipped(grads, clip="global_norm", clip_value=1.0)
    np.testing.assert_allclose(_flat(clipped), _flat(grads), rtol=1e-6)


def test_value_clipping_bounds_entries_and_changes_direction():
    tau = 0.5
    grads = _grads(5, scale=2.0)
    clipped = _clipped(grads, clip="value", clip_value=tau)
    g, c = _flat(grads), _flat(clipped)
    assert float(jnp.max(jnp.abs(c))) <= tau
    np.testing.assert_array_equal(c, np.clip(np.asarray(g), -tau, tau))
    cosine = float(g @ c / (jnp.linalg.norm(g) * jnp.linalg.norm(c)))
    assert cosine < 1.0 - 1e-3


# --------------------------------------------------------------------------- L1: subgradient vs proximal


def _lasso_run(l1_mode, steps=400):
    """SGD on least squares with a 3-sparse truth in 20 dims; returns the learnt kernel."""
    kx, kw, kn = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(kx, (200, 20))
    w_true = jnp.zeros((20, 1)).at[:3, 0].set(jnp.array([2.0, -1.5, 1.0]))
    y = x @ w_true + 0.1 * jax.random.normal(kn, (200, 1))
    params = {"kernel": 0.5 * jax.random.normal(kw, (20, 1))}
    tx = optim.make_optimizer(_cfg(learning_rate=0.05, l1=0.1, l1_mode=l1_mode))

    def step(carry, _):
        p, s = carry
        grads = jax.grad(lambda q: 0.5 * jnp.mean((x @ q["kernel"] - y) ** 2))(p)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return np.asarray(params["kernel"][:, 0])


def test_proximal_l1_gives_exact_zeros_where_subgradient_does_not():
    prox, sub = _lasso_run("proximal"), _lasso_run("subgradient")
    assert int((prox == 0.0).sum()) >= 15  # of the 17 zero coefficients (17 on CPU at this seed)
    assert np.all(prox[:3] != 0.0)  # the true support survives
    assert int((sub == 0.0).sum()) <= 1  # the subgradient only oscillates around 0
    assert np.all(np.abs(sub[3:]) < 0.05)  # ...though it does get close


def test_proximal_step_equals_soft_threshold():
    lr, l1 = 0.1, 0.5  # threshold lr * l1 = 0.05
    params = {
        "kernel": jnp.array([[0.3, -0.3, 0.02, -0.02], [0.06, 0.0, 1.0, -0.049]]),
        "bias": jnp.array([0.01, -0.01]),
    }
    grads = {"kernel": jnp.array([[1.0, -1.0, 0.1, 0.1], [0.0, 0.2, -2.0, 0.0]]), "bias": jnp.array([0.5, 0.5])}
    tx = optim.make_optimizer(_cfg(learning_rate=lr, l1=l1, l1_mode="proximal"))
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    w, g = np.asarray(params["kernel"]), np.asarray(grads["kernel"])
    z = w - np.float32(lr) * g
    want = np.sign(z) * np.maximum(np.abs(z) - np.float32(lr) * np.float32(l1), np.float32(0.0))
    # Bit-equal on CPU (eager float32 ops, no fusion): zeros are exact zeros, not merely small.
    np.testing.assert_array_equal(new["kernel"], want)
    assert int((want == 0.0).sum()) == 4
    # The bias is outside the default mask: plain SGD, no threshold (0.01 - 0.05 stays nonzero).
    np.testing.assert_allclose(new["bias"], params["bias"] - lr * grads["bias"], rtol=1e-6)


def test_l1_subgradient_step_equals_chapter_update():
    lr, l1 = 0.1, 0.5
    params, grads = _params(), _grads(2)
    new = _run(optim.make_optimizer(_cfg(learning_rate=lr, l1=l1)), params, [grads])
    w, g = np.asarray(params["Dense_0"]["kernel"]), np.asarray(grads["Dense_0"]["kernel"])
    # Chapter 12.2.3: w <- w - lr * (g + l1 * sign(w)).
    np.testing.assert_allclose(new["Dense_0"]["kernel"], w - lr * (g + l1 * np.sign(w)), rtol=1e-6, atol=1e-7)


def test_custom_transforms_respect_explicit_masks():
    params = {"kernel": jnp.array([0.5, -0.5]), "bias": jnp.array([0.5, -0.02])}
    grads = jax.tree.map(jnp.zeros_like, params)
    sub = optim.add_l1_subgradient(0.3, mask={"kernel": False, "bias": True})
    updates, _ = sub.update(grads, sub.init(params), params)
    np.testing.assert_array_equal(updates["kernel"], [0.0, 0.0])
    np.testing.assert_allclose(updates["bias"], [0.3, -0.3])
    prox = optim.proximal_l1(0.3, 0.1, mask=losses.all_mask)  # threshold 0.03
    updates, _ = prox.update(grads, prox.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], [0.47, -0.47], rtol=1e-6)
    np.testing.assert_array_equal(new["bias"][1], 0.0)


def test_custom_transforms_require_params():
    for tx in (optim.add_l1_subgradient(0.1), optim.proximal_l1(0.1, 0.1)):
        with pytest.raises(ValueError, match="params"):
            tx.update(_grads(0), tx.init(_params()))


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    "overrides",
    [
        dict(l2=0.2),
        dict(weight_decay=0.2),
        dict(l1=0.2),
        dict(l1=0.2, l1_mode="proximal"),
        dict(name="adamw", weight_decay=0.2),
    ],
)
def test_decay_touches_kernels_only(overrides):
    params = _params()
    zero = jax.tree.map(jnp.zeros_like, params)
    new = _run(optim.make_optimizer(_cfg(**overrides)), params, [zero])
    for module, name in [("Dense_0", "bias"), ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias")]:
        np.testing.assert_array_equal(new[module][name], params[module][name])
    # Zero data gradient: the kernel can only move toward zero, and must move.
    old_k, new_k = np.abs(params["Dense_0"]["kernel"]), np.abs(new["Dense_0"]["kernel"])
    assert np.all(new_k <= old_k) and np.all(new_k < old_k)


def test_decay_mask_all_also_decays_biases_and_scales():
    params = _params()
    zero = jax.tree.map(jnp.zeros_like, params)
    new = _run(optim.make_optimizer(_cfg(weight_decay=0.2, decay_mask="all")), params, [zero])
    for leaf_new, leaf_old in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_allclose(leaf_new, (1 - 0.1 * 0.2) * np.asarray(leaf_old), rtol=1e-6)


# --------------------------------------------------------------------------- schedules


def test_warmup_cosine_schedule_values():
    cfg = _cfg(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=10, end_lr_factor=0.1)
    sched = optim.make_schedule(cfg, total_steps=110)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(sched(5), 0.5, rtol=1e-6)
    np.testing.assert_allclose(sched(10), 1.0, rtol=1e-6)
    # Halfway through the cosine: end + (peak - end) * (1 + cos(pi / 2)) / 2.
    np.testing.assert_allclose(sched(60), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)), rtol=1e-5)
    np.testing.assert_allclose(sched(110), 0.1, rtol=1e-5)
    np.testing.assert_allclose(optim.learning_rate_at(cfg, 110, 200), 0.1, rtol=1e-5)


def test_constant_schedule_with_warmup():
    cfg = _cfg(learning_rate=0.2, warmup_steps=4)
    assert optim.learning_rate_at(cfg, None, 0) == 0.0
    np.testing.assert_allclose(optim.learning_rate_at(cfg, None, 2), 0.1, rtol=1e-6)
    np.testing.assert_allclose(optim.learning_rate_at(cfg, None, 1000), 0.2, rtol=1e-6)
    assert optim.learning_rate_at(_cfg(learning_rate=0.2), None, 7) == pytest.approx(0.2)


def test_first_warmup_step_does_not_move_params():
    cfg = _cfg(name="momentum", schedule="warmup_cosine", warmup_steps=3, weight_decay=0.1, l1=0.1, l1_mode="proximal")
    params = _params()
    new = _run(optim.make_optimizer(cfg, total_steps=10), params, [_grads(0)])
    assert _max_diff(new, params) == 0.0  # lr_0 = 0 for the optimizer, the decay and the threshold alike


def test_warmup_cosine_requires_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        optim.make_optimizer(_cfg(schedule="warmup_cosine"))
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        optim.make_schedule(_cfg(schedule="warmup_cosine", warmup_steps=10), total_steps=10)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("name", "rmsprop", "['adam', 'adamw', 'momentum', 'sgd']"),
        ("schedule", "linear", "['constant', 'one_cycle', 'step', 'warmup_cosine']"),
        ("clip", "norm", "['adaptive', 'global_norm', 'none', 'value']"),
        ("l1_mode", "lasso", "['proximal', 'subgradient']"),
        ("decay_mask", "biases", "['all', 'kernels']"),
        ("learning_rate", 0.0, "expected a number > 0"),
        ("learning_rate", -1e-3, "expected a number > 0"),
        ("learning_rate", "0.1", "expected a number > 0"),
        ("l2", -0.1, "expected a number >= 0"),
        ("weight_decay", -1e-4, "expected a number >= 0"),
        ("l1", -0.5, "expected a number >= 0"),
        ("clip_value", 0.0, "expected a number > 0"),
        ("momentum", 1.0, "expected a number >= 0 and < 1"),
        ("warmup_steps", -1, "integer >= 0"),
        ("end_lr_factor", 1.5, "expected a number >= 0 and <= 1"),
    ],
)
def test_bad_config_names_field(field, value, fragment):
    with pytest.raises(config.ConfigError, match=f"optim.{field}") as err:
        optim.make_optimizer(_cfg(**{field: value}))
    assert fragment in str(err.value)


def test_missing_and_unknown_fields():
    with pytest.raises(config.ConfigError, match="optim.learning_rate: missing"):
        config.build(config.OptimConfig, {"name": "sgd"})
    with pytest.raises(config.ConfigError,
                       match=r"optim\.weight_decy: unknown field; did you mean 'weight_decay'\?"):
        optim.make_optimizer(_cfg(weight_decy=1e-4))


# --------------------------------------------------------------------------- step and one-cycle


def test_step_schedule_multiplies_at_each_boundary():
    # He et al. 2016's recipe on 1000 steps: 0.1 until step 500, 0.01 until 750, then 0.001; a
    # warmup of 100 steps rises linearly from 0 first.
    s = optim.make_schedule(_cfg(schedule="step", step_boundaries=(0.5, 0.75), step_factor=0.1),
                            total_steps=1000)
    got = [float(s(t)) for t in (0, 499, 500, 749, 750, 999)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3], rtol=1e-6)
    w = optim.make_schedule(_cfg(schedule="step", warmup_steps=100), total_steps=1000)
    np.testing.assert_allclose([float(w(t)) for t in (0, 50, 100, 600, 800)],
                               [0.0, 0.05, 0.1, 0.01, 1e-3], rtol=1e-6)


def test_one_cycle_matches_its_equations():
    # Smith & Topin's cosine one-cycle: lr/div at 0, lr at pct * T, lr/(div*final) at T; between,
    # half-cosine interpolation.
    lr, div, final, pct, total = 0.1, 25.0, 1e4, 0.3, 1000
    s = optim.make_schedule(_cfg(schedule="one_cycle", onecycle_pct_start=pct,
                                 onecycle_div_factor=div, onecycle_final_div_factor=final),
                            total_steps=total)
    start, end, peak_t = lr / div, lr / (div * final), int(pct * total)

    def cos(a, b, frac):
        return b + (a - b) * (1 + np.cos(np.pi * frac)) / 2

    for t in (0, 100, peak_t, 500, 999, 1000):
        want = (cos(start, lr, t / peak_t) if t <= peak_t
                else cos(lr, end, (t - peak_t) / (total - peak_t)))
        assert float(s(t)) == pytest.approx(want, rel=1e-4, abs=1e-8), t  # float32 cos


def test_new_schedules_refuse_bad_settings():
    with pytest.raises(config.ConfigError, match="optim.step_boundaries"):
        _cfg(schedule="step", step_boundaries=(0.75, 0.5))
    with pytest.raises(config.ConfigError, match="optim.warmup_steps"):
        _cfg(schedule="one_cycle", warmup_steps=10)
    with pytest.raises(ValueError, match="'step' needs total_steps"):
        optim.make_schedule(_cfg(schedule="step"))
