"""The train step and the compiled epoch / evaluation: loss falls, one compilation, step keys."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import config, experiment, models, optim, tasks, train
from tests.conftest import tiny


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_loss_falls_and_epoch_compiles_once(tiny_dataset):
    cfg = tiny(**{"optim.learning_rate": 1e-2})
    exp = experiment.build_experiment(cfg, dataset=tiny_dataset)
    state = exp.init_state()
    losses = []
    for epoch in range(1, 5):
        state, m = exp.epoch_fn(state, *exp.train_arrays, exp.batch_indices(epoch))
        losses.append(float(np.mean(m["loss"])))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 4 * exp.steps_per_epoch
    # One compilation for all epochs: same shapes, no retrace.
    assert exp.epoch_fn._cache_size() == 1
    val = exp.evaluate(state.params, state.batch_stats, exp.val_split)
    assert val["accuracy"] > 0.8


def test_evaluate_matches_a_direct_computation(tiny_dataset):
    # 64 val rows with eval batch 48 forces padding: weights must exclude the padded rows.
    cfg = tiny(**{"train.eval_batch_size": 48})
    exp = experiment.build_experiment(cfg, dataset=tiny_dataset)
    state = exp.init_state()
    state, _ = exp.epoch_fn(state, *exp.train_arrays, exp.batch_indices(1))
    got = exp.evaluate(state.params, state.batch_stats, exp.val_split)
    logits = exp.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             tiny_dataset.val_x, train=False)
    logp = jax.nn.log_softmax(logits)
    nll = -np.take_along_axis(np.asarray(logp), tiny_dataset.val_y[:, None], 1).mean()
    acc = float((np.argmax(logits, -1) == tiny_dataset.val_y).mean())
    assert got["accuracy"] == pytest.approx(acc, abs=1e-7)
    assert got["loss"] == pytest.approx(float(nll), rel=1e-5)


def test_train_step_updates_batch_stats_and_uses_step_keys():
    model = models.MLP(widths=(8,), num_classes=3, norm="batch", drop_rate=0.5)
    tx = optim.make_optimizer(config.OptimConfig(name="sgd", learning_rate=0.1))
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (5,))
    batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (16, 5)) + 3.0,
             "label": jnp.arange(16) % 3}
    s1, m1 = train.train_step(state, batch, model=model, tx=tx)
    # Running mean moved toward the batch mean by (1 - momentum) = 0.1 of the way.
    pre = batch["image"] @ state.params["dense_0"]["kernel"]
    np.testing.assert_allclose(s1.batch_stats["norm_0"]["mean"], 0.1 * pre.mean(0), rtol=1e-4,
                               atol=1e-6)
    assert int(s1.step) == 1 and float(m1["skipped"]) == 0.0
    # The same state and batch give the same step (keys come from fold_in(key, step)).
    s1b, _ = train.train_step(state, batch, model=model, tx=tx)
    assert _leaves_equal(s1.params, s1b.params)


def test_summarize_epoch_excludes_skipped_steps():
    m = {"skipped": np.array([0, 1, 0, 1]), "loss": np.array([1.0, np.nan, 3.0, np.inf]),
         "objective": np.ones(4), "accuracy": np.array([0.5, 0.0, 1.0, 0.0]),
         "grad_norm": np.array([1.0, np.nan, 2.0, np.nan])}
    out = train.summarize_epoch(m)
    assert out["train/skipped_steps"] == 2
    assert out["train/loss"] == 2.0 and out["train/accuracy"] == 0.75 and out["grad_norm"] == 1.5
    assert train.trailing_run(np.array([1, 1, 0, 1, 1, 1]), previous=2) == (4, 3)
    assert train.trailing_run(np.array([0, 0]), previous=5) == (0, 0)


def test_step_metrics_are_computed_inside_the_step():
    # An extra per-step metric sees the state before and after the step and the step's metrics.
    model = models.MLP(widths=(8,), num_classes=3)
    tx = optim.make_optimizer(config.OptimConfig(name="sgd", learning_rate=0.1))
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (5,))
    batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (16, 5)), "label": jnp.arange(16) % 3}

    def extra(old, new, metrics):
        return {"step_before": old.step, "loss_again": metrics["loss"],
                "moved": optax_norm_diff(old.params, new.params)}

    new, m = train.train_step(state, batch, model=model, tx=tx, step_metrics=extra)
    assert int(m["step_before"]) == 0
    assert float(m["loss_again"]) == float(m["loss"])
    assert float(m["moved"]) > 0
    # Without it the same step gives the same state (the hook changes no arithmetic).
    plain, _ = train.train_step(state, batch, model=model, tx=tx)
    assert _leaves_equal(new.params, plain.params)


def optax_norm_diff(a, b):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x - y)) for x, y in
                        zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def test_label_smoothing_is_the_tasks_and_changes_only_the_objective():
    model = models.MLP(widths=(8,), num_classes=3)
    tx = optim.make_optimizer(config.OptimConfig(name="sgd", learning_rate=0.1))
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (5,))
    batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (16, 5)), "label": jnp.arange(16) % 3}
    _, plain = train.train_step(state, batch, model=model, tx=tx)
    _, smooth = train.train_step(state, batch, model=model, tx=tx,
                                 task=tasks.Classification(label_smoothing=0.1))
    # "loss" is the unsmoothed NLL either way; "objective" is what the step minimized.
    assert float(plain["loss"]) == float(smooth["loss"])
    assert float(plain["objective"]) == float(plain["loss"])
    # (1 - a) NLL + a * mean over classes of -log p: the smoothed targets' cross entropy.
    logits = model.apply({"params": state.params}, batch["image"], train=True,
                         rngs={"dropout": jax.random.PRNGKey(0)})
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    want = 0.9 * float(plain["loss"]) + 0.1 * float(np.mean(-logp))
    assert float(smooth["objective"]) == pytest.approx(want, rel=1e-5)


def test_regression_epoch_and_evaluation():
    # The linear family with the regression task: full-batch steps reduce the squared error, and
    # evaluation is 1/2 mean squared error without an accuracy.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)
    model = models.Linear()
    tx = optim.make_optimizer(config.OptimConfig(name="sgd", learning_rate=0.1))
    task = tasks.Regression()
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (3,))
    epoch = train.make_train_epoch(model, tx, task=task)
    idx = jnp.tile(jnp.arange(40, dtype=jnp.int32), (200, 1))
    state, m = epoch(state, jnp.asarray(x), jnp.asarray(y), idx)
    assert "accuracy" not in m
    assert float(m["loss"][-1]) < 1e-3 * float(m["loss"][0])
    np.testing.assert_allclose(state.params["kernel"], [1.0, -2.0, 0.5], atol=1e-2)
    evaluate = train.make_evaluate(model, 16, task=task)
    got = evaluate(state.params, state.batch_stats, train.put_split(x, y, 16))
    z = x @ np.asarray(state.params["kernel"]) + float(state.params["bias"])
    assert set(got) == {"loss"}
    assert got["loss"] == pytest.approx(0.5 * np.mean((y - z) ** 2), rel=1e-4, abs=1e-9)
