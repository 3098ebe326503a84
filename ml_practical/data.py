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
import gzip
import math
import os
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

# The one environment variable the package reads (STYLE.md section 1): the IDX data directory.
DATA_DIR_ENV = "ML_PRACTICAL_DATA_DIR"

SOURCES = ("digits", "idx", "tfds")
NORMALIZATIONS = ("global", "none", "per_pixel")

# cfg.data fields and the values used when a config leaves one out. `source` has no default.
DATA_DEFAULTS: dict[str, Any] = {
    "data_dir": None,        # idx: directory; tfds: TFDS data_dir (None = TFDS's own default)
    "tfds_name": "mnist",    # tfds: dataset name, e.g. "mnist", "fashion_mnist"
    "download": False,       # tfds: allow download_and_prepare (network) when not prepared
    "val_size": 5000,        # int count or float fraction (0, 1) of the train split
    "split_seed": 0,         # seed of the train/val permutation
    "normalize": "global",   # "global" | "per_pixel" | "none"
    "limit_train": 0,        # keep at most this many training examples (0 = all)
    "num_classes": 0,        # 0 = from the source (tfds metadata, digits: 10, idx: max label + 1)
}

# cfg.data fields about where the training set lives, read by `input_pipeline` (which holds their
# defaults and checks them); `load_dataset` accepts and ignores them.
PLACEMENT_FIELDS = ("placement", "device_budget_mb", "chunk_steps")

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); multi-byte types are
# big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}

# The four files of an IDX dataset, by role. Both the LeCun names and the common variant with a
# dot (train-images.idx3-ubyte) are accepted, each raw or gzip-compressed.
_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- the dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation / test splits, ready for a model.

    Images are float32 of shape (N, H, W, C), normalized with `norm_stats` = (mean, std) computed
    on the train split only: x = (raw / scale - mean) / std. Labels are int32 in [0, num_classes).
    `load_dataset` marks the arrays read-only: a Dataset is shared by every consumer of a run.
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
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if len(x) != len(y):
                raise ValueError(f"Dataset {self.name!r}: {split}_x has {len(x)} examples but "
                                 f"{split}_y has {len(y)}")

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


class RawSplits(NamedTuple):
    """What a source returns before splitting and normalization.

    `scale` maps raw pixel values to [0, 1] (255 for uint8 images, 16 for sklearn digits, 1 when
    the values are already real numbers). `num_classes` is None when the source does not say.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    name: str
    scale: float
    num_classes: int | None


# --------------------------------------------------------------------------- IDX files


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file {path}: no such file")
    with open(path, "rb") as f:
        buf = f.read()
    if not path.endswith(".gz"):
        return buf
    try:
        return gzip.decompress(buf)
    # BadGzipFile (bad header, CRC or length check), EOFError (cut short), zlib.error (bad data).
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"IDX file {path}: corrupt gzip stream ({type(e).__name__}: {e}); "
                         f"re-download or re-compress the file") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the MNIST format), gzip-compressed if the name ends in ".gz".

    Layout: 2 zero bytes, a type code (0x08 ubyte, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64; big-endian), the number of dimensions d, then d big-endian uint32 sizes, then
    exactly prod(sizes) items. Anything else (bad magic, unknown type, a payload that is short or
    has trailing bytes, a corrupt gzip stream) raises ValueError naming the file.

    Args:
      path: the file.

    Returns:
      A writable array in native byte order with the file's dtype and shape.
    """
    path = os.fspath(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise ValueError(f"IDX file {path}: {len(buf)} bytes, too short for the 4-byte magic")
    if buf[0] != 0 or buf[1] != 0:
        hint = (" (it looks gzip-compressed: give it a .gz suffix)"
                if buf[:2] == b"\x1f\x8b" else "")
        raise ValueError(f"IDX file {path}: bad magic {buf[:4].hex()}; the first two bytes must "
                         f"be zero{hint}")
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"IDX file {path}: unknown type code 0x{code:02X}; expected one of "
                         f"[{allowed}]")
    if ndim < 1:
        raise ValueError(f"IDX file {path}: ndim is 0; expected >= 1")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"IDX file {path}: header needs {header} bytes for {ndim} dimensions "
                         f"but the file has {len(buf)}")
    shape = tuple(int(d) for d in np.frombuffer(buf, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(buf) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        raise ValueError(f"IDX file {path}: {what}: shape {shape} of {dtype.newbyteorder('=')} "
                         f"needs {expected} payload bytes but the file has {got}")
    arr = np.frombuffer(buf, dtype, count=math.prod(shape), offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # native order, and a writable copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes `array` as an IDX file (gzip-compressed if the name ends in ".gz"); see `read_idx`.

    Args:
      path: destination.
      array: uint8, int8, int16, int32, float32 or float64, with 1 to 255 dimensions.
    """
    path = os.fspath(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        allowed = sorted(str(d) for d in _IDX_CODES)
        raise ValueError(f"write_idx {path}: dtype {array.dtype} has no IDX type code; expected "
                         f"one of {allowed}")
    if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"write_idx {path}: shape {array.shape}; IDX needs 1..255 dimensions "
                         f"each < 2**32")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    if path.endswith(".gz"):
        # mtime=0: the same array always gives the same bytes.
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(header + payload)
    else:
        with open(path, "wb") as f:
            f.write(header + payload)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """`data_dir`, or $ML_PRACTICAL_DATA_DIR when it is empty; FileNotFoundError if no dir."""
    source = "data.data_dir"
    if data_dir is None or os.fspath(data_dir) == "":
        data_dir, source = os.environ.get(DATA_DIR_ENV, ""), f"${DATA_DIR_ENV}"
        if not data_dir:
            raise FileNotFoundError(
                f"data.data_dir is empty and {DATA_DIR_ENV} is not set: point one of them at a "
                f"directory holding {', '.join(s + '.gz' for s in _IDX_STEMS.values())}")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"IDX data directory {data_dir} (from {source}) does not exist; set data.data_dir or "
            f"{DATA_DIR_ENV} to a directory holding the MNIST-format files")
    return data_dir


def _find_idx_file(data_dir: str, stem: str) -> str:
    dotted = stem.replace("-idx", ".idx")
    candidates = [stem, stem + ".gz", dotted, dotted + ".gz"]
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"IDX data directory {data_dir}: none of {candidates} exists "
                            f"(found: {sorted(os.listdir(data_dir))[:10]})")


def load_idx_dir(data_dir: str | os.PathLike | None = None) -> RawSplits:
    """Reads the four MNIST-format files of a directory (raw or .gz).

    Args:
      data_dir: the directory; None or "" falls back to $ML_PRACTICAL_DATA_DIR.

    Returns:
      RawSplits with images (N, H, W) and labels (N,) as stored (uint8 for MNIST); `scale` is 255
      for uint8 images and 1 otherwise; `num_classes` None (the files do not say).
    """
    data_dir = resolve_data_dir(data_dir)
    paths = {role: _find_idx_file(data_dir, stem) for role, stem in _IDX_STEMS.items()}
    arrays = {role: read_idx(p) for role, p in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.ndim != 3:
            raise ValueError(f"IDX file {ipath}: images have shape {images.shape}; expected 3 "
                             f"dimensions (N, H, W)")
        if labels.ndim != 1:
            raise ValueError(f"IDX file {lpath}: labels have shape {labels.shape}; expected 1 "
                             f"dimension (N,)")
        if len(images) != len(labels):
            raise ValueError(f"IDX {split} split: {ipath} has {len(images)} images but {lpath} "
                             f"has {len(labels)} labels")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(f"IDX data directory {data_dir}: train images are "
                         f"{arrays['train_images'].shape[1:]} but test images are "
                         f"{arrays['test_images'].shape[1:]}")
    scale = 255.0 if arrays["train_images"].dtype == np.uint8 else 1.0
    name = os.path.basename(os.path.normpath(data_dir))
    return RawSplits(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                     arrays["test_labels"], name=name, scale=scale, num_classes=None)


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


def _data_fields(cfg_data: Any) -> dict[str, Any]:
    if hasattr(cfg_data, "to_dict"):  # ml_collections.ConfigDict: resolves field references
        raw = cfg_data.to_dict()
    elif isinstance(cfg_data, Mapping):
        raw = dict(cfg_data)
    else:
        raise TypeError(f"data config: expected a ConfigDict or mapping, got {type(cfg_data)}")
    known = {"source", *DATA_DEFAULTS, *PLACEMENT_FIELDS}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"data: unknown field(s) {unknown}; expected among {sorted(known)}")
    if "source" not in raw:
        raise ValueError(f"data.source: missing; expected one of {list(SOURCES)}")
    return {**DATA_DEFAULTS, **raw}


def _check_labels(labels: np.ndarray, split: str, num_classes: int) -> np.ndarray:
    if labels.ndim != 1:
        raise ValueError(f"data: {split} labels have shape {labels.shape}; expected (N,)")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(f"data: {split} labels ({labels.dtype}) are not whole numbers")
    lo, hi = (labels.min(), labels.max()) if labels.size else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"data: {split} labels have min {lo}, max {hi}; expected all in "
                         f"[0, {num_classes}) (num_classes={num_classes})")
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
    axis = None if mode == "global" else 0
    chunks = [train_x[i:i + 4096] for i in range(0, len(train_x), 4096)]
    count = train_x.size if mode == "global" else len(train_x)
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


def load_dataset(cfg_data: Any) -> Dataset:
    """Loads cfg.data's source, carves a seeded validation split, and normalizes with train stats.

    Fields of cfg.data (defaults in `DATA_DEFAULTS`): source ("digits" | "idx" | "tfds"),
    data_dir, tfds_name, download, val_size (int count or float fraction of the train split, > 0),
    split_seed, normalize ("global": scalar mean/std; "per_pixel": one mean/std per pixel and
    channel; "none"), limit_train (0 = all), num_classes (0 = from the source).

    Order: labels are checked on the source's train / test splits; a permutation from
    `split_seed` sends val_size train examples to validation (both parts keep the file order);
    `limit_train` keeps a seeded subset of the rest; images are scaled to [0, 1] (raw / scale);
    (mean, std) come from that final train part alone and are applied to all three splits.

    Args:
      cfg_data: ml_collections.ConfigDict (cfg.data) or a mapping with the fields above.

    Returns:
      A Dataset with read-only arrays.
    """
    f = _data_fields(cfg_data)
    source = f["source"]
    if source not in SOURCES:
        raise ValueError(f"data.source: unknown {source!r}; expected one of {list(SOURCES)}")
    if f["normalize"] not in NORMALIZATIONS:
        raise ValueError(f"data.normalize: unknown {f['normalize']!r}; expected one of "
                         f"{list(NORMALIZATIONS)}")
    for field in ("split_seed", "limit_train", "num_classes"):
        v = f[field]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"data.{field}: {v!r}; expected an integer >= 0")

    if source == "digits":
        raw = load_digits()
    elif source == "idx":
        raw = load_idx_dir(f["data_dir"])
    else:
        raw = load_tfds(f["tfds_name"], data_dir=f["data_dir"], download=bool(f["download"]))

    num_classes = f["num_classes"] or raw.num_classes
    if not num_classes:
        if raw.train_y.size == 0:
            raise ValueError("data: the train split is empty")
        num_classes = int(raw.train_y.max()) + 1
    train_y = _check_labels(np.asarray(raw.train_y), "train", num_classes)
    test_y = _check_labels(np.asarray(raw.test_y), "test", num_classes)
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
