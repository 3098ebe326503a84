"""Several processes as one data-parallel run: two CPU processes (gloo) on 127.0.0.1 against one
process with two devices, through the CLI (experiments/train.py), on the embedded digits data.

What must hold: the two runs compute the same training (parameters, BatchNorm statistics, metrics
and test metrics to float32 tolerance); process 0 alone writes the run files (each epoch once in
metrics.jsonl, one summary line on stdout); the checkpoint written by two processes restores in
a single process on one device.

Each process of the CLI costs ~9 s of CPU (imports, compilation), so the file launches three (the
pair and the reference, concurrently). Resuming a two-process run goes through the same
`restore_latest` path as the 4 -> 1 / 1 -> 4 device restores of tests/test_checkpointing.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import digits_mlp
from ml_practical import checkpointing, config, distributed, experiment, run_files, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Momentum SGD keeps two summation orders within float32 rounding (see tests/test_sharding.py).
OVERRIDES = {"model.widths": (32,), "model.norm": "batch", "train.num_epochs": 2,
             "train.progress": "never", "optim.name": "momentum", "optim.learning_rate": 0.05}
TIMEOUT = 150  # seconds per process: a hung collective fails the test instead of the suite
RTOL, ATOL = 1e-5, 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, *extra) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [sys.executable, "-m", "experiments.train", "--config=experiments/configs/digits_mlp.py",
            f"--workdir={workdir}", *flags, *extra]


def _env(devices: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS",) and not k.startswith("JAX_")}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start_pair(workdir) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen(_command(workdir, f"--coordinator_address=127.0.0.1:{port}",
                                      "--num_processes=2", f"--process_id={i}"),
                             cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=TIMEOUT))
    finally:
        for proc in procs:  # one process failing leaves the other waiting on a collective
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    return outs


def _config() -> config.Config:
    """The CLI's config (digits_mlp with OVERRIDES), parsed as `experiments.train` parses it."""
    cfg = digits_mlp.get_config()
    for dotted, value in OVERRIDES.items():
        section, field = dotted.split(".")
        cfg[section][field] = value
    return config.parse(cfg)


def _restore(workdir, epoch):
    """Step `epoch` of `workdir`'s checkpoints, restored in this process on one device."""
    cfg = _config()
    exp = experiment.build_experiment(cfg, mesh=train.make_mesh(1))
    ckpt = checkpointing.RunCheckpointer(pathlib.Path(workdir) / "checkpoints", cfg)
    try:
        return exp, ckpt.restore(epoch, exp.init_state())
    finally:
        ckpt.close()


def _assert_close_trees(a, b):
    la = jax.tree_util.tree_flatten_with_path(jax.device_get(a))[0]
    lb = jax.tree.leaves(jax.device_get(b))
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    multi, single = base / "two_processes", base / "two_devices"
    pair = _start_pair(multi)
    alone = subprocess.Popen(_command(single), cwd=ROOT, env=_env(2), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    outs = _finish(pair + [alone])
    return {"multi": multi, "single": single, "outs": outs}


def test_two_processes_train_like_one_process_with_two_devices(runs):
    multi, single = runs["multi"], runs["single"]
    s_multi = json.loads((multi / "summary.json").read_text())
    s_single = json.loads((single / "summary.json").read_text())
    assert len(s_multi["devices"]) == len(s_single["devices"]) == 2
    for key in ("test/loss", "test/accuracy"):
        assert s_multi[key] == pytest.approx(s_single[key], rel=RTOL), key
    assert s_multi["best_epoch"] == s_single["best_epoch"]
    assert s_multi["stop_reason"] == "max_epochs"

    records = run_files.RunFiles(multi, tensorboard=False).read_metrics()
    reference = run_files.RunFiles(single, tensorboard=False).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]  # process 0 alone wrote: each epoch once
    for got, want in zip(records, reference):
        for key in ("train/loss", "train/accuracy", "grad_norm", "val/loss", "val/accuracy"):
            assert got[key] == pytest.approx(want[key], rel=RTOL), key

    # The checkpoints of both runs, restored here on one device: parameters, BatchNorm running
    # statistics and optimizer state agree, and the 2-process checkpoint is a 1-device state now.
    _, got = _restore(multi, 2)
    exp, want = _restore(single, 2)
    assert got.meta["checksum"] == checkpointing.state_checksum(got.state)
    _assert_close_trees(got.state, want.state)
    assert float(np.abs(np.asarray(got.state.batch_stats["norm_0"]["mean"])).max()) > 0
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(got.state.params)} == {1}
    test = exp.evaluate(got.state.params, got.state.batch_stats, exp.test_split)
    assert test["loss"] == pytest.approx(s_multi["test/loss"], rel=RTOL)


def test_only_process_zero_reports(runs):
    (out0, _), (out1, err1), _ = runs["outs"]
    summary0 = json.loads(out0.strip().splitlines()[-1])
    assert summary0["epochs_run"] == 2
    assert "test/loss" not in out1 and "Traceback" not in err1
    assert not list(runs["multi"].glob("*.tmp"))
    # Process 0 held the workdir lock for both (process 1 was not refused) and released it.
    assert (runs["multi"] / ".lock").read_text() == ""
    # One TensorBoard event file: process 1 opened no writer.
    assert len(list((runs["multi"] / "tb").glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("args,missing", [
    (("127.0.0.1:1234", None, None), "['num_processes', 'process_id']"),
    ((None, 2, 0), "['coordinator_address']"),
])
def test_initialize_refuses_partial_arguments(args, missing):
    with pytest.raises(ValueError, match=re.escape(f"distributed: {missing} missing")):
        distributed.initialize(*args)


def test_initialize_without_arguments_is_a_single_process():
    assert distributed.initialize() is False
    assert jax.process_count() == 1 and distributed.is_primary()
    assert distributed.all_agree(True) and not distributed.all_agree(False)
