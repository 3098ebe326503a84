"""Tests for ml_practical.analysis.symmetry: unit spread; symmetry under constant and zero init."""

import itertools

import jax
import numpy as np
import optax
import pytest

from ml_practical import initializers, models, train
from ml_practical.analysis import symmetry
from tests.conftest import make_tiny_dataset


def test_unit_spread_is_the_max_pairwise_difference():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(7, 5)), rng.normal(size=5)
    w = np.vstack([kernel, bias])
    brute = max(np.abs(w[:, i] - w[:, j]).max() for i, j in itertools.combinations(range(5), 2))
    assert symmetry.unit_spread(kernel, bias) == pytest.approx(brute)
    assert symmetry.unit_spread(np.ones((3, 4))) == 0.0


def _train_steps(model, dataset, num_steps=5):
    tx = optax.adam(1e-2)
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), dataset.train_x.shape[1:])
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx))
    for i in range(num_steps):
        sl = slice(32 * i, 32 * (i + 1))
        state, _ = step(state, {"image": dataset.train_x[sl], "label": dataset.train_y[sl]})
    return state


def test_constant_init_stays_exactly_symmetric_and_dropout_breaks_it():
    ds = make_tiny_dataset()
    const = initializers.constant(0.01)
    kwargs = dict(widths=(16, 8), num_classes=3, hidden_init=const, output_init=const)
    sym = symmetry.unit_symmetry(_train_steps(models.MLP(**kwargs), ds).params)
    for layer in ("dense_0", "dense_1"):
        assert sym[layer]["spread"] == 0.0
        assert sym[layer]["distinct_units"] == 1
        assert sym[layer]["scale"] > 0.01  # the weights did move
    sym = symmetry.unit_symmetry(_train_steps(models.MLP(drop_rate=0.5, **kwargs), ds).params)
    for layer in ("dense_0", "dense_1"):
        assert sym[layer]["spread"] > 1e-4
        assert sym[layer]["distinct_units"] == sym[layer]["num_units"]


def test_zero_init_relu_moves_only_the_head_bias():
    # relu'(0) = 0 in JAX, and with zero hidden activations the head kernel's gradient is 0 too.
    ds = make_tiny_dataset()
    model = models.MLP(widths=(16,), num_classes=3, hidden_init="zeros", output_init="zeros")
    params = _train_steps(model, ds).params
    for leaf in (params["dense_0"]["kernel"], params["dense_0"]["bias"], params["head"]["kernel"]):
        assert not np.any(np.asarray(leaf))
    assert np.any(np.asarray(params["head"]["bias"]))
