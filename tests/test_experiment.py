"""build_experiment: data checked against the model and the devices, batch indices, guard modes,
programs and device data shared by the runs of a study."""

import jax
import numpy as np
import pytest

from ml_practical import config, experiment, train
from tests.conftest import make_tiny_dataset, tiny, tiny_config


@pytest.mark.parametrize("overrides,needle", [
    ({"train.label_smoothing": 1.0}, "train.label_smoothing"),
    ({"train.num_epochs": 0}, "train.num_epochs"),
    ({"optim.name": "rmsprop"}, "optim.name"),
    ({"optim.l2": -1e-4}, "optim.l2"),
    ({"optim.clip_value": -1.0}, "optim.clip_value"),
    ({"model.drop_rate": 1.2}, "drop_rate"),
    ({"model.hidden_init": "glorot"}, "glorot"),
])
def test_bad_config_names_the_field(overrides, needle):
    # Refused when the config is parsed, before any data or model is built.
    with pytest.raises(ValueError, match=needle):
        config.parse(tiny_config(**overrides))


@pytest.mark.parametrize("overrides,needle", [
    ({"train.batch_size": 1000}, "train.batch_size"),
    ({"model.num_classes": 5}, "model.num_classes"),
])
def test_config_against_the_data_names_the_field(tiny_dataset, overrides, needle):
    with pytest.raises(ValueError, match=needle):
        experiment.build_experiment(tiny(**overrides), dataset=tiny_dataset)


def test_batch_must_divide_over_devices(tiny_dataset):
    mesh = train.make_mesh()
    n = mesh.devices.size
    if n == 1:
        # With one device every batch divides; check the rule on a fake 3-device count instead.
        cfg = tiny(**{"train.batch_size": 32})
        assert cfg.train.batch_size % 3 != 0
        with pytest.raises(ValueError, match="train.num_devices"):
            train.make_mesh(3)
    else:
        with pytest.raises(ValueError, match="does not divide"):
            experiment.build_experiment(tiny(**{"train.batch_size": n * 8 + 1}),
                                        dataset=tiny_dataset)


def test_batch_indices_shuffle_and_full(tiny_dataset):
    exp = experiment.build_experiment(tiny(), dataset=tiny_dataset)
    idx = np.asarray(exp.batch_indices(1))
    n = len(tiny_dataset.train_y)
    assert idx.shape == (n // 32, 32)
    assert len(set(idx.ravel().tolist())) == idx.size          # a permutation's prefix
    assert not np.array_equal(idx, np.asarray(exp.batch_indices(2)))  # a new order each epoch
    full = experiment.build_experiment(
        tiny(**{"train.batching": "full", "train.steps_per_epoch": 5}), dataset=tiny_dataset)
    fidx = np.asarray(full.batch_indices(1))
    assert fidx.shape == (5, n) and full.steps_per_epoch == 5
    assert all(np.array_equal(row, np.arange(n)) for row in fidx)


def test_guard_modes_build_the_epochs_they_say(tiny_dataset):
    replay = experiment.build_experiment(tiny(), dataset=tiny_dataset)
    inline = experiment.build_experiment(tiny(**{"train.guard": "inline"}), dataset=tiny_dataset)
    off = experiment.build_experiment(tiny(**{"train.skip_nonfinite": False}),
                                      dataset=tiny_dataset)
    assert replay.epoch_fn_guarded is not None
    assert inline.epoch_fn_guarded is None and off.epoch_fn_guarded is None
    # A NaN batch: replay and inline both skip it (params stay finite), off does not.
    bad_x = np.array(tiny_dataset.train_x)
    bad_x[:] = np.nan
    for exp, finite in ((replay, True), (inline, True), (off, False)):
        state = exp.init_state()
        state, m = exp.epoch_fn(state, bad_x, exp.train_arrays[1], exp.batch_indices(1))
        if exp.epoch_fn_guarded is not None:
            state, m = train.replay_if_nonfinite(exp.epoch_fn, exp.epoch_fn_guarded,
                                                 exp.init_state(), bad_x, exp.train_arrays[1],
                                                 exp.batch_indices(1))
        ok = all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))
        assert ok == finite
        assert float(np.sum(m["skipped"])) == (len(m["skipped"]) if finite else 0)


def test_runs_of_one_program_share_the_compiled_functions_and_the_device_data(tiny_dataset):
    experiment.clear_caches()
    a = experiment.build_experiment(tiny(), dataset=tiny_dataset)
    b = experiment.build_experiment(config.override(tiny(), {"seed": 7}), dataset=tiny_dataset)
    other = experiment.build_experiment(tiny(**{"optim.l2": 1e-3}), dataset=tiny_dataset)
    # Another seed is the same program; another optimizer is not.
    assert b.epoch_fn is a.epoch_fn and b.evaluate is a.evaluate and b.tx is a.tx
    assert other.epoch_fn is not a.epoch_fn
    # One device copy of the dataset for all of them.
    assert all(x is y for x, y in zip(a.train_arrays, other.train_arrays))
    assert all(x is y for x, y in zip(a.val_split, b.val_split))
    # Seed 7 runs through a's compiled epoch: one compilation for both seeds.
    state_a, _ = a.run_epoch(a.init_state(), 1)
    state_b, _ = b.run_epoch(b.init_state(), 1)
    assert a.epoch_fn._cache_size() == 1
    # Sharing is memoization only: a fresh build (nothing cached) gives the same bits.
    experiment.clear_caches()
    fresh = experiment.build_experiment(config.override(tiny(), {"seed": 7}), dataset=tiny_dataset)
    assert fresh.epoch_fn is not a.epoch_fn
    state_f, _ = fresh.run_epoch(fresh.init_state(), 1)
    for x, y in zip(jax.tree.leaves(state_b), jax.tree.leaves(state_f)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_program_cache_is_bounded():
    experiment.clear_caches()
    dataset = make_tiny_dataset()
    for i in range(experiment.PROGRAM_CACHE_SIZE + 3):
        experiment.build_experiment(tiny(**{"optim.learning_rate": 1e-3 * (i + 1)}),
                                    dataset=dataset)
    assert len(experiment._PROGRAMS) == experiment.PROGRAM_CACHE_SIZE
