"""Tests for ml_practical.plots: the seed band and block means, and each figure as a real PNG."""

import struct
import sys

import numpy as np
import pytest

from ml_practical import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """(width, height) from the IHDR chunk, after checking the 8-byte signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert len(data) > 5000   # an empty canvas compresses to far less than a drawn figure
    return struct.unpack(">II", data[16:24])


def _hist(n, train0=1.0, val_offset=0.1, start=1):
    return [{"epoch": start + k, "train/loss": train0 / (k + 1),
             "val/loss": train0 / (k + 1) + val_offset,
             "train/accuracy": 0.5 + 0.04 * k, "val/accuracy": 0.5 + 0.03 * k} for k in range(n)]


def test_seed_band_averages_over_the_seeds_that_reached_each_epoch():
    a = _hist(5, train0=1.0)     # early-stopped seeds of unequal length
    b = _hist(3, train0=2.0)
    c = _hist(2, train0=3.0)
    epochs, mean, low, high, count = plots.seed_band([a, b, c], "train/loss", spread="std")
    np.testing.assert_array_equal(epochs, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(count, [3, 3, 2, 1, 1])
    # epoch 1: (1 + 2 + 3) / 3 = 2, sample std 1; epoch 3: (1/3, 2/3) -> mean 0.5
    assert mean[0] == pytest.approx(2.0) and high[0] - mean[0] == pytest.approx(1.0)
    assert mean[2] == pytest.approx(0.5)
    assert high[2] - mean[2] == pytest.approx(np.std([1 / 3, 2 / 3], ddof=1))
    # one seed left: mean is that seed, zero spread
    assert mean[4] == pytest.approx(0.2) and low[4] == high[4] == pytest.approx(0.2)
    _, mean, low, high, _ = plots.seed_band([a, b, c], "train/loss", spread="minmax")
    assert (low[1], high[1]) == (pytest.approx(0.5), pytest.approx(1.5))


def test_seed_band_bad_input():
    with pytest.raises(ValueError, match="spread: unknown 'iqr'"):
        plots.seed_band([_hist(2)], "val/loss", spread="iqr")
    with pytest.raises(ValueError, match=r"histories\[0\]\[0\]: missing key 'val/acc'"):
        plots.seed_band([_hist(2)], "val/acc")
    with pytest.raises(ValueError, match="histories: empty"):
        plots.seed_band([], "val/loss")


def test_plot_curves_with_unequal_lengths(tmp_path):
    curves = {"full recipe": [_hist(12), _hist(9, train0=1.2), _hist(7, train0=0.9)],
              "no dropout": [_hist(6, val_offset=0.3)]}
    out = plots.plot_curves(curves, tmp_path / "sub" / "curves.png", title="loss", logy=True)
    assert out == tmp_path / "sub" / "curves.png"
    assert _png_size(out) == (int(7.5 * 120), int(4.8 * 120))
    out = plots.plot_curves(curves, tmp_path / "acc.png", metric="accuracy", spread="minmax")
    _png_size(out)
    # Plotting must not go through pyplot's global state.
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def test_plot_curves_bad_input(tmp_path):
    with pytest.raises(ValueError, match="curves: empty"):
        plots.plot_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"curves\['a'\]: expected a non-empty list"):
        plots.plot_curves({"a": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_contributions(tmp_path):
    out = plots.plot_contributions(["batchnorm", "dropout", "augmentation", "l2"],
                                   [0.5, -0.2, 1.3, 0.0], [0.1, 0.3, 0.2, 0.05],
                                   tmp_path / "contrib.png", title="ablation")
    width, height = _png_size(out)
    assert (width, height) == (int(max(5.0, 0.9 * 4 + 2.0) * 120), int(4.5 * 120))
    _png_size(plots.plot_contributions(["a"], [-1.0], None, tmp_path / "one.png"))
    with pytest.raises(ValueError, match="do not match names"):
        plots.plot_contributions(["a", "b"], [1.0], [0.1], tmp_path / "bad.png")


def test_plot_histograms(tmp_path):
    rng = np.random.default_rng(0)
    hists = {f"dense_{i}": np.histogram(rng.normal(scale=i, size=500), bins=20) for i in range(1, 6)}
    out = plots.plot_histograms(hists, tmp_path / "hist.png", "activations")
    # 5 panels -> 4 columns x 2 rows
    assert _png_size(out) == (int((2.6 * 4 + 0.4) * 120), int((2.1 * 2 + 0.6) * 120))
    with pytest.raises(ValueError, match=r"hist_by_layer\['l'\]: 3 counts need 4 bin edges, got 3"):
        plots.plot_histograms({"l": ([1, 2, 3], [0.0, 1.0, 2.0])}, tmp_path / "bad.png", "t")


def test_plot_lines(tmp_path):
    depth = [1, 2, 3, 4, 5]
    series = {"he_normal": [1.0, 1.02, 0.98, 1.01, 0.99], "normal(0.01)": [1e-2 ** k for k in depth]}
    out = plots.plot_lines(depth, series, tmp_path / "var.png", "layer", "activation variance",
                           "variance by depth", logy=True)
    assert _png_size(out) == (int(6.5 * 120), int(4.2 * 120))
    with pytest.raises(ValueError, match=r"series\['a'\]: 2 values for 5 x values"):
        plots.plot_lines(depth, {"a": [1.0, 2.0]}, tmp_path / "bad.png")


def test_block_means_of_full_and_partial_blocks():
    # (0 + 1) / 2, (2 + 3) / 2 and the partial last block 4 / 1.
    np.testing.assert_allclose(plots.block_means(np.arange(5.0), 2), [0.5, 2.5, 4.0])
    # Blocks of 3 over [1, 4, 7, 2, 2, 5, 10]: (1+4+7)/3 = 4, (2+2+5)/3 = 3, 10/1 = 10.
    np.testing.assert_allclose(plots.block_means([1, 4, 7, 2, 2, 5, 10], 3), [4.0, 3.0, 10.0])
    # Window 1 is the values themselves; a window past the end is one mean of everything.
    np.testing.assert_allclose(plots.block_means([3.0, -1.0, 2.0], 1), [3.0, -1.0, 2.0])
    np.testing.assert_allclose(plots.block_means([3.0, -1.0, 2.0], 10), [4.0 / 3])
    # Values are flattened (a [steps, 1] array reads as steps).
    np.testing.assert_allclose(plots.block_means(np.array([[2.0], [4.0], [9.0]]), 2), [3.0, 9.0])
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            plots.block_means([1.0, 2.0], bad)
