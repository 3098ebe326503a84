"""The IDX file format (MNIST, Fashion-MNIST): a strict reader and writer, and the four-file directory.

Layout (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): 2 zero bytes, a type code, the
number of dimensions, the big-endian uint32 sizes, then exactly prod(sizes) big-endian items. No
pickle, no trust: anything else is an error naming the file. `data.data_dir`, or when it is empty
the environment variable ML_PRACTICAL_DATA_DIR (the one variable this package reads), names the
directory.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# The one environment variable the package reads (STYLE.md section 1): the IDX data directory.
DATA_DIR_ENV = "ML_PRACTICAL_DATA_DIR"

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




class DataWarning(UserWarning):
    """A choice about the data was made that a user should hear of (which file was read)."""


def first_non_finite(x: np.ndarray) -> tuple[int, tuple[int, ...], float] | None:
    """(example index, position within the example, value) of the first NaN / inf in `x`
    (examples along axis 0), or None; integer arrays have none. Scans 4096 examples at a time,
    so no boolean copy of a whole split is made."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.complexfloating):
        return None
    for start in range(0, len(x), 4096):
        bad = ~np.isfinite(x[start:start + 4096])
        if bad.any():
            where = np.unravel_index(int(np.argmax(bad)), bad.shape)
            return start + int(where[0]), tuple(int(i) for i in where[1:]), float(
                x[start:start + 4096][where])
    return None


def require_finite(x: np.ndarray, name: Callable[[int], str],
                   position_word: str = "pixel") -> None:
    """Raises one ValueError at the first NaN / inf of `x`: "<name(index)> holds nan at
    <position_word> (3, 5); the data must be finite (fix or drop that example)"."""
    bad = first_non_finite(x)
    if bad is not None:
        index, position, value = bad
        at = f" at {position_word} {position}" if position else ""
        raise ValueError(f"{name(index)} holds {value}{at}; the data must be finite (fix or "
                         "drop that example)")


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
    """The file of `stem` in `data_dir`: raw or gzip, LeCun's name or the dotted variant.

    When several exist (a raw file left next to its .gz, say), the newest is read, the .gz on a
    tie (the form the data is distributed in), and a `DataWarning` names what was chosen and
    what was passed over: a stale copy never wins silently.
    """
    dotted = stem.replace("-idx", ".idx")
    candidates = [stem, stem + ".gz", dotted, dotted + ".gz"]
    found = [os.path.join(data_dir, n) for n in candidates
             if os.path.isfile(os.path.join(data_dir, n))]
    if not found:
        raise FileNotFoundError(f"IDX data directory {data_dir}: none of {candidates} exists "
                                f"(found: {sorted(os.listdir(data_dir))[:10]})")
    if len(found) == 1:
        return found[0]
    chosen = max(found, key=lambda p: (os.stat(p).st_mtime_ns, p.endswith(".gz")))
    others = [os.path.basename(p) for p in found if p != chosen]
    warnings.warn(f"IDX data directory {data_dir}: {', '.join(others)} and "
                  f"{os.path.basename(chosen)} hold the same role; reading "
                  f"{os.path.basename(chosen)} (the newest; .gz on a tie). Delete the other to "
                  "silence this", DataWarning, stacklevel=3)
    return chosen


def load_idx_dir(data_dir: str | os.PathLike | None = None) -> RawSplits:
    """Reads the four MNIST-format files of a directory (raw or .gz).

    Args:
      data_dir: the directory; None or "" falls back to $ML_PRACTICAL_DATA_DIR.

    Returns:
      RawSplits with images (N, H, W) and labels (N,) as stored (uint8 for MNIST); `scale` is 255
      for uint8 images and 1 otherwise; `num_classes` None (the files do not say).

    Raises:
      ValueError: a file is malformed, the shapes disagree, or float images or labels hold a
        NaN or infinity (named with the file and the index of the first).
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
        for path, array, what in ((ipath, images, "image"), (lpath, labels, "label")):
            require_finite(array, lambda i, path=path, what=what: f"IDX file {path}: {what} {i}")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(f"IDX data directory {data_dir}: train images are "
                         f"{arrays['train_images'].shape[1:]} but test images are "
                         f"{arrays['test_images'].shape[1:]}")
    scale = 255.0 if arrays["train_images"].dtype == np.uint8 else 1.0
    name = os.path.basename(os.path.normpath(data_dir))
    return RawSplits(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                     arrays["test_labels"], name=name, scale=scale, num_classes=None)


