"""SAM and ASAM inside `train.train_step` (`optim.sam_rho`, `optim.sam_adaptive`, `optim.sam_eta`).

References are written out here: a hand-written MLP forward whose gradient jax takes, the
perturbation eps computed by hand (numpy), and plain SGD; `optax.contrib.sam` where it computes
the same update.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import POISON, make_tiny_dataset, tiny
from ml_practical import config, experiment, loop, models, multiseed, train
from ml_practical.config import ConfigError

LR, RHO = 0.1, 0.05


def _mlp(**fields):
    return models.build_model("mlp", {"widths": (8,), "num_classes": 3, **fields})


def _batch(n=16, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.standard_normal((n, d)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 3, n), jnp.int32)}


def _state(model, tx, d=4, seed=0):
    return train.create_train_state(model, tx, jax.random.key(seed), (d,))


def _hand_loss(params, batch):
    """The MLP 4-8-3 (ReLU, no norm, no dropout) written out: mean softmax cross entropy."""
    h = jax.nn.relu(batch["image"] @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    logits = h @ params["head"]["kernel"] + params["head"]["bias"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------------- (a), (b) by hand


def test_sam_step_equals_the_hand_computation():
    """Foret et al. eq. 2: eps = rho g / ||g||_2 over all leaves; SGD on the gradient at w + eps."""
    model, tx, batch = _mlp(), optax.sgd(LR), _batch()
    state = _state(model, tx)
    w = _np(state.params)
    g = _np(jax.grad(_hand_loss)(state.params, batch))
    norm = np.sqrt(sum(np.sum(x ** 2) for x in jax.tree.leaves(g)))
    eps = jax.tree.map(lambda x: RHO * x / norm, g)
    # The ascent step has length rho exactly.
    assert np.isclose(np.sqrt(sum(np.sum(e ** 2) for e in jax.tree.leaves(eps))), RHO)
    w_adv = jax.tree.map(lambda a, e: jnp.asarray(a + e, jnp.float32), w, eps)
    g_adv = _np(jax.grad(_hand_loss)(w_adv, batch))
    expected = jax.tree.map(lambda a, b: a - LR * b, w, g_adv)

    new, metrics = train.train_step(state, batch, model=model, tx=tx, sam=train.SAM(RHO))
    _assert_trees_close(new.params, expected)
    # grad_norm stays the raw gradient's at w; sam_grad_norm is the one the optimizer got.
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["sam_grad_norm"], np.sqrt(sum(np.sum(x ** 2) for x in jax.tree.leaves(g_adv))),
        rtol=1e-5)
    # The loss is the one at w, not at w + eps.
    np.testing.assert_allclose(metrics["objective"], _hand_loss(state.params, batch), rtol=1e-6)
    # And it is not the plain step.
    plain, _ = train.train_step(state, batch, model=model, tx=tx)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(new.params)))
    assert diff > 1e-4


@pytest.mark.parametrize("eta", [0.01, 0.5])
def test_asam_step_equals_the_hand_computation(eta):
    """Kwon et al. Algorithm 1: eps = rho T^2 g / ||T g||_2, T = |w| + eta elementwise."""
    rho = 0.5
    model, tx, batch = _mlp(), optax.sgd(LR), _batch(seed=1)
    state = _state(model, tx, seed=1)
    w = _np(state.params)
    g = _np(jax.grad(_hand_loss)(state.params, batch))
    t = jax.tree.map(lambda a: np.abs(a) + eta, w)
    tg_norm = np.sqrt(sum(np.sum((ti * gi) ** 2)
                          for ti, gi in zip(jax.tree.leaves(t), jax.tree.leaves(g))))
    eps = jax.tree.map(lambda ti, gi: rho * ti ** 2 * gi / tg_norm, t, g)
    # ||T^-1 eps|| = rho: the radius in the weight-relative metric.
    scaled = np.sqrt(sum(np.sum((e / ti) ** 2)
                         for e, ti in zip(jax.tree.leaves(eps), jax.tree.leaves(t))))
    assert np.isclose(scaled, rho)
    np.testing.assert_allclose(
        jax.tree.leaves(train.sam_perturbation(jax.tree.map(jnp.float32, g), state.params,
                                               train.SAM(rho, adaptive=True, eta=eta)))[0],
        jax.tree.leaves(eps)[0], rtol=1e-5, atol=1e-8)
    w_adv = jax.tree.map(lambda a, e: jnp.asarray(a + e, jnp.float32), w, eps)
    expected = jax.tree.map(lambda a, b: a - LR * b, w, _np(jax.grad(_hand_loss)(w_adv, batch)))
    new, _ = train.train_step(state, batch, model=model, tx=tx,
                              sam=train.SAM(rho, adaptive=True, eta=eta))
    _assert_trees_close(new.params, expected)
    # ASAM's eps is not SAM's at the same rho: the bias leaves (zeros at init, T = eta) move
    # least, relative to SAM.
    sam_new, _ = train.train_step(state, batch, model=model, tx=tx, sam=train.SAM(rho))
    assert not np.allclose(sam_new.params["head"]["kernel"], new.params["head"]["kernel"],
                           rtol=1e-6, atol=1e-7)


def test_both_passes_use_the_same_dropout_mask():
    """The second pass reuses the step's dropout key: g at w + eps for the same sample of the
    network, so eps and the final gradient see the same mask."""
    model, tx, batch = _mlp(drop_rate=0.5), optax.sgd(LR), _batch(seed=7)
    state = _state(model, tx, seed=7)
    dropout_key, _ = jax.random.split(jax.random.fold_in(state.key, state.step))

    def loss(p, key):
        logits = model.apply({"params": p}, batch["image"], train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    def reference(second_key):
        g = _np(jax.grad(loss)(state.params, dropout_key))
        norm = np.sqrt(sum(np.sum(x ** 2) for x in jax.tree.leaves(g)))
        w_adv = jax.tree.map(lambda a, b: jnp.asarray(a + RHO * b / norm, jnp.float32),
                             _np(state.params), g)
        return jax.tree.map(lambda a, b: a - LR * b, _np(state.params),
                            _np(jax.grad(loss)(w_adv, second_key)))

    new, _ = train.train_step(state, batch, model=model, tx=tx, sam=train.SAM(RHO))
    _assert_trees_close(new.params, reference(dropout_key))
    other = reference(jax.random.fold_in(dropout_key, 1))  # a fresh mask: another answer
    assert not np.allclose(other["dense_0"]["kernel"], new.params["dense_0"]["kernel"],
                           rtol=1e-5, atol=1e-6)


def test_zero_gradient_gives_zero_perturbation():
    params = {"a": jnp.ones((3,)), "b": jnp.zeros((2, 2))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    for sam in (train.SAM(0.1), train.SAM(0.1, adaptive=True, eta=0.0)):
        eps = train.sam_perturbation(zeros, params, sam)
        for leaf in jax.tree.leaves(eps):
            np.testing.assert_array_equal(leaf, 0.0)


# ------------------------------------------------------------------- (c) optax.contrib.sam


def test_sam_equals_optax_contrib_sam():
    """`optax.contrib.sam(opt, chain(normalize(), sgd(rho)), sync_period=2)` is SAM with
    eps = rho g / ||g|| when each optimizer step sees one batch twice.

    optax's SAM is a wrapper around the optimizer, not a step: the gradient at w + eps needs a
    second gradient call, which optax either makes itself (opaque_mode=True: `update` gets a
    `grad_fn` and calls it sync_period - 1 = 1 time at w + eps) or leaves to the caller
    (transparent mode: every other `update` call returns the move to w + eps, and the next call,
    with the gradient there, returns the move back to w plus the outer optimizer's update). So
    one fused step here equals one opaque `update` and two transparent ones, provided that
    (1) sync_period is 2 (one ascent step; larger periods take several ascent steps), (2) the
    ascent optimizer is stateless normalized SGD with learning rate rho (reset_state then does
    nothing), (3) the grad_fn / second call uses the same batch, and nothing else in the loss
    changes between the two calls (no dropout, no BatchNorm here: optax would let BatchNorm
    update twice, which is exactly what the fused step avoids), and (4) clipping and decay are
    left out of `tx` (optax would apply an outer chain to the SAM gradient too, but a clip in
    the ascent chain has no counterpart here). The outer optimizer has momentum so that its
    state matters over the three steps compared.
    """
    model, batch = _mlp(), _batch(seed=2)
    outer = lambda: optax.sgd(LR, momentum=0.9)
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(RHO))
    state = _state(model, outer(), seed=2)
    loss = lambda p: _hand_loss(p, batch)

    opaque = optax.contrib.sam(outer(), adv, sync_period=2, opaque_mode=True)
    transparent = optax.contrib.sam(outer(), adv, sync_period=2)
    p_opq, s_opq = state.params, opaque.init(state.params)
    p_tr, s_tr = state.params, transparent.init(state.params)
    ours = state
    for _ in range(3):
        ours, _ = train.train_step(ours, batch, model=model, tx=outer(), sam=train.SAM(RHO))
        upd, s_opq = opaque.update(jax.grad(loss)(p_opq), s_opq, p_opq,
                                   grad_fn=lambda p, _: jax.grad(loss)(p))
        p_opq = optax.apply_updates(p_opq, upd)
        for _ in range(2):  # ascent call, then the outer call
            upd, s_tr = transparent.update(jax.grad(loss)(p_tr), s_tr, p_tr)
            p_tr = optax.apply_updates(p_tr, upd)
        _assert_trees_close(ours.params, p_opq)
        _assert_trees_close(ours.params, p_tr)
    # The outer optimizer states agree too (the momentum trace).
    _assert_trees_close(jax.tree.leaves(ours.opt_state), jax.tree.leaves(s_opq.opt_state))


# ------------------------------------------------------------------- (d) BatchNorm


def test_batchnorm_running_stats_come_from_the_first_pass_only():
    model = _mlp(norm="batch", bn_momentum=0.5)  # a large move, so a second update would show
    tx, batch = optax.sgd(LR), _batch(seed=3)
    state = _state(model, tx, seed=3)
    plain, _ = train.train_step(state, batch, model=model, tx=tx)
    sam_state, _ = train.train_step(state, batch, model=model, tx=tx, sam=train.SAM(0.5))
    # The SAM step keeps the first pass's statistics: those of the plain step from the same w.
    _assert_trees_close(sam_state.batch_stats, plain.batch_stats, rtol=1e-6, atol=1e-7)
    # What the discarded second pass would have given: the statistics at w + eps, a different
    # value (so the equality above is not vacuous), and a second move would have gone further.
    def loss(p):
        logits, _ = model.apply({"params": p, "batch_stats": state.batch_stats}, batch["image"],
                                train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    g = jax.grad(loss)(state.params)
    w_adv = jax.tree.map(jnp.add, state.params, train.sam_perturbation(g, state.params,
                                                                       train.SAM(0.5)))
    _, adv_vars = model.apply({"params": w_adv, "batch_stats": state.batch_stats},
                              batch["image"], train=True, mutable=["batch_stats"])
    assert not np.allclose(jax.tree.leaves(adv_vars["batch_stats"])[0],
                           jax.tree.leaves(plain.batch_stats)[0], rtol=1e-4)
    # And the parameters did take the SAM gradient.
    assert not np.allclose(sam_state.params["head"]["kernel"], plain.params["head"]["kernel"])


# ------------------------------------------------------------------- (e) the guard


class _Fragile(nn.Module):
    """A linear classifier whose logits become NaN once ||kernel||^2 passes `limit`.

    The threshold sits in a `where` on a value that is not differentiated, so below the limit
    the loss and its gradient are exactly the linear model's: finite at w, NaN at w + eps.
    """

    limit: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        kernel = self.param("kernel", nn.initializers.normal(0.1), (x.shape[-1], 3))
        blown = jax.lax.stop_gradient(jnp.sum(kernel ** 2)) > self.limit
        return x @ kernel + jnp.where(blown, jnp.nan, 0.0)


@pytest.mark.parametrize("skip", [True, False])
def test_nonfinite_second_pass_skips_the_step(skip):
    batch, tx = _batch(seed=4), optax.adam(1e-2)
    probe = _Fragile(limit=np.inf)
    state = _state(probe, tx, seed=4)
    w2 = float(jnp.sum(state.params["kernel"] ** 2))
    rho = 1.0  # much longer than ||w|| (~0.3), so w + eps lies past the limit (checked below)
    model = _Fragile(limit=w2 + 1e-3)
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, batch["image"], train=True), batch["label"]).mean())(
            state.params)
    eps = train.sam_perturbation(g, state.params, train.SAM(rho))
    assert float(jnp.sum((state.params["kernel"] + eps["kernel"]) ** 2)) > model.limit
    assert np.isfinite(float(optax.tree.norm(g)))  # the first pass is fine

    new, m = train.train_step(state, batch, model=model, tx=tx, sam=train.SAM(rho),
                              skip_nonfinite=skip)
    assert float(m["nonfinite"]) == 1.0 and np.isfinite(float(m["grad_norm"]))
    assert not np.isfinite(float(m["sam_grad_norm"]))
    assert int(new.step) == 1
    if skip:
        assert float(m["skipped"]) == 1.0
        for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                        jax.tree.leaves((new.params, new.opt_state)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        assert float(m["skipped"]) == 0.0
        assert not np.all(np.isfinite(np.asarray(new.params["kernel"])))
    # Without SAM the same step is taken: it was the second pass that failed.
    _, plain = train.train_step(state, batch, model=model, tx=tx)
    assert float(plain["nonfinite"]) == 0.0 and float(plain["skipped"]) == 0.0


def test_nonfinite_first_pass_skips_the_sam_step():
    model = _mlp(norm="batch")
    tx, batch = optax.sgd(LR), _batch(seed=5)
    state = _state(model, tx, seed=5)
    poisoned = {**batch, "image": batch["image"].at[0, 0].set(POISON)}
    new, m = train.train_step(state, poisoned, model=model, tx=tx, sam=train.SAM(RHO))
    assert float(m["skipped"]) == 1.0 and float(m["nonfinite"]) == 1.0
    for a, b in zip(jax.tree.leaves((state.params, state.batch_stats)),
                    jax.tree.leaves((new.params, new.batch_stats)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------- accumulation


def test_sam_with_accumulation_is_sam_on_the_whole_batch():
    """k micro-batches: eps from their mean gradient and the second pass over the same rows, so
    without BatchNorm the step equals k = 1 (float32 summation order aside)."""
    model, tx, batch = _mlp(), optax.sgd(LR), _batch(n=16, seed=6)
    state = _state(model, tx, seed=6)
    one, m1 = train.train_step(state, batch, model=model, tx=tx, sam=train.SAM(RHO))
    four, m4 = train.train_step(state, batch, model=model, tx=tx, sam=train.SAM(RHO),
                                grad_accum_steps=4)
    _assert_trees_close(four.params, one.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m4["sam_grad_norm"], m1["sam_grad_norm"], rtol=1e-5)
    # With BatchNorm the running statistics are the first pass's micro-batch updates.
    bn = _mlp(norm="batch")
    state = _state(bn, tx, seed=6)
    plain, _ = train.train_step(state, batch, model=bn, tx=tx, grad_accum_steps=4)
    sam_state, _ = train.train_step(state, batch, model=bn, tx=tx, grad_accum_steps=4,
                                    sam=train.SAM(RHO))
    _assert_trees_close(sam_state.batch_stats, plain.batch_stats, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------- config and wiring


def test_config_fields_default_off_and_reach_the_step(tiny_dataset):
    cfg = tiny()
    assert (cfg.optim.sam_rho, cfg.optim.sam_adaptive, cfg.optim.sam_eta) == (0.0, False, 0.01)
    assert train.SAM.from_config(cfg.optim) is None
    sam_cfg = tiny(**{"optim.sam_rho": 0.05, "optim.sam_adaptive": True,
                      "optim.sam_eta": 0.1, "train.num_epochs": 1})
    assert train.SAM.from_config(sam_cfg.optim) == train.SAM(0.05, True, 0.1)
    assert config.to_dict(sam_cfg)["optim"]["sam_rho"] == 0.05
    mesh = train.make_mesh(1)
    placement = experiment.input_pipeline.resolve_placement(cfg.data, 0)
    key = lambda c: experiment.program_key(c, tiny_dataset, mesh, 10, placement, None, False)
    assert key(cfg) != key(sam_cfg)
    exp = experiment.build_experiment(sam_cfg, dataset=tiny_dataset)
    _, steps = exp.run_epoch(exp.init_state(), 1)
    assert "sam_grad_norm" in steps and np.all(np.isfinite(steps["sam_grad_norm"]))
    record = train.summarize_epoch(steps)
    assert record["sam_grad_norm"] > 0 and "train/sam_grad_norm" not in record
    plain = {k: v for k, v in steps.items() if k != "sam_grad_norm"}
    assert "sam_grad_norm" not in train.summarize_epoch(plain)


def test_fit_logs_the_sam_gradient_norm(tmp_path, tiny_dataset):
    cfg = tiny(**{"optim.sam_rho": 0.05, "train.num_epochs": 2})
    result = loop.fit(cfg, tmp_path, dataset=tiny_dataset)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["sam_grad_norm"] > 0 and r["grad_norm"] > 0 for r in records)
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["sam_rho"] == 0.05
    assert np.isfinite(result.summary["test/accuracy"])


def test_host_streaming_and_the_replay_guard_run_sam_like_device(tiny_dataset):
    """A poisoned row under the default replay guard: the epoch is replayed guarded and the
    host-streamed SAM epoch gives the device-resident one's state and metrics."""
    train_x = np.array(tiny_dataset.train_x)
    train_x[7] = POISON
    dataset = dataclasses.replace(tiny_dataset, train_x=train_x)
    out = {}
    for placement in ("device", "host"):
        cfg = tiny(**{"data.placement": placement, "data.chunk_steps": 4, "optim.sam_rho": 0.05})
        assert cfg.train.guard == "replay"
        exp = experiment.build_experiment(cfg, dataset=dataset)
        out[placement] = exp.run_epoch(exp.init_state(), 1)
    (d_state, d_m), (h_state, h_m) = out["device"], out["host"]
    for a, b in zip(jax.tree.leaves(d_state), jax.tree.leaves(h_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert set(d_m) == set(h_m) and "sam_grad_norm" in h_m
    assert int(h_m["skipped"].sum()) == 1  # row 7 is drawn once per epoch
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(h_state.params))


@pytest.mark.parametrize("field, value, message", [
    ("sam_rho", -0.1, "optim.sam_rho: -0.1"),
    ("sam_eta", -1.0, "optim.sam_eta: -1.0"),
    ("sam_adaptive", "yes", "optim.sam_adaptive: 'yes'"),
])
def test_config_check_refuses_bad_values_in_one_line(field, value, message):
    raw = {"optim": {"name": "sgd", "learning_rate": 0.1, "sam_rho": 0.05, field: value}}
    with pytest.raises(ConfigError, match=message) as err:
        config.parse(raw)
    assert "\n" not in str(err.value)


def test_adaptive_without_a_radius_is_refused():
    with pytest.raises(ConfigError) as err:
        tiny(**{"optim.sam_adaptive": True})
    assert str(err.value).startswith("optim.sam_adaptive: True needs optim.sam_rho > 0")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------- (f) vmapped seeds


def test_vmapped_seeds_equal_separate_runs():
    # The tiny recipe (BatchNorm, dropout 0.2, L2, clipping, smoothing) with SAM.
    seeds = [0, 1]
    cfg = tiny(**{"optim.sam_rho": 0.05})
    group = multiseed.build_seed_group(cfg, seeds, dataset=make_tiny_dataset())
    states, metrics = group.run_epoch(group.init_states(), 1)
    assert "sam_grad_norm" in metrics
    for i, s in enumerate(seeds):
        exp = dataclasses.replace(group.exp, cfg=loop.with_seed(group.exp.cfg, s))
        state, m = exp.run_epoch(exp.init_state(), 1)
        np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["sam_grad_norm"][i], m["sam_grad_norm"], rtol=1e-4)
        mine = multiseed.take(states, i)
        _assert_trees_close(mine.params, state.params)
        _assert_trees_close(mine.batch_stats, state.batch_stats)


# ------------------------------------------------------------------- (h) sharding


def test_sam_on_four_devices_matches_one_device(tmp_path):
    """tests/_dist_run.py (the sharding tests' helper, 4 CPU devices in a subprocess) with SAM:
    eps's norm is over the all-reduced gradient, so the sharded step equals one device's."""
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    args = ["optim.name='momentum'", "optim.learning_rate=0.05", "model.norm='batch'",
            "optim.sam_rho=0.05"]
    done = subprocess.run([sys.executable, str(root / "tests" / "_dist_run.py"), str(tmp_path),
                           *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    four = dict(np.load(tmp_path / "mesh4.npz", allow_pickle=False))
    one = dict(np.load(tmp_path / "mesh1.npz", allow_pickle=False))
    assert sorted(four) == sorted(one)
    for key in one:
        np.testing.assert_allclose(four[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["mesh4"]["all_reduce"] > 0
