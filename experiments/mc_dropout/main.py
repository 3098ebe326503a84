"""Monte Carlo dropout against the deterministic network on MNIST (coding question C4).

  python -m experiments.mc_dropout --config=experiments/configs/mc_dropout.py \
      --workdir=checkpoints/mc_dropout --config.data.data_dir=../shared/data/mnist

Trains the recipe model with `loop.fit` in <workdir>/train (reused when finished), then runs T MC
dropout passes over the test set as one vectorised computation (`uncertainty.mc_predict`, which
works for any model family with the contract's `mc_dropout` mode) and writes into the workdir:
results.json, results.md (the tables printed here), reliability.png, retention.png,
entropy_by_correctness.png and mi_by_correctness.png.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import ClassVar

import jax
import numpy as np

from experiments import cli
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, plots, uncertainty
from ml_practical.analysis import calibration
from ml_practical.config import Section, field

RETAINED = (0.95, 0.9, 0.8)      # retained fractions reported in the table


@dataclasses.dataclass(frozen=True)
class MCOptions(Section):
    """The Monte Carlo passes (experiments/configs/mc_dropout.py documents each field)."""

    section: ClassVar[str] = "mc"
    num_samples: int = field(ge=1)
    batch_size: int = field(ge=1)
    seed: int = field(ge=0)
    num_bins: int = field(ge=1)
    time_loop: bool
    timing_repeats: int = field(ge=1)
    histogram_bins: int = field(ge=1)


@dataclasses.dataclass(frozen=True)
class MCStudy(Section):
    """The study's own fields: the `mc` section (changing it never retrains)."""

    section: ClassVar[str] = ""
    mc: MCOptions


def train_config(cfg: config_lib.Config) -> config_lib.Config:
    """The `loop.fit` config: everything but the `mc` section (so changing T never retrains)."""
    return config_lib.override(cfg, {})


def _timed(fn, repeats=1, cpu=None):
    """(output, best wall time over `repeats` calls); the minimum filters out other load on the host.

    If `cpu` is a list, the process CPU time (all threads) of the fastest call is appended to it:
    on a shared host it moves less with the neighbours' load than the wall time does.
    """
    best, best_cpu = float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn())
        wall = time.perf_counter() - t0
        if wall < best:
            best, best_cpu = wall, time.process_time() - c0
    if cpu is not None:
        cpu.append(best_cpu)
    return out, best


def run(cfg, workdir, command, log=print):
    start = time.time()
    workdir = pathlib.Path(workdir)
    tcfg = train_config(cfg)
    dataset = data_lib.load_dataset(tcfg.data)
    log(f"Training {tcfg.train.num_epochs} epochs (drop_rate {tcfg.model.drop_rate}) in {workdir / 'train'} ...")
    result = loop.fit(tcfg, workdir / "train", dataset=dataset)
    summary, state = result.summary, result.state
    log(f"  test accuracy {summary['test/accuracy']:.4f} (best epoch {summary['best_epoch']}, "
        f"{summary['wall_time_s']:.0f} s)")
    model = tcfg.model
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x, labels = jax.device_put(dataset.test_x), jax.device_put(dataset.test_y)
    mc = cfg.study.mc
    key = jax.random.PRNGKey(mc.seed)
    T = mc.num_samples

    reps = mc.timing_repeats
    det, _ = _timed(lambda: uncertainty.predict(model, variables, x, batch_size=mc.batch_size))
    _, det_s = _timed(lambda: uncertainty.predict(model, variables, x, batch_size=mc.batch_size), reps)
    probs, first_s = _timed(lambda: uncertainty.mc_predict(model, variables, x, key, num_samples=T,
                                                           batch_size=mc.batch_size))
    cpu = []
    _, mc_s = _timed(lambda: uncertainty.mc_predict(model, variables, x, key, num_samples=T,
                                                    batch_size=mc.batch_size), reps, cpu)
    timing = {"deterministic_pass_s": det_s, "mc_first_call_s": first_s, "mc_vectorised_s": mc_s,
              "mc_vectorised_cpu_s": cpu[-1], "device": str(jax.devices()[0])}
    log(f"  T = {T} vectorised passes over {len(labels)} images: {mc_s:.2f} s "
        f"(first call with compilation {first_s:.2f} s); one deterministic pass {det_s:.3f} s")
    if mc.time_loop:
        keys = jax.random.split(key, T)
        one = lambda k: uncertainty.mc_predict(model, variables, x, k, num_samples=1,
                                               batch_size=mc.batch_size)
        _timed(lambda: one(keys[0]))                                   # compile outside the timing
        _, loop_s = _timed(lambda: [one(k) for k in keys], reps, cpu)
        timing["python_loop_s"] = loop_s
        timing["python_loop_cpu_s"] = cpu[-1]
        timing["loop_over_vectorised"] = loop_s / mc_s
        timing["loop_over_vectorised_cpu"] = cpu[-1] / timing["mc_vectorised_cpu_s"]
        log(f"  the same T passes as a Python loop of jitted single passes: {loop_s:.2f} s "
            f"({loop_s / mc_s:.1f}x the vectorised time)")

    summaries = {"deterministic": uncertainty.predictive_summary(det[None]),
                 f"mc_T{T}": uncertainty.predictive_summary(probs)}
    methods = {}
    fractions = np.linspace(0.8, 1.0, 41)   # the interesting end: the top 80 % are ~all right
    curves, histos = {}, {"predictive_entropy": {}, "mutual_information": {}}
    for name, s in summaries.items():
        mean = s["mean_probs"]
        correct = np.asarray(s["prediction"] == labels)
        is_error = ~correct
        scores = uncertainty.uncertainty_scores(s)
        if name == "deterministic":      # std and MI are identically 0 for a single pass
            scores = {k: scores[k] for k in ("one_minus_max_prob", "predictive_entropy")}
        methods[name] = {
            **calibration.calibration_metrics(mean, labels, mc.num_bins),
            "errors": int(is_error.sum()),
            "auroc_error_detection": {k: float(calibration.auroc(v, is_error)) for k, v in scores.items()},
            "accuracy_retained": {k: {str(f): float(a) for f, a in zip(
                RETAINED, calibration.retention_accuracy(v, correct, np.asarray(RETAINED)))}
                for k, v in scores.items()},
            "mean_score": {k: {"correct": float(np.mean(np.asarray(v)[correct])),
                               "wrong": float(np.mean(np.asarray(v)[is_error]))}
                           for k, v in scores.items()},
            "reliability": {k: np.asarray(v).tolist() for k, v in
                            calibration.reliability_bins(mean, labels, mc.num_bins).items()},
        }
        for k, v in scores.items():
            curves[f"{name}: {k}"] = np.asarray(calibration.retention_accuracy(v, correct, fractions))
        for k in histos:
            if k in scores:
                histos[k][name] = (np.asarray(scores[k]), correct)

    results = {
        "command": command,
        "config": cfg,
        "training": summary,
        "num_samples": T,
        "timing": timing,
        "methods": methods,
        "wall_time_s": None,
    }
    _figures(cfg, results, curves, fractions, histos, workdir)
    results["wall_time_s"] = time.time() - start
    return results


def _figures(cfg, results, curves, fractions, histos, workdir):
    nb = cfg.study.mc.num_bins
    centers = (np.arange(nb) + 0.5) / nb
    series = {}
    for name, m in results["methods"].items():
        rel = m["reliability"]
        count = np.asarray(rel["count"])
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(count > 0, np.asarray(rel["correct_sum"]) / count, np.nan)
        series[f"{name} (ece_{nb}bin {m[f'ece_{nb}bin']:.4f})"] = acc
    series["perfect calibration"] = centers
    plots.plot_lines(centers, series, workdir / "reliability.png",
                     xlabel=f"confidence (bin centre, {nb} equal-width bins)", ylabel="accuracy in bin",
                     title="Reliability diagram (empty bins omitted)")
    plots.plot_lines(fractions, curves, workdir / "retention.png",
                     xlabel="fraction of test images kept (most certain first)",
                     ylabel="accuracy on the kept images",
                     title="Selective prediction: reject the most uncertain")
    for key, fname, label in (("predictive_entropy", "entropy_by_correctness.png", "predictive entropy (nats)"),
                              ("mutual_information", "mi_by_correctness.png", "mutual information (nats)")):
        top = max(float(np.max(v)) for v, _ in histos[key].values()) or 1.0
        edges = np.linspace(0.0, top, cfg.study.mc.histogram_bins + 1)
        lines = {}
        for name, (v, correct) in histos[key].items():
            for tag, sel in (("correct", correct), ("wrong", ~correct)):
                density, _ = np.histogram(v[sel], edges, density=True)
                lines[f"{name}, {tag} (n={int(sel.sum())})"] = np.where(density > 0, density, np.nan)
        plots.plot_lines((edges[:-1] + edges[1:]) / 2, lines, workdir / fname, xlabel=label,
                         ylabel="density (log)", logy=True,
                         title=f"{label.split(' (')[0].capitalize()} of right and wrong test predictions")


def format_results(results):
    T = results["num_samples"]
    tr = results["training"]
    cfg = config_lib.to_dict(results["config"])
    methods = results["methods"]
    ece_key = next(k for k in next(iter(methods.values())) if k.startswith("ece_"))
    lines = [
        f"{tr['dataset']['name']} test set ({tr['dataset']['num_test']} images), "
        f"{tr['model']}, {tr['epochs_run']} epochs "
        f"(best epoch {tr['best_epoch']} by val/loss), label smoothing {cfg['train']['label_smoothing']}. "
        f"MC = mean of T = {T} passes with dropout on and BatchNorm on running statistics.",
        "",
        f"| prediction | accuracy | NLL | Brier | {ece_key} | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        lines.append(f"| {name} | {100 * m['accuracy']:.2f} % | {m['nll']:.4f} | {m['brier']:.4f} | "
                     f"{m[ece_key]:.4f} | {m['errors']} |")
    lines += [
        "",
        "Error detection: AUROC of each uncertainty for telling the method's own wrong predictions "
        "from its right ones (0.5 = chance), mean score on right / wrong predictions, and accuracy "
        f"when only the most certain {', '.join(f'{int(100 * f)} %' for f in RETAINED)} are kept.",
        "",
        "| prediction | uncertainty | AUROC | mean (right) | mean (wrong) | "
        + " | ".join(f"acc @ {int(100 * f)} % kept" for f in RETAINED) + " |",
        "|---|---|---|---|---|" + "---|" * len(RETAINED),
    ]
    for name, m in methods.items():
        for k, a in m["auroc_error_detection"].items():
            ms = m["mean_score"][k]
            kept = " | ".join(f"{100 * m['accuracy_retained'][k][str(f)]:.2f} %" for f in RETAINED)
            lines.append(f"| {name} | {k} | {a:.4f} | {ms['correct']:.4f} | {ms['wrong']:.4f} | {kept} |")
    t = results["timing"]
    lines += [
        "",
        f"Timing ({t['device']}, best of {cfg['mc']['timing_repeats']}): T = {T} vectorised "
        f"passes over the test set {t['mc_vectorised_s']:.2f} s wall, {t['mc_vectorised_cpu_s']:.2f} s "
        f"CPU (first call, with compilation, {t['mc_first_call_s']:.2f} s); one deterministic pass "
        f"{t['deterministic_pass_s']:.3f} s."
        + (f" The same T passes as a Python loop of jitted single passes: {t['python_loop_s']:.2f} s "
           f"wall ({t['loop_over_vectorised']:.1f}x), {t['python_loop_cpu_s']:.2f} s CPU "
           f"({t['loop_over_vectorised_cpu']:.1f}x)." if "python_loop_s" in t else ""),
        f"Training {tr['wall_time_s']:.0f} s; whole script {results['wall_time_s']:.0f} s. "
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv):
    start = cli.start(argv, "experiments.mc_dropout", study=MCStudy)
    results = run(start.cfg, start.workdir, start.command, log=lambda s: print(s, flush=True))
    figures = ["reliability.png", "retention.png", "entropy_by_correctness.png",
               "mi_by_correctness.png"]
    body = {k: v for k, v in results.items() if k not in ("command", "config", "wall_time_s")}
    cli.finish(start, results["wall_time_s"], body, [format_results(results)], figures)
