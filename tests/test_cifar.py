"""The CIFAR binary reader (`ml_practical.cifar`) on files the tests write byte by byte in the
canonical format, per-channel normalization, and the CIFAR sources of `data.load_dataset`."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from ml_practical import cifar, config, data


def _records(rng, n, num_classes, coarse=False):
    """n records built byte by byte: [coarse] label, then the R, G, B planes of 32 x 32."""
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n)
    coarse_labels = rng.integers(0, 20, n)
    out = bytearray()
    for i in range(n):
        if coarse:
            out.append(int(coarse_labels[i]))
        out.append(int(labels[i]))
        for channel in range(3):
            for row in range(32):
                out.extend(bytes(images[i, row, :, channel]))
    return bytes(out), images, labels, coarse_labels


@pytest.fixture
def cifar10_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    train_x, train_y = [], []
    for i in range(1, 6):
        raw, x, y, _ = _records(rng, 4, 10)
        (d / f"data_batch_{i}.bin").write_bytes(raw)
        train_x.append(x)
        train_y.append(y)
    raw, tx, ty, _ = _records(rng, 6, 10)
    (d / "test_batch.bin").write_bytes(raw)
    return tmp_path, np.concatenate(train_x), np.concatenate(train_y), tx, ty


def test_cifar10_binary_is_read_as_written(cifar10_dir):
    root, train_x, train_y, test_x, test_y = cifar10_dir
    for where in (root, root / "cifar-10-batches-bin"):  # the parent, or the directory itself
        raw = cifar.load_cifar("cifar10", where, strict_counts=False)
        np.testing.assert_array_equal(raw.train_x, train_x)
        np.testing.assert_array_equal(raw.train_y, train_y)
        np.testing.assert_array_equal(raw.test_x, test_x)
        np.testing.assert_array_equal(raw.test_y, test_y)
        assert raw.train_x.dtype == np.uint8 and raw.num_classes == 10 and raw.scale == 255.0


def test_the_official_archive_is_read_in_place(cifar10_dir, tmp_path):
    root, train_x, train_y, _, _ = cifar10_dir
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    raw = cifar.load_cifar("cifar10", archive, strict_counts=False)
    np.testing.assert_array_equal(raw.train_x, train_x)
    np.testing.assert_array_equal(raw.train_y, train_y)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    raw_train, x, fine, coarse = _records(rng, 5, 100, coarse=True)
    raw_test, _, _, _ = _records(rng, 3, 100, coarse=True)
    (tmp_path / "train.bin").write_bytes(raw_train)
    (tmp_path / "test.bin").write_bytes(raw_test)
    got = cifar.load_cifar("cifar100", tmp_path, strict_counts=False)
    np.testing.assert_array_equal(got.train_x, x)
    np.testing.assert_array_equal(got.train_y, fine)
    assert got.num_classes == 100
    got = cifar.load_cifar("cifar100", tmp_path, labels="coarse", strict_counts=False)
    np.testing.assert_array_equal(got.train_y, coarse)
    assert got.num_classes == 20
    # write_cifar writes what the reader reads (the tool to cut subsets)
    cifar.write_cifar(tmp_path / "train.bin", x, fine, coarse=coarse)
    assert (tmp_path / "train.bin").read_bytes() == raw_train


def test_format_violations_name_the_file_and_record(cifar10_dir):
    root, *_ = cifar10_dir
    d = root / "cifar-10-batches-bin"
    with pytest.raises(ValueError, match=r"data_batch_1.bin: 4 records; the official file has "
                                         r"10000"):
        cifar.load_cifar("cifar10", root)  # strict counts by default
    good = (d / "data_batch_3.bin").read_bytes()
    (d / "data_batch_3.bin").write_bytes(good[:-7])
    with pytest.raises(ValueError, match=r"data_batch_3.bin: \d+ bytes is not a whole number of "
                                         r"3073-byte cifar10 records"):
        cifar.load_cifar("cifar10", root, strict_counts=False)
    bad = bytearray(good)
    bad[2 * 3073] = 12  # record 2's label
    (d / "data_batch_3.bin").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"data_batch_3.bin: record 2 has label 12, outside "
                                         r"\[0, 10\)"):
        cifar.load_cifar("cifar10", root, strict_counts=False)
    (d / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="binary files .* are not there.*not the python"):
        cifar.load_cifar("cifar10", root, strict_counts=False)
    (d / "data_batch_1").write_bytes(b"pickled python version")  # never opened
    with pytest.raises(FileNotFoundError):
        cifar.load_cifar("cifar10", root / "nowhere")


def test_load_dataset_normalizes_per_channel_from_train(cifar10_dir):
    root, *_ = cifar10_dir
    cfg = config.build(config.DataConfig, {"source": "cifar10", "data_dir": str(root),
                                           "cifar_strict": False, "val_size": 4,
                                           "normalize": "per_channel"})
    ds = data.load_dataset(cfg)
    assert ds.num_classes == 10 and ds.train_x.shape == (16, 32, 32, 3)
    mean, std = ds.norm_stats
    assert mean.shape == (3,) and std.shape == (3,)
    np.testing.assert_allclose(ds.train_x.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train_x.std((0, 1, 2)), 1.0, atol=1e-5)
    # The statistics are the train part's own (validation excluded), as numpy computes them.
    kept = ds.train_x * std + mean
    np.testing.assert_allclose(mean, kept.mean((0, 1, 2)), rtol=1e-5)
    with pytest.raises(config.ConfigError, match="data.cifar_labels: 'coarse' exists for "
                                                 "source 'cifar100' only"):
        config.build(config.DataConfig, {"source": "cifar10", "cifar_labels": "coarse"})
