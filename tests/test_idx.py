"""Tests for ml_practical.idx: the IDX reader and writer, corrupt files, the four-file directory."""

import gzip
import re

import numpy as np
import pytest

from ml_practical import idx

from tests.conftest import N_TEST, N_TRAIN, H, W, write_mnist  # noqa: E402,F401


# --------------------------------------------------------------------------- fixtures




# --------------------------------------------------------------------------- IDX round trips


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("array", [
    np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8),
    np.arange(7, dtype=np.uint8),
    np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32),
    np.array([-128, 0, 127], np.int8),
    np.array([[-30000, 2], [3, 30000]], np.int16),
    np.array([-2**31, 0, 2**31 - 1], np.int32),
    np.array([np.pi, -1e300], np.float64),
], ids=["u8_3d", "u8_1d", "f32_2d", "i8", "i16", "i32", "f64"])
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"a.idx{suffix}"
    idx.write_idx(path, array)
    out = idx.read_idx(path)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable
    if suffix:  # really compressed, and bit-identical on a second write (mtime=0)
        first = path.read_bytes()
        assert first[:2] == b"\x1f\x8b"
        idx.write_idx(path, array)
        assert path.read_bytes() == first


def test_idx_reads_hand_built_bytes(tmp_path):
    """The LeCun layout, written byte by byte, independently of write_idx."""
    p = tmp_path / "u8"
    p.write_bytes(bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255]))
    np.testing.assert_array_equal(idx.read_idx(p), [[1, 2, 3], [4, 5, 255]])
    p = tmp_path / "i16"  # big-endian: 0x0100 = 256, 0xFFFE = -2
    p.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x00, 0xFF, 0xFE]))
    np.testing.assert_array_equal(idx.read_idx(p), [256, -2])
    p = tmp_path / "f32"  # 0x3FC00000 = 1.5
    p.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0x3F, 0xC0, 0, 0]))
    assert idx.read_idx(p).tolist() == [1.5]
    # write_idx produces the same header for the same array.
    idx.write_idx(tmp_path / "w", np.array([[1, 2, 3], [4, 5, 255]], np.uint8))
    assert (tmp_path / "w").read_bytes()[:12] == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3])


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match=r"dtype int64 has no IDX type code.*uint8"):
        idx.write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))


# --------------------------------------------------------------------------- corrupt files


def _good_bytes():
    return bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))


@pytest.mark.parametrize("name,content,message", [
    ("bad_magic", b"\x01\x00" + _good_bytes()[2:], "bad magic 01000802"),
    ("gz_without_suffix", gzip.compress(_good_bytes(), mtime=0), "looks gzip-compressed"),
    ("type_code", _good_bytes()[:2] + b"\x0a" + _good_bytes()[3:], "unknown type code 0x0A"),
    ("truncated", _good_bytes()[:-1], "truncated.*needs 6 payload bytes but the file has 5"),
    ("trailing", _good_bytes() + b"\x00", "trailing bytes.*needs 6 payload bytes.*has 7"),
    ("short_header", _good_bytes()[:9], "header needs 12 bytes"),
    ("too_short", b"\x00\x00", "too short"),
    ("zero_ndim", bytes([0, 0, 8, 0]), "ndim is 0"),
])
def test_read_idx_rejects_corrupt_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        idx.read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(ValueError, match=re.escape(str(garbage)) + ".*corrupt gzip"):
        idx.read_idx(garbage)
    good = gzip.compress(_good_bytes(), mtime=0)
    crc = tmp_path / "crc.gz"  # flip a bit of the CRC32 trailer: the payload inflates fine
    crc.write_bytes(good[:-8] + bytes([good[-8] ^ 1]) + good[-7:])
    with pytest.raises(ValueError, match=re.escape(str(crc)) + ".*corrupt gzip.*CRC"):
        idx.read_idx(crc)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[:-10])
    with pytest.raises(ValueError, match=re.escape(str(cut)) + ".*corrupt gzip"):
        idx.read_idx(cut)


def test_load_idx_dir_count_mismatch(fake_mnist):
    idx.write_idx(fake_mnist.dir / "t10k-labels-idx1-ubyte.gz", fake_mnist.test_y[:-1])
    with pytest.raises(ValueError, match=r"test split.*t10k-images-idx3-ubyte\.gz has 50 images "
                                         r"but .*t10k-labels-idx1-ubyte\.gz has 49 labels"):
        idx.load_idx_dir(fake_mnist.dir)


def test_load_idx_dir_wrong_ndim(fake_mnist):
    idx.write_idx(fake_mnist.dir / "train-images-idx3-ubyte.gz",
                   fake_mnist.train_x.reshape(N_TRAIN, -1))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: images have shape "
                                         r"\(200, 784\); expected 3"):
        idx.load_idx_dir(fake_mnist.dir)


def test_load_idx_dir_missing_file(fake_mnist):
    (fake_mnist.dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(fake_mnist.dir))
                       + r".*'train-labels-idx1-ubyte', 'train-labels-idx1-ubyte\.gz'"):
        idx.load_idx_dir(fake_mnist.dir)


def test_load_idx_dir_missing_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError,
                       match=re.escape(str(missing)) + ".*ML_PRACTICAL_DATA_DIR"):
        idx.load_idx_dir(missing)


def test_load_idx_dir_accepts_raw_and_dotted_names(fake_mnist, tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    write_mnist(d, fake_mnist.train_x, fake_mnist.train_y, fake_mnist.test_x, fake_mnist.test_y,
                 gz=False)
    (d / "t10k-images-idx3-ubyte").rename(d / "t10k-images.idx3-ubyte")
    raw = idx.load_idx_dir(d)
    np.testing.assert_array_equal(raw.train_x, fake_mnist.train_x)
    np.testing.assert_array_equal(raw.test_x, fake_mnist.test_x)
    np.testing.assert_array_equal(raw.test_y, fake_mnist.test_y)
    assert raw.scale == 255.0 and raw.name == "raw"
