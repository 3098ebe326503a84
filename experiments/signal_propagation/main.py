"""Signal propagation at initialization: python -m experiments.signal_propagation --config=... --workdir=...

The chapter's section 13.1 demo (mean and variance of each layer's activations for small random,
Xavier and He initialization), the same with tanh, and coding question C2 (20 ReLU layers, He vs
Xavier, activation histograms per layer), each next to the infinite-width theory
(`ml_practical.analysis.propagation.mean_field`). Nothing is trained. Writes results.json,
results.md and PNG figures into the workdir and prints the tables.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax
import numpy as np

from experiments import cli
from ml_practical import plots
from ml_practical.analysis import propagation
from ml_practical.config import Section, field

# What the chapter prints for its section 13.1 demo (10 layers of 512, ReLU, no bias, inputs
# np.random.seed(42); np.random.randn(1000, 512)): {init: {layer: (mean, var)}}, as printed.
CHAPTER_13_1: dict[str, dict[int, tuple[float, float]]] = {
    "normal": {1: (0.000183, 0.000000), 2: (0.000000, 0.000000)},
    "xavier_normal": {1: (0.318842, 0.162504), 5: (0.048291, 0.004520), 10: (0.001253, 0.000003)},
    "he_normal": {1: (0.450216, 0.325891), 5: (0.432105, 0.301245), 10: (0.441892, 0.312654)},
}



@dataclasses.dataclass(frozen=True)
class SignalStudy(Section):
    """The study's fields (experiments/configs/signal_propagation.py documents each)."""

    section: ClassVar[str] = ""
    seed: int = field(ge=0)
    input_seed: int = field(ge=0)
    num_samples: int = field(ge=1)
    width: int = field(ge=1)
    depth: int = field(ge=1)
    inits: str
    activations: str
    deep_depth: int = field(ge=1)
    deep_inits: str
    bins: int = field(ge=0)


def chapter_inputs(seed: int = 42, num_samples: int = 1000, features: int = 512) -> np.ndarray:
    """The chapter's inputs: `np.random.seed(seed); np.random.randn(num_samples, features)`, float32.

    numpy's legacy global generator, so with the defaults these are the chapter's exact numbers.
    """
    return np.random.RandomState(seed).randn(num_samples, features).astype(np.float32)


LABELS = {"normal": "small random N(0, 0.01²)", "xavier_normal": "Xavier", "he_normal": "He"}


def _names(field: str, value: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise ValueError(f"{field}: empty; expected comma-separated names")
    return names


def _study(cfg, x, activation, inits, depth, bins=0):
    """{init: {"measured": rows, "theory": rows, "ratio": per-layer factors}}."""
    out = {}
    for init in inits:
        measured = propagation.propagate(jax.random.PRNGKey(cfg.seed), x, depth=depth,
                                                                          width=cfg.width, init=init, activation=activation, bins=bins)
        gain = propagation.weight_gain(init, cfg.width, cfg.width)
        theory = propagation.mean_field([gain] * depth, activation)
        out[init] = {"gain": gain, "measured": measured, "theory": theory,
                                  "ratio_measured": propagation.variance_ratios(measured),
                                  "ratio_theory": propagation.variance_ratios(theory)}
    return out


def _table(study, depth):
    inits = list(study)
    head = "| layer | " + " | ".join(f"{LABELS.get(i, i)} mean | var | theory var" for i in inits)
    lines = [head + " |", "|---:|" + "---:|---:|---:|" * len(inits)]
    for l in range(depth):
        cells = []
        for i in inits:
            m, t = study[i]["measured"][l], study[i]["theory"][l]
            cells += [f"{m['mean']:.6f}", f"{m['var']:.3g}", f"{t['var']:.3g}"]
        lines.append(f"| {l + 1} | " + " | ".join(cells) + " |")
    factors = []
    for i in inits:
        r, t = study[i]["ratio_measured"], study[i]["ratio_theory"]
        factors.append(f"{LABELS.get(i, i)}: measured {sum(r) / len(r):.4g} (theory {sum(t) / len(t):.4g}, "
                                      f"weight gain n·Var(W) = {study[i]['gain']:.4g})")
    return ("\n".join(lines) + "\n\nMean per-layer factor of the pre-activation variance over "
                    "layers 2..L: " + "; ".join(factors) + ".\n")


def _chapter_table(study):
    lines = ["| init | layer | chapter mean | chapter var | measured mean | measured var "
                      "| measured var | theory var |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for init, claims in CHAPTER_13_1.items():
        if init not in study:
            continue
        for layer, (cm, cv) in claims.items():
            if layer > len(study[init]["measured"]):  # a shallower stack than the chapter's
                continue
            m, t = study[init]["measured"][layer - 1], study[init]["theory"][layer - 1]
            lines.append(f"| {LABELS.get(init, init)} | {layer} | {cm:.6f} | {cv:.6f} | {m['mean']:.6f} "
                                      f"| {m['var']:.6f} | {m['var']:.3g} | {t['var']:.3g} |")
    return "\n".join(lines) + "\n"


def _plot_variance(study, depth, path, title):
    series = {}
    for init, s in study.items():
        series[f"{LABELS.get(init, init)} (measured)"] = [r["var"] for r in s["measured"]]
        series[f"{LABELS.get(init, init)} (theory)"] = [r["var"] for r in s["theory"]]
    plots.plot_lines(list(range(1, depth + 1)), series, path, xlabel="layer",
                                      ylabel="variance of the activations", title=title, logy=True)


def _jsonable_rows(rows):
    out = []
    for r in rows:
        r = dict(r)
        if "hist" in r:
            counts, edges = r.pop("hist")
            r["hist"] = {"counts": counts.tolist(), "edges": edges.tolist()}
        out.append(r)
    return out


def main(argv):
    run = cli.start(argv, "experiments.signal_propagation", study=SignalStudy, training=False)
    cfg, workdir, command = run.cfg, run.workdir, run.command
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x = chapter_inputs(cfg.input_seed, cfg.num_samples, cfg.width)
    inits = _names("inits", cfg.inits)
    studies = {act: _study(cfg, x, act, inits, cfg.depth)
                          for act in _names("activations", cfg.activations)}
    deep = _study(cfg, x, "relu", _names("deep_inits", cfg.deep_inits), cfg.deep_depth,
                                bins=cfg.bins)

    figures = []
    for act, study in studies.items():
        name = f"variance_{act}.png"
        _plot_variance(study, cfg.depth, workdir / name,
                                      f"{cfg.depth} layers of {cfg.width}, {act}, no bias: activation variance")
        figures.append(name)
    _plot_variance(deep, cfg.deep_depth, workdir / "c2_variance.png",
                                  f"C2: {cfg.deep_depth} ReLU layers of {cfg.width}: activation variance")
    figures.append("c2_variance.png")
    for init, s in deep.items():
        hists = {f"layer {r['layer']}  var {r['var']:.2g}  zeros {100 * r['zero_fraction']:.0f}%":
                          r["hist"] for r in s["measured"]}
        name = f"c2_hist_{init}.png"
        plots.plot_histograms(hists, workdir / name,
                                                    title=f"C2: {LABELS.get(init, init)} init, {cfg.deep_depth} ReLU layers: "
                                                                "non-zero activations per layer (own x range per panel)")
        figures.append(name)
    wall = time.time() - t0

    results = {
            "chapter_13_1": {k: {str(l): v for l, v in c.items()}
                                              for k, c in CHAPTER_13_1.items()},
            "studies": {act: {i: {**s, "measured": _jsonable_rows(s["measured"])}
                                                for i, s in study.items()} for act, study in studies.items()},
            "c2": {i: {**s, "measured": _jsonable_rows(s["measured"])} for i, s in deep.items()},
    }
    md = [f"# Signal propagation at initialization\n\nCommand: `{command}` ({wall:.1f} s)\n",
                f"Inputs: {cfg.num_samples} x {cfg.width} standard normal (numpy seed {cfg.input_seed}); "
                f"bias-free Dense layers of {cfg.width}; weights of every init drawn from the same key "
                "(the same N(0, 1) numbers, scaled). Mean and var are over all samples and units "
                "(numpy's var); theory is the infinite-width recursion of `ml_practical.analysis.propagation`.\n"]
    if "relu" in studies:
        md += ["## The chapter's printed numbers against this run (ReLU)\n", _chapter_table(studies["relu"])]
    for act, study in studies.items():
        md += [f"## {act}, {cfg.depth} layers\n", _table(study, cfg.depth)]
    md += [f"## C2: {cfg.deep_depth} ReLU layers\n", _table(deep, cfg.deep_depth)]
    md += ["Figures: " + ", ".join(figures) + "\n"]
    cli.finish(run, wall, results, md, figures)
