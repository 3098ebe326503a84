"""L1 vs L2 vs elastic net on 100 features of which 10 matter (coding question C3).

  python -m experiments.sparsity --config=experiments/configs/sparsity.py --workdir=checkpoints/sparsity

Trains the linear model with L2, L1 by subgradient, L1 by proximal step and elastic net through the
library's optax chain (`ml_practical.sparsity`), solves the same objectives with scikit-learn, and
writes into the workdir: results.json, results.md (the tables printed here), weights.png (weight
histograms), weights_off_support.png (the 90 irrelevant weights, zoomed), coefficients.png and
objective_gap.png (J(t) - J* per step for the L1 objectives).
"""

import json
import pathlib
import shlex
import sys
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from ml_practical import plots, run_files, sparsity

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created).")
flags.mark_flags_as_required(["config", "workdir"])

PENALTY_ORDER = ("l2", "l1_subgradient", "l1_proximal", "elastic_net")


def coefficients_for(penalty, cfg):
  """The (l1, l2) a penalty uses, from the config's shared coefficients."""
  l1 = cfg.penalty.l1 if penalty in ("l1_subgradient", "l1_proximal", "elastic_net") else 0.0
  l2 = cfg.penalty.l2 if penalty in ("l2", "elastic_net") else 0.0
  return l1, l2


def run(cfg, workdir):
  start = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  p = cfg.problem
  prob = sparsity.make_sparse_regression(cfg.seed, n_samples=p.n_samples, n_features=p.n_features,
                                         n_informative=p.n_informative, noise=p.noise)
  lipschitz = sparsity.lipschitz_constant(prob.x)
  lr = cfg.fit.learning_rate or 1.0 / lipschitz
  truth = sparsity.support_metrics(prob.coef, prob.support)

  rows, fits = {}, {}
  for penalty in PENALTY_ORDER:
    l1, l2 = coefficients_for(penalty, cfg)
    t0 = time.time()
    fit = sparsity.fit_linear(prob.x, prob.y, penalty=penalty, l1=l1, l2=l2, steps=cfg.fit.steps,
                              lr=lr, optimizer=cfg.fit.optimizer)
    fit_s = time.time() - t0
    ref_coef, ref_bias = sparsity.sklearn_fit(prob.x, prob.y, penalty=penalty, l1=l1, l2=l2)
    j_ours = sparsity.penalized_objective(prob.x, prob.y, fit.kernel, fit.bias, l1=l1, l2=l2)
    j_ref = sparsity.penalized_objective(prob.x, prob.y, ref_coef, ref_bias, l1=l1, l2=l2)
    support = sparsity.support_metrics(fit.kernel, prob.support)
    agree = sparsity.coefficient_agreement(fit.kernel, ref_coef)
    fits[penalty] = (fit, j_ref)
    rows[penalty] = {
        "l1": l1, "l2": l2,
        "support": support,
        "max_abs_error_vs_true_coef": float(np.max(np.abs(fit.kernel - prob.coef))),
        "objective": j_ours,
        "sklearn": {
            "estimator": _sklearn_name(penalty, l1, l2, p.n_samples),
            "objective": j_ref,
            "support": sparsity.support_metrics(ref_coef, prob.support),
            "agreement": agree,
            "intercept_abs_diff": abs(fit.bias - ref_bias),
        },
        "fit_wall_s": fit_s,
        "weights": fit.kernel.tolist(),
    }

  results = {
      "command": "python -m experiments.sparsity " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
      "config": run_files.to_jsonable(cfg),
      "problem": {"support": truth["selected"], "coef": prob.coef.tolist(), "lipschitz": lipschitz,
                  "learning_rate": lr},
      "penalties": rows,
      "wall_time_s": None,
  }
  _figures(cfg, prob, fits, workdir)
  results["wall_time_s"] = time.time() - start
  run_files.atomic_write_text(workdir / "results.json", json.dumps(results, indent=1) + "\n")
  run_files.atomic_write_text(workdir / "results.md", format_results(results))
  return results


def _sklearn_name(penalty, l1, l2, n):
  if penalty in ("l1_subgradient", "l1_proximal"):
    return f"Lasso(alpha={l1:g})"
  if penalty == "elastic_net":
    return f"ElasticNet(alpha={l1 + l2:g}, l1_ratio={l1 / (l1 + l2):.4g})"
  return f"Ridge(alpha={n * l2:g})"


def _figures(cfg, prob, fits, workdir):
  weights = {name: fit.kernel for name, (fit, _) in fits.items()}
  top = max(np.max(np.abs(prob.coef)), *(np.max(np.abs(w)) for w in weights.values())) * 1.05
  edges = np.linspace(-top, top, cfg.report.histogram_bins + 1)
  panels = {"true coefficients": np.histogram(prob.coef, edges)}
  panels.update({f"{n} ({int(np.sum(w == 0))} exact zeros)": np.histogram(w, edges)
                 for n, w in weights.items()})
  plots.plot_histograms(panels, workdir / "weights.png",
                        title=f"Weights of the {prob.coef.size} features ({len(prob.support)} informative)")
  off = np.ones(prob.coef.size, bool)
  off[prob.support] = False
  r = cfg.report.off_support_range
  edges = np.linspace(-r, r, cfg.report.histogram_bins + 1)
  panels = {f"{n} (|w| max {np.max(np.abs(w[off])):.3f})": np.histogram(np.clip(w[off], -r, r), edges)
            for n, w in weights.items()}
  plots.plot_histograms(panels, workdir / "weights_off_support.png",
                        title=f"The {int(off.sum())} irrelevant weights (clipped to ±{r:g})")
  order = np.concatenate([prob.support, np.flatnonzero(off)])
  series = {"true": prob.coef[order]}
  series.update({n: w[order] for n, w in weights.items()})
  plots.plot_lines(np.arange(order.size), series, workdir / "coefficients.png",
                   xlabel=f"feature (the {len(prob.support)} informative ones first)",
                   ylabel="weight", title="Coefficients by feature")
  gaps = {}
  for name in ("l1_subgradient", "l1_proximal", "elastic_net"):
    fit, j_ref = fits[name]
    # objective[t] is float32 J before step t; J* is sklearn's optimum in float64. Floored at
    # 1e-7 (float32 resolution of J ~ 5) so the log axis can show the converged tail.
    gaps[name] = np.maximum(fit.objective - j_ref, 1e-7)
  shown = min(cfg.report.gap_steps, len(next(iter(gaps.values()))))
  plots.plot_lines(np.arange(shown), {n: g[:shown] for n, g in gaps.items()},
                   workdir / "objective_gap.png", xlabel="step", ylabel="J(t) - J* (sklearn optimum)",
                   logy=True, title="Gap to the optimum: subgradient stalls, ISTA converges")


def format_results(results):
  prob = results["problem"]
  cfg = results["config"]
  lines = [
      f"Sparse regression: n = {cfg['problem']['n_samples']}, d = {cfg['problem']['n_features']}, "
      f"{cfg['problem']['n_informative']} informative (|w| in [1, 2]), noise {cfg['problem']['noise']}; "
      f"full-batch {cfg['fit']['optimizer']}, lr = {prob['learning_rate']:.4g} (1/L = "
      f"{1 / prob['lipschitz']:.4g}), {cfg['fit']['steps']} steps; seed {cfg['seed']}.",
      "Selected = |w| > 0 (exact zeros only). Objective J = 1/2 mean (y - Xw - b)^2 + l1 |w|_1 + "
      "l2/2 |w|^2.",
      "",
      "| penalty | l1 | l2 | exact zeros | selected | precision | recall | F1 | max abs w off support "
      "| max abs (w - w_true) | J (ours) | J (sklearn) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in results["penalties"].items():
    s = r["support"]
    lines.append(
        f"| {name} | {r['l1']:g} | {r['l2']:g} | {s['exact_zeros']} | {s['n_selected']} | "
        f"{s['precision']:.2f} | {s['recall']:.2f} | {s['f1']:.2f} | {s['max_abs_off_support']:.3g} | "
        f"{r['max_abs_error_vs_true_coef']:.3f} | {r['objective']:.6f} | {r['sklearn']['objective']:.6f} |")
  lines += [
      "",
      "Agreement with scikit-learn on the same data and objective:",
      "",
      "| penalty | sklearn estimator | sklearn selected | sklearn precision / recall | same support "
      "| max abs coef diff | abs intercept diff |",
      "|---|---|---|---|---|---|---|",
  ]
  for name, r in results["penalties"].items():
    sk = r["sklearn"]
    a = sk["agreement"]
    lines.append(
        f"| {name} | {sk['estimator']} | {sk['support']['n_selected']} | "
        f"{sk['support']['precision']:.2f} / {sk['support']['recall']:.2f} | "
        f"{'yes' if a['same_support'] else 'no'} | {a['max_abs_diff']:.2e} | "
        f"{sk['intercept_abs_diff']:.2e} |")
  lines += ["", f"Wall time {results['wall_time_s']:.1f} s. Command: `{results['command']}`", ""]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  results = run(_CONFIG.value, _WORKDIR.value)
  print(format_results(results))
  print(f"Wrote results.json, results.md, weights.png, weights_off_support.png, coefficients.png, "
        f"objective_gap.png to {_WORKDIR.value}.")


if __name__ == "__main__":
  app.run(main)
