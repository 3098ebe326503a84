"""Tests for ml_practical.data: the sources, splits, normalization statistics and batch order."""

import collections
import re
import sys
import time
import types

import ml_collections
import numpy as np
import pytest

from ml_practical import config, data, idx

from tests.conftest import N_TEST, N_TRAIN, H, W, write_mnist  # noqa: E402,F401


# --------------------------------------------------------------------------- fixtures


def _section(fields):
    """A `DataConfig` built (and checked) from a mapping, as `config.parse` builds `data`."""
    return config.build(config.DataConfig, fields)


def _cfg(**kw):
    base = {"source": "idx", "data_dir": None, "val_size": 40, "split_seed": 0,
            "normalize": "global", "limit_train": 0}
    base.update(kw)
    return _section(base)




def _row_index(raw_images):
    return {img.tobytes(): i for i, img in enumerate(raw_images)}


def _source_indices(ds_x, raw_images):
    """Maps rows of an un-normalized ("none") split back to their rows in the raw uint8 images."""
    lookup = _row_index(raw_images)
    rows = np.rint(np.asarray(ds_x)[..., 0] * 255).astype(np.uint8)
    return np.array([lookup[r.tobytes()] for r in rows])


# --------------------------------------------------------------------------- load_dataset on IDX


def test_load_dataset_shapes_and_split(fake_mnist):
    ds = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), val_size=40))
    assert ds.train_x.shape == (160, H, W, 1) and ds.val_x.shape == (40, H, W, 1)
    assert ds.test_x.shape == (N_TEST, H, W, 1)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == "fake_mnist"
    info = ds.info()
    assert (info["num_train"], info["num_val"], info["num_test"]) == (160, 40, 50)
    assert info["image_shape"] == [H, W, 1]
    frac = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), val_size=0.1))
    assert len(frac.val_y) == 20 and len(frac.train_y) == 180


def test_split_is_a_partition_with_matching_labels(fake_mnist):
    ds = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), normalize="none"))
    tr = _source_indices(ds.train_x, fake_mnist.train_x)
    va = _source_indices(ds.val_x, fake_mnist.train_x)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)  # file order kept
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(N_TRAIN))
    np.testing.assert_array_equal(ds.train_y, fake_mnist.train_y[tr])
    np.testing.assert_array_equal(ds.val_y, fake_mnist.train_y[va])
    np.testing.assert_array_equal(_source_indices(ds.test_x, fake_mnist.test_x), np.arange(N_TEST))
    np.testing.assert_allclose(ds.test_x[..., 0], fake_mnist.test_x / 255.0, atol=1e-7)


def test_split_determinism(fake_mnist):
    a = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), split_seed=3))
    b = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), split_seed=3))
    c = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), split_seed=4))
    np.testing.assert_array_equal(a.val_x, b.val_x)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    va = _source_indices(a.val_x * a.norm_stats[1] + a.norm_stats[0], fake_mnist.train_x)
    vc = _source_indices(c.val_x * c.norm_stats[1] + c.norm_stats[0], fake_mnist.train_x)
    assert len(set(va) ^ set(vc)) > 0


def test_global_stats_come_from_train_part_only(fake_mnist):
    ds = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), normalize="global"))
    raw = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), normalize="none"))
    tr = _source_indices(raw.train_x, fake_mnist.train_x)
    train_part = fake_mnist.train_x[tr].astype(np.float64) / 255.0
    mean, std = ds.norm_stats
    assert np.shape(mean) == () and np.shape(std) == ()
    np.testing.assert_allclose(mean, train_part.mean(), rtol=1e-6)
    np.testing.assert_allclose(std, train_part.std(), rtol=1e-6)
    # Including the validation rows would give visibly different statistics.
    assert abs(fake_mnist.train_x.mean() / 255.0 - train_part.mean()) > 1e-5
    assert abs(float(ds.train_x.mean(dtype=np.float64))) < 1e-5
    assert abs(float(ds.train_x.std(dtype=np.float64)) - 1.0) < 1e-5
    # The same (mean, std) is applied to val and test.
    np.testing.assert_allclose(ds.test_x, (raw.test_x - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.val_x, (raw.val_x - mean) / std, atol=1e-5)


def test_per_pixel_stats(fake_mnist):
    ds = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), normalize="per_pixel"))
    raw = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), normalize="none"))
    mean, std = ds.norm_stats
    assert mean.shape == std.shape == (H, W, 1)
    np.testing.assert_allclose(mean, raw.train_x.mean(0), atol=1e-6)
    np.testing.assert_allclose(std[1:, 1:], raw.train_x.std(0)[1:, 1:], rtol=1e-5)
    # The constant border pixel keeps std 1 (no division by zero) and maps to exactly 0.
    assert std[0, 0, 0] == 1.0 and np.all(ds.train_x[:, 0, 0, 0] == 0.0)
    np.testing.assert_allclose(ds.train_x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train_x.std(0)[1:, 1:], 1.0, atol=1e-4)


def test_limit_train_keeps_val_and_subsets_train(fake_mnist):
    full = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), normalize="none"))
    small = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), normalize="none",
                                   limit_train=50))
    assert len(small.train_y) == 50
    np.testing.assert_array_equal(small.val_x, full.val_x)
    tr_small = set(_source_indices(small.train_x, fake_mnist.train_x))
    assert tr_small <= set(_source_indices(full.train_x, fake_mnist.train_x))
    assert max(tr_small) > 60  # a seeded subset, not the first rows


def test_arrays_are_read_only(fake_mnist):
    ds = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir)))
    with pytest.raises(ValueError, match="read-only"):
        ds.train_x[0, 0, 0, 0] = 1.0


def test_labels_out_of_range(fake_mnist):
    bad = fake_mnist.train_y.copy()
    bad[7] = 12
    data.write_idx(fake_mnist.dir / "train-labels-idx1-ubyte.gz", bad)
    # Reported as an out-of-range label, with its index -- not as "the dataset has 13 classes".
    with pytest.raises(ValueError, match=r"train label 7 is 12, outside \[0, 10\)"):
        data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), num_classes=10))
    # The model's class count is the expected one when data.num_classes is unset.
    with pytest.raises(ValueError, match=r"train label 7 is 12, outside \[0, 10\)"):
        data.load_dataset(_cfg(data_dir=str(fake_mnist.dir)), expected_classes=10)
    # Inferred from train (max + 1 = 13): fine for train.
    assert data.load_dataset(_cfg(data_dir=str(fake_mnist.dir))).num_classes == 13
    neg = fake_mnist.test_y.astype(np.int32)
    neg[3] = -1
    data.write_idx(fake_mnist.dir / "t10k-labels-idx1-ubyte.gz", neg)
    with pytest.raises(ValueError, match=r"test label 3 is -1, outside \[0, 13\)"):
        data.load_dataset(_cfg(data_dir=str(fake_mnist.dir)))


def test_env_var_fallback(fake_mnist, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(fake_mnist.dir))
    explicit = data.load_dataset(_cfg(data_dir=str(fake_mnist.dir)))
    for empty in (None, ""):
        ds = data.load_dataset(_cfg(data_dir=empty))
        np.testing.assert_array_equal(ds.train_x, explicit.train_x)
    monkeypatch.delenv(data.DATA_DIR_ENV)
    with pytest.raises(FileNotFoundError, match="data.data_dir is empty and "
                                                "ML_PRACTICAL_DATA_DIR is not set"):
        data.load_dataset(_cfg(data_dir=""))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(fake_mnist.dir / "gone"))
    with pytest.raises(FileNotFoundError, match=r"gone \(from \$ML_PRACTICAL_DATA_DIR\)"):
        data.load_dataset(_cfg(data_dir=None))


def test_config_dict_accepted(fake_mnist):
    fields = {"source": "idx", "data_dir": str(fake_mnist.dir), "val_size": 25}
    cfg = _section(ml_collections.ConfigDict(fields))
    assert len(data.load_dataset(cfg).val_y) == 25
    # load_dataset takes the typed section only: a raw mapping is refused, naming what it wants.
    for raw in (fields, ml_collections.ConfigDict(fields)):
        with pytest.raises(TypeError, match="DataConfig"):
            data.load_dataset(raw)


def test_arrays_source_is_refused_by_load_dataset():
    # "arrays": the caller hands loop.fit the Dataset itself; there is no file or set to load.
    with pytest.raises(ValueError, match=r"data\.source: 'arrays' means the caller passes the "
                                         r"Dataset.*dataset=.*nothing to load"):
        data.load_dataset(_cfg(source="arrays"))


def test_data_reexports_the_idx_reader():
    for name in ("read_idx", "write_idx", "load_idx_dir", "resolve_data_dir", "RawSplits",
                 "DATA_DIR_ENV"):
        assert getattr(data, name) is getattr(idx, name)


@pytest.mark.parametrize("override,message", [
    ({"source": "csv"}, r"data.source: unknown 'csv'; expected one of \['arrays', 'cifar10', "
                        r"'cifar100', 'digits', 'idx', 'tfds'\]"),
    ({"normalize": "minmax"}, r"data.normalize: unknown 'minmax'; expected one of \['global', "
                              r"'none', 'per_channel', 'per_pixel'\]"),
    ({"val_size": 0}, r"data.val_size: 0 out of range; expected a number > 0"),
    ({"val_size": 0.001}, r"data.val_size: 0.001 gives 0 validation examples; expected 1 .. 199"),
    ({"val_size": 200}, r"data.val_size: 200 gives 200"),
    ({"val_size": 1.0}, r"data.val_size: 1.0 as a fraction must lie in \(0, 1\)"),
    ({"val_size": True}, r"data.val_size: True"),
    ({"split_seed": -1}, r"data.split_seed: -1 out of range; expected an integer >= 0"),
    ({"val_sise": 3}, r"data.val_sise: unknown field; did you mean 'val_size'\?"),
])
def test_bad_config_values(fake_mnist, override, message):
    with pytest.raises(ValueError, match=message):
        data.load_dataset(_cfg(data_dir=str(fake_mnist.dir), **override))


# --------------------------------------------------------------------------- digits


def test_digits_source():
    from sklearn.datasets import load_digits

    ds = data.load_dataset(_section({"source": "digits", "val_size": 0.1, "normalize": "none"}))
    assert ds.train_x.shape[1:] == (8, 8, 1) and ds.num_classes == 10
    assert len(ds.test_y) == 360 and len(ds.val_y) == 144 and len(ds.train_y) == 1293
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0  # 0..16 scaled by 1/16
    # train + val + test is exactly the 1797 sklearn rows (as a multiset: no row used twice).
    sk = load_digits()
    want = collections.Counter((img.astype(np.uint8).tobytes(), int(y))
                               for img, y in zip(sk.images, sk.target))
    got = collections.Counter()
    for x, y in ((ds.train_x, ds.train_y), (ds.val_x, ds.val_y), (ds.test_x, ds.test_y)):
        got.update((np.rint(img[..., 0] * 16).astype(np.uint8).tobytes(), int(lab))
                   for img, lab in zip(x, y))
    assert got == want
    # The test split does not move with split_seed.
    other = data.load_dataset(_section({"source": "digits", "val_size": 0.1, "normalize": "none",
                                        "split_seed": 5}))
    np.testing.assert_array_equal(other.test_x, ds.test_x)
    assert not np.array_equal(other.val_y, ds.val_y)


# --------------------------------------------------------------------------- batch order


def test_epoch_permutation():
    p = data.epoch_permutation(7, 2, 100)
    assert p.dtype == np.int32
    np.testing.assert_array_equal(np.sort(p), np.arange(100))
    # Pure in (seed, epoch): no hidden generator state, whatever was drawn before.
    for e in range(5):
        data.epoch_permutation(7, e, 100)
    np.testing.assert_array_equal(data.epoch_permutation(7, 2, 100), p)
    np.testing.assert_array_equal(p, np.random.default_rng([7, 2]).permutation(100))
    assert not np.array_equal(p, data.epoch_permutation(7, 3, 100))
    assert not np.array_equal(p, data.epoch_permutation(8, 2, 100))
    with pytest.raises(ValueError, match="epoch=-1"):
        data.epoch_permutation(0, -1, 10)


def test_batch_indices():
    idx = data.batch_indices(0, 1, 103, 10)
    assert idx.shape == (10, 10)
    np.testing.assert_array_equal(idx.ravel(), data.epoch_permutation(0, 1, 103)[:100])
    assert len(np.unique(idx)) == 100
    full = data.batch_indices(0, 1, 103, 10, drop_remainder=False)
    assert full.shape == (11, 10)
    np.testing.assert_array_equal(full[:10], idx)
    np.testing.assert_array_equal(np.unique(full), np.arange(103))  # every example seen
    # A "resumed" run asking for epoch 1 alone gets the batches of the uninterrupted run.
    uninterrupted = [data.batch_indices(0, e, 103, 10) for e in range(3)]
    np.testing.assert_array_equal(data.batch_indices(0, 1, 103, 10), uninterrupted[1])
    for bad in (0, -1, 104):
        with pytest.raises(ValueError, match=f"batch_size={bad} must lie in"):
            data.batch_indices(0, 0, 103, bad)


# --------------------------------------------------------------------------- TFDS, faked


def test_tfds_missing_says_install_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[tfds]"')):
        data.load_tfds("mnist")
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[tfds]"')):
        data.load_dataset(_section({"source": "tfds", "tfds_name": "mnist"}))


class _FakeBuilder:
    def __init__(self, name, data_dir, prepared, splits=None, num_classes=10):
        self.name, self.data_dir = name, f"{data_dir}/{name}/3.0.1"
        self.prepared, self.splits, self.calls = prepared, splits, []
        label = types.SimpleNamespace(num_classes=num_classes)
        self.info = types.SimpleNamespace(features={"label": label},
                                          supervised_keys=("image", "label"))

    def is_prepared(self):
        self.calls.append("is_prepared")
        return self.prepared

    def download_and_prepare(self):
        self.calls.append("download_and_prepare")
        self.prepared = True

    def as_dataset(self, split, batch_size):
        self.calls.append(f"as_dataset:{split}")
        if not self.prepared:
            raise AssertionError("would hit the network")
        assert batch_size == -1
        return self.splits[split]


def _fake_tfds(monkeypatch, builder):
    mod = types.ModuleType("tensorflow_datasets")
    mod.builder = lambda name, data_dir=None: builder
    mod.as_numpy = lambda ds: ds
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", mod)


def test_tfds_unprepared_fails_fast(monkeypatch, tmp_path):
    builder = _FakeBuilder("mnist", str(tmp_path), prepared=False)
    _fake_tfds(monkeypatch, builder)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError,
                       match=re.escape(builder.data_dir) + r".*data.download=True.*tfds build"):
        data.load_dataset(_section({"source": "tfds", "tfds_name": "mnist",
                                    "data_dir": str(tmp_path)}))
    assert time.perf_counter() - start < 2.0
    assert builder.calls == ["is_prepared"]  # nothing else was touched


def test_tfds_download_prepares_first(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    splits = {s: {"image": rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8),
                  "label": rng.integers(0, 3, n)} for s, n in (("train", 30), ("test", 8))}
    builder = _FakeBuilder("mnist", str(tmp_path), prepared=False, splits=splits)
    _fake_tfds(monkeypatch, builder)
    data.load_tfds("mnist", data_dir=str(tmp_path), download=True)
    assert builder.calls == ["download_and_prepare", "as_dataset:train", "as_dataset:test"]


def test_tfds_prepared_gives_dataset(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    splits = {s: {"image": rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8),
                  "label": rng.integers(0, 4, n)} for s, n in (("train", 30), ("test", 8))}
    builder = _FakeBuilder("fashion_mnist", str(tmp_path), prepared=True, splits=splits)
    _fake_tfds(monkeypatch, builder)
    ds = data.load_dataset(_section({"source": "tfds", "tfds_name": "fashion_mnist",
                                     "data_dir": str(tmp_path), "val_size": 5,
                                     "normalize": "none"}))
    assert ds.name == "fashion_mnist"
    assert ds.num_classes == 10  # from the label feature, not max(label) + 1 = 4
    assert ds.train_x.shape == (25, 6, 6, 1) and ds.val_x.shape == (5, 6, 6, 1)
    np.testing.assert_allclose(ds.test_x, splits["test"]["image"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.test_y, splits["test"]["label"])
    assert ds.test_y.dtype == np.int32
    # Train + val together are the TFDS train split.
    got = np.sort(np.concatenate([ds.train_y, ds.val_y]))
    np.testing.assert_array_equal(got, np.sort(splits["train"]["label"]))
