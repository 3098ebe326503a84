"""A learnable image dataset made in the test: class templates plus Gaussian noise.

Nothing is downloaded or read: each class is a fixed random 8x8x1 template and an example is its
class's template plus N(0, noise²) per pixel, so a small network separates the classes in a few
steps, and how hard that is is set by `noise`.
"""

import numpy as np

from ml_practical import data as data_lib


def template_dataset(seed=0, n_train=256, n_val=64, n_test=128, classes=10, noise=1.5):
    """Train / val / test splits of the template images (the same templates in each split)."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(0, 1, (classes, 8, 8, 1)).astype(np.float32)

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        x = templates[y] + rng.normal(0, noise, (n, 8, 8, 1)).astype(np.float32)
        return x, y

    (tx, ty), (vx, vy), (sx, sy) = split(n_train), split(n_val), split(n_test)
    return data_lib.Dataset(tx, ty, vx, vy, sx, sy, num_classes=classes, name="tiny")
