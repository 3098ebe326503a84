"""The train step and fit(): loss falls, one compilation, bit-identical reruns, run files, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import models, optim, train
from tests.conftest import tiny_config


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_loss_falls_and_epoch_compiles_once(tiny_dataset):
    cfg = tiny_config(**{"optim.learning_rate": 1e-2})
    exp = train.build_experiment(cfg, dataset=tiny_dataset)
    state = exp.init_state()
    losses = []
    for epoch in range(1, 5):
        state, m = exp.train_epoch(state, *exp.train_arrays, exp.batch_indices(epoch))
        losses.append(float(np.mean(m["loss"])))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 4 * exp.steps_per_epoch
    # One compilation for all epochs: same shapes, no retrace.
    assert exp.train_epoch._cache_size() == 1
    val = exp.evaluate(state.params, state.batch_stats, exp.val_split)
    assert val["accuracy"] > 0.8


def test_evaluate_matches_a_direct_computation(tiny_dataset):
    # 64 val rows with eval batch 48 forces padding: weights must exclude the padded rows.
    cfg = tiny_config(**{"train.eval_batch_size": 48})
    exp = train.build_experiment(cfg, dataset=tiny_dataset)
    state = exp.init_state()
    state, _ = exp.train_epoch(state, *exp.train_arrays, exp.batch_indices(1))
    got = exp.evaluate(state.params, state.batch_stats, exp.val_split)
    logits = exp.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             tiny_dataset.val_x, train=False)
    logp = jax.nn.log_softmax(logits)
    nll = -np.take_along_axis(np.asarray(logp), tiny_dataset.val_y[:, None], 1).mean()
    acc = float((np.argmax(logits, -1) == tiny_dataset.val_y).mean())
    assert got["accuracy"] == pytest.approx(acc, abs=1e-7)
    assert got["loss"] == pytest.approx(float(nll), rel=1e-5)


def test_two_runs_are_bit_identical(tmp_path, tiny_dataset):
    cfg = tiny_config()
    a = train.fit(cfg, tmp_path / "a", dataset=tiny_dataset)
    b = train.fit(cfg, tmp_path / "b", dataset=tiny_dataset)
    assert _leaves_equal(a["final_state"].params, b["final_state"].params)
    assert _leaves_equal(a["final_state"].batch_stats, b["final_state"].batch_stats)
    # A different seed gives different parameters (the test above could not pass vacuously).
    c = train.fit(_with_seed(cfg, 1), tmp_path / "c", dataset=tiny_dataset)
    assert not _leaves_equal(a["final_state"].params, c["final_state"].params)


def _with_seed(cfg, seed):
    cfg = cfg.copy_and_resolve_references()
    cfg.seed = seed
    return cfg


def test_train_step_updates_batch_stats_and_uses_step_keys():
    model = models.MLP(widths=(8,), num_classes=3, norm="batch", drop_rate=0.5)
    tx = optim.make_optimizer({"name": "sgd", "learning_rate": 0.1})
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


def test_fit_writes_run_files(tmp_path, tiny_dataset):
    cfg = tiny_config()
    summary = train.fit(cfg, tmp_path, dataset=tiny_dataset)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["widths"] == [16] and saved["seed"] == 0
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    for key in ("epoch", "train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr",
                "grad_norm", "wall_time_s"):
        assert key in lines[0], key
    assert lines[0]["lr"] == pytest.approx(1e-3)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test/accuracy", "test/loss", "best_epoch", "epochs_run", "stop_reason",
                "wall_time_s"):
        assert key in on_disk, key
    assert on_disk["epochs_run"] == 3 and on_disk["stop_reason"] == "max_epochs"
    best = min(lines, key=lambda r: r["val/loss"])["epoch"]
    assert on_disk["best_epoch"] == best
    assert on_disk["test/accuracy"] == pytest.approx(summary["test/accuracy"])


@pytest.mark.parametrize("overrides,needle", [
    ({"train.batch_size": 1000}, "train.batch_size"),
    ({"train.label_smoothing": 1.0}, "train.label_smoothing"),
    ({"train.num_epochs": 0}, "train.num_epochs"),
    ({"model.num_classes": 5}, "model.num_classes"),
    ({"optim.name": "rmsprop"}, "optim.name"),
    ({"optim.l2": -1e-4}, "optim.l2"),
    ({"optim.clip_value": -1.0}, "optim.clip_value"),
    ({"model.drop_rate": 1.2}, "drop_rate"),
    ({"model.hidden_init": "glorot"}, "glorot"),
])
def test_bad_config_names_the_field(tiny_dataset, overrides, needle):
    with pytest.raises(ValueError, match=needle):
        exp = train.build_experiment(tiny_config(**overrides), dataset=tiny_dataset)
        exp.init_state()


def test_batch_must_divide_over_devices(tiny_dataset):
    mesh = train.make_mesh()
    n = mesh.devices.size
    if n == 1:
        # With one device every batch divides; check the rule on a fake 3-device count instead.
        cfg = tiny_config(**{"train.batch_size": 32})
        assert cfg.train.batch_size % 3 != 0
        with pytest.raises(ValueError, match="train.num_devices"):
            train.make_mesh(3)
    else:
        with pytest.raises(ValueError, match="does not divide"):
            train.build_experiment(tiny_config(**{"train.batch_size": n * 8 + 1}),
                                   dataset=tiny_dataset)


def test_summarize_epoch_excludes_skipped_steps():
    m = {"skipped": np.array([0, 1, 0, 1]), "loss": np.array([1.0, np.nan, 3.0, np.inf]),
         "objective": np.ones(4), "accuracy": np.array([0.5, 0.0, 1.0, 0.0]),
         "grad_norm": np.array([1.0, np.nan, 2.0, np.nan])}
    out = train.summarize_epoch(m)
    assert out["train/skipped_steps"] == 2
    assert out["train/loss"] == 2.0 and out["train/accuracy"] == 0.75 and out["grad_norm"] == 1.5
    assert train.trailing_run(np.array([1, 1, 0, 1, 1, 1]), previous=2) == (4, 3)
    assert train.trailing_run(np.array([0, 0]), previous=5) == (0, 0)
