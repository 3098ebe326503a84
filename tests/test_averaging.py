"""ml_practical.averaging: EMA and SWA against closed forms, BatchNorm recalibration against a
pass written out by hand, and exact resumption of the averages from checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import averaging, config, loop, optim
from ml_practical.models.mlp import MLP
from tests.conftest import make_tiny_dataset, tiny


def _cfg(**overrides):
    fields = dict(name="sgd", learning_rate=0.1)
    fields.update(overrides)
    return config.build(config.OptimConfig, fields)


def test_ema_of_a_known_sequence_is_its_closed_form():
    # SGD with a constant gradient g: w_t = w_0 - t lr g, and
    # ema_t = d^t w_0 + (1 - d) sum_{s=1..t} d^(t-s) w_s.
    d, lr, steps = 0.9, 0.1, 7
    tx = optim.make_optimizer(_cfg(learning_rate=lr, ema_decay=d), total_steps=steps)
    w0 = {"w": jnp.array([1.0, -2.0, 0.5])}
    g = {"w": jnp.array([0.3, 0.1, -0.2])}
    state, w = tx.init(w0), w0
    for _ in range(steps):
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
    ws = [np.asarray(w0["w"]) - t * lr * np.asarray(g["w"]) for t in range(steps + 1)]
    want = d ** steps * ws[0] + (1 - d) * sum(d ** (steps - s) * ws[s] for s in range(1, steps + 1))
    np.testing.assert_allclose(averaging.averaged_params(state, "ema")["w"], want, rtol=1e-5)
    np.testing.assert_allclose(w["w"], ws[-1], rtol=1e-6)  # the updates pass through unchanged


def test_swa_is_the_mean_of_the_snapshots_it_takes():
    # 20 steps, start at 0.5 -> step 10, every 3 steps: the weights after steps 10, 13, 16, 19.
    tx = optim.make_optimizer(_cfg(swa_start_frac=0.5, swa_every_steps=3), total_steps=20)
    rng = np.random.default_rng(0)
    w = {"w": jnp.zeros(4)}
    state, seen = tx.init(w), []
    with pytest.raises(ValueError, match="no weights yet"):
        averaging.averaged_params(state, "swa")
    for step in range(1, 21):
        g = {"w": jnp.asarray(rng.normal(size=4), jnp.float32)}
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
        seen.append(np.asarray(w["w"]))
    want = np.mean([seen[s - 1] for s in (10, 13, 16, 19)], axis=0)
    np.testing.assert_allclose(averaging.averaged_params(state, "swa")["w"], want, rtol=1e-5,
                               atol=1e-7)
    assert int(state[-1].count) == 4


def test_recalibration_is_the_mean_of_the_batch_statistics_of_a_pass_by_hand():
    model = MLP(widths=(5,), num_classes=3, norm="batch")
    x = jax.random.normal(jax.random.key(0), (4, 6, 2, 2, 1)) * 2.0 + 1.0  # 4 batches of 6
    variables = model.init(jax.random.key(1), x[0], train=False)
    params = variables["params"]
    stats = averaging.recalibrate_batch_stats(model, params, variables["batch_stats"], list(x))
    # By hand: the first BN normalizes z = x W (its Dense has no bias before BN).
    kernel = np.asarray(params["dense_0"]["kernel"])
    z = np.asarray(x).reshape(4, 6, -1) @ kernel
    np.testing.assert_allclose(stats["norm_0"]["mean"], z.mean(axis=1).mean(axis=0),
                               rtol=1e-5, atol=1e-6)
    # The layer's stored variance is the batch variance it uses (biased, this library's default);
    # averaged over the 4 batches, not the variance of the 24 rows.
    np.testing.assert_allclose(stats["norm_0"]["var"], z.var(axis=1).mean(axis=0), rtol=1e-4)
    assert not np.allclose(stats["norm_0"]["var"], z.reshape(24, -1).var(axis=0), rtol=1e-3)


def test_averaging_refusals():
    with pytest.raises(config.ConfigError, match="optim.ema_decay"):
        _cfg(ema_decay=1.0)
    with pytest.raises(ValueError, match="no EMA average"):
        averaging.averaged_params(optim.make_optimizer(_cfg()).init({"w": jnp.zeros(2)}), "ema")
    with pytest.raises(ValueError, match="total_steps"):
        optim.make_optimizer(_cfg(swa_start_frac=0.5))


def test_a_resumed_run_continues_the_average_exactly(tmp_path):
    # A run of 2 epochs against the same run resumed from its epoch-1 checkpoint (the epoch-2
    # step and the summary removed, as a run killed during epoch 2 leaves them): the EMA and the
    # SWA mean in the optimizer state are the same bits.
    import shutil

    data = make_tiny_dataset()
    cfg = tiny(**{"optim.ema_decay": 0.9, "optim.swa_start_frac": 0.25,
                  "optim.swa_every_steps": 2, "early_stopping.enabled": False,
                  "model.norm": "batch", "train.num_epochs": 2})
    straight = loop.fit(cfg, tmp_path / "a", dataset=data)
    loop.fit(cfg, tmp_path / "b", dataset=data)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "2")
    (tmp_path / "b" / "summary.json").unlink()
    resumed = loop.fit(cfg, tmp_path / "b", dataset=data)
    for kind in ("ema", "swa"):
        a = averaging.averaged_params(straight.state.opt_state, kind)
        b = averaging.averaged_params(resumed.state.opt_state, kind)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y)
    # And the EMA is not the weights themselves (it averages).
    assert not np.allclose(jax.tree.leaves(straight.state.params)[0],
                           jax.tree.leaves(averaging.averaged_params(straight.state.opt_state,
                                                                     "ema"))[0])


def test_the_loop_evaluates_and_early_stops_on_the_averaged_weights(tmp_path):
    # train.eval_weights="ema": every epoch's val metrics and the test are those of the EMA with
    # recalibrated BatchNorm statistics, recomputed here from the saved state by hand.
    from ml_practical import experiment

    data = make_tiny_dataset()
    cfg = tiny(**{"optim.ema_decay": 0.8, "train.eval_weights": "ema",
                  "train.recalibrate_batches": 3, "model.norm": "batch",
                  "train.num_epochs": 3})
    result = loop.fit(cfg, tmp_path, dataset=data)
    assert result.summary["tested_weights"] == "ema"
    exp = experiment.build_experiment(cfg, dataset=data)
    state = result.state
    params = averaging.averaged_params(state.opt_state, "ema")
    batches = [data.train_x[i * 32:(i + 1) * 32] for i in range(3)]
    stats = averaging.recalibrate_batch_stats(cfg.model, params, state.batch_stats, batches)
    test = exp.evaluate(params, stats, exp.test_split)
    assert result.summary["test/loss"] == pytest.approx(float(test["loss"]), rel=1e-6)
    last = exp.evaluate(state.params, state.batch_stats, exp.test_split)
    assert abs(float(last["loss"]) - result.summary["test/loss"]) > 1e-6  # not the last weights
    best = result.summary["best_epoch"]
    assert result.history[best - 1]["val/loss"] is not None
    with pytest.raises(config.ConfigError, match="train.eval_weights: 'swa'"):
        loop.fit(tiny(**{"train.eval_weights": "swa"}), tmp_path / "x", dataset=data)


def test_a_fresh_state_with_an_ema_can_be_donated_to_the_compiled_epoch():
    # The EMA starts as a copy of the weights: sharing their buffers made the donated epoch fail
    # ("Attempt to donate the same buffer twice").
    from ml_practical import tasks, train

    model = MLP(widths=(4,), num_classes=3, norm="none")
    tx = optim.make_optimizer(_cfg(ema_decay=0.9))
    state = train.create_train_state(model, tx, jax.random.key(0), (2, 2, 1))
    epoch = train.make_train_epoch(model, tx, task=tasks.Classification(), gather=False)
    x = jnp.zeros((2, 8, 2, 2, 1))
    y = jnp.zeros((2, 8), jnp.int32)
    new, _ = epoch(state, x, y)
    assert int(new.step) == 2
