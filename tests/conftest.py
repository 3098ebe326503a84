"""Shared fixtures: tiny datasets and configs that train in seconds on 2 CPU cores."""

import types

import numpy as np
import pytest

from experiments.configs import mnist_mlp
from ml_practical import config
from ml_practical import data as data_lib
from ml_practical import idx

# A finite input value that overflows float32 inside the first layers (its square, BatchNorm's
# variance, is inf): how the non-finite-step guard is exercised now that a Dataset refuses NaN.
POISON = np.float32(3e38)

# The fake MNIST directory of `fake_mnist`: train / test rows and image size.
N_TRAIN, N_TEST, H, W = 200, 50, 28, 28


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


def write_mnist(dirpath, train_x, train_y, test_x, test_y, gz=True):
    """Writes the four MNIST-format files (IDX, gzip-compressed by default) into `dirpath`."""
    ext = ".gz" if gz else ""
    idx.write_idx(dirpath / f"train-images-idx3-ubyte{ext}", train_x)
    idx.write_idx(dirpath / f"train-labels-idx1-ubyte{ext}", train_y)
    idx.write_idx(dirpath / f"t10k-images-idx3-ubyte{ext}", test_x)
    idx.write_idx(dirpath / f"t10k-labels-idx1-ubyte{ext}", test_y)


@pytest.fixture
def fake_mnist(tmp_path):
    """A tiny MNIST-format directory: uint8 images with a constant border pixel, labels 0..9."""
    rng = np.random.default_rng(123)
    train_x = rng.integers(0, 256, (N_TRAIN, H, W), dtype=np.uint8)
    test_x = rng.integers(0, 256, (N_TEST, H, W), dtype=np.uint8)
    train_x[:, 0, 0] = 0  # constant over train, like MNIST's border
    train_y = (np.arange(N_TRAIN) % 10).astype(np.uint8)
    test_y = (np.arange(N_TEST) % 10).astype(np.uint8)
    d = tmp_path / "fake_mnist"
    d.mkdir()
    write_mnist(d, train_x, train_y, test_x, test_y)
    return types.SimpleNamespace(dir=d, train_x=train_x, train_y=train_y, test_x=test_x,
                                 test_y=test_y)


class CallCounter:
    """Wraps a function and records the positional arguments of every call (for monkeypatching
    `loop.fit` and friends to count what a study trained)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        return self.fn(*args, **kwargs)
