"""Activation / gradient statistics, signal propagation, unit symmetry and recorded clipping.

Covers diagnostics sections 3-4 (`activation_stats`, `grad_norms`, `epoch_stats`, the fit logger,
`unit_spread` / `unit_symmetry`), `ml_practical.propagation` and `ml_practical.clipping`: each
number is checked against numpy, a closed form or the library's own unrecorded path.
"""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import clipping, diagnostics, initializers, models, optim, propagation, train
from tests.conftest import make_tiny_dataset, tiny_config


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
    got = diagnostics.activation_stats(model, variables, x, bins=10)
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
    s = diagnostics.activation_stats(model, {"params": params}, x, bins=0)["dense_0"]["act"]
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
    got = diagnostics.grad_norms(jax.tree.map(jnp.asarray, grads))
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
    got = diagnostics.epoch_stats(model, variables, x, labels)
    acts = diagnostics.activation_stats(model, variables, x, bins=0)
    for layer in ("dense_0", "dense_1"):
        assert got[f"stats/{layer}/act_var"] == pytest.approx(acts[layer]["act"]["var"], rel=1e-6)
        assert got[f"stats/{layer}/preact_mean"] == pytest.approx(
            acts[layer]["preact"]["mean"], rel=1e-5, abs=1e-7)
    grads = jax.jit(jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x, train=False), labels).mean()))(variables["params"])
    for module, value in diagnostics.grad_norms(grads).items():
        assert got[f"stats/{module}/grad_norm"] == pytest.approx(value, rel=1e-5)


def test_stats_logger_schedule_and_validation(small_mlp):
    model, variables, x = small_mlp
    labels = jnp.zeros(64, jnp.int32)
    log = diagnostics.make_stats_logger(model, x, labels, every=2)
    assert log(1, variables["params"], {}) == {}
    out = log(2, variables["params"], {})
    assert out["stats/time_s"] > 0 and "stats/dense_1/dead_fraction" in out
    assert diagnostics.make_stats_logger(model, x, labels, every=0)(2, None, None) == {}
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="train.stats_every"):
            diagnostics.make_stats_logger(model, x, labels, every=bad)
    with pytest.raises(ValueError, match="bins"):
        diagnostics.activation_stats(model, variables, x, bins=-3)


def test_fit_logs_stats_into_metrics_jsonl(tmp_path, tiny_dataset):
    # One epoch, so the returned (best) state is the state the epoch-1 statistics were taken on.
    cfg = tiny_config(**{"train.stats_every": 1, "train.num_epochs": 1})
    summary = train.fit(cfg, tmp_path, dataset=tiny_dataset)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    state = summary["final_state"]
    acts = diagnostics.activation_stats(
        models.make_model(cfg.model), {"params": state.params, "batch_stats": state.batch_stats},
        jnp.asarray(tiny_dataset.train_x[:diagnostics.STATS_BATCH_SIZE]), bins=0)
    assert record["stats/dense_0/act_var"] == pytest.approx(acts["dense_0"]["act"]["var"], rel=1e-5)
    assert record["stats/dense_0/dead_fraction"] == acts["dense_0"]["act"]["dead_fraction"]
    assert record["stats/head/grad_norm"] > 0


# ------------------------------------------------------------------------------------------------
# Signal propagation


def test_propagation_variance_factor_per_layer_matches_theory():
    x = jax.random.normal(jax.random.PRNGKey(0), (512, 256))
    he = propagation.propagate(jax.random.PRNGKey(1), x, depth=5, width=256, init="he_normal")
    xavier = propagation.propagate(jax.random.PRNGKey(1), x, depth=5, width=256,
                                   init="xavier_normal")
    # He: n Var(W) = 2 and E[relu(z)^2] = q / 2, so the pre-activation variance is kept.
    np.testing.assert_allclose(propagation.variance_ratios(he), 1.0, rtol=0.1)
    # Xavier on a square layer: n Var(W) = 1, so ReLU halves it per layer.
    np.testing.assert_allclose(propagation.variance_ratios(xavier), 0.5, rtol=0.1)
    # Layer 1's activation variance is q (1/2 - 1/(2 pi)) with q = 2 for He.
    assert he[0]["var"] == pytest.approx(2 * (0.5 - 1 / (2 * math.pi)), rel=0.05)
    theory = propagation.mean_field([propagation.weight_gain("he_normal", 256, 256)] * 5)
    assert [r["var"] for r in theory] == pytest.approx([2 * (0.5 - 1 / (2 * math.pi))] * 5)
    assert theory[0]["mean"] == pytest.approx(math.sqrt(2 / (2 * math.pi)))


def test_mean_field_tanh_matches_monte_carlo():
    gains = [propagation.weight_gain("xavier_normal", 100, 100)] * 3
    theory = propagation.mean_field(gains, "tanh")
    rng = np.random.default_rng(0)
    m2 = 1.0
    for row, g in zip(theory, gains):  # the recursion by sampling z ~ N(0, g E[a^2])
        a = np.tanh(math.sqrt(g * m2) * rng.standard_normal(2_000_000))
        m2 = float(np.mean(a * a))
        assert row["var"] == pytest.approx(a.var(), rel=5e-3)
    assert propagation.weight_gain("normal", 512, 512) == pytest.approx(512 * 1e-4)


def test_chapter_inputs_are_numpys_seeded_randn():
    x = propagation.chapter_inputs(42, 3, 4)
    np.random.seed(42)
    np.testing.assert_array_equal(x, np.random.randn(3, 4).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Unit symmetry (zero / constant initialization)


def test_unit_spread_is_the_max_pairwise_difference():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(7, 5)), rng.normal(size=5)
    w = np.vstack([kernel, bias])
    brute = max(np.abs(w[:, i] - w[:, j]).max() for i, j in itertools.combinations(range(5), 2))
    assert diagnostics.unit_spread(kernel, bias) == pytest.approx(brute)
    assert diagnostics.unit_spread(np.ones((3, 4))) == 0.0


def _train_steps(model, dataset, num_steps=5):
    tx = optax.adam(1e-2)
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), dataset.train_x.shape[1:])
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx))
    for i in range(num_steps):
        sl = slice(32 * i, 32 * (i + 1))
        state, _ = step(state, {"image": dataset.train_x[sl], "label": dataset.train_y[sl]})
    return state


def test_constant_init_stays_exactly_symmetric_and_dropout_breaks_it():
    ds = make_tiny_dataset()
    const = initializers.constant(0.01)
    kwargs = dict(widths=(16, 8), num_classes=3, hidden_init=const, output_init=const)
    sym = diagnostics.unit_symmetry(_train_steps(models.MLP(**kwargs), ds).params)
    for layer in ("dense_0", "dense_1"):
        assert sym[layer]["spread"] == 0.0
        assert sym[layer]["distinct_units"] == 1
        assert sym[layer]["scale"] > 0.01  # the weights did move
    sym = diagnostics.unit_symmetry(_train_steps(models.MLP(drop_rate=0.5, **kwargs), ds).params)
    for layer in ("dense_0", "dense_1"):
        assert sym[layer]["spread"] > 1e-4
        assert sym[layer]["distinct_units"] == sym[layer]["num_units"]


def test_zero_init_relu_moves_only_the_head_bias():
    # relu'(0) = 0 in JAX, and with zero hidden activations the head kernel's gradient is 0 too.
    ds = make_tiny_dataset()
    model = models.MLP(widths=(16,), num_classes=3, hidden_init="zeros", output_init="zeros")
    params = _train_steps(model, ds).params
    for leaf in (params["dense_0"]["kernel"], params["dense_0"]["bias"], params["head"]["kernel"]):
        assert not np.any(np.asarray(leaf))
    assert np.any(np.asarray(params["head"]["bias"]))


# ------------------------------------------------------------------------------------------------
# Recorded clipping


def _grads(scale):
    rng = np.random.default_rng(0)
    return {"dense_0": {"kernel": jnp.asarray(scale * rng.normal(size=(20, 10)), jnp.float32)},
            "head": {"kernel": jnp.asarray(scale * rng.normal(size=(10, 3)), jnp.float32),
                     "bias": jnp.asarray(scale * rng.normal(size=3), jnp.float32)}}


def _record(kind, tau, grads):
    t = clipping.recording_clip(kind, tau)
    out, state = t.update(grads, t.init(grads))
    return out, state


def test_global_norm_clip_keeps_the_direction():
    g = _grads(1.0)  # global norm ~ 15
    out, rec = _record("global_norm", 1.0, g)
    assert float(rec.clipped) == 1.0
    assert float(rec.cosine) == pytest.approx(1.0, abs=1e-6)
    assert float(rec.clipped_norm) == pytest.approx(1.0, rel=1e-5)
    assert float(rec.raw_norm) == pytest.approx(float(optax.tree.norm(g)), rel=1e-6)
    assert float(rec.raw_layer_norms["head"]) == pytest.approx(
        diagnostics.grad_norms(g)["head"], rel=1e-6)
    _, rec = _record("global_norm", 100.0, g)  # below the threshold: untouched
    assert float(rec.clipped) == 0.0 and float(rec.cosine) == pytest.approx(1.0, abs=1e-6)


def test_value_clip_turns_the_gradient():
    g = _grads(1.0)
    out, rec = _record("value", 0.5, g)
    raw = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(g)]).astype(np.float64)
    clipped = np.clip(raw, -0.5, 0.5)
    cos = raw @ clipped / (np.linalg.norm(raw) * np.linalg.norm(clipped))
    assert cos < 0.99
    assert float(rec.cosine) == pytest.approx(cos, rel=1e-5)
    assert float(rec.element_fraction) == pytest.approx(np.mean(np.abs(raw) > 0.5), abs=1e-7)
    assert float(rec.clipped) == 1.0
    np.testing.assert_allclose(np.asarray(out["head"]["kernel"]),
                               np.clip(np.asarray(g["head"]["kernel"]), -0.5, 0.5))
    with pytest.raises(ValueError, match="optim.clip"):
        clipping.clip_transform("norm", 1.0)


def test_recording_epoch_trains_exactly_like_the_library_optimizer():
    ds = make_tiny_dataset()
    model = models.MLP(widths=(16,), num_classes=3)
    cfg = {"name": "momentum", "learning_rate": 0.5, "clip": "value", "clip_value": 0.05}
    plain_tx = optim.make_optimizer(cfg)
    rec_tx = optax.chain(clipping.recording_clip("value", 0.05),
                         optim.make_optimizer({**cfg, "clip": "none"}))
    idx = jnp.arange(256, dtype=jnp.int32).reshape(8, 32)
    x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    key = jax.random.PRNGKey(0)
    s_plain, _ = train.make_train_epoch(model, plain_tx)(
        train.create_train_state(model, plain_tx, key, ds.train_x.shape[1:]), x, y, idx)
    s_rec, steps = clipping.make_recording_epoch(model, rec_tx)(
        train.create_train_state(model, rec_tx, key, ds.train_x.shape[1:]), x, y, idx)
    for a, b in zip(jax.tree.leaves(s_plain.params), jax.tree.leaves(s_rec.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    steps = jax.device_get(steps)
    assert steps["cosine"].shape == (8,) and steps["raw_layer_norms"]["head"].shape == (8,)
    assert np.all(steps["cosine"] <= 1.0 + 1e-6)
    summary = clipping.summarize(steps, norm_tau=1.0, value_tau=0.05)
    # Value clipping fires exactly when the largest raw entry exceeds tau.
    assert summary["clipped_fraction"] == pytest.approx(np.mean(steps["raw_max_abs"] > 0.05))
    assert summary["would_clip_value"] == summary["clipped_fraction"]
    np.testing.assert_allclose(clipping.block_means(np.arange(5.0), 2), [0.5, 2.5, 4.0])
