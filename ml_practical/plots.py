"""Matplotlib figures for the experiments: loss curves, ablation contributions, histograms, line plots.

No computation here beyond the mean and spread over seeds that the shading needs. Figures are built
as `matplotlib.figure.Figure` objects drawn by the Agg canvas, never through pyplot: nothing touches
pyplot's global figure list or the user's backend, and no display is needed. Each function writes the
file (format from the suffix, PNG when there is none; parent folders are created) and returns its path.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SPREADS = ("std", "minmax")
_DPI = 120


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def seed_band(histories: Sequence[Sequence[Mapping[str, Any]]], key: str, *,
              spread: str = "std") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean curve and spread of one metric over seeds whose histories may differ in length.

    Early stopping ends seeds at different epochs, so epoch i is averaged over the seeds that reached
    it; past the shortest run the band rests on fewer seeds (the count is returned).

    Args:
      histories: one history (list of per-epoch dicts) per seed; each dict must hold `key`.
      key: the metric, e.g. "val/loss".
      spread: "std" for mean +- sample std (ddof=1; zero where one seed remains) or "minmax" for the
        range over seeds.

    Returns:
      (epochs, mean, low, high, count), arrays of the longest history's length. Epochs are the
      longest history's "epoch" values when all its entries have one, else 1, 2, ....
    """
    if spread not in SPREADS:
        raise ValueError(f"spread: unknown {spread!r}; expected one of {list(SPREADS)}")
    if len(histories) == 0:
        raise ValueError("histories: empty; expected one history (list of per-epoch dicts) per seed")
    for s, hist in enumerate(histories):
        if len(hist) == 0:
            raise ValueError(f"histories[{s}]: empty; expected at least one per-epoch dict")
        for i, entry in enumerate(hist):
            if key not in entry:
                raise ValueError(f"histories[{s}][{i}]: missing key {key!r}; got {sorted(entry)}")
    longest = max(histories, key=len)
    n = len(longest)
    if all("epoch" in e for e in longest):
        epochs = np.asarray([e["epoch"] for e in longest], dtype=np.float64)
    else:
        epochs = np.arange(1, n + 1, dtype=np.float64)
    mean, low, high, count = (np.empty(n) for _ in range(4))
    for i in range(n):
        v = np.asarray([float(h[i][key]) for h in histories if len(h) > i])
        mean[i], count[i] = v.mean(), v.size
        if spread == "minmax":
            low[i], high[i] = v.min(), v.max()
        else:
            sd = v.std(ddof=1) if v.size > 1 else 0.0
            low[i], high[i] = mean[i] - sd, mean[i] + sd
    return epochs, mean, low, high, count.astype(np.int64)


def plot_curves(curves: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
                path: str | os.PathLike, *,
                title: str = "Train (dashed) and validation (solid) loss",
                metric: str = "loss", spread: str = "std", logy: bool = False) -> pathlib.Path:
    """Train (dashed) and val (solid) curves per experiment, mean over seeds with a shaded spread.

    The chapter's section 12.8.2 picture: overfitting shows as a val curve turning up while train keeps
    falling, underfitting as both curves high and close. Histories of unequal length (early stopping)
    are averaged over the seeds that reached each epoch (see `seed_band`); an "x" marks the val loss
    at the last epoch of each seed, i.e. where its run stopped.

    Args:
      curves: {experiment name: [history per seed]}, a history being the per-epoch dicts of
        metrics.jsonl with f"train/{metric}" and f"val/{metric}".
      path: output file.
      title: figure title.
      metric: metric suffix to plot ("loss", "accuracy", ...).
      spread: "std" (mean +- sample std) or "minmax" shading.
      logy: log-scale y axis (useful when train loss falls by decades).

    Returns:
      The path written.
    """
    if len(curves) == 0:
        raise ValueError("curves: empty; expected {experiment name: [history per seed]}")
    fig = _new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    # One color per experiment (train and val share it); tab10 repeats after ten experiments.
    palette = [f"C{i % 10}" for i in range(len(curves))]
    for (name, histories), color in zip(curves.items(), palette):
        if isinstance(histories, Mapping) or len(histories) == 0:
            raise ValueError(f"curves[{name!r}]: expected a non-empty list of histories (one per seed)")
        for split, style in (("train", "--"), ("val", "-")):
            epochs, mean, low, high, _ = seed_band(histories, f"{split}/{metric}", spread=spread)
            ax.plot(epochs, mean, style, color=color, lw=1.6,
                    label=f"{name} ({split}, {len(histories)} seed{'s' if len(histories) > 1 else ''})")
            ax.fill_between(epochs, low, high, color=color, alpha=0.15, lw=0)
        ends = [(h[-1]["epoch"] if "epoch" in h[-1] else len(h), float(h[-1][f"val/{metric}"]))
                for h in histories]
        ax.scatter([e for e, _ in ends], [v for _, v in ends], marker="x", color=color, zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    shade = "mean ± std" if spread == "std" else "mean, min-max"
    ax.legend(fontsize="small", title=f"{shade} over seeds; x = last epoch",
              title_fontsize="small")
    return _save(fig, path)


def plot_contributions(names: Sequence[str], means: Sequence[float],
                       stds: Sequence[float] | None, path: str | os.PathLike, *,
                       title: str = "Contribution of each component",
                       ylabel: str = "test accuracy change (percentage points)") -> pathlib.Path:
    """Bar chart of per-component effects with +- std error bars; green helps, red hurts.

    Args:
      names: one label per bar.
      means: the effect of each bar (e.g. full recipe minus the recipe without the component).
      stds: its spread over seeds (same length), or None for no error bars.
      path: output file.
      title, ylabel: labels.

    Returns:
      The path written.
    """
    n = len(names)
    if n == 0:
        raise ValueError("names: empty; expected one label per bar")
    if len(means) != n or (stds is not None and len(stds) != n):
        raise ValueError(
            f"means/stds: lengths {len(means)}/{None if stds is None else len(stds)} do not match "
            f"names ({n})")
    means = np.asarray(means, dtype=np.float64)
    errs = None if stds is None else np.asarray(stds, dtype=np.float64)
    colors = ["tab:green" if m > 0 else "tab:red" if m < 0 else "tab:gray" for m in means]
    fig = _new_figure(max(5.0, 0.9 * n + 2.0), 4.5)
    ax = fig.add_subplot()
    x = np.arange(n)
    ax.bar(x, means, yerr=errs, color=colors, capsize=4, edgecolor="black", lw=0.6)
    ax.axhline(0.0, color="black", lw=0.8)
    reach = np.abs(means) + (errs if errs is not None else 0.0)
    pad = 0.03 * (float(reach.max()) if reach.max() > 0 else 1.0)
    for xi, m, r in zip(x, means, reach):
        label = f"{m:+.2f}" if errs is None else f"{m:+.2f} ± {errs[xi]:.2f}"
        # Label beyond the error bar, on the side the bar points to.
        y = r + pad if m >= 0 else -(r + pad)
        ax.text(xi, y, label, ha="center", va="bottom" if m >= 0 else "top", fontsize="small")
    ax.set_xticks(x, list(names), rotation=30 if max(len(s) for s in names) > 8 else 0,
                  ha="right" if max(len(s) for s in names) > 8 else "center")
    lim = float(reach.max()) + 6 * pad if reach.max() > 0 else 1.0
    ax.set_ylim(-lim if means.min() < 0 else min(0.0, -pad), lim if means.max() >= 0 else pad)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_histograms(hist_by_layer: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    path: str | os.PathLike,
                    title: str = "Activation histograms per layer") -> pathlib.Path:
    """A grid of small panels, one histogram per layer (e.g. activations under an initialization).

    Args:
      hist_by_layer: {layer name: (counts, bin_edges)} as returned by numpy.histogram
        (len(bin_edges) == len(counts) + 1), in the order the panels should appear.
      path: output file.
      title: figure title.

    Returns:
      The path written.
    """
    n = len(hist_by_layer)
    if n == 0:
        raise ValueError("hist_by_layer: empty; expected {layer name: (counts, bin_edges)}")
    for name, pair in hist_by_layer.items():
        if len(pair) != 2:
            raise ValueError(f"hist_by_layer[{name!r}]: expected (counts, bin_edges)")
        counts, edges = (np.asarray(a).reshape(-1) for a in pair)
        if edges.size != counts.size + 1:
            raise ValueError(
                f"hist_by_layer[{name!r}]: {counts.size} counts need {counts.size + 1} bin edges, "
                f"got {edges.size}")
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(2.6 * ncols + 0.4, 2.1 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, (counts, edges)) in zip(axes.flat, hist_by_layer.items()):
        ax.stairs(np.asarray(counts, dtype=np.float64), np.asarray(edges, dtype=np.float64),
                  fill=True, alpha=0.8)
        ax.set_title(name, fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_lines(x: Sequence[float], series: Mapping[str, Sequence[float]],
               path: str | os.PathLike, xlabel: str = "", ylabel: str = "", title: str = "",
               logy: bool = False) -> pathlib.Path:
    """Generic line plot, one line per series (e.g. activation variance per layer per init).

    Args:
      x: shared x values.
      series: {name: y values}, each of len(x).
      path: output file.
      xlabel, ylabel, title: labels.
      logy: log-scale y axis (variances that explode or vanish geometrically with depth).

    Returns:
      The path written.
    """
    if len(series) == 0:
        raise ValueError("series: empty; expected {name: y values}")
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series[{name!r}]: {len(ys)} values for {len(x)} x values")
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for name, ys in series.items():
        ax.plot(np.asarray(x), np.asarray(ys, dtype=np.float64), "o-", ms=3.5, lw=1.5, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def block_means(values: Any, window: int) -> np.ndarray:
    """Means over consecutive blocks of `window` values (the last, partial block included).

    For plotting thousands of per-step values as a readable curve.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: {window!r}; expected an integer >= 1")
    v = np.asarray(values, np.float64).reshape(-1)
    n = -(-v.size // window)
    return np.asarray([v[i * window:(i + 1) * window].mean() for i in range(n)])
