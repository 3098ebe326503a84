"""Tests for ml_practical.checkpointing and the resumable `loop.fit`: orbax's retention traps, our
two retention sets, SIGKILL at any moment then resume (bit-identical), damaged checkpoints, the
non-finite guard (`train`), stop reasons, the config refusal and restores across device counts.

Runs that must be killed, interrupted or given several devices run tests/_fault_run.py in a
subprocess; the rest call `loop.fit` in this process on the embedded digits data (tiny MLP, 2-6
epochs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint import checkpoint_managers as ocm

import _fault_run
from conftest import POISON
from ml_practical import checkpointing, config, experiment, loop, optim, run_files, tasks, train
from ml_practical import data as data_lib
from ml_practical.early_stopping import EarlyStopping

ROOT = pathlib.Path(__file__).resolve().parents[1]
HELPER = pathlib.Path(__file__).with_name("_fault_run.py")
TIME_FIELDS = ("epoch_time_s", "wall_time_s")
make_config = _fault_run.make_config


# ------------------------------------------------------------------------------------------------
# Helpers.


def _steps_on_disk(directory) -> set[int]:
    return {int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit()}


def _tree_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(la, lb))


def _load_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _assert_bit_equal(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), what
    for key in want:
        assert got[key].dtype == want[key].dtype, f"{what}: {key} dtype"
        assert np.array_equal(got[key], want[key]), f"{what}: {key} differs"


def _metrics(workdir) -> list[dict]:
    return run_files.RunFiles(workdir, tensorboard=False).read_metrics()


def _without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def _tb_view(tb_dir) -> dict[str, dict[int, float]]:
    """What TensorBoard shows: {tag: {step: value}} from the event files under `tb_dir`, read in
    order, a SessionLog.START at step s discarding every earlier event at a step >= s (purge)."""
    from tensorboardX.proto import event_pb2

    view: dict[str, dict[int, float]] = {}
    for path in sorted(pathlib.Path(tb_dir).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                view = {tag: {s: v for s, v in steps.items() if s < event.step}
                        for tag, steps in view.items()}
            for value in event.summary.value:
                view.setdefault(value.tag, {})[int(event.step)] = value.simple_value
    return view


def _assert_tensorboard_matches(workdir) -> None:
    view = _tb_view(pathlib.Path(workdir) / "tb")
    records = _metrics(workdir)
    for key in ("val/loss", "train/loss", "train/skipped_steps"):
        assert view[key] == pytest.approx({r["epoch"]: r[key] for r in records}, rel=1e-6), key


def _env(devices: int | None = None, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FAULT_KILL", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def _helper(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *map(str, args)], cwd=ROOT,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _popen_helper(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), *map(str, args)], cwd=ROOT,
                            env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_dataset(make_config().data)


def _checkpointer(workdir, cfg) -> checkpointing.RunCheckpointer:
    return checkpointing.RunCheckpointer(pathlib.Path(workdir) / "checkpoints", cfg)


def _restore_epoch(workdir, cfg, epoch, dataset):
    exp = experiment.build_experiment(cfg, dataset=dataset)
    ckpt = _checkpointer(workdir, cfg)
    try:
        return exp, ckpt.restore(epoch, exp.init_state())
    finally:
        ckpt.close()


def _assert_summary_from(summary: dict, exp, state) -> None:
    """summary.json's test metrics are those of `state` (evaluated here, same code path)."""
    test = exp.evaluate(state.params, state.batch_stats, exp.test_split)
    assert summary["test/accuracy"] == test["accuracy"]
    assert summary["test/loss"] == test["loss"]


# ------------------------------------------------------------------------------------------------
# 1. Orbax traps, pinned on a bare CheckpointManager.


def _bare_manager(directory, policy, best_fn=None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=best_fn,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options)


def _save_losses(manager, losses, start=0) -> None:
    for i, loss in enumerate(losses):
        manager.save(start + i, args=ocp.args.StandardSave({"w": np.full(3, loss)}),
                     metrics={"loss": loss})
    manager.wait_until_finished()


LOSS = lambda metrics: metrics["loss"]


@pytest.mark.parametrize("reverse,kept", [(False, {0, 2}), (True, {1, 3})])
def test_orbax_bestn_keeps_largest_unless_reversed(tmp_path, reverse, kept):
    # Losses 5, 1, 4, 2, 3 at steps 0..4: the two largest are steps 0 and 2, the two smallest 1, 3.
    manager = _bare_manager(tmp_path, ocm.BestN(get_metric_fn=LOSS, n=2, reverse=reverse), LOSS)
    _save_losses(manager, [5.0, 1.0, 4.0, 2.0, 3.0])
    manager.close()
    assert _steps_on_disk(tmp_path) == kept


def test_orbax_metrics_reach_disk_only_with_best_fn(tmp_path):
    policy = lambda: ocm.BestN(get_metric_fn=LOSS, n=2, reverse=True,
                               keep_checkpoints_without_metrics=False)
    with_fn, without_fn = tmp_path / "with", tmp_path / "without"
    for directory, best_fn in ((with_fn, LOSS), (without_fn, None)):
        manager = _bare_manager(directory, policy(), best_fn)
        _save_losses(manager, [5.0, 1.0, 4.0, 2.0, 3.0])
        manager.close()
        # In-session, both rank by the in-memory metrics: the two smallest losses survive.
        assert _steps_on_disk(directory) == {1, 3}
    assert (with_fn / "1" / "metrics" / "metrics").is_file()
    assert not (without_fn / "1" / "metrics").exists()

    # Reopened, then one worse step (loss 9): with best_fn the two best are still known and kept;
    # without it the old steps have no metrics, and BestN deletes them, keeping the worst one.
    for directory, best_fn, kept, metrics_of_1 in ((with_fn, LOSS, {1, 3}, {"loss": 1.0}),
                                                   (without_fn, None, {5}, None)):
        manager = _bare_manager(directory, policy(), best_fn)
        assert manager.metrics(1) == metrics_of_1
        _save_losses(manager, [9.0], start=5)
        manager.close()
        assert _steps_on_disk(directory) == kept


def test_orbax_preservation_policy_and_max_to_keep_are_exclusive(tmp_path):
    options = ocp.CheckpointManagerOptions(max_to_keep=2, preservation_policy=ocm.LatestN(n=2))
    with pytest.raises(ValueError, match="mutually exclusive"):
        ocp.CheckpointManager(tmp_path, options=options)


# ------------------------------------------------------------------------------------------------
# 1b. RunCheckpointer retention: the latest N plus early stopping's best K, across reopenings.


def _toy_state(value: float) -> train.TrainState:
    params = {"w": jnp.full((3,), value, jnp.float32)}
    return train.TrainState(step=jnp.asarray(int(value * 10), jnp.int32), params=params,
                            batch_stats={}, opt_state=optax.sgd(0.1).init(params),
                            key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("values,min_delta,keep_latest,keep_best,final", [
    # The best (epoch 2) is older than the latest two and survives every later save.
    ([1.0, 0.5, 0.7, 0.8, 0.9, 0.95], 0.0, 2, 1, {2, 5, 6}),
    # 0.45 at epoch 3 is the raw minimum but not an improvement by > min_delta: early stopping's
    # best stays epoch 2, and that is the step kept, not the one with the lowest raw value.
    ([1.0, 0.5, 0.45, 0.6, 0.7, 0.8], 0.1, 2, 1, {2, 5, 6}),
    # Two best (5 and 3) and one latest.
    ([1.0, 0.6, 0.4, 0.9, 0.3, 0.8, 0.85, 0.9], 0.0, 1, 2, {3, 5, 8}),
])
def test_run_checkpointer_keeps_latest_and_early_stopping_best(tmp_path, values, min_delta,
                                                               keep_latest, keep_best, final):
    cfg = make_config(**{"early_stopping.monitor": "val/loss", "early_stopping.mode": "min",
                         "checkpoint.keep_latest": keep_latest, "checkpoint.keep_best": keep_best})
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=None, min_delta=min_delta)
    es, improvements = stopper.initial_state(), []
    half = len(values) // 2
    for epoch, value in enumerate(values, start=1):
        if epoch in (1, half + 1):  # a restart in the middle: the ranks must come from disk
            ckpt = checkpointing.RunCheckpointer(tmp_path, cfg)
        es, improved = stopper.update(es, epoch, {"val/loss": value})
        improvements += [epoch] if improved else []
        ckpt.save(epoch, _toy_state(value), es.to_dict(), {"val/loss": value})
        expected = set(range(max(1, epoch - keep_latest + 1), epoch + 1))
        expected |= set(improvements[-keep_best:])
        assert _steps_on_disk(tmp_path) == expected, f"after epoch {epoch}"
        if epoch == half:
            ckpt.close()
    assert _steps_on_disk(tmp_path) == final
    best = ckpt.restore_best(_toy_state(0.0), es.best_epoch)
    assert best.epoch == es.best_epoch
    np.testing.assert_array_equal(best.state.params["w"], np.full(3, values[es.best_epoch - 1],
                                                                  np.float32))
    assert best.early_stopping["best_epoch"] == es.best_epoch
    ckpt.close()


def test_restore_latest_of_empty_directory_is_none(tmp_path):
    cfg = make_config(**{"early_stopping.monitor": "val/loss", "early_stopping.mode": "min"})
    ckpt = checkpointing.RunCheckpointer(tmp_path, cfg)
    assert ckpt.restore_latest(_toy_state(0.0)) is None
    assert ckpt.restore_best(_toy_state(0.0), None) is None
    ckpt.close()


# ------------------------------------------------------------------------------------------------
# 2. SIGKILL at any moment, then resume: bit-identical to an uninterrupted run.


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    done = _helper("train", workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"final": _load_npz(workdir / "final.npz"), "latest": _load_npz(workdir / "latest.npz"),
            "metrics": _metrics(workdir),
            "summary": json.loads((workdir / "summary.json").read_text())}


def _assert_same_run(workdir: pathlib.Path, ref: dict) -> None:
    _assert_bit_equal(_load_npz(workdir / "final.npz"), ref["final"], "best state")
    _assert_bit_equal(_load_npz(workdir / "latest.npz"), ref["latest"], "last checkpoint")
    records = _metrics(workdir)
    assert [r["epoch"] for r in records] == list(range(1, 7))  # each epoch exactly once
    assert _without_times(records) == _without_times(ref["metrics"])
    summary = json.loads((workdir / "summary.json").read_text())
    for key in ("test/accuracy", "test/loss", "best_epoch", "epochs_run", "stop_reason"):
        assert summary[key] == ref["summary"][key], key
    assert not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))
    _assert_tensorboard_matches(workdir)


@pytest.mark.parametrize("kill,resume_from", [
    ("epoch:3", 2),        # mid-epoch: the jitted epoch dispatched, not finished
    ("save:1", None),      # during the first save: nothing committed, a temporary dir left
    ("save:4", 3),         # during a later save
    ("before_save:2", 1),  # metrics line of epoch 2 written, its checkpoint not
    ("after_save:6", 6),   # the last checkpoint on disk, summary not yet written
])
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, kill, resume_from):
    workdir = tmp_path / "run"
    killed = _helper("train", workdir, env=_env(FAULT_KILL=kill))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (workdir / "summary.json").exists()
    point, n = kill.split(":")
    if point == "save":  # the killed save left orbax's temporary directory behind
        assert list((workdir / "checkpoints").glob(f"{n}.orbax-checkpoint-tmp*"))
        assert int(n) not in _steps_on_disk(workdir / "checkpoints")

    resumed = _helper("train", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if resume_from is None:
        assert "Resumed" not in resumed.stderr
    else:
        assert f"Resumed from epoch {resume_from} " in resumed.stderr
    _assert_same_run(workdir, reference)


@pytest.mark.parametrize("kill,overrides,resume_from", [
    # Sparse saves: killed in epoch 5 after the save of epoch 4, the run resumes from 4.
    ("epoch:5", ["checkpoint.every=2"], (4,)),
    # Killed in epoch 5 with saves every 3 epochs: epoch 4 was never saved, resume from 3.
    ("epoch:5", ["checkpoint.every=3"], (3,)),
    # Asynchronous saves: killed while a save is written in the background. orbax commits an
    # asynchronous step when the next save starts, so the newest committed step is 3 or 2.
    ("save:4", ["checkpoint.asynchronous=True"], (2, 3)),
    ("epoch:5", ["checkpoint.asynchronous=True", "checkpoint.every=2"], (2, 4)),
])
def test_sparse_or_asynchronous_checkpoints_resume_bit_identical(tmp_path, reference, kill,
                                                                 overrides, resume_from):
    workdir = tmp_path / "run"
    killed = _helper("train", workdir, *overrides, env=_env(FAULT_KILL=kill))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _helper("train", workdir, *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert any(f"Resumed from epoch {e} " in resumed.stderr for e in resume_from), resumed.stderr
    # The replayed epochs give what the uninterrupted run (every epoch saved, in the foreground)
    # gave: the same best and last states, metrics and test numbers.
    _assert_same_run(workdir, reference)


def test_kill_9_from_outside_at_a_random_moment(tmp_path, reference):
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 1_000_000))
    delay = random.Random(seed).uniform(0.0, 0.4)
    workdir = tmp_path / "run"
    proc = _popen_helper("train", workdir)
    _wait_for(workdir / "checkpoints" / "1", proc)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill (KILL_SEED={seed})"
    resumed = _helper("train", workdir)
    assert resumed.returncode == 0, f"KILL_SEED={seed}\n" + resumed.stderr[-3000:]
    _assert_same_run(workdir, reference)


# ------------------------------------------------------------------------------------------------
# 3. Damaged checkpoints: a warning naming step and damage, then the previous good step.


@pytest.fixture(scope="module")
def four_epochs(tmp_path_factory, digits):
    """A finished 4-epoch run (steps 3 and 4 on disk at least) and its last state."""
    workdir = tmp_path_factory.mktemp("four_epochs")
    cfg = make_config(**{"train.num_epochs": 4})
    summary = loop.fit(cfg, workdir, dataset=digits).summary
    ckpt = _checkpointer(workdir, cfg)
    exp = experiment.build_experiment(cfg, dataset=digits)
    last = ckpt.restore(4, exp.init_state())
    ckpt.close()
    assert {3, 4} <= _steps_on_disk(workdir / "checkpoints")
    return {"workdir": workdir, "cfg": cfg, "summary": summary, "last": last.state,
            "metrics": _metrics(workdir)}


def _largest_state_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _delete(step_dir):
    _largest_state_file(step_dir).unlink()


def _truncate(step_dir):
    path = _largest_state_file(step_dir)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _flip(step_dir):
    path = _largest_state_file(step_dir)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_meta(step_dir):
    shutil.rmtree(step_dir / "meta")


@pytest.mark.parametrize("damage,reason", [
    # tensorstore's own error, naming the array whose bytes are gone
    (_delete, r"unreadable \(\w+: .*Error reading \S+"),
    (_truncate, r"unreadable \(\w+: .*Error reading \S+"),
    (_flip, "checksum mismatch"),  # orbax restores these bytes without complaint
    (_drop_meta, "metadata missing"),
], ids=["file_deleted", "file_truncated", "bytes_flipped", "meta_missing"])
def test_damaged_latest_step_falls_back_to_previous(tmp_path, capsys, digits, four_epochs,
                                                    damage, reason):
    workdir = tmp_path / "run"
    shutil.copytree(four_epochs["workdir"], workdir)
    damage(workdir / "checkpoints" / "4")

    with pytest.warns(checkpointing.CheckpointDamageWarning,
                      match=rf"checkpoint step 4 .* is damaged: {reason}") as caught:
        summary = loop.fit(four_epochs["cfg"], workdir, dataset=digits).summary
    assert not any("TensorStore details" in str(w.message) for w in caught)
    assert "Resumed from epoch 3 " in capsys.readouterr().err
    quarantined = list((workdir / "damaged").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith("4-")
    # Epoch 4 was trained again from step 3: same metrics, same state, each epoch once.
    records = _metrics(workdir)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert _without_times(records) == _without_times(four_epochs["metrics"])
    _assert_tensorboard_matches(workdir)
    exp, again = _restore_epoch(workdir, four_epochs["cfg"], 4, digits)
    assert _tree_equal(again.state, four_epochs["last"])
    assert summary["stop_reason"] == "max_epochs"
    assert summary["best_epoch"] == four_epochs["summary"]["best_epoch"]
    assert summary["test/accuracy"] == four_epochs["summary"]["test/accuracy"]


def test_every_step_damaged_starts_over(tmp_path, capsys, digits, four_epochs):
    workdir = tmp_path / "run"
    shutil.copytree(four_epochs["workdir"], workdir)
    steps = sorted(_steps_on_disk(workdir / "checkpoints"))
    for step in steps:
        _drop_meta(workdir / "checkpoints" / str(step))
    with pytest.warns(checkpointing.CheckpointDamageWarning) as caught:
        loop.fit(four_epochs["cfg"], workdir, dataset=digits)
    damaged = [str(w.message) for w in caught
               if issubclass(w.category, checkpointing.CheckpointDamageWarning)]
    assert len(damaged) == len(steps)
    assert "Resumed" not in capsys.readouterr().err
    assert [r["epoch"] for r in _metrics(workdir)] == [1, 2, 3, 4]
    assert _without_times(_metrics(workdir)) == _without_times(four_epochs["metrics"])


# ------------------------------------------------------------------------------------------------
# 4. The non-finite guard.


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_batch_is_skipped_and_leaves_state_unchanged(bad):
    cfg = make_config()
    model = cfg.model
    tx = optim.make_optimizer(cfg.optim, total_steps=100)
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1))
    rng = np.random.default_rng(0)
    clean = {"image": jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
    poisoned = {"image": clean["image"].at[3, 2, 2, 0].set(bad), "label": clean["label"]}

    def run(skip):
        step = jax.jit(functools.partial(train.train_step, model=model, tx=tx,
                                         task=tasks.Classification(label_smoothing=0.1),
                                         skip_nonfinite=skip))
        s1, m1 = step(state, clean)
        s2, m2 = step(s1, poisoned)
        return s1, m1, s2, m2

    s1, m1, s2, m2 = run(skip=True)
    assert float(m1["skipped"]) == 0.0 and float(m2["skipped"]) == 1.0
    assert not _tree_equal(s1.params, state.params)  # a clean step does move the weights
    for field in ("params", "batch_stats", "opt_state", "key"):
        assert _tree_equal(getattr(s2, field), getattr(s1, field)), field
    assert int(s2.step) == int(s1.step) + 1
    # Without the guard the same batch poisons every weight it reaches.
    _, _, u2, _ = run(skip=False)
    assert not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(u2.params))


def test_skipped_steps_are_counted_per_epoch(tmp_path, digits):
    bad_rows = np.array([5, 400, 777, 1000])
    train_x = np.array(digits.train_x)
    train_x[bad_rows] = POISON
    dataset = dataclasses.replace(digits, train_x=train_x)
    cfg = make_config(**{"train.num_epochs": 2})
    summary = loop.fit(cfg, tmp_path, dataset=dataset).summary
    records = _metrics(tmp_path)
    for record in records:
        idx = data_lib.batch_indices(cfg.seed, record["epoch"], len(train_x), 64)
        expected = int(np.isin(idx, bad_rows).any(axis=1).sum())
        assert expected > 0
        assert record["train/skipped_steps"] == expected
        assert np.isfinite(record["val/loss"]) and np.isfinite(record["train/loss"])
    assert summary["stop_reason"] == "max_epochs"


def test_persistent_nonfinite_stops_and_restores_best(tmp_path, digits, monkeypatch):
    # 64 NaN rows appended; epochs 1-2 draw only clean rows, epoch 3 onwards only NaN rows.
    n_clean = len(digits.train_y)
    nan_x = np.full((64, *digits.train_x.shape[1:]), POISON, np.float32)
    dataset = dataclasses.replace(digits, train_x=np.concatenate([digits.train_x, nan_x]),
                                  train_y=np.concatenate([digits.train_y, np.zeros(64, np.int32)]))
    steps = n_clean // 64

    def batch_indices(self, epoch):
        if epoch < 3:
            return jnp.asarray(data_lib.batch_indices(self.cfg.seed, epoch, n_clean, 64))
        return jnp.asarray(np.tile(np.arange(n_clean, n_clean + 64), (steps, 1)), jnp.int32)
    monkeypatch.setattr(experiment.Experiment, "batch_indices", batch_indices)

    cfg = make_config(**{"train.num_epochs": 6, "train.max_consecutive_skips": 5})
    result = loop.fit(cfg, tmp_path, dataset=dataset)
    summary = result.summary
    records = _metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[2]["train/skipped_steps"] == steps
    # Every step of epoch 3 skipped: the weights, hence the validation loss, did not move.
    assert records[2]["val/loss"] == records[1]["val/loss"]
    assert summary["stop_reason"] == "non_finite"
    best_epoch = 1 + int(np.argmin([records[0]["val/loss"], records[1]["val/loss"]]))
    assert summary["best_epoch"] == best_epoch
    exp, best = _restore_epoch(tmp_path, cfg, best_epoch, dataset)
    assert _tree_equal(result.state, best.state)
    _assert_summary_from(summary, exp, best.state)


# ------------------------------------------------------------------------------------------------
# 5. The config refusal.


def test_changed_config_is_refused_and_restart_starts_over(tmp_path, capsys, digits):
    cfg = make_config(**{"train.num_epochs": 2})
    loop.fit(cfg, tmp_path, dataset=digits)
    before = (tmp_path / "metrics.jsonl").read_text(), (tmp_path / "config.json").read_text()

    changed = make_config(**{"train.num_epochs": 2, "optim.learning_rate": 0.002,
                             "model.widths": (16,)})
    with pytest.raises(run_files.ConfigMismatchError) as err:
        loop.fit(changed, tmp_path, dataset=digits)
    message = str(err.value)
    assert "optim.learning_rate: 0.001 -> 0.002" in message
    assert "model.widths: [32] -> [16]" in message
    assert "train.restart=True" in message
    assert ((tmp_path / "metrics.jsonl").read_text(), (tmp_path / "config.json").read_text()) \
        == before  # refused before touching anything

    changed = config.override(changed, {"train.restart": True})
    capsys.readouterr()
    result = loop.fit(changed, tmp_path, dataset=digits)
    summary = result.summary
    assert "Resumed" not in capsys.readouterr().err
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["learning_rate"] == 0.002
    assert [r["epoch"] for r in _metrics(tmp_path)] == [1, 2]
    assert result.state.params["dense_0"]["kernel"].shape == (64, 16)

    # Rerunning the same command (restart=True still in it) resumes instead of wiping again.
    after = (tmp_path / "metrics.jsonl").read_text()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    again = loop.fit(changed, tmp_path, dataset=digits).summary
    err = capsys.readouterr().err
    assert "resuming it" in err and "Resumed from epoch 2" in err
    assert (tmp_path / "metrics.jsonl").read_text() == after
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ckpts
    assert again["test/loss"] == summary["test/loss"]


def test_cli_refuses_changed_config_and_prints_no_deprecation(tmp_path):
    base = [sys.executable, "-W", "default", "-m", "experiments.train",
            "--config=experiments/configs/digits_mlp.py", f"--workdir={tmp_path}",
            "--config.model.widths=(32,)", "--config.train.num_epochs=2"]
    first = subprocess.run(base, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout.strip().splitlines()[-1])["stop_reason"] == "max_epochs"
    # ml_collections' config-file loader uses importlib's load_module (its own deprecation).
    noisy = [line for line in first.stderr.splitlines()
             if ("deprecat" in line.lower() or "legacy" in line.lower())
             and "load_module()" not in line]
    assert noisy == [], "\n".join(noisy)

    second = subprocess.run(base + ["--config.optim.learning_rate=0.002"], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=240)
    assert second.returncode != 0
    # experiments.cli reports the ConfigMismatchError as one line (its message), no traceback.
    assert "holds a run with a different config" in second.stderr
    assert "optim.learning_rate: 0.001 -> 0.002" in second.stderr


# ------------------------------------------------------------------------------------------------
# 6. Stop reasons, and summary.json from the best checkpoint.


def test_stop_patience_restores_best_not_last(tmp_path, capsys, digits):
    # min_delta far above any change in val/loss: epoch 1 is the only improvement, so with
    # patience 2 the run stops at epoch 3 whatever the numbers.
    cfg = make_config(**{"early_stopping.min_delta": 1e3, "early_stopping.patience": 2})
    result = loop.fit(cfg, tmp_path, dataset=digits)
    summary = result.summary
    assert summary["stop_reason"] == "patience"
    assert summary["best_epoch"] == 1 and summary["epochs_run"] == 3
    exp, best = _restore_epoch(tmp_path, cfg, 1, digits)
    _, last = _restore_epoch(tmp_path, cfg, 3, digits)
    assert _tree_equal(result.state, best.state)
    assert not _tree_equal(best.state.params, last.state.params)
    _assert_summary_from(summary, exp, best.state)
    assert json.loads((tmp_path / "summary.json").read_text())["test/loss"] == summary["test/loss"]
    # Rerunning a finished run trains nothing and reports the same.
    again = loop.fit(cfg, tmp_path, dataset=digits).summary
    assert [r["epoch"] for r in _metrics(tmp_path)] == [1, 2, 3]
    assert again["test/loss"] == summary["test/loss"] and again["stop_reason"] == "patience"
    # Without step 3, the run resumes from 2 with wait = 1 saved there: patience runs out at 3
    # again (a counter restarted from 0 would stop at 4).
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    capsys.readouterr()
    again = loop.fit(cfg, tmp_path, dataset=digits).summary
    assert "Resumed from epoch 2 " in capsys.readouterr().err
    assert again["stop_reason"] == "patience" and again["epochs_run"] == 3
    assert again["best_epoch"] == 1 and again["test/loss"] == summary["test/loss"]


def test_stop_max_epochs(four_epochs):
    summary, records = four_epochs["summary"], four_epochs["metrics"]
    assert summary["stop_reason"] == "max_epochs" and summary["epochs_run"] == 4
    losses = [r["val/loss"] for r in records]
    assert summary["best_epoch"] == 1 + int(np.argmin(losses))
    assert summary["best_metric"]["val/loss"] == min(losses)


def test_stop_diverged(tmp_path, digits):
    cfg = make_config(**{"early_stopping.divergence_threshold": 1e-6})
    result = loop.fit(cfg, tmp_path, dataset=digits)
    summary = result.summary
    assert summary["stop_reason"] == "diverged" and summary["epochs_run"] == 1
    # No epoch was ever acceptable: no best, and the test metrics are the last state's.
    assert summary["best_epoch"] is None
    exp, last = _restore_epoch(tmp_path, cfg, 1, digits)
    assert _tree_equal(result.state, last.state)
    _assert_summary_from(summary, exp, last.state)


def test_stop_interrupted_by_sigint_then_resume(tmp_path, digits, reference):
    workdir = tmp_path / "run"
    proc = _popen_helper("train", workdir)
    _wait_for(workdir / "checkpoints" / "2", proc)
    proc.send_signal(signal.SIGINT)  # the epoch in flight finishes and is saved, then the end
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    records = _metrics(workdir)
    assert summary["stop_reason"] == "interrupted"
    assert 2 <= summary["epochs_run"] < 6 and len(records) == summary["epochs_run"]
    losses = [r["val/loss"] for r in records]
    assert summary["best_epoch"] == 1 + int(np.argmin(losses))
    cfg = make_config()
    exp, best = _restore_epoch(workdir, cfg, summary["best_epoch"], digits)
    _assert_bit_equal(_load_npz(workdir / "final.npz"), _fault_run.state_arrays(best.state),
                      "best state")
    _assert_summary_from(summary, exp, best.state)
    # The same command again carries on to the end: the same run as one never interrupted.
    resumed = _helper("train", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from epoch {summary['epochs_run']} " in resumed.stderr
    _assert_same_run(workdir, reference)


# ------------------------------------------------------------------------------------------------
# 7. A checkpoint written on one number of devices restores on another.


@pytest.mark.parametrize("write_devices,read_devices", [(4, 1), (1, 4)])
def test_restore_on_a_different_number_of_devices(tmp_path, write_devices, read_devices):
    workdir = tmp_path / "run"
    common = ["train.num_epochs=2"]
    wrote = _helper("train", workdir, f"train.num_devices={write_devices}", *common,
                    env=_env(devices=write_devices))
    assert wrote.returncode == 0, wrote.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert len(summary["devices"]) == write_devices

    out = tmp_path / "restored.npz"
    read = _helper("restore", workdir, out, f"train.num_devices={read_devices}", *common,
                   env=_env(devices=read_devices))
    assert read.returncode == 0, read.stderr[-3000:]
    restored = _load_npz(out)
    assert int(restored.pop("__epoch__")) == 2
    assert restored.pop("__devices__").tolist() == [read_devices]
    _assert_bit_equal(restored, _load_npz(workdir / "latest.npz"), "state across device counts")


def test_replay_if_nonfinite_replays_only_epochs_with_a_nonfinite_step(tiny_dataset):
    """`replay_if_nonfinite` = the guarded epoch when a step is non-finite, the unguarded one
    otherwise."""
    from tests.conftest import tiny
    cfg = tiny()
    train_x = np.array(tiny_dataset.train_x)
    train_x[7] = POISON
    dataset = dataclasses.replace(tiny_dataset, train_x=train_x)
    exp = experiment.build_experiment(cfg, dataset=dataset)
    calls = []

    def counting(fn):
        def wrapped(*a):
            calls.append(fn)
            return fn(*a)
        return wrapped
    fast, guarded = counting(exp.epoch_fn), counting(exp.epoch_fn_guarded)
    state0 = exp.init_state()
    fresh = exp.init_state  # deterministic; the guarded epoch donates its input
    idx = np.asarray(exp.batch_indices(1))
    bad_step = int(np.nonzero((idx == 7).any(axis=1))[0][0])

    # An epoch that draws row 7: replayed with the guard, result identical to the guarded epoch.
    state, m = train.replay_if_nonfinite(fast, guarded, state0, *exp.train_arrays, jnp.asarray(idx))
    assert len(calls) == 2 and calls[1] is exp.epoch_fn_guarded
    ref_state, ref_m = exp.epoch_fn_guarded(fresh(), *exp.train_arrays, jnp.asarray(idx))
    assert _tree_equal(state, ref_state)
    assert np.flatnonzero(m["skipped"]).tolist() == [bad_step]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))

    # An epoch without row 7: one unguarded pass, equal to the unguarded epoch.
    calls.clear()
    clean_idx = jnp.asarray(idx[np.arange(len(idx)) != bad_step])
    state, m = train.replay_if_nonfinite(fast, guarded, fresh(), *exp.train_arrays, clean_idx)
    assert calls == [exp.epoch_fn]
    ref_state, _ = exp.epoch_fn(fresh(), *exp.train_arrays, clean_idx)
    assert _tree_equal(state, ref_state) and m["skipped"].sum() == 0
