"""Input placement: host streaming trains bit-identically to device-resident data; prefetching."""

import dataclasses
import itertools
import json
import threading
import time

import jax
import numpy as np
import pytest

from experiments.configs import mnist_mlp
from ml_practical import config
from ml_practical import data as data_lib
from ml_practical import experiment, input_pipeline, loop, tasks, train
from tests.conftest import POISON
from tests.conftest import tiny, tiny_config


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def _records(workdir):
    # Timings differ between runs; every other number must be equal.
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if not k.endswith("time_s")} for l in lines]


# ------------------------------------------------------------------------------------------------
# Same results either way.


def test_host_fit_is_bit_identical_to_device_fit(tmp_path, tiny_dataset):
    """fit with the training set on the host (chunks 3 + 3 + 2 of an 8-step epoch) == on device.

    Bit-identical on CPU, not just within float32 tolerance: both placements run the same scan body
    on the same rows, and XLA compiles the step the same way whether its batch was gathered on the
    device or arrived as a slice of the chunk.
    """
    device = loop.fit(tiny(**{"data.placement": "device", "train.num_epochs": 2}),
                      tmp_path / "d", dataset=tiny_dataset)
    host = loop.fit(tiny(**{"data.placement": "host", "data.chunk_steps": 3,
                            "train.num_epochs": 2}), tmp_path / "h", dataset=tiny_dataset)
    assert _leaves_equal(device.state.params, host.state.params)
    assert _leaves_equal(device.state.batch_stats, host.state.batch_stats)
    assert _leaves_equal(device.state.opt_state, host.state.opt_state)
    assert _records(tmp_path / "d") == _records(tmp_path / "h")
    assert len(_records(tmp_path / "h")) == 2
    assert host.summary["test/loss"] == device.summary["test/loss"]
    on_disk = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert on_disk["input"]["placement"] == "host" and on_disk["input"]["chunk_steps"] == 3
    assert device.summary["input"]["placement"] == "device"
    # The comparison is not vacuous: training moved the parameters.
    fresh = experiment.build_experiment(tiny(), dataset=tiny_dataset).init_state()
    assert not _leaves_equal(fresh.params, host.state.params)


def test_host_epoch_replays_a_nonfinite_epoch_like_device(tiny_dataset):
    """A NaN input row: host mode's guarded replay gives the device mode's state and metrics."""
    train_x = np.array(tiny_dataset.train_x)
    train_x[7] = POISON
    dataset = dataclasses.replace(tiny_dataset, train_x=train_x)
    out = {}
    for placement in ("device", "host"):
        exp = experiment.build_experiment(
            tiny(**{"data.placement": placement, "data.chunk_steps": 4}), dataset=dataset)
        state = exp.init_state()
        metrics = []
        for epoch in (1, 2):
            state, m = exp.run_epoch(state, epoch)
            metrics.append(m)
        out[placement] = state, metrics
    (d_state, d_m), (h_state, h_m) = out["device"], out["host"]
    assert _leaves_equal(d_state, h_state)
    for a, b in zip(d_m, h_m):
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    # Row 7 is drawn once per epoch: exactly one skipped step each, and params stayed finite.
    assert [int(m["skipped"].sum()) for m in h_m] == [1, 1]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(h_state.params))


@pytest.mark.parametrize("chunk_steps,shapes", [(3, 2), (50, 1)])
def test_streamed_epoch_handles_partial_and_oversized_chunks(tiny_dataset, chunk_steps, shapes):
    """8 steps in chunks of 3 (3, 3, 2: two compiled shapes) or of 50 (one chunk of 8)."""
    exp = experiment.build_experiment(tiny(**{"data.placement": "device"}),
                                      dataset=tiny_dataset)
    chunk_fn = train.make_train_epoch(exp.model, exp.tx,
                                      task=tasks.Classification(label_smoothing=0.1),
                                      mesh=exp.mesh, donate=False, gather=False)
    streamed = input_pipeline.make_streamed_epoch(chunk_fn, exp.mesh, chunk_steps)
    idx = exp.batch_indices(1)
    ref_state, ref_m = exp.epoch_fn_guarded(exp.init_state(), *exp.train_arrays, idx)
    state, m = streamed(exp.init_state(), tiny_dataset.train_x, tiny_dataset.train_y, idx)
    assert int(state.step) == exp.steps_per_epoch == 8
    assert _leaves_equal(state, ref_state)
    ref_m = jax.device_get(ref_m)
    assert all(m[k].shape == (8,) and np.array_equal(m[k], ref_m[k]) for k in ref_m)
    assert chunk_fn._cache_size() == shapes


def test_host_chunks_hold_the_epoch_rows_in_order(tiny_dataset):
    mesh = train.make_mesh()
    sharding = input_pipeline.chunk_sharding(mesh)
    idx = data_lib.batch_indices(0, 1, len(tiny_dataset.train_y), 32)
    chunks = list(input_pipeline.host_chunks(tiny_dataset.train_x, tiny_dataset.train_y, idx, 3,
                                             sharding))
    assert [c[0].shape for c in chunks] == [(3, 32, 4, 4, 1), (3, 32, 4, 4, 1), (2, 32, 4, 4, 1)]
    assert all(c[0].sharding.spec == sharding.spec for c in chunks)
    np.testing.assert_array_equal(np.concatenate([np.asarray(c[0]) for c in chunks]),
                                  tiny_dataset.train_x[idx])
    np.testing.assert_array_equal(np.concatenate([np.asarray(c[1]) for c in chunks]),
                                  tiny_dataset.train_y[idx])


class _FakeSharding:
    """Just the method `local_batch_slice` reads, for meshes this 1-device CPU cannot build."""

    def __init__(self, batch_slices):
        self._slices = batch_slices

    def addressable_devices_indices_map(self, shape):
        return {i: (slice(None), s) for i, s in enumerate(self._slices)}


def test_local_batch_slice_is_this_process_rows():
    mesh = train.make_mesh(1)
    assert input_pipeline.local_batch_slice(input_pipeline.chunk_sharding(mesh),
                                            (4, 32)) == slice(0, 32)
    # Process 1 of 4 with two devices of batch 32: rows [8, 16), as two adjacent device slices.
    fake = _FakeSharding([slice(12, 16), slice(8, 12)])
    assert input_pipeline.local_batch_slice(fake, (4, 32)) == slice(8, 16)
    with pytest.raises(ValueError, match="contiguous"):
        input_pipeline.local_batch_slice(_FakeSharding([slice(0, 8), slice(16, 24)]), (4, 32))


# ------------------------------------------------------------------------------------------------
# Prefetching.


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "ml_practical-prefetch"]


def test_prefetch_yields_every_item_in_order():
    assert list(input_pipeline.prefetch(iter(range(25)), depth=2)) == list(range(25))
    assert list(input_pipeline.prefetch([], depth=1)) == []
    assert not _prefetch_threads()


def test_prefetch_propagates_the_producer_exception_after_earlier_items():
    def items():
        yield from range(3)
        raise RuntimeError("disk on fire at item 3")

    got = []
    with pytest.raises(RuntimeError, match="disk on fire at item 3"):
        for x in input_pipeline.prefetch(items(), depth=2):
            got.append(x)
    assert got == [0, 1, 2]
    assert not _prefetch_threads()


def test_prefetch_runs_at_most_depth_ahead_and_stops_with_the_consumer():
    produced = []
    counter = (produced.append(i) or i for i in itertools.count())  # an endless producer
    it = input_pipeline.prefetch(counter, depth=2)
    assert next(it) == 0
    time.sleep(0.3)
    # One consumed, two queued, one produced and waiting for room: never more.
    assert len(produced) == 4
    it.close()
    assert not _prefetch_threads()
    assert len(produced) == 4
    with pytest.raises(ValueError, match="depth"):
        input_pipeline.prefetch([], depth=0)


# ------------------------------------------------------------------------------------------------
# Choosing the placement.


def test_auto_resolves_against_the_budget():
    mib = 2**20
    cfg = config.DataConfig(placement="auto", device_budget_mb=2.0, chunk_steps=32)
    assert input_pipeline.resolve_placement(cfg, 2 * mib).placement == "device"  # fits exactly
    assert input_pipeline.resolve_placement(cfg, 2 * mib + 1).placement == "host"
    forced = input_pipeline.resolve_placement(dataclasses.replace(cfg, placement="device"),
                                              10 * mib)
    assert forced.placement == "device" and forced.requested == "device"
    assert input_pipeline.resolve_placement(config.DataConfig(), 1).info() == {
        "requested": "auto", "placement": "device", "train_bytes": 1,
        "budget_bytes": 1024 * mib, "chunk_steps": 32}


def test_auto_keeps_a_training_set_over_budget_on_the_host(tiny_dataset):
    # 256 x 16 float32 + 256 int32 = 17408 bytes > 0.01 MiB = 10485 bytes.
    exp = experiment.build_experiment(tiny(**{"data.device_budget_mb": 0.01}),
                                      dataset=tiny_dataset)
    assert exp.placement.placement == "host" and exp.placement.train_bytes == 17408
    assert all(isinstance(a, np.ndarray) for a in exp.train_arrays)  # never put on a device
    big = experiment.build_experiment(tiny(**{"data.device_budget_mb": 0.02}),
                                      dataset=tiny_dataset)
    assert big.placement.placement == "device"
    assert all(isinstance(a, jax.Array) for a in big.train_arrays)


@pytest.mark.parametrize("field,value,needle", [
    ("placement", "gpu", r"data.placement: unknown 'gpu'; expected one of "
                         r"\['auto', 'device', 'host'\]"),
    ("device_budget_mb", -1.0, r"data.device_budget_mb: -1.0 out of range; "
                               r"expected a number >= 0"),
    ("chunk_steps", 0, r"data.chunk_steps: 0 out of range; expected an integer >= 1"),
])
def test_bad_placement_fields_name_the_field(field, value, needle):
    # Refused when the config is parsed, before an experiment (or anything else) is built.
    with pytest.raises(config.ConfigError, match=needle):
        config.parse(tiny_config(**{f"data.{field}": value}))


PLACEMENT_FIELDS = ("placement", "device_budget_mb", "chunk_steps")  # what resolve_placement reads


def test_config_and_loader_agree_on_the_placement_fields():
    cfg = mnist_mlp.get_config()
    # The placement fields and their defaults are declared once, in config.DataConfig.
    defaults = {f.name: f.default for f in dataclasses.fields(config.DataConfig)
                if f.name in PLACEMENT_FIELDS}
    assert tuple(defaults) == PLACEMENT_FIELDS
    assert {k: cfg.data[k] for k in PLACEMENT_FIELDS} == defaults
    # load_dataset accepts (and ignores) them; a misspelt one still fails.
    cfg.data.source, cfg.data.val_size = "digits", 100
    assert len(data_lib.load_dataset(config.build(config.DataConfig, cfg.data)).val_y) == 100
    with pytest.raises(ValueError, match="placment"):
        config.build(config.DataConfig, {"source": "digits", "placment": "host"})
