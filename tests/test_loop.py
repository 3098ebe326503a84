"""The one epoch loop: fit's result and run files, bit-identical reruns, hooks, early stopping off."""

import json

import jax
import numpy as np
import pytest

from ml_practical import config, loop, run_files
from tests.conftest import tiny


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_two_runs_are_bit_identical(tmp_path, tiny_dataset):
    cfg = tiny()
    a = loop.fit(cfg, tmp_path / "a", dataset=tiny_dataset)
    b = loop.fit(cfg, tmp_path / "b", dataset=tiny_dataset)
    assert _leaves_equal(a.state.params, b.state.params)
    assert _leaves_equal(a.state.batch_stats, b.state.batch_stats)
    # A different seed gives different parameters (the test above could not pass vacuously).
    c = loop.fit(loop.with_seed(cfg, 1), tmp_path / "c", dataset=tiny_dataset)
    assert not _leaves_equal(a.state.params, c.state.params)


def test_fit_writes_run_files_and_returns_them(tmp_path, tiny_dataset):
    result = loop.fit(tiny(), tmp_path, dataset=tiny_dataset)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["widths"] == [16] and saved["seed"] == 0
    assert saved["model"]["name"] == "mlp"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    for key in ("epoch", "train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr",
                "grad_norm", "wall_time_s"):
        assert key in lines[0], key
    assert lines[0]["lr"] == pytest.approx(1e-3)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test/accuracy", "test/loss", "best_epoch", "epochs_run", "stop_reason",
                "wall_time_s", "model"):
        assert key in on_disk, key
    assert on_disk["epochs_run"] == 3 and on_disk["stop_reason"] == "max_epochs"
    best = min(lines, key=lambda r: r["val/loss"])["epoch"]
    assert on_disk["best_epoch"] == best
    # The value returned is what was written: no re-reading needed.
    assert on_disk == json.loads(json.dumps(run_files.to_jsonable(result.summary)))
    assert result.history == lines
    assert result.workdir == tmp_path
    assert on_disk["model"].startswith("16-16-3 relu MLP")


class _Recorder(loop.Hook):
    """Records which phase ran when, and adds one metric per epoch."""

    def __init__(self, log):
        self.log = log

    def init_state(self, exp, state, runs):
        self.log.append(("init_state", int(state.step)))
        return state

    def on_start(self, exp, state, runs):
        self.log.append(("on_start", len(runs)))

    def metrics(self, event):
        # Before early stopping and before the record is written.
        assert "lr" not in event.record
        event.record["extra/epoch_squared"] = event.epoch ** 2
        self.log.append(("metrics", event.epoch))

    def on_epoch_end(self, event):
        assert event.record["extra/epoch_squared"] == event.epoch ** 2
        assert "wall_time_s" in event.record
        self.log.append(("on_epoch_end", event.epoch, bool(event.improved[0])))

    def on_end(self, exp, state, runs):
        self.log.append(("on_end", runs[0].best_epoch))


def test_hooks_run_in_their_phases_and_their_metrics_are_written(tmp_path, tiny_dataset):
    log = []
    result = loop.fit(tiny(), tmp_path, dataset=tiny_dataset, hooks=[_Recorder(log)])
    assert log[0] == ("init_state", 0) and log[1] == ("on_start", 1)
    phases = [entry[0] for entry in log[2:-1]]
    assert phases == ["metrics", "on_epoch_end"] * 3
    assert log[-1] == ("on_end", result.summary["best_epoch"])
    assert [r["extra/epoch_squared"] for r in result.history] == [1, 4, 9]


def test_init_state_hook_is_not_called_on_resume(tmp_path, tiny_dataset):
    log = []
    loop.fit(tiny(**{"train.num_epochs": 2}), tmp_path, dataset=tiny_dataset)
    # The same run with a larger budget would be another config: resume an interrupted one instead.
    cfg = tiny(**{"train.num_epochs": 2})
    (tmp_path / "summary.json").unlink()
    result = loop.fit(cfg, tmp_path, dataset=tiny_dataset, hooks=[_Recorder(log)])
    assert not any(entry[0] == "init_state" for entry in log)
    assert result.summary["epochs_run"] == 2


class _InitTwice(loop.Hook):
    """A hook that changes the fresh state (as LSUV does): doubles every kernel."""

    def init_state(self, exp, state, runs):
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: 2 * x if p[-1].key == "kernel" else x, state.params)
        return exp.replicate(state.replace(params=params, opt_state=exp.tx.init(params)))


def test_init_state_hook_changes_the_start(tmp_path, tiny_dataset):
    cfg = tiny(**{"train.num_epochs": 1})
    plain = loop.fit(cfg, tmp_path / "a", dataset=tiny_dataset)
    doubled = loop.fit(cfg, tmp_path / "b", dataset=tiny_dataset, hooks=[_InitTwice()])
    assert not _leaves_equal(plain.state.params, doubled.state.params)


class _Steps(loop.Hook):
    def step_metrics(self, old_state, new_state, metrics):
        return {"step_index": old_state.step, "double_loss": 2 * metrics["loss"]}


def test_step_metrics_reach_the_step_log_and_survive_resume(tmp_path, tiny_dataset):
    cfg = tiny(**{"train.num_epochs": 3})
    loop.fit(cfg, tmp_path, dataset=tiny_dataset, hooks=[_Steps(), loop.StepLog()])
    files = run_files.RunFiles(tmp_path, tensorboard=False)
    steps = files.read_steps()
    assert sorted(steps) == [1, 2, 3]
    per_epoch = len(tiny_dataset.train_y) // 32
    np.testing.assert_array_equal(steps[2]["step_index"], np.arange(per_epoch, 2 * per_epoch))
    np.testing.assert_array_equal(steps[1]["double_loss"], 2 * steps[1]["loss"])
    assert steps[1]["step_index"].dtype == np.int32   # dtypes kept (npz, no pickle)
    # A resume from epoch 1 drops the later epochs' step files with their metrics lines.
    files.truncate_metrics(after_epoch=1)
    assert sorted(files.read_steps()) == [1]


def test_early_stopping_disabled_trains_the_budget_and_tests_the_last_state(tmp_path,
                                                                            tiny_dataset):
    cfg = tiny(**{"train.num_epochs": 4, "early_stopping.patience": 0,
                  "early_stopping.enabled": False, "optim.learning_rate": 0.3})
    result = loop.fit(cfg, tmp_path, dataset=tiny_dataset)
    assert result.summary["epochs_run"] == 4
    assert result.summary["stop_reason"] == "max_epochs"
    assert result.summary["best_epoch"] == 4 and result.summary["best_metric"] == {}
    # The restored state is the last epoch's: evaluating it gives the summary's test numbers.
    from ml_practical import experiment
    exp = experiment.build_experiment(cfg, dataset=tiny_dataset)
    test = exp.evaluate(result.state.params, result.state.batch_stats, exp.test_split)
    assert test["loss"] == result.summary["test/loss"]
    # With early stopping on and patience 0 the same run stops at its first non-improvement.
    enabled = loop.fit(config.override(cfg, {"early_stopping.enabled": True}), tmp_path / "on",
                       dataset=tiny_dataset)
    losses = [r["val/loss"] for r in enabled.history]
    first_worse = next((i for i in range(1, len(losses)) if losses[i] >= min(losses[:i])), None)
    if first_worse is not None:
        assert enabled.summary["epochs_run"] == first_worse + 1


def test_fit_seeds_runs_the_same_loop_and_hooks(tmp_path, tiny_dataset):
    log = []
    results = loop.fit_seeds(tiny(**{"train.num_epochs": 2}), [0, 1], tmp_path,
                             dataset=tiny_dataset, hooks=[_SeedsRecorder(log)])
    assert [r.summary["seed"] for r in results] == [0, 1]
    assert log == [(1, [True, True]), (2, [True, True])]
    for s, r in zip([0, 1], results):
        on_disk = json.loads((loop.seed_dir(tmp_path, s) / "summary.json").read_text())
        assert on_disk["test/loss"] == r.summary["test/loss"]
        assert len(r.history) == 2


class _SeedsRecorder(loop.Hook):
    def __init__(self, log):
        self.log = log

    def on_epoch_end(self, event):
        self.log.append((event.epoch, [bool(a) for a in event.active]))
        assert len(event.records) == 2
        with pytest.raises(ValueError, match="records"):
            event.record


@pytest.mark.parametrize("every,asynchronous", [(3, False), (1, True), (4, True)])
def test_sparse_and_asynchronous_checkpoints_change_nothing_but_the_saved_steps(
        tmp_path, tiny_dataset, every, asynchronous):
    base = tiny(**{"train.num_epochs": 7, "optim.learning_rate": 3e-2})
    ref = loop.fit(base, tmp_path / "ref", dataset=tiny_dataset)
    cfg = config.override(base, {"checkpoint.every": every, "checkpoint.asynchronous": asynchronous})
    got = loop.fit(cfg, tmp_path / "got", dataset=tiny_dataset)
    assert _leaves_equal(got.state.params, ref.state.params)
    assert _leaves_equal(got.state.opt_state, ref.state.opt_state)
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k} for r in h]  # noqa: E731
    assert strip(got.history) == strip(ref.history)
    for key in ("test/loss", "test/accuracy", "best_epoch", "stop_reason", "epochs_run"):
        assert got.summary[key] == ref.summary[key], key
    from ml_practical import checkpointing
    ckpt = checkpointing.RunCheckpointer(tmp_path / "got" / "checkpoints", cfg)
    steps = ckpt.all_steps()
    ckpt.close()
    best = ref.summary["best_epoch"]
    # The last epoch and the best are on disk; with every > 1 nothing else is saved but the
    # multiples of `every` (of which the latest `keep_latest` are kept).
    assert 7 in steps and best in steps
    if every > 1:
        assert set(steps) <= {e for e in range(1, 8) if e % every == 0} | {7, best}
