"""Tests for ml_practical.multiseed and `loop.fit_seeds`: S seeds vmapped equal S sequential runs,
seed by seed.

Sequential references use the library's own path with `cfg.seed = s` (`loop.with_seed`;
`Experiment.init_state` / `run_epoch`, `loop.fit`). On CPU the init is bit-identical and trained
parameters agree to float32 rounding (XLA batches the vmapped matmuls, so not bit for bit: max
|diff| ~5e-7 here).
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from conftest import POISON, make_tiny_dataset, tiny
from ml_practical import data as data_lib
from ml_practical import loop, multiseed

SEEDS = [0, 1, 2]


def _sequential_experiment(group, seed):
    """The group's experiment as a sequential run of `seed` (same compiled functions)."""
    return dataclasses.replace(group.exp, cfg=loop.with_seed(group.exp.cfg, seed))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_vmapped_epochs_equal_sequential_runs_per_seed():
    # The production recipe (BatchNorm, dropout 0.2, L2, clipping, smoothing): dropout keys,
    # batch statistics and the batch order all have to follow the seed.
    cfg = tiny()
    group = multiseed.build_seed_group(cfg, SEEDS, dataset=make_tiny_dataset())
    states = group.init_states()
    inits = [_sequential_experiment(group, s).init_state() for s in SEEDS]
    for i, init in enumerate(inits):  # same key -> the very same initial state
        for x, y in zip(jax.tree.leaves(init), jax.tree.leaves(multiseed.take(states, i))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    per_epoch = []
    for epoch in (1, 2):
        states, metrics = group.run_epoch(states, epoch)
        per_epoch.append(metrics)
    for i, s in enumerate(SEEDS):
        exp, state = _sequential_experiment(group, s), inits[i]
        np.testing.assert_array_equal(np.asarray(group.batch_indices(2)[i]),
                                      np.asarray(exp.batch_indices(2)))
        for epoch in (1, 2):
            state, metrics = exp.run_epoch(state, epoch)
            np.testing.assert_allclose(per_epoch[epoch - 1]["loss"][i], metrics["loss"],
                                       rtol=1e-5)
        mine = multiseed.take(states, i)
        assert int(mine.step) == int(state.step) == 2 * exp.steps_per_epoch
        _assert_trees_close(mine.params, state.params)
        _assert_trees_close(mine.batch_stats, state.batch_stats)
        _assert_trees_close(mine.opt_state, state.opt_state)
    # Different seeds really differ (the seed axis is not broadcast by mistake).
    p = jax.tree.leaves(states.params)[0]
    assert float(np.max(np.abs(p[0] - p[1]))) > 1e-2


def test_fit_seeds_matches_fit_seed_by_seed(tmp_path):
    # lr 1e-2 and patience 1 on an overlapping 2-D problem: seed 0 stops on patience at epoch 5
    # while seeds 1 and 2 run to the 6-epoch cap, so per-seed stopping and best-state selection
    # are both exercised (the group keeps computing seed 0 after it stopped).
    dataset = make_tiny_dataset(shape=(2, 1, 1))
    cfg = tiny(**{"train.num_epochs": 6, "early_stopping.patience": 1,
                  "optim.learning_rate": 1e-2})
    results = loop.fit_seeds(cfg, SEEDS, tmp_path / "vmap", dataset=dataset)
    summaries = [r.summary for r in results]
    stops = [(s["epochs_run"], s["stop_reason"]) for s in summaries]
    assert stops == [(5, "patience"), (6, "max_epochs"), (6, "max_epochs")]
    for s, mine_result in zip(SEEDS, results):
        ref_result = loop.fit(loop.with_seed(cfg, s), tmp_path / f"seq_{s}", dataset=dataset)
        mine, ref = mine_result.summary, ref_result.summary
        for key in ("best_epoch", "epochs_run", "stop_reason", "seed", "num_params"):
            assert mine[key] == ref[key], key
        assert mine["test/accuracy"] == ref["test/accuracy"]
        assert mine["test/loss"] == pytest.approx(ref["test/loss"], rel=1e-5)
        _assert_trees_close(mine_result.state.params, ref_result.state.params)
        # The files: same config (seed included), same metric keys and values per epoch.
        mine_dir, ref_dir = loop.seed_dir(tmp_path / "vmap", s), tmp_path / f"seq_{s}"
        assert (json.loads((mine_dir / "config.json").read_text())
                == json.loads((ref_dir / "config.json").read_text()))
        rows = [json.loads(x) for x in (mine_dir / "metrics.jsonl").read_text().splitlines()]
        ref_rows = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
        assert [list(r) for r in rows] == [list(r) for r in ref_rows]
        for r, q in zip(rows, ref_rows):
            assert r["val/loss"] == pytest.approx(q["val/loss"], rel=1e-5)
            assert r["train/loss"] == pytest.approx(q["train/loss"], rel=1e-5)
            assert r["lr"] == q["lr"]
        on_disk = json.loads((mine_dir / "summary.json").read_text())
        ref_disk = json.loads((ref_dir / "summary.json").read_text())
        assert set(ref_disk) <= set(on_disk)
        assert (on_disk["seed_mode"], on_disk["seeds_together"]) == ("vmap", SEEDS)
        # Time shares: a seed's wall time is the group's divided by S.
        assert on_disk["wall_time_s"] <= on_disk["group_wall_time_s"] / len(SEEDS) + 1e-6


def test_nonfinite_step_is_replayed_guarded_for_its_seed_only():
    # 250 rows in batches of 32: 26 rows are left out of each epoch, a different 26 per seed, so
    # a NaN image lands in seed a's epoch and not in seed b's.
    dataset = make_tiny_dataset(n_train=250)
    bad = 7
    x = dataset.train_x.copy()
    x[bad] = POISON
    dataset = dataclasses.replace(dataset, train_x=x)
    seen = {s: bad in data_lib.batch_indices(s, 1, 250, 32) for s in range(40)}
    a = next(s for s, v in seen.items() if v)
    b = next(s for s, v in seen.items() if not v)
    group = multiseed.build_seed_group(tiny(), [a, b], dataset=dataset)
    states, metrics = group.run_epoch(group.init_states(), 1)
    # BatchNorm spreads the NaN over its whole batch: exactly that one step is skipped for a.
    assert metrics["skipped"].sum(axis=1).tolist() == [1.0, 0.0]
    assert metrics["nonfinite"].sum(axis=1).tolist() == [1.0, 0.0]
    for i, s in enumerate([a, b]):
        exp = _sequential_experiment(group, s)
        ref, ref_metrics = exp.run_epoch(exp.init_state(), 1)
        np.testing.assert_array_equal(metrics["skipped"][i], ref_metrics["skipped"])
        mine = multiseed.take(states, i)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(mine.params))
        _assert_trees_close(mine.params, ref.params)
        _assert_trees_close(mine.opt_state, ref.opt_state)


def test_seed_mode_and_seeds_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"seed_mode: unknown 'fast'; expected one of "
                                         r"\['auto', 'sequential', 'vmap'\]"):
        multiseed.resolve_seed_mode("fast")
    # "auto" follows the measurement: sequential on CPU, vmapped on accelerators.
    assert multiseed.resolve_seed_mode("auto", backend="cpu") == "sequential"
    assert multiseed.resolve_seed_mode("auto", backend="gpu") == "vmap"
    assert multiseed.resolve_seed_mode("auto", backend="tpu") == "vmap"
    assert multiseed.resolve_seed_mode("vmap", backend="cpu") == "vmap"
    with pytest.raises(ValueError, match="seeds: .*repeats a seed"):
        multiseed.check_seeds([0, 1, 0])
    with pytest.raises(ValueError, match="seeds: .*non-empty list of integers >= 0"):
        multiseed.check_seeds([])
    with pytest.raises(ValueError, match="seeds: .*integers >= 0"):
        multiseed.check_seeds([0, -1])
    dataset = make_tiny_dataset()
    with pytest.raises(ValueError, match=r"train.stats_every: 2; .*expected 0"):
        loop.fit_seeds(tiny(**{"train.stats_every": 2}), SEEDS, None, dataset=dataset)
    # input_pipeline: stream the training set from the host.
    host = tiny(**{"data.placement": "host"})
    with pytest.raises(ValueError, match=r"data.placement: 'host'; .*expected 'device'"):
        loop.fit_seeds(host, SEEDS, None, dataset=dataset)
    # A sequential run's checkpoints would be orphaned (and later resumed): refuse the directory.
    (loop.seed_dir(tmp_path, 1) / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"seed_1 holds checkpoints of a sequential run"):
        loop.fit_seeds(tiny(), SEEDS, tmp_path, dataset=dataset)


@pytest.mark.parametrize("kind, overrides", [
    ("ema", {"optim.ema_decay": 0.8}),
    ("swa", {"optim.swa_start_frac": 0.3, "optim.swa_every_steps": 2}),
])
def test_fit_seeds_evaluates_each_seeds_average_as_its_sequential_run_does(tmp_path, kind,
                                                                          overrides):
    # train.eval_weights under vmapped seeds: every seed's validation curve (which early
    # stopping reads), best epoch and test metrics are those of its own average, with its own
    # BatchNorm recalibration, as in the sequential run of that seed.
    dataset = make_tiny_dataset()
    cfg = tiny(**{**overrides, "train.eval_weights": kind, "train.recalibrate_batches": 2,
                  "model.norm": "batch", "train.num_epochs": 3})
    results = loop.fit_seeds(cfg, SEEDS[:2], tmp_path / "vmap", dataset=dataset)
    for s, mine in zip(SEEDS[:2], results):
        ref = loop.fit(loop.with_seed(cfg, s), tmp_path / f"seq_{s}", dataset=dataset)
        assert mine.summary["tested_weights"] == ref.summary["tested_weights"] == kind
        assert mine.summary["best_epoch"] == ref.summary["best_epoch"]
        assert mine.summary["test/loss"] == pytest.approx(ref.summary["test/loss"], rel=1e-5)
        for r, q in zip(mine.history, ref.history, strict=True):
            assert r["val/loss"] == pytest.approx(q["val/loss"], rel=1e-5)
    # The two seeds' averages differ, so the seed axis was not broadcast.
    assert results[0].summary["test/loss"] != pytest.approx(results[1].summary["test/loss"],
                                                            rel=1e-4)
