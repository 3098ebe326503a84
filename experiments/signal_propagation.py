"""Signal propagation at initialization: python -m experiments.signal_propagation --config=... --workdir=...

The chapter's section 13.1 demo (mean and variance of each layer's activations for small random,
Xavier and He initialization), the same with tanh, and coding question C2 (20 ReLU layers, He vs
Xavier, activation histograms per layer), each next to the infinite-width theory
(`ml_practical.propagation.mean_field`). Writes results.json, results.md and PNG figures into the
workdir and prints the tables.
"""

import time

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from ml_practical import plots, propagation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created).")
flags.mark_flags_as_required(["config", "workdir"])

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
  for init, claims in propagation.CHAPTER_13_1.items():
    if init not in study:
      continue
    for layer, (cm, cv) in claims.items():
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
  workdir, command = cli.start(argv, "experiments.signal_propagation", _WORKDIR.value)
  cfg = _CONFIG.value
  t0 = time.time()
  x = propagation.chapter_inputs(cfg.input_seed, cfg.num_samples, cfg.width)
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
                       for k, c in propagation.CHAPTER_13_1.items()},
      "studies": {act: {i: {**s, "measured": _jsonable_rows(s["measured"])}
                        for i, s in study.items()} for act, study in studies.items()},
      "c2": {i: {**s, "measured": _jsonable_rows(s["measured"])} for i, s in deep.items()},
  }
  md = [f"# Signal propagation at initialization\n\nCommand: `{command}` ({wall:.1f} s)\n",
        f"Inputs: {cfg.num_samples} x {cfg.width} standard normal (numpy seed {cfg.input_seed}); "
        f"bias-free Dense layers of {cfg.width}; weights of every init drawn from the same key "
        "(the same N(0, 1) numbers, scaled). Mean and var are over all samples and units "
        "(numpy's var); theory is the infinite-width recursion of `ml_practical.propagation`.\n"]
  if "relu" in studies:
    md += ["## The chapter's printed numbers against this run (ReLU)\n", _chapter_table(studies["relu"])]
  for act, study in studies.items():
    md += [f"## {act}, {cfg.depth} layers\n", _table(study, cfg.depth)]
  md += [f"## C2: {cfg.deep_depth} ReLU layers\n", _table(deep, cfg.deep_depth)]
  md += ["Figures: " + ", ".join(figures) + "\n"]
  cli.finish(workdir, command, cfg, wall, results, md, figures)


if __name__ == "__main__":
  app.run(main)
