"""Shared fixtures: tiny datasets and configs that train in seconds on 2 CPU cores."""

import numpy as np
import pytest

from experiments.configs import mnist_mlp
from ml_practical import config
from ml_practical import data as data_lib


def make_tiny_dataset(n_train=256, n_val=64, n_test=64, shape=(4, 4, 1), num_classes=3, seed=0):
    """Linearly separable-ish blobs: class c has mean +c on a random direction, plus noise."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    centers = rng.standard_normal((num_classes, d)).astype(np.float32) * 2.0

    def split(n):
        y = rng.integers(0, num_classes, n).astype(np.int32)
        x = centers[y] + rng.standard_normal((n, d)).astype(np.float32)
        return x.reshape((n, *shape)), y

    (trx, try_), (vx, vy), (tx, ty) = split(n_train), split(n_val), split(n_test)
    return data_lib.Dataset(train_x=trx, train_y=try_, val_x=vx, val_y=vy, test_x=tx, test_y=ty,
                            num_classes=num_classes, name="tiny")


def tiny_config(**overrides):
    """A raw config (an `ml_collections.ConfigDict`, as a config file returns) for tiny runs.

    Overrides are "section.field" = value; parse it with `config.parse` (or use `tiny`).
    """
    cfg = mnist_mlp.get_config()
    cfg.data.source = "digits"
    cfg.model.widths = (16,)
    cfg.model.num_classes = 3
    cfg.train.num_epochs = 3
    cfg.train.batch_size = 32
    cfg.train.eval_batch_size = 32
    cfg.train.progress = "never"
    for key, value in overrides.items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


def tiny(**overrides) -> config.Config:
    """`tiny_config(**overrides)`, parsed and checked: what `loop.fit` takes."""
    return config.parse(tiny_config(**overrides))


@pytest.fixture
def tiny_dataset():
    return make_tiny_dataset()
