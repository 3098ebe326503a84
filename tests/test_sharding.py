"""Data parallelism over a device mesh: 4 CPU devices compute what 1 device computes.

The batch of every step is split over the mesh axis "data" (NamedSharding, parameters replicated,
no pmap), so gradients and BatchNorm's batch statistics are all-reduced: synchronised BatchNorm.
The 4-device run lives in a subprocess (tests/_dist_run.py), since the number of CPU devices is
fixed when JAX starts; it runs the same steps on `make_mesh(4)` and `make_mesh(1)`.

The comparison uses SGD with momentum: Adam's first update is lr * g / (|g| + eps), which turns
float32 rounding in an (exactly) zero gradient, e.g. of a constant border pixel whose effect
BatchNorm removes, into a difference of order lr between any two summation orders.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import _fault_run
from ml_practical import config
from ml_practical import data as data_lib
from ml_practical import experiment, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
HELPER = pathlib.Path(__file__).with_name("_dist_run.py")
OVERRIDES = {"optim.name": "momentum", "optim.learning_rate": 0.05, "model.norm": "batch",
             "model.drop_rate": 0.2}
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    args = [f"{k}={v!r}" for k, v in OVERRIDES.items()]
    done = subprocess.run([sys.executable, str(HELPER), str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    load = lambda name: dict(np.load(out / name, allow_pickle=False))
    return {"mesh4": load("mesh4.npz"), "mesh1": load("mesh1.npz"),
            "info": json.loads((out / "info.json").read_text())}


def _cfg() -> config.Config:
    return _fault_run.make_config(**OVERRIDES)


def test_four_devices_match_one_device(runs):
    four, one = runs["mesh4"], runs["mesh1"]
    assert sorted(four) == sorted(one)
    for stage in ("step1", "end"):
        for kind in (".params", ".batch_stats", ".opt_state"):
            keys = [k for k in one if k.startswith(f"{stage}/{kind}")]
            assert keys, (stage, kind)
            for key in keys:
                np.testing.assert_allclose(four[key], one[key], rtol=RTOL, atol=ATOL, err_msg=key)
    assert int(four["end/.step"]) == int(one["end/.step"]) == len(_batches(_cfg()))
    np.testing.assert_allclose(four["end/loss"], one["end/loss"], rtol=RTOL)
    np.testing.assert_allclose(four["end/val_loss"], one["end/val_loss"], rtol=RTOL)
    # Training moved the state (the comparison is not one of two initial states).
    assert not np.allclose(one["end/.params['dense_0']['kernel']"],
                           one["step1/.params['dense_0']['kernel']"], rtol=1e-3)


def _batches(cfg):
    n = len(data_lib.load_dataset(cfg.data).train_y)
    return data_lib.batch_indices(cfg.seed, 1, n, cfg.train.batch_size)


def test_batchnorm_statistics_are_those_of_the_global_batch(runs):
    """After one step, running var = 0.9 * 1 + 0.1 * var_B over all 64 rows, not 4 x 16 rows."""
    cfg = _cfg()
    dataset = data_lib.load_dataset(cfg.data)
    exp = experiment.build_experiment(cfg, dataset=dataset, mesh=train.make_mesh(1))
    kernel = np.asarray(exp.init_state().params["dense_0"]["kernel"])  # no bias before BN
    rows = _batches(cfg)[0]
    z = dataset.train_x[rows].reshape(len(rows), -1) @ kernel
    m = cfg.model.bn_momentum
    global_var = m + (1 - m) * z.var(0)
    shard_var = m + (1 - m) * np.mean([s.var(0) for s in np.split(z, 4)], axis=0)
    global_mean = (1 - m) * z.mean(0)

    got_var = runs["mesh4"]["step1/.batch_stats['norm_0']['var']"]
    got_mean = runs["mesh4"]["step1/.batch_stats['norm_0']['mean']"]
    np.testing.assert_allclose(got_var, global_var, rtol=1e-5)
    np.testing.assert_allclose(got_mean, global_mean, rtol=1e-4, atol=1e-6)
    # Per-device statistics would miss the spread between the shards' means (by the law of total
    # variance): visibly different numbers, so the check above could fail.
    assert np.max(np.abs(shard_var - got_var) / got_var) > 1e-2


def test_mesh_layout_is_data_parallel_without_pmap(runs):
    info = runs["info"]
    assert info["num_devices"] == 4
    four, one = info["mesh4"], info["mesh1"]
    # Parameters: replicated NamedSharding over all 4 devices.
    assert four["param_sharding"] == ["P()"] and four["param_devices"] == [4]
    assert four["param_fully_replicated"] and four["named_sharding"]
    # The compiled 4-device epoch reduces gradients and BN statistics across devices; the
    # 1-device one has nothing to reduce.
    assert four["all_reduce"] > 0 and one["all_reduce"] == 0
    # The old train module is now train (steps, epochs, mesh) and experiment (placement).
    for module in (train, experiment):
        source = pathlib.Path(module.__file__).read_text()
        assert "pmap" not in source.replace("no pmap", ""), module.__name__


def test_batch_size_not_divisible_by_devices_is_refused(runs):
    assert runs["info"]["bad_batch_error"] == (
        "train.batch_size: 30 does not divide over 4 devices; use a multiple of 4")


def test_a_resnet_on_four_devices_matches_one_device(tmp_path):
    """Synchronised BatchNorm through residual blocks (shortcut B's norm included): a ResNet-8
    step and epoch on 4 devices equal 1 device's, parameters, BN statistics and optimizer."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    resnet = {"name": "resnet", "depth": 8, "num_classes": 10, "width_multiplier": 0.5,
              "shortcut": "B", "norm": "batch"}
    args = ["optim.name='momentum'", "optim.learning_rate=0.05", f"model={resnet!r}"]
    done = subprocess.run([sys.executable, str(HELPER), str(tmp_path), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    four = dict(np.load(tmp_path / "mesh4.npz", allow_pickle=False))
    one = dict(np.load(tmp_path / "mesh1.npz", allow_pickle=False))
    assert sorted(four) == sorted(one)
    assert any("stage_1" in k and "shortcut_norm" in k for k in one)
    for key in one:
        np.testing.assert_allclose(four[key], one[key], rtol=RTOL, atol=ATOL, err_msg=key)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["mesh4"]["all_reduce"] > 0 and info["mesh4"]["param_fully_replicated"]
