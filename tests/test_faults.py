"""Faults and bad inputs: one owner per run directory, nothing in it silently misread.

Each test is one row of the README's "Faults and bad inputs" table: what a user (or a scheduler)
did, and what must happen. Runs that need their own process (a second launch on a live run, a
SIGKILL'd holder, signals, exit statuses, one-line errors) run `experiments.train` or
tests/_fault_run.py in a subprocess; the rest call `loop.fit` here on the embedded digits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import _fault_run
import numpy as np
import pytest
from conftest import write_mnist

from experiments import cli
from ml_practical import checkpointing, config, data, idx, loop, losses, run_files
from ml_practical.workdir_lock import WorkdirBusyError, WorkdirLock

ROOT = pathlib.Path(__file__).resolve().parents[1]
HELPER = pathlib.Path(__file__).with_name("_fault_run.py")
make_config = _fault_run.make_config
TIMEOUT = 240


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FAULT_KILL", "XLA_FLAGS", cli.DEBUG_ENV)}
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _train_cmd(workdir, *overrides: str) -> list[str]:
    """`experiments.train` on the digits: a 32-unit MLP, 3 epochs, then `overrides`."""
    flags = ["--config.model.widths=(32,)", "--config.train.num_epochs=3",
             "--config.train.progress=never", *[f"--config.{o}" for o in overrides]]
    return [sys.executable, "-m", "experiments.train", "--config=experiments/configs/digits_mlp.py",
            f"--workdir={workdir}", *flags]


def _run(cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def _helper(*args, env=None) -> subprocess.CompletedProcess:
    return _run([sys.executable, str(HELPER), *map(str, args)], env=env)


def _error_lines(stderr: str) -> list[str]:
    """stderr without the lines absl/jax print for every run (platform notices)."""
    return [line for line in stderr.splitlines() if line.strip()
            and "An NVIDIA GPU may be present" not in line and "TPU" not in line]


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert lines[-1] == f"(--debug or {cli.DEBUG_ENV}=1 shows the traceback)", proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _metrics(workdir) -> list[dict]:
    return run_files.RunFiles(workdir, tensorboard=False).read_metrics()


def _snapshot(workdir: pathlib.Path) -> dict[str, bytes]:
    """Every file of a run directory but the lock, by relative path: to show nothing changed."""
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset(make_config().data)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits):
    """A finished 4-epoch digits run (keep_latest 2: steps 3 and 4, plus the best)."""
    workdir = tmp_path_factory.mktemp("finished")
    cfg = make_config(**{"train.num_epochs": 4})
    result = loop.fit(cfg, workdir, dataset=digits)
    return {"workdir": workdir, "cfg": cfg, "summary": result.summary,
            "metrics": _metrics(workdir)}


def _copy(finished, tmp_path) -> pathlib.Path:
    workdir = tmp_path / "run"
    shutil.copytree(finished["workdir"], workdir)
    return workdir


def _without_times(records):
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "wall_time_s")}
            for r in records]


# ------------------------------------------------------------------------------------------------
# 1. One owner per run directory (real processes).


_HOLDER = textwrap.dedent("""
    import sys, time
    from ml_practical.workdir_lock import WorkdirLock
    WorkdirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def _hold(workdir) -> subprocess.Popen:
    """A live process holding `workdir`'s lock (as a training job would), until killed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


def test_a_second_process_is_refused_and_restart_never_touches_a_live_run(tmp_path):
    workdir = tmp_path / "run"
    first = _run(_train_cmd(workdir))
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(workdir)
    holder = _hold(workdir)
    try:
        for overrides in ([], ["train.restart=True", "optim.learning_rate=0.01"]):
            refused = _run(_train_cmd(workdir, *overrides))
            _assert_one_line_error(refused, f"{workdir} is in use by pid {holder.pid} on host "
                                            f"{os.uname().nodename} since ")
            assert _snapshot(workdir) == before  # not a byte changed, restart or not
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is taken over, and the run goes on as before.
    again = _run(_train_cmd(workdir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"took over the lock of pid {holder.pid}" in again.stderr
    assert "Resumed from epoch 3 " in again.stderr
    assert [r["epoch"] for r in _metrics(workdir)] == [1, 2, 3]
    assert (workdir / ".lock").read_text() == ""  # released: no holder named


def test_a_sigkilled_run_is_taken_over_and_resumed_by_its_relaunch(tmp_path):
    workdir = tmp_path / "run"
    killed = _helper("train", workdir, env=_env(FAULT_KILL="epoch:3"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    holder = json.loads((workdir / ".lock").read_text())
    assert holder["host"] == os.uname().nodename and isinstance(holder["started_at"], float)
    resumed = _helper("train", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"took over the lock of pid {holder['pid']} on host {holder['host']}" in resumed.stderr
    assert "Resumed from epoch 2 " in resumed.stderr
    assert [r["epoch"] for r in _metrics(workdir)] == list(range(1, 7))


def test_two_launches_at_once_never_mix_one_run(tmp_path):
    """What a scheduler does when it relaunches a job whose first process is still alive."""
    workdir = tmp_path / "run"
    cmd = _train_cmd(workdir, "train.num_epochs=40", "early_stopping.enabled=False")
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    codes = sorted(p.returncode for p in procs)
    # One trains; the other is refused (2) or, if it came after the first finished, finds the
    # run complete (0, nothing trained). Either way each epoch is in metrics.jsonl exactly once.
    assert codes in ([0, 2], [0, 0]), [o[1][-2000:] for o in outs]
    for proc, (_, err) in zip(procs, outs):
        if proc.returncode == 2:
            assert "is in use by pid" in err and "Traceback" not in err
    assert [r["epoch"] for r in _metrics(workdir)] == list(range(1, 41))
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs_run"] == 40


def test_the_lock_is_reentrant_in_a_process_and_exclusive_across_processes(tmp_path):
    with WorkdirLock(tmp_path) as outer:
        with WorkdirLock(tmp_path):  # a study locking its directory, and loop.fit inside it
            pass
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        script = ("import sys; from ml_practical.workdir_lock import WorkdirLock; "
                  "WorkdirLock(sys.argv[1]).acquire()")
        probe = _run([sys.executable, "-c", script, str(tmp_path)])
        assert probe.returncode != 0 and "WorkdirBusyError" in probe.stderr
        assert f"in use by pid {os.getpid()}" in probe.stderr
    assert outer._key is None and (tmp_path / ".lock").read_text() == ""
    with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
        # A lock held through another open file of this process is refused too (flock is per
        # open file), which is what a second process sees.
        fd = os.open(tmp_path / ".lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": "h"}))
        try:
            WorkdirLock(tmp_path).acquire()
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------
# 2. Checkpoints are restored only into the config that wrote them.


@pytest.mark.parametrize("overrides,diff", [
    ({"optim.learning_rate": 0.002}, "optim.learning_rate: 0.001 -> 0.002"),
    ({"model.drop_rate": 0.3}, "model.drop_rate: 0.2 -> 0.3"),
    ({"model.widths": (16,)}, "model.widths: [32] -> [16]"),  # a shape change: never "damage"
])
def test_without_config_json_the_checkpoints_config_is_the_runs(tmp_path, finished, digits,
                                                                 overrides, diff):
    workdir = _copy(finished, tmp_path)
    (workdir / "config.json").unlink()
    before = _snapshot(workdir)
    other = make_config(**{"train.num_epochs": 4, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("error", checkpointing.CheckpointDamageWarning)
        with pytest.raises(run_files.ConfigMismatchError,
                           match="the newest checkpoint's stored config") as err:
            loop.fit(other, workdir, dataset=digits)
    assert diff in str(err.value)
    assert _snapshot(workdir) == before  # no damaged/, metrics.jsonl and checkpoints intact
    assert not (workdir / "damaged").exists()
    # The run's own config resumes, and config.json is written again.
    summary = loop.fit(finished["cfg"], workdir, dataset=digits).summary
    assert summary["test/loss"] == finished["summary"]["test/loss"]
    assert json.loads((workdir / "config.json").read_text()) == run_files.to_jsonable(
        finished["cfg"])


def test_a_checkpoint_of_another_config_is_refused_on_restore_with_the_diff(tmp_path, finished,
                                                                            digits):
    """Even past config.json (a checkpoint directory copied into another run)."""
    workdir = _copy(finished, tmp_path)
    other = make_config(**{"train.num_epochs": 4, "model.widths": (16,)})
    ckpt = checkpointing.RunCheckpointer(workdir / "checkpoints", other)
    from ml_practical import experiment
    like = experiment.build_experiment(other, dataset=digits).init_state()
    try:
        with pytest.raises(run_files.ConfigMismatchError,
                           match=r"checkpoint step 4 .* different config:\n  model.widths: "
                                 r"\[32\] -> \[16\]"):
            ckpt.restore_latest(like)
    finally:
        ckpt.close()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(
        p.name for p in (finished["workdir"] / "checkpoints").iterdir())


def test_a_step_whose_metadata_names_another_epoch_is_damage(tmp_path, finished, digits, capsys):
    workdir = _copy(finished, tmp_path)
    meta_path = workdir / "checkpoints" / "4" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["epoch"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(checkpointing.CheckpointDamageWarning,
                      match="checkpoint step 4 .* its metadata says epoch 3"):
        summary = loop.fit(finished["cfg"], workdir, dataset=digits).summary
    assert "Resumed from epoch 3 " in capsys.readouterr().err
    assert [p.name.split("-")[0] for p in (workdir / "damaged").iterdir()] == ["4"]
    assert _without_times(_metrics(workdir)) == _without_times(finished["metrics"])
    assert summary["test/loss"] == finished["summary"]["test/loss"]


# ------------------------------------------------------------------------------------------------
# 3. The metrics history survives damage; the summary counts what ran.


def test_a_torn_line_in_the_middle_keeps_every_other_epoch(tmp_path, finished, digits):
    workdir = _copy(finished, tmp_path)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:len(lines[1]) // 2]  # epoch 2's line torn
    (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(run_files.RunFilesWarning, match="line 2 is not a metrics record"):
        assert [r["epoch"] for r in _metrics(workdir)] == [1, 3, 4]
    with pytest.warns(run_files.RunFilesWarning, match="line 2"):
        summary = loop.fit(finished["cfg"], workdir, dataset=digits).summary
    # Epoch 2 came back from the checkpoints' records; epochs 3 and 4 were never dropped.
    assert _without_times(_metrics(workdir)) == _without_times(finished["metrics"])
    assert summary["epochs_run"] == 4 and summary["best_epoch"] == finished["summary"]["best_epoch"]


def test_a_deleted_metrics_file_is_rebuilt_from_the_checkpoints(tmp_path, finished, digits):
    workdir = _copy(finished, tmp_path)
    (workdir / "metrics.jsonl").unlink()
    summary = loop.fit(finished["cfg"], workdir, dataset=digits).summary
    assert _metrics(workdir) == finished["metrics"]  # times too: the stored records
    assert summary["epochs_run"] == 4
    for key in ("best_epoch", "tested_epoch", "test/loss", "stop_reason"):
        assert summary[key] == finished["summary"][key], key


def test_records_lost_everywhere_are_named_and_epochs_run_stays_true(tmp_path, finished, digits):
    workdir = _copy(finished, tmp_path)
    (workdir / "metrics.jsonl").unlink()
    for step in (workdir / "checkpoints").iterdir():  # strip the records the steps keep
        if step.name.isdigit():
            meta_path = step / "meta" / "metadata"
            meta = json.loads(meta_path.read_text())
            meta.pop("history")
            meta_path.write_text(json.dumps(meta))
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    lost = [e for e in range(1, 5) if e not in kept]
    with pytest.warns(run_files.RunFilesWarning, match=r"the records of epochs .* are lost"):
        summary = loop.fit(finished["cfg"], workdir, dataset=digits).summary
    assert [r["epoch"] for r in _metrics(workdir)] == kept and lost
    assert summary["epochs_run"] == 4  # the last epoch trained, not the number of lines left


def test_a_corrupt_config_json_is_named_and_deleting_it_is_the_way_out(tmp_path, finished,
                                                                       digits):
    workdir = _copy(finished, tmp_path)
    (workdir / "config.json").write_text('{"seed": 0, "data": {')
    with pytest.raises(run_files.RunFilesError,
                       match=rf"{workdir / 'config.json'}: not valid JSON .* delete this file"):
        loop.fit(finished["cfg"], workdir, dataset=digits)
    (workdir / "config.json").unlink()
    summary = loop.fit(finished["cfg"], workdir, dataset=digits).summary
    assert summary["test/loss"] == finished["summary"]["test/loss"]


def test_a_damaged_best_checkpoint_says_which_weights_were_tested(tmp_path, digits):
    # min_delta far above any change: epoch 1 is the only best, patience 2 stops at epoch 3.
    cfg = make_config(**{"early_stopping.min_delta": 1e3, "early_stopping.patience": 2})
    workdir = tmp_path / "run"
    first = loop.fit(cfg, workdir, dataset=digits).summary
    assert first["best_epoch"] == 1 and first["tested_epoch"] == 1 and "tested" not in first
    state_files = [p for p in (workdir / "checkpoints" / "1" / "state").rglob("*") if p.is_file()]
    target = max(state_files, key=lambda p: p.stat().st_size)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 16] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:
                                                                      len(raw) // 2 + 16])
    target.write_bytes(bytes(raw))
    with pytest.warns(checkpointing.CheckpointDamageWarning, match="step 1 .* checksum"):
        summary = loop.fit(cfg, workdir, dataset=digits).summary
    assert summary["best_epoch"] == 1  # still the best epoch: it was finite
    assert summary["tested_epoch"] == 3
    assert summary["tested"].startswith("last state (epoch 3): the checkpoint of the best epoch 1")
    assert summary["test/loss"] != first["test/loss"]


# ------------------------------------------------------------------------------------------------
# 4. Bad values in data are refused at load, naming the file and the index.


def test_a_nan_pixel_in_float_idx_images_names_the_file_and_index(fake_mnist):
    images = fake_mnist.train_x.astype(np.float32) / 255
    images[17, 3, 5] = np.nan
    write_mnist(fake_mnist.dir, images, fake_mnist.train_y, fake_mnist.test_x / 255,
                fake_mnist.test_y)
    cfg = config.build(config.DataConfig, {"source": "idx", "data_dir": str(fake_mnist.dir),
                                           "val_size": 40, "normalize": "none"})
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: image 17 holds nan at "
                                         r"pixel \(3, 5\); the data must be finite"):
        data.load_dataset(cfg)
    images[17, 3, 5] = np.inf
    write_mnist(fake_mnist.dir, images, fake_mnist.train_y, fake_mnist.test_x / 255,
                fake_mnist.test_y)
    with pytest.raises(ValueError, match=r"image 17 holds inf"):
        data.load_dataset(cfg)


def test_a_stale_raw_idx_file_next_to_its_gz_is_announced(fake_mnist):
    stale = fake_mnist.train_y.copy()
    stale[:] = 0
    raw = fake_mnist.dir / "train-labels-idx1-ubyte"
    idx.write_idx(raw, stale)
    gz = fake_mnist.dir / "train-labels-idx1-ubyte.gz"
    os.utime(raw, ns=(gz.stat().st_mtime_ns - 10**9,) * 2)  # the raw copy is older
    with pytest.warns(idx.DataWarning, match=r"train-labels-idx1-ubyte and "
                                             r"train-labels-idx1-ubyte.gz hold the same role; "
                                             r"reading train-labels-idx1-ubyte.gz \(the newest"):
        raw_splits = idx.load_idx_dir(fake_mnist.dir)
    np.testing.assert_array_equal(raw_splits.train_y, fake_mnist.train_y)  # the .gz won
    os.utime(raw, ns=(gz.stat().st_mtime_ns + 10**9,) * 2)  # now the raw copy is newer
    with pytest.warns(idx.DataWarning, match="reading train-labels-idx1-ubyte "):
        assert (idx.load_idx_dir(fake_mnist.dir).train_y == 0).all()


def _arrays(**change):
    rng = np.random.default_rng(0)
    base = {"train_x": rng.normal(size=(8, 2, 2, 1)).astype(np.float32),
            "train_y": np.arange(8, dtype=np.int32) % 3,
            "val_x": rng.normal(size=(4, 2, 2, 1)).astype(np.float32),
            "val_y": np.arange(4, dtype=np.int32) % 3,
            "test_x": rng.normal(size=(4, 2, 2, 1)).astype(np.float32),
            "test_y": np.arange(4, dtype=np.int32) % 3, "num_classes": 3, "name": "toy"}
    base.update(change)
    return base


def _with(key, index, value, **change):
    a = _arrays(**change)
    arr = a[key].copy()
    arr[index] = value
    a[key] = arr
    return a


@pytest.mark.parametrize("kwargs,needle", [
    (_with("train_x", (5, 1, 0, 0), np.nan), r"train_x\[5\] holds nan at position \(1, 0, 0\); the data must be finite"),
    (_with("test_x", (2, 0, 0, 0), -np.inf), r"test_x\[2\] holds -inf"),
    (_with("train_y", 6, 3), r"train label 6 is 3, outside \[0, 3\)"),
    (_with("val_y", 1, -1), r"val label 1 is -1, outside \[0, 3\)"),
    (_arrays(train_y=np.array([0, 1, 2, 0.5, 1, 2, 0, 1], np.float32)),
     r"train_y has dtype float32; class labels .* must be integers .*soft_cross_entropy"),
    (_arrays(train_x=np.zeros((8, 2, 2, 1), np.int32)), r"train_x has dtype int32"),
    (_arrays(val_x=np.zeros((4, 3, 2, 1), np.float32)), r"val_x .*\(3, 2, 1\).*\(2, 2, 1\)"),
    (_arrays(test_y=np.zeros((4, 1), np.int32)), r"test_y has shape \(4, 1\)"),
    (_arrays(train_x=np.zeros((0, 2, 2, 1), np.float32), train_y=np.zeros(0, np.int32)),
     r"the train split is empty"),
    (_arrays(num_classes=-1), r"num_classes"),
], ids=["nan_image", "inf_image", "label_too_big", "negative_label", "float_labels",
        "integer_images", "example_shape", "label_shape", "empty_train", "num_classes"])
def test_dataset_validates_dtypes_ranges_and_shapes(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        data.Dataset(**kwargs)


def test_dataset_accepts_what_it_should():
    data.Dataset(**_arrays())
    # Regression targets (num_classes 0) may be any finite real numbers.
    data.Dataset(**_arrays(num_classes=0, train_y=np.linspace(-2, 2, 8, dtype=np.float32)))


# ------------------------------------------------------------------------------------------------
# 5. Errors a user causes: one line and a hint, the traceback behind --debug.


def test_a_config_error_is_one_line_and_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "new"
    proc = _run(_train_cmd(workdir, "optim.learning_rate=inf"))
    _assert_one_line_error(proc, "optim.learning_rate: inf out of range; expected a number > 0")
    assert not workdir.exists()


def test_a_misspelt_monitor_is_refused_before_the_first_epoch(tmp_path, digits):
    cfg = make_config(**{"early_stopping.monitor": "val/acuracy"})
    with pytest.raises(config.ConfigError, match=r"early_stopping.monitor: 'val/acuracy' is not "
                                                 r"a metric of this run; .*'val/accuracy'"):
        loop.fit(cfg, tmp_path / "run", dataset=digits)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # A monitor on what a hook adds is accepted: the hook declares it.
    class Extra(loop.Hook):
        metric_names = ("extra/score",)

        def metrics(self, event):
            event.record["extra/score"] = -float(event.epoch)

    cfg = make_config(**{"early_stopping.monitor": "extra/score", "train.num_epochs": 2})
    assert loop.fit(cfg, tmp_path / "ok", dataset=digits, hooks=[Extra()]).summary[
        "best_epoch"] == 2
    with pytest.raises(config.ConfigError, match="early_stopping.monitor"):
        loop.fit(make_config(**{"early_stopping.monitor": "extra/score"}), tmp_path / "no",
                 dataset=digits)


def test_bad_data_is_one_line_naming_the_file(tmp_path, fake_mnist):
    labels = fake_mnist.train_y.copy()
    labels[7] = 12
    idx.write_idx(fake_mnist.dir / "train-labels-idx1-ubyte.gz", labels)
    proc = _run([sys.executable, "-m", "experiments.train",
                 "--config=experiments/configs/mnist_mlp.py", f"--workdir={tmp_path / 'run'}",
                 f"--config.data.data_dir={fake_mnist.dir}", "--config.data.val_size=40",
                 "--config.train.num_epochs=1", "--config.train.progress=never"])
    _assert_one_line_error(proc, "train label 7 is 12, outside [0, 10)")
    missing = _run([sys.executable, "-m", "experiments.train",
                    "--config=experiments/configs/mnist_mlp.py", f"--workdir={tmp_path / 'run'}",
                    f"--config.data.data_dir={tmp_path / 'nowhere'}"])
    _assert_one_line_error(missing, f"{tmp_path / 'nowhere'}", "does not exist")
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    for env, flag in (({cli.DEBUG_ENV: "1"}, []), ({}, ["--debug"])):
        proc = _run(_train_cmd(tmp_path / "run", "optim.learning_rate=inf") + flag,
                    env=_env(**env))
        assert proc.returncode != 0 and "Traceback" in proc.stderr
        assert "ConfigError: optim.learning_rate: inf out of range" in proc.stderr


_FULL_DISK = textwrap.dedent("""
    import runpy, shutil, sys
    real = shutil.disk_usage
    shutil.disk_usage = lambda path: real(path)._replace(free=4096)  # 4 KiB left
    sys.argv = ["train"] + sys.argv[1:]
    runpy.run_module("experiments.train", run_name="__main__")
""")


def test_a_full_disk_names_the_workdir_and_the_free_space(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-c", _FULL_DISK, *_train_cmd(workdir)[3:]]
    proc = _run(cmd)
    error = _assert_one_line_error(proc, f"no space left on the device of the workdir {workdir}",
                                   "a checkpoint needs about 0.1 MiB", "the disk has 4.0 KiB free",
                                   "rerun the same command")
    assert "Event loop is closed" not in proc.stderr
    assert error.count("MiB") >= 1
    assert not list((workdir / "checkpoints").glob("*"))  # no partial step was started


def test_explain_reads_orbax_and_os_errors():
    """orbax wraps a failed write in a ValueError that only names the errno in its text."""
    wrapped = ValueError("Failed to write: [os_error_code='28'] No space left on device")
    try:
        raise RuntimeError("save failed") from wrapped
    except RuntimeError as e:
        chained = e
    for error in (wrapped, chained, OSError(errno.ENOSPC, "No space left on device")):
        assert cli.explain(error, "/some/run").startswith(
            "no space left on the device of the workdir /some/run (")
    assert "disk quota exceeded" in cli.explain(OSError(errno.EDQUOT, "quota"), "/w")
    assert "read-only filesystem" in cli.explain(OSError(errno.EROFS, "ro"), "/w")
    assert cli.explain(PermissionError(errno.EACCES, "Permission denied", "/w/x"), "/w") == \
        "permission denied: /w/x; use a --workdir where this user can write"
    assert cli.explain(FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/f"),
                       "/w") == "/d/f: No such file or directory"
    assert cli.explain(ValueError("data: bad"), "/w") == "data: bad"


def _tmpfs(path: pathlib.Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


def test_a_read_only_workdir_is_one_line(tmp_path):
    """A read-only tmpfs (where this user may mount one; skipped elsewhere)."""
    ro = tmp_path / "ro"
    if not _tmpfs(ro, "ro,size=64k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        proc = _run(_train_cmd(ro / "run"))
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True, check=False)
    _assert_one_line_error(proc, f"the workdir {ro / 'run'} is on a read-only filesystem")


def test_a_really_full_disk_then_resume_on_a_larger_one(tmp_path):
    """A 3 MiB tmpfs (where this user may mount one; skipped elsewhere): the first checkpoints
    (about 0.1 MiB each) fit, then one does not; the run copied to a larger disk resumes."""
    small = tmp_path / "small"
    if not _tmpfs(small, "size=3m"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    overrides = ("train.num_epochs=40", "early_stopping.enabled=False",
                 "checkpoint.keep_latest=40")
    try:
        workdir = small / "run"
        proc = _run(_train_cmd(workdir, *overrides))
        _assert_one_line_error(proc, f"no space left on the device of the workdir {workdir}",
                               "free", "rerun the same command")
        assert "Event loop is closed" not in proc.stderr
        saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                       if p.name.isdigit())
        assert saved and not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))
        moved = tmp_path / "big"
        shutil.copytree(workdir, moved)
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, check=False)
    again = _run(_train_cmd(moved, *overrides))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resumed from epoch {saved[-1]} " in again.stderr
    assert [r["epoch"] for r in _metrics(moved)] == list(range(1, 41))


# ------------------------------------------------------------------------------------------------
# 6. Exit status: 128 + the signal, after the summary is written.


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_tests_the_best_and_exits_128_plus_signal(tmp_path, sig):
    workdir = tmp_path / "run"
    cmd = _train_cmd(workdir, "train.num_epochs=2000", "early_stopping.enabled=False")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (workdir / "checkpoints" / "2").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert f"stopped by {sig.name}" in err and f"(exit status {128 + sig})" in err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and summary["signal"] == sig.name
    records = _metrics(workdir)
    assert summary["epochs_run"] == records[-1]["epoch"] == len(records) >= 2
    assert summary["epochs_run"] < 2000
    assert summary["tested_epoch"] == summary["epochs_run"]  # no early stopping: the last
    assert json.loads(out.strip().splitlines()[-1])["stop_reason"] == "interrupted"


# ------------------------------------------------------------------------------------------------
# 7. Numbers at the edges (the config and library checks are in test_config, test_layers and
# test_losses; here, the end-to-end effect).


def test_fractional_labels_no_longer_give_a_zero_loss():
    import jax.numpy as jnp
    with pytest.raises(TypeError, match="soft_cross_entropy"):
        losses.cross_entropy(jnp.zeros((1, 3)), jnp.array([0.5]))
