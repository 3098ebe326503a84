"""Signal propagation at initialization: python -m experiments.signal_propagation --config=... --workdir=...

The chapter's section 13.1 demo (mean and variance of each layer's activations for small random,
Xavier and He initialization), the same with tanh, and coding question C2 (20 ReLU layers, He vs
Xavier, activation histograms per layer), each next to the infinite-width theory
(`ml_practical.analysis.propagation.mean_field`). Nothing is trained. Writes results.json,
results.md and PNG figures into the workdir and prints the tables.

What the seeds are and what is compared (the statistics of the report):
  * The inputs are fixed (the chapter's `np.random.seed(42); np.random.randn(1000, 512)`); a seed
    s is one independent draw of the network's weights, key `PRNGKey(s)`, s = 0 .. seeds - 1. In
    a draw every initializer scales the same N(0, 1) numbers, and the C2 stack's first layers are
    the 10-layer stack's, so comparisons within a draw are paired; across draws they are
    independent, which is what the intervals are over.
  * Comparison 1, per (activation, depth, init): the measured mean per-layer factor of the
    pre-activation variance over layers 2..L (`propagation.variance_ratios`, averaged over the
    layers) minus the mean-field theory's factor. The theory is one number, so the paired
    difference d_s = factor_s - theory is a one-sample test of E[factor] = theory (what
    `scipy.stats.ttest_rel(factors, [theory] * n)` computes).
  * Comparison 2, per (init, layer) the chapter prints for its ReLU demo: the measured activation
    variance of draw s minus the chapter's printed value. The chapter's code run on other draws
    should scatter around its printout; a confidence interval that excludes it says the printout
    is not that code's output. (The printout is rounded to 6 decimals, far below every difference
    measured here.)
  * Both kinds form one family: Holm's adjustment is over every comparison of the study
    (`inference.compare_family`). Every verdict sentence of results.md is the comparison's paired-t
    interval and Holm decision (`stats_report.formal`), never one draw's number.

The per-layer tables and the variance figures show the mean over the draws; the histograms show
draw 0.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax
import numpy as np

from experiments import cli, stats_report
from ml_practical import plots
from ml_practical.analysis import inference, propagation
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
    seeds: int = field(ge=1)
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


def _label(init: str) -> str:
    return LABELS.get(init, init)


def _names(field: str, value: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise ValueError(f"{field}: empty; expected comma-separated names")
    return names


def mean_factor(rows) -> float:
    """The mean over layers 2..L of the per-layer factor of the pre-activation variance (nan for a
    single layer or a vanished variance)."""
    r = propagation.variance_ratios(rows)
    return float(np.mean(r)) if r and np.all(np.isfinite(r)) else float("nan")


def _study(cfg, x, activation, inits, depth, bins=0):
    """{init: {"measured": draw 0's rows, "draws": per-draw statistics, "theory": rows, ...}}."""
    out = {}
    for init in inits:
        draws = [propagation.propagate(jax.random.PRNGKey(s), x, depth=depth, width=cfg.width,
                                       init=init, activation=activation,
                                       bins=bins if s == 0 else 0)
                 for s in range(cfg.seeds)]
        gain = propagation.weight_gain(init, cfg.width, cfg.width)
        theory = propagation.mean_field([gain] * depth, activation)
        out[init] = {"gain": gain, "measured": draws[0], "theory": theory,
                     "ratio_measured": propagation.variance_ratios(draws[0]),
                     "ratio_theory": propagation.variance_ratios(theory),
                     "factor_theory": mean_factor(theory),
                     "draws": {"seeds": list(range(cfg.seeds)),
                               "mean": [[r["mean"] for r in d] for d in draws],
                               "var": [[r["var"] for r in d] for d in draws],
                               "factor": [mean_factor(d) for d in draws]}}
    return out


def _mean_over_draws(s, key):
    return np.mean(np.asarray(s["draws"][key], np.float64), axis=0)


def _table(study, depth, seeds):
    inits = list(study)
    head = "| layer | " + " | ".join(f"{_label(i)} mean | var | theory var" for i in inits)
    lines = [f"Mean and var: the mean over {seeds} network draws.", "",
             head + " |", "|---:|" + "---:|---:|---:|" * len(inits)]
    for l in range(depth):
        cells = []
        for i in inits:
            t = study[i]["theory"][l]
            cells += [f"{_mean_over_draws(study[i], 'mean')[l]:.6f}",
                      f"{_mean_over_draws(study[i], 'var')[l]:.3g}", f"{t['var']:.3g}"]
        lines.append(f"| {l + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparisons(studies, deep, deep_depth):
    """The study's family of paired comparisons: {name: {"label", "against", "kind",
    "arm_values", "against_values", "seeds"}} (see the module docstring)."""
    out = {}
    stacks = [(act, s, None) for act, s in studies.items()] + [("relu", deep, deep_depth)]
    for act, study, depth in stacks:
        for init, s in study.items():
            depth_ = depth or len(s["theory"])
            factors, theory = s["draws"]["factor"], s["factor_theory"]
            if not (np.isfinite(theory) and np.all(np.isfinite(factors))):
                continue  # one layer, or a variance that vanished to 0: no factor to test
            tag = "C2 " if depth else ""
            out[f"factor/{tag}{act}/{depth_}/{init}"] = {
                "kind": "factor", "label": f"{tag}{_label(init)}, {act}, {depth_} layers: factor",
                "against": f"theory {theory:.4g}", "seeds": s["draws"]["seeds"],
                "arm_values": factors, "against_values": [theory] * len(factors)}
    relu = studies.get("relu", {})
    for init, claims in CHAPTER_13_1.items():
        if init not in relu:
            continue
        for layer, (_, chapter_var) in claims.items():
            if layer > len(relu[init]["theory"]):  # a shallower stack than the chapter's
                continue
            var = [v[layer - 1] for v in relu[init]["draws"]["var"]]
            out[f"chapter/{init}/{layer}"] = {
                "kind": "chapter", "label": f"{_label(init)}, ReLU, layer {layer}: measured var",
                "against": f"chapter's {chapter_var:.6f}", "seeds": relu[init]["draws"]["seeds"],
                "arm_values": var, "against_values": [chapter_var] * len(var)}
    return out


def add_inference(comps):
    """Each comparison's `inference.compare_family` entry (Holm over the whole family)."""
    for c in comps.values():
        c["differences"] = np.subtract(c["arm_values"], c["against_values"]).tolist()
    family = inference.compare_family({k: c["differences"] for k, c in comps.items()})
    for k, inf in family.items():
        comps[k]["inference"] = inf
    return comps


UNITS = {"factor": (1.0, 4, "factor"), "chapter": (1.0, 6, "var")}


def format_comparisons(comps, seeds):
    lines = []
    for kind, title in (("factor", "Measured per-layer variance factor against the "
                                   "infinite-width theory"),
                        ("chapter", "The chapter's printed numbers against this code's "
                                    "network draws (ReLU, 10 layers)")):
        rows = [(c["label"], c["against"], c["inference"]) for c in comps.values()
                if c["kind"] == kind]
        if not rows:
            continue
        scale, digits, unit = UNITS[kind]
        lines += [f"## {title}\n",
                  f"Δ = measured − reference over {seeds} independent network draws (95 % CI: "
                  "paired t and exact/percentile bootstrap; Holm over all "
                  f"{len(comps)} comparisons of the study; detectable: the smallest true Δ the "
                  "draws detect at 80 % power from their measured sd).\n",
                  stats_report.comparison_table(rows, what="comparison", scale=scale,
                                                digits=digits, unit=unit)]
    lines += ["## Verdicts\n"]
    for c in comps.values():
        scale, digits, unit = UNITS[c["kind"]]
        inf = c["inference"]
        sentence = stats_report.formal(inf, scale, digits, unit)
        if inf["decision"] == "differs":
            meaning = ("the finite network departs from the theory" if c["kind"] == "factor"
                       else "the printout is not what this code produces")
        elif float(inf["t"]["p"]) <= float(inf["alpha"]):
            meaning = "the interval excludes 0, but not after Holm's adjustment over the family"
        else:
            meaning = ("no departure from the theory detected" if c["kind"] == "factor"
                       else "the printout is within what this code produces")
        lines.append(f"- {c['label']} against {c['against']}: {sentence} ({meaning}).")
    return "\n".join(lines) + "\n"


def _plot_variance(study, depth, path, title, seeds):
    series = {}
    for init, s in study.items():
        series[f"{_label(init)} (measured, mean of {seeds} draws)"] = _mean_over_draws(s, "var")
        series[f"{_label(init)} (theory)"] = [r["var"] for r in s["theory"]]
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
    comps = add_inference(comparisons(studies, deep, cfg.deep_depth))

    figures = []
    for act, study in studies.items():
        name = f"variance_{act}.png"
        _plot_variance(study, cfg.depth, workdir / name,
                       f"{cfg.depth} layers of {cfg.width}, {act}, no bias: activation variance",
                       cfg.seeds)
        figures.append(name)
    _plot_variance(deep, cfg.deep_depth, workdir / "c2_variance.png",
                   f"C2: {cfg.deep_depth} ReLU layers of {cfg.width}: activation variance",
                   cfg.seeds)
    figures.append("c2_variance.png")
    for init, s in deep.items():
        hists = {f"layer {r['layer']}  var {r['var']:.2g}  zeros {100 * r['zero_fraction']:.0f}%":
                 r["hist"] for r in s["measured"]}
        name = f"c2_hist_{init}.png"
        plots.plot_histograms(hists, workdir / name,
                              title=f"C2: {_label(init)} init, {cfg.deep_depth} ReLU layers, "
                                    "draw 0: non-zero activations per layer (own x range per "
                                    "panel)")
        figures.append(name)
    wall = time.time() - t0

    results = {
        "seeds": list(range(cfg.seeds)),
        "chapter_13_1": {k: {str(l): v for l, v in c.items()} for k, c in CHAPTER_13_1.items()},
        "studies": {act: {i: {**s, "measured": _jsonable_rows(s["measured"])}
                          for i, s in study.items()} for act, study in studies.items()},
        "c2": {i: {**s, "measured": _jsonable_rows(s["measured"])} for i, s in deep.items()},
        "comparisons": comps,
    }
    md = [f"# Signal propagation at initialization\n\nCommand: `{command}` ({wall:.1f} s)\n",
          f"Inputs: {cfg.num_samples} x {cfg.width} standard normal (numpy seed {cfg.input_seed}); "
          f"bias-free Dense layers of {cfg.width}; {cfg.seeds} independent draws of the weights "
          f"(keys 0..{cfg.seeds - 1}), every init of a draw from the same key (the same N(0, 1) "
          "numbers, scaled). Mean and var are over all samples and units (numpy's var); theory is "
          "the infinite-width recursion of `ml_practical.analysis.propagation`. The factor is the "
          "mean over layers 2..L of Var(z_l) / Var(z_{l-1}) of the pre-activations.\n",
          format_comparisons(comps, cfg.seeds)]
    for act, study in studies.items():
        md += [f"## {act}, {cfg.depth} layers\n", _table(study, cfg.depth, cfg.seeds)]
    md += [f"## C2: {cfg.deep_depth} ReLU layers\n", _table(deep, cfg.deep_depth, cfg.seeds)]
    md += ["Figures: " + ", ".join(figures) + "\n"]
    cli.finish(run, wall, results, md, figures)
