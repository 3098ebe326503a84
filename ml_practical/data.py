"""Data: sources (IDX directory, TFDS, embedded sklearn digits) -> numpy arrays -> seeded batches.

Three sources produce the same raw splits (images, integer labels, an official test split):

* ``"idx"``: a directory in the MNIST / Fashion-MNIST IDX format (``train-images-idx3-ubyte[.gz]``
  and friends), read by a small strict reader with no pickle. ``data.data_dir``, or when it is
  empty the environment variable ``ML_PRACTICAL_DATA_DIR`` (the one variable this package reads),
  names the directory.
* ``"tfds"``: TensorFlow Datasets, an optional extra (``pip install -e ".[tfds]"``). Without
  ``data.download`` nothing touches the network: unprepared data fails fast with a message.
* ``"digits"``: sklearn's bundled 8x8 digits (1797 images), for tests and demos with no files.

`load_dataset` then carves a validation split out of train with a seeded permutation, computes the
input normalization statistics on the remaining train part only (so neither validation nor test
leaks into preprocessing; the chapter's "normalize inputs (zero mean, unit variance)"), and returns
a frozen `Dataset` of float32 NHWC images and int32 labels.

`epoch_permutation` / `batch_indices` make the batch order a pure function of (seed, epoch), so a
run resumed from a checkpoint at epoch k sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from ml_practical.config import DataConfig
from ml_practical.idx import (DATA_DIR_ENV, DataWarning, RawSplits,  # noqa: F401
                              first_non_finite, load_idx_dir, read_idx, require_finite,
                              resolve_data_dir,
                              write_idx)

# --------------------------------------------------------------------------- the dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation / test splits, ready for a model.

    Images are float32 of shape (N, H, W, C), normalized with `norm_stats` = (mean, std) computed
    on the train split only: x = (raw / scale - mean) / std. Labels are int32 in [0, num_classes).
    `load_dataset` marks the arrays read-only: a Dataset is shared by every consumer of a run.

    Built by hand (`loop.fit(..., dataset=...)`), a Dataset is checked on construction:

    * inputs: a floating dtype, at least 2 dimensions (examples first), the same shape per example
      in all three splits, every value finite;
    * targets: one per example (shape (N,));
    * `num_classes` > 0 (classification): labels of an integer dtype in [0, num_classes);
      `num_classes` == 0 (regression, binary targets): real-valued, finite targets.

    A violation raises ValueError naming the split, the index of the first bad example and the
    value, so NaN pixels or a label 12 of a 10-class problem never reach training.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    name: str
    norm_stats: tuple[Any, Any] = (0.0, 1.0)
    normalize: str = "none"

    def __post_init__(self):
        who = f"Dataset {self.name!r}"
        if (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer))
                or self.num_classes < 0):
            raise ValueError(f"{who}: num_classes={self.num_classes!r}; expected an integer >= 0 "
                             "(0: real-valued targets)")
        shape = None
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            x_dtype, y_dtype = getattr(x, "dtype", None), getattr(y, "dtype", None)
            if x_dtype is None or not np.issubdtype(x_dtype, np.floating):
                raise ValueError(f"{who}: {split}_x has dtype {x_dtype}; expected floating point "
                                 "(scale integer pixels first, as `load_dataset` does)")
            if x.ndim < 2:
                raise ValueError(f"{who}: {split}_x has shape {x.shape}; expected (N, ...) with at "
                                 "least one axis per example")
            if shape is not None and x.shape[1:] != shape:
                raise ValueError(f"{who}: {split}_x examples have shape {x.shape[1:]} but train_x "
                                 f"examples {shape}")
            shape = x.shape[1:]
            if y_dtype is None or y.ndim != 1:
                raise ValueError(f"{who}: {split}_y has shape {getattr(y, 'shape', None)}; "
                                 "expected (N,)")
            if len(x) != len(y):
                raise ValueError(f"{who}: {split}_x has {len(x)} examples but "
                                 f"{split}_y has {len(y)}")
            for name, array in ((f"{split}_x", x), (f"{split}_y", y)):
                require_finite(array, lambda i, name=name: f"{who}: {name}[{i}]", "position")
            if self.num_classes:
                if not np.issubdtype(y_dtype, np.integer):
                    raise ValueError(f"{who}: {split}_y has dtype {y_dtype}; class labels "
                                     f"(num_classes={self.num_classes}) must be integers (soft "
                                     "targets: `losses.soft_cross_entropy`)")
                _check_labels(y, f"{who}: {split}", self.num_classes)
            elif not (np.issubdtype(y_dtype, np.floating) or np.issubdtype(y_dtype, np.integer)):
                raise ValueError(f"{who}: {split}_y has dtype {y_dtype}; expected real numbers")
        if len(self.train_y) == 0:
            raise ValueError(f"{who}: the train split is empty")

    def info(self) -> dict[str, Any]:
        """A JSON-serializable summary for logs and results files."""
        mean, std = (np.asarray(s, np.float64) for s in self.norm_stats)
        return {
            "name": self.name,
            "num_classes": int(self.num_classes),
            "image_shape": [int(d) for d in self.train_x.shape[1:]],
            "num_train": int(len(self.train_y)),
            "num_val": int(len(self.val_y)),
            "num_test": int(len(self.test_y)),
            "normalize": self.normalize,
            # Per-pixel statistics are summarized by their average; the arrays live in norm_stats.
            "norm_mean": float(mean.mean()),
            "norm_std": float(std.mean()),
        }


# --------------------------------------------------------------------------- embedded and TFDS


def load_digits(test_fraction: float = 0.2) -> RawSplits:
    """sklearn's bundled 8x8 digits (1797 images, pixel values 0..16), no download.

    The set has no official test split; a permutation with the fixed seed 0 holds out
    `test_fraction`, so the test set is the same whatever `data.split_seed` says.
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # sklearn is slow to import

    bunch = _sk_load_digits()
    images = bunch.images.astype(np.uint8)  # integer counts 0..16 stored as float64
    labels = bunch.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(labels))
    n_test = math.ceil(test_fraction * len(labels))  # sklearn's train_test_split rounds up too
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return RawSplits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                     name="digits", scale=16.0, num_classes=10)


def load_tfds(name: str, data_dir: str | os.PathLike | None = None,
              download: bool = False) -> RawSplits:
    """Reads the "train" and "test" splits of a TensorFlow Datasets dataset into numpy.

    With `download=False` the builder must already be prepared under `data_dir`; this is checked
    before anything could reach the network, so an offline machine fails in seconds with a message
    instead of hanging on a download.

    Args:
      name: TFDS name, e.g. "mnist" or "fashion_mnist".
      data_dir: TFDS data directory (None: TFDS's default, ~/tensorflow_datasets or $TFDS_DATA_DIR).
      download: allow `download_and_prepare` (needs internet).

    Returns:
      RawSplits with images (N, H, W, C) as stored; `num_classes` from the label feature.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError('data.source="tfds" needs TensorFlow Datasets, an optional extra: '
                          'pip install -e ".[tfds]"') from e
    data_dir = None if data_dir in (None, "") else os.path.expanduser(os.fspath(data_dir))
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        looked = getattr(builder, "data_dir", None) or data_dir or "TFDS's default data_dir"
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared (looked in {looked}) and data.download is "
            f"False. Either set data.download=True on a machine with internet, or run "
            f"`tfds build {name} --data_dir=DIR` elsewhere and copy DIR here, then set "
            f"data.data_dir=DIR (the directory that contains {name}/).")
    image_key, label_key = "image", "label"
    supervised = getattr(builder.info, "supervised_keys", None)
    if supervised and len(supervised) == 2 and all(isinstance(k, str) for k in supervised):
        image_key, label_key = supervised
    splits = {}
    for split in ("train", "test"):
        # batch_size=-1: the whole split as one batch of numpy arrays.
        batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        splits[split] = (np.asarray(batch[image_key]), np.asarray(batch[label_key]))
    try:
        num_classes = int(builder.info.features[label_key].num_classes)
    except (AttributeError, KeyError, TypeError):
        num_classes = None
    train_x, test_x = splits["train"][0], splits["test"][0]
    scale = 255.0 if train_x.dtype == np.uint8 else 1.0
    return RawSplits(train_x, splits["train"][1], test_x, splits["test"][1], name=name,
                     scale=scale, num_classes=num_classes)


# --------------------------------------------------------------------------- load_dataset


def _check_labels(labels: np.ndarray, split: str, num_classes: int) -> np.ndarray:
    """Integer class labels in [0, num_classes), as int32; a violation names the first index.

    `split` starts the message ("data: train", "Dataset 'x': val").
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{split} labels have shape {labels.shape}; expected (N,)")
    if not np.issubdtype(labels.dtype, np.integer):
        # Float labels (1.0, 2.0) read from a float file are fine; 0.5 is not a class.
        whole = np.isfinite(labels) & (labels == np.round(labels)) if np.issubdtype(
            labels.dtype, np.floating) else np.zeros(labels.shape, bool)
        if not whole.all():
            index = int(np.argmin(whole))
            raise ValueError(f"{split} label {index} is {labels[index]!r} ({labels.dtype}); class "
                             f"labels must be whole numbers in [0, {num_classes})")
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        index = int(np.argmax(outside))
        raise ValueError(f"{split} label {index} is {labels[index]}, outside [0, {num_classes}) "
                         f"(num_classes={num_classes}; {int(outside.sum())} labels outside)")
    return labels.astype(np.int32)


def _val_count(val_size: Any, n_train: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer,
                                                               np.floating)):
        raise ValueError(f"data.val_size: {val_size!r}; expected an int count or a float "
                         f"fraction in (0, 1)")
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"data.val_size: {val_size} as a fraction must lie in (0, 1)")
        count = int(round(val_size * n_train))
    else:
        count = int(val_size)
    if not 1 <= count < n_train:
        raise ValueError(f"data.val_size: {val_size!r} gives {count} validation examples; "
                         f"expected 1 .. {n_train - 1} for {n_train} training examples")
    return count


def _to_nhwc_float(x: np.ndarray, scale: float) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:  # (N, H, W) grayscale: add the channel axis
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"data: images have shape {x.shape}; expected (N, H, W) or (N, H, W, C)")
    x = x.astype(np.float32)
    if scale != 1.0:
        x *= np.float32(1.0 / scale)
    return x


def _norm_stats(train_x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "none":
        return np.float32(0.0), np.float32(1.0)
    # Two passes with float64 accumulation (a float32 sum over 10^7 pixels loses digits), over
    # chunks of rows so no float64 copy of the whole train split is made.
    # global: one scalar; per_channel: one per channel (over N, H, W: torchvision's Normalize
    # with the train split's channel means and stds); per_pixel: one per pixel and channel.
    axis = {"global": None, "per_channel": (0, 1, 2), "per_pixel": 0}[mode]
    chunks = [train_x[i:i + 4096] for i in range(0, len(train_x), 4096)]
    count = {"global": train_x.size, "per_channel": train_x.size // train_x.shape[-1],
             "per_pixel": len(train_x)}[mode]
    mean = sum(c.sum(axis=axis, dtype=np.float64) for c in chunks) / count
    var = sum(np.square(c.astype(np.float64) - mean).sum(axis=axis) for c in chunks) / count
    std = np.sqrt(var)
    if mode == "global":
        if not std > 0:
            raise ValueError(f"data.normalize: 'global' but the train images have std {std}; "
                             f"use 'none'")
    else:
        # Pixels constant over train (MNIST's border) would divide by zero; leave them centred.
        std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _readonly(x: np.ndarray) -> np.ndarray:
    x.setflags(write=False)
    return x


def load_dataset(cfg_data: DataConfig, expected_classes: int | None = None) -> Dataset:
    """Loads the data section's source, carves a seeded validation split, normalizes with train stats.

    The fields (`config.DataConfig`): source ("digits" | "idx" | "tfds"), data_dir, tfds_name,
    download, val_size (int count or float fraction of the train split), split_seed, normalize
    ("global": scalar mean/std; "per_pixel": one mean/std per pixel and channel; "none"),
    limit_train (0 = all), num_classes (0 = from the source). The placement fields are
    `input_pipeline`'s.

    Order: labels are checked on the source's train / test splits; a permutation from
    `split_seed` sends val_size train examples to validation (both parts keep the file order);
    `limit_train` keeps a seeded subset of the rest; images are scaled to [0, 1] (raw / scale);
    (mean, std) come from that final train part alone and are applied to all three splits.

    The number of classes is `data.num_classes`, else what the source says, else
    `expected_classes` (the model's head, `experiment.build_experiment` passes it), else the
    largest train label + 1. Labels are checked against it by index in the source's order
    ("train label 4 is 12, outside [0, 10)"), and images must be finite before any statistic is
    taken of them.

    Args:
      cfg_data: the data section.
      expected_classes: the classes the consumer expects, for sources that do not say.

    Returns:
      A Dataset with read-only arrays.

    Raises:
      ValueError: a bad field value, labels outside the classes, non-finite images, or sizes that
        disagree; FileNotFoundError / ImportError: the source is not there.
    """
    if not isinstance(cfg_data, DataConfig):
        raise TypeError(f"data: expected an ml_practical.config.DataConfig, got "
                        f"{type(cfg_data).__name__}")
    f = {fld.name: getattr(cfg_data, fld.name) for fld in dataclasses.fields(cfg_data)}
    source = f["source"]

    if source == "arrays":
        raise ValueError("data.source: 'arrays' means the caller passes the Dataset (loop.fit("
                         "..., dataset=...)); there is nothing to load")
    if source == "digits":
        raw = load_digits()
    elif source == "idx":
        raw = load_idx_dir(f["data_dir"])
    elif source in ("cifar10", "cifar100"):
        from ml_practical.cifar import load_cifar
        raw = load_cifar(source, f["data_dir"], labels=f["cifar_labels"],
                         strict_counts=f["cifar_strict"])
    else:
        raw = load_tfds(f["tfds_name"], data_dir=f["data_dir"], download=bool(f["download"]))

    num_classes = f["num_classes"] or raw.num_classes or expected_classes
    if not num_classes:
        if raw.train_y.size == 0:
            raise ValueError("data: the train split is empty")
        num_classes = int(raw.train_y.max()) + 1
    where = f"data: {raw.name}"
    train_y = _check_labels(np.asarray(raw.train_y), f"{where} train", num_classes)
    test_y = _check_labels(np.asarray(raw.test_y), f"{where} test", num_classes)
    for split, x in (("train", raw.train_x), ("test", raw.test_x)):
        require_finite(x, lambda i, split=split: f"{where} {split} image {i}")
    if len(raw.train_x) != len(train_y) or len(raw.test_x) != len(test_y):
        raise ValueError(f"data: {raw.name} has {len(raw.train_x)}/{len(raw.test_x)} train/test "
                         f"images but {len(train_y)}/{len(test_y)} labels")

    n = len(train_y)
    n_val = _val_count(f["val_size"], n)
    perm = np.random.default_rng(f["split_seed"]).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]
    if f["limit_train"]:
        train_idx = train_idx[:f["limit_train"]]  # a seeded random subset, not the first rows
    train_idx = np.sort(train_idx)

    train_x = _to_nhwc_float(raw.train_x[train_idx], raw.scale)
    val_x = _to_nhwc_float(raw.train_x[val_idx], raw.scale)
    test_x = _to_nhwc_float(raw.test_x, raw.scale)
    mean, std = _norm_stats(train_x, f["normalize"])
    if f["normalize"] != "none":
        for x in (train_x, val_x, test_x):  # in place: MNIST train is 170 MB in float32
            x -= mean
            x /= std
    return Dataset(
        train_x=_readonly(train_x), train_y=_readonly(train_y[train_idx]),
        val_x=_readonly(val_x), val_y=_readonly(train_y[val_idx]),
        test_x=_readonly(test_x), test_y=_readonly(test_y),
        num_classes=int(num_classes), name=raw.name, norm_stats=(mean, std),
        normalize=f["normalize"])


# --------------------------------------------------------------------------- batch order


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch).

    The order of epoch k is a pure function of (seed, k), not of a generator advanced through
    epochs 0..k-1, so a run restored from a checkpoint at epoch k draws exactly the order the
    uninterrupted run drew (resume exactness) without replaying or saving any RNG state.

    Args:
      seed: non-negative run seed.
      epoch: non-negative epoch index.
      n: number of examples.

    Returns:
      int32 array of shape (n,).
    """
    for name, v in (("seed", seed), ("epoch", epoch), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"epoch_permutation: {name}={v!r}; expected an integer >= 0")
    # default_rng([seed, epoch]) hashes both words through SeedSequence: nearby seeds and epochs
    # give unrelated streams.
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n)).astype(np.int32)


def batch_indices(seed: int, epoch: int, n: int, batch_size: int,
                  drop_remainder: bool = True) -> np.ndarray:
    """The example indices of every batch of one epoch, from `epoch_permutation(seed, epoch, n)`.

    A pure function of (seed, epoch) for resume exactness: see `epoch_permutation`. The result is
    rectangular so a whole epoch can be one `lax.scan` with a single compiled shape.

    Args:
      seed, epoch, n: as in `epoch_permutation`.
      batch_size: examples per batch, 1 <= batch_size <= n.
      drop_remainder: True: the n % batch_size examples left over this epoch are skipped (a
        different few each epoch). False: the last batch is topped up by wrapping around to the
        start of the same permutation, so every example is seen at least once.

    Returns:
      int32 array of shape (num_batches, batch_size): floor(n / batch_size) batches, or
      ceil(n / batch_size) when drop_remainder is False.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_indices: batch_size={batch_size!r}; expected an integer")
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_indices: batch_size={batch_size} must lie in [1, n={n}]")
    perm = epoch_permutation(seed, epoch, n)
    if drop_remainder:
        num_batches = n // batch_size
    else:
        num_batches = -(-n // batch_size)
        perm = np.concatenate([perm, perm[:num_batches * batch_size - n]])
    return perm[:num_batches * batch_size].reshape(num_batches, batch_size)
