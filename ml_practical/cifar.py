"""CIFAR-10 and CIFAR-100 from their canonical *binary* files, checked strictly, without pickle.

The binary version (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version") is a sequence
of fixed-size records, each one image:

  CIFAR-10   <1 byte label 0..9><3072 bytes pixels>                  data_batch_1..5.bin (10000
             records each, the 50000 training images) and test_batch.bin (10000)
  CIFAR-100  <1 byte coarse label 0..19><1 byte fine label 0..99><3072 bytes pixels>
             train.bin (50000 records) and test.bin (10000)

The 3072 pixel bytes are the red, then the green, then the blue channel, each 32 x 32 in
row-major order; they are returned as uint8 (N, 32, 32, 3). The "python version" of the same data
is pickled and is not read here (no pickle on any load path).

`data_dir` is the directory holding the .bin files, or the directory the official archive
unpacks into (cifar-10-batches-bin/, cifar-100-binary/) or its parent, or the archive itself
(cifar-10-binary.tar.gz, cifar-100-binary.tar.gz), read in place with `tarfile`.

The format check is strict: every expected file must be there, its size must be a whole number of
records (and, for the official files, the official number), and every label must be in range; a
violation names the file (and the record).
"""

from __future__ import annotations

import os
import tarfile
from typing import NamedTuple

import numpy as np

from ml_practical.idx import DATA_DIR_ENV, RawSplits

IMAGE_BYTES = 32 * 32 * 3


class CifarFormat(NamedTuple):
    name: str
    label_bytes: int  # bytes before the pixels
    label_index: int  # which of them is the class
    num_classes: int
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    records_per_file: dict[str, int]
    subdirs: tuple[str, ...]  # where the official archive unpacks


FORMATS = {
    "cifar10": CifarFormat(
        "cifar10", 1, 0, 10, tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",), {**{f"data_batch_{i}.bin": 10000 for i in range(1, 6)},
                              "test_batch.bin": 10000},
        ("cifar-10-batches-bin",)),
    "cifar100": CifarFormat(
        "cifar100", 2, 1, 100, ("train.bin",), ("test.bin",),
        {"train.bin": 50000, "test.bin": 10000}, ("cifar-100-binary",)),
}
# CIFAR-100's coarse labels (the 20 superclasses), the first byte of each record.
CIFAR100_COARSE_CLASSES = 20


def _decode(raw: bytes, fmt: CifarFormat, where: str, label_index: int,
            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    record = fmt.label_bytes + IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise ValueError(f"CIFAR file {where}: {len(raw)} bytes is not a whole number of "
                         f"{record}-byte {fmt.name} records (is this the binary version?)")
    table = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = table[:, label_index].astype(np.int32)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(f"CIFAR file {where}: record {int(bad[0])} has label {labels[bad[0]]}, "
                         f"outside [0, {num_classes}) ({bad.size} records)")
    # R, G, B planes of 32 x 32 -> (N, 32, 32, 3)
    images = table[:, fmt.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _resolve(data_dir) -> str:
    if data_dir is None or os.fspath(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV, "")
        if not data_dir:
            raise FileNotFoundError(f"data.data_dir is empty and {DATA_DIR_ENV} is not set: point "
                                    "one of them at the CIFAR binary files (or their .tar.gz)")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"CIFAR data_dir {data_dir} does not exist; set data.data_dir "
                                "to the directory of the binary files or to their .tar.gz")
    return data_dir


class _Source:
    """The .bin files of a directory, or the members of the official archive."""

    def __init__(self, data_dir: str, fmt: CifarFormat):
        self.fmt = fmt
        self.archive = None
        if os.path.isfile(data_dir) and tarfile.is_tarfile(data_dir):
            self.archive = tarfile.open(data_dir)
            self.where = data_dir
            names = {os.path.basename(m.name): m for m in self.archive.getmembers() if m.isfile()}
            self.members = names
            missing = [f for f in fmt.train_files + fmt.test_files if f not in names]
            if missing:
                raise FileNotFoundError(f"CIFAR archive {data_dir}: no {missing} in it (is it "
                                        f"the {fmt.name} binary version?)")
            return
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"CIFAR data_dir {data_dir} is neither a directory nor a "
                                    ".tar.gz archive")
        candidates = [data_dir] + [os.path.join(data_dir, s) for s in fmt.subdirs]
        for directory in candidates:
            if all(os.path.isfile(os.path.join(directory, f))
                   for f in fmt.train_files + fmt.test_files):
                self.where = directory
                return
        present = sorted(os.listdir(data_dir))[:10]
        raise FileNotFoundError(
            f"CIFAR data_dir {data_dir}: the {fmt.name} binary files "
            f"{list(fmt.train_files + fmt.test_files)} are not there, nor in "
            f"{list(fmt.subdirs)} (found: {present}); download the binary version, not the "
            "python one")

    def read(self, name: str) -> tuple[bytes, str]:
        if self.archive is not None:
            handle = self.archive.extractfile(self.members[name])
            return handle.read(), f"{self.where}:{name}"
        path = os.path.join(self.where, name)
        with open(path, "rb") as f:
            return f.read(), path

    def close(self):
        if self.archive is not None:
            self.archive.close()


def load_cifar(name: str, data_dir: str | os.PathLike | None = None, *, labels: str = "fine",
               strict_counts: bool = True) -> RawSplits:
    """Reads CIFAR-10 or CIFAR-100 (binary version) into uint8 images and int32 labels.

    Args:
      name: "cifar10" or "cifar100".
      data_dir: see the module docstring; None or "" falls back to $ML_PRACTICAL_DATA_DIR.
      labels: CIFAR-100's "fine" (100 classes) or "coarse" (20 superclasses); CIFAR-10: "fine".
      strict_counts: require the official number of records per file (10000 / 50000); False
        accepts any whole number of records (a subset cut the same way, or test files).

    Returns:
      RawSplits: images (N, 32, 32, 3) uint8 (scale 255), labels int32, num_classes 10 / 100 / 20.

    Raises:
      FileNotFoundError: the files are not there; ValueError: a file is not the format.
    """
    if name not in FORMATS:
        raise ValueError(f"data.source: unknown CIFAR {name!r}; expected one of {sorted(FORMATS)}")
    fmt = FORMATS[name]
    if labels not in ("fine", "coarse") or (name == "cifar10" and labels != "fine"):
        raise ValueError(f"data.cifar_labels: {labels!r}; expected 'fine'"
                         + (" or 'coarse'" if name == "cifar100" else " for CIFAR-10"))
    label_index, num_classes = fmt.label_index, fmt.num_classes
    if labels == "coarse":
        label_index, num_classes = 0, CIFAR100_COARSE_CLASSES
    source = _Source(_resolve(data_dir), fmt)
    try:
        splits = {}
        for split, files in (("train", fmt.train_files), ("test", fmt.test_files)):
            parts = []
            for file in files:
                raw, where = source.read(file)
                images, y = _decode(raw, fmt, where, label_index, num_classes)
                if fmt.name == "cifar100" and labels == "fine":
                    coarse = np.frombuffer(raw, np.uint8).reshape(-1, 2 + IMAGE_BYTES)[:, 0]
                    bad = np.flatnonzero(coarse >= CIFAR100_COARSE_CLASSES)
                    if bad.size:
                        raise ValueError(f"CIFAR file {where}: record {int(bad[0])} has coarse "
                                         f"label {coarse[bad[0]]}, outside [0, 20)")
                expected = fmt.records_per_file[file]
                if strict_counts and len(y) != expected:
                    raise ValueError(f"CIFAR file {where}: {len(y)} records; the official file "
                                     f"has {expected} (pass strict_counts=False for a subset)")
                parts.append((images, y))
            splits[split] = (np.concatenate([p[0] for p in parts]),
                             np.concatenate([p[1] for p in parts]))
    finally:
        source.close()
    return RawSplits(splits["train"][0], splits["train"][1], splits["test"][0],
                     splits["test"][1], name=name if labels == "fine" else f"{name}_coarse",
                     scale=255.0, num_classes=num_classes)


def write_cifar(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                coarse: np.ndarray | None = None) -> None:
    """Writes records in the binary format (tests, and cutting subsets): uint8 (N, 32, 32, 3)
    images, labels; `coarse` given: CIFAR-100 records (coarse byte, then the fine label)."""
    images = np.asarray(images, np.uint8)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"write_cifar: images {images.shape}; expected (N, 32, 32, 3) uint8")
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), IMAGE_BYTES)
    heads = [np.asarray(labels, np.uint8)[:, None]]
    if coarse is not None:
        heads.insert(0, np.asarray(coarse, np.uint8)[:, None])
    with open(path, "wb") as f:
        f.write(np.concatenate(heads + [planes], axis=1).tobytes())
