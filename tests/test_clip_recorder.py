"""Tests for ml_practical.clip_recorder: recorded clip statistics, training unchanged by them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import clip_recorder, config, models, optim, train
from ml_practical.analysis import activations
from tests.conftest import make_tiny_dataset


def _grads(scale):
    rng = np.random.default_rng(0)
    return {"dense_0": {"kernel": jnp.asarray(scale * rng.normal(size=(20, 10)), jnp.float32)},
            "head": {"kernel": jnp.asarray(scale * rng.normal(size=(10, 3)), jnp.float32),
                     "bias": jnp.asarray(scale * rng.normal(size=3), jnp.float32)}}


def _record(kind, tau, grads):
    t = clip_recorder.recording_clip(kind, tau)
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
        activations.grad_norms(g)["head"], rel=1e-6)
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
        optim.clip_transform("norm", 1.0)


def test_recording_epoch_trains_exactly_like_the_library_optimizer():
    ds = make_tiny_dataset()
    model = models.MLP(widths=(16,), num_classes=3)
    cfg = {"name": "momentum", "learning_rate": 0.5, "clip": "value", "clip_value": 0.05}
    plain_tx = optim.make_optimizer(config.build(config.OptimConfig, cfg))
    rec_tx = optax.chain(clip_recorder.recording_clip("value", 0.05),
                         optim.make_optimizer(config.build(config.OptimConfig,
                                                           {**cfg, "clip": "none"})))
    idx = jnp.arange(256, dtype=jnp.int32).reshape(8, 32)
    x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    key = jax.random.PRNGKey(0)
    s_plain, _ = train.make_train_epoch(model, plain_tx)(
        train.create_train_state(model, plain_tx, key, ds.train_x.shape[1:]), x, y, idx)
    s_rec, steps = train.make_train_epoch(model, rec_tx, step_metrics=clip_recorder.step_metrics)(
        train.create_train_state(model, rec_tx, key, ds.train_x.shape[1:]), x, y, idx)
    for a, b in zip(jax.tree.leaves(s_plain.params), jax.tree.leaves(s_rec.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    steps = jax.device_get(steps)
    assert steps["cosine"].shape == (8,) and steps["raw_layer_norms"]["head"].shape == (8,)
    assert np.all(steps["cosine"] <= 1.0 + 1e-6)
    summary = clip_recorder.summarize_records(steps, norm_tau=1.0, value_tau=0.05)
    # Value clipping fires exactly when the largest raw entry exceeds tau.
    assert summary["clipped_fraction"] == pytest.approx(np.mean(steps["raw_max_abs"] > 0.05))
    assert summary["would_clip_value"] == summary["clipped_fraction"]


@pytest.mark.parametrize("clip, tau", [("value", 0.05), ("global_norm", 1.0)])
def test_make_optimizer_record_clip_updates_bit_identically(clip, tau):
    o = config.OptimConfig(name="momentum", learning_rate=0.1, clip=clip, clip_value=tau, l2=1e-3)
    plain_tx = optim.make_optimizer(o)
    rec_tx = optim.make_optimizer(o, record_clip=True)
    params = _grads(0.3)
    plain_params, rec_params = params, params
    plain_state, rec_state = plain_tx.init(params), rec_tx.init(params)
    plain_update, rec_update = jax.jit(plain_tx.update), jax.jit(rec_tx.update)
    # Raw max |g| ~ 3 s and global norm ~ 15 s: steps 1 and 3 clip under both kinds, 2 and 4 do not.
    scales = (1.0, 0.005, 2.0, 0.01)
    for step, scale in enumerate(scales):
        g = jax.tree.map(lambda x: x * (1.0 + 0.1 * step), _grads(scale))
        plain_u, plain_state = plain_update(g, plain_state, plain_params)
        rec_u, rec_state = rec_update(g, rec_state, rec_params)
        for a, b in zip(jax.tree.leaves(plain_u), jax.tree.leaves(rec_u)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        plain_params = optax.apply_updates(plain_params, plain_u)
        rec_params = optax.apply_updates(rec_params, rec_u)
        record = clip_recorder.find_record(rec_state)
        assert isinstance(record, clip_recorder.ClipRecord)
        assert isinstance(rec_state[0], clip_recorder.ClipRecord)   # the chain's clip slot
        assert float(record.clipped) == (1.0 if step % 2 == 0 else 0.0)
        assert float(record.raw_norm) == pytest.approx(float(optax.tree.norm(g)), rel=1e-6)
        # The rest of the chain (L2, momentum, learning rate) carries the same state.
        for a, b in zip(jax.tree.leaves(plain_state[1:]), jax.tree.leaves(rec_state[1:])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(plain_params), jax.tree.leaves(rec_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="expected exactly one recording_clip"):
        clip_recorder.find_record(plain_state)


@pytest.mark.parametrize("clip, tau", [("value", 0.05), ("global_norm", 1.0)])
def test_record_clip_epoch_trains_bit_identically(clip, tau):
    # The loop's path: one compiled epoch with the record read by `step_metrics`.
    ds = make_tiny_dataset()
    model = models.MLP(widths=(16,), num_classes=3)
    o = config.OptimConfig(name="momentum", learning_rate=0.5, clip=clip, clip_value=tau)
    idx = jnp.arange(256, dtype=jnp.int32).reshape(8, 32)
    x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    key = jax.random.PRNGKey(0)
    plain_tx, rec_tx = optim.make_optimizer(o), optim.make_optimizer(o, record_clip=True)
    s_plain, _ = train.make_train_epoch(model, plain_tx)(
        train.create_train_state(model, plain_tx, key, ds.train_x.shape[1:]), x, y, idx)
    s_rec, steps = train.make_train_epoch(model, rec_tx, step_metrics=clip_recorder.step_metrics)(
        train.create_train_state(model, rec_tx, key, ds.train_x.shape[1:]), x, y, idx)
    for a, b in zip(jax.tree.leaves(s_plain.params), jax.tree.leaves(s_rec.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(clip_recorder.find_record(s_rec.opt_state), clip_recorder.ClipRecord)
    steps = jax.device_get(steps)
    raw = steps["raw_max_abs"] if clip == "value" else steps["raw_norm"]
    np.testing.assert_array_equal(steps["clipped"], (raw > tau).astype(np.float32))
    assert 0 < steps["clipped"].sum() < 8      # the epoch has clipped and unclipped steps


def test_summary_counts_guard_skipped_steps_as_nonfinite():
    # Step 2 was skipped by the non-finite guard: its record repeats step 1's (finite) values.
    steps = {"raw_norm": np.array([2.0, 3.0, 3.0, np.inf, 0.5]),
             "raw_max_abs": np.array([0.1, 0.2, 0.2, np.inf, 0.01]),
             "cosine": np.array([1.0, 0.9, 0.9, np.nan, 0.8]),
             "clipped": np.array([1, 1, 1, 0, 0]),
             "element_fraction": np.array([0.1, 0.2, 0.2, 0.0, 0.0]),
             "skipped": np.array([0, 0, 1, 0, 0])}
    s = clip_recorder.summarize_records(steps, norm_tau=1.0)
    assert s["steps"] == 5 and s["nonfinite_steps"] == 2
    assert s["cosine_mean"] == pytest.approx((1.0 + 0.9 + 0.8) / 3)
    assert s["clipped_fraction"] == pytest.approx(2 / 3)
    assert s["would_clip_global_norm"] == pytest.approx(2 / 3)
    del steps["skipped"]  # without the flag the repeat is (wrongly, but by contract) a measurement
    assert clip_recorder.summarize_records(steps)["nonfinite_steps"] == 1
