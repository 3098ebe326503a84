"""Monte Carlo dropout against the deterministic network on MNIST (coding question C4).

  python -m experiments.mc_dropout --config=experiments/configs/mc_dropout.py \
      --workdir=checkpoints/mc_dropout --config.data.data_dir=../shared/data/mnist

For each seed s = 0 .. seeds - 1, trains the recipe model with `loop.fit` in
<workdir>/train/seed_<s> (reused when finished), then predicts the test set, and the test set
rotated by `mc.rotate_degrees` (a distribution shift the network never saw, with the labels kept:
`augment.rotate_images`), twice: once deterministically and once as T MC dropout passes in one
vectorised computation (`uncertainty.mc_predict`, which works for any model family with the
contract's `mc_dropout` mode). Writes into the workdir: results.json, results.md (the tables
printed here), reliability.png, retention.png, entropy_by_correctness.png and mi_by_correctness.png
(the figures and the error-detection table: seed 0, test set).

Seeds and comparisons (the statistics of the report):
  * The two arms are two ways of predicting with one trained network: seed s fixes its init key,
    dropout keys and batch order (`seed = s`); the MC passes of seed s use the dropout key
    fold_in(PRNGKey(mc.seed), s). Each comparison is therefore the per-seed paired difference
    MC minus deterministic, and the seeds are independent trainings.
  * Compared, on the test set and on the rotated test set: accuracy, NLL, ECE and the AUROC of the
    predictive entropy for telling wrong predictions from right ones (`METRICS`).
  * The family is every comparison of the study (both sets, every metric): Holm's adjustment is
    over all of them (`inference.compare_family`). Each verdict sentence of results.md is a
    comparison's paired-t interval and Holm decision (`stats_report.formal`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import ClassVar

import jax
import numpy as np

from experiments import cli, stats_report
from ml_practical import augment
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, plots, uncertainty
from ml_practical.analysis import calibration, inference
from ml_practical.config import Section, field

RETAINED = (0.95, 0.9, 0.8)      # retained fractions reported in the table
TEST = "test"


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
    rotate_degrees: float = field(ge=0)


@dataclasses.dataclass(frozen=True)
class MCStudy(Section):
    """The study's own fields: `seeds` (trains seeds 0 .. seeds - 1) and the `mc` section
    (changing it never retrains)."""

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    mc: MCOptions


def train_config(cfg: config_lib.Config, seed: int | None = None) -> config_lib.Config:
    """The `loop.fit` config: everything but the study's fields (so changing T never retrains),
    with `seed` replaced when given."""
    return config_lib.override(cfg, {} if seed is None else {"seed": int(seed)})


def shifted_name(degrees: float) -> str:
    """The name of the rotated test set in results.json and the tables."""
    return f"rotated_{degrees:g}deg"


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


def _methods(summaries, labels, mc, fractions=None):
    """Calibration and error-detection metrics of each prediction {name: predictive_summary}
    (and, with `fractions`, the retention curves and score histograms of the figures)."""
    methods, curves, histos = {}, {}, {"predictive_entropy": {}, "mutual_information": {}}
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
        if fractions is None:
            continue
        for k, v in scores.items():
            curves[f"{name}: {k}"] = np.asarray(calibration.retention_accuracy(v, correct, fractions))
        for k in histos:
            if k in scores:
                histos[k][name] = (np.asarray(scores[k]), correct)
    return methods, curves, histos


def _time_seed(model, variables, x, key, mc, log):
    """The timings of the first seed: one deterministic pass, the vectorised T passes, and
    optionally the same passes as a Python loop. Returns (timing, (det, probs)): the predictions
    timed, which are the seed's test-set predictions."""
    T, reps = mc.num_samples, mc.timing_repeats
    det, _ = _timed(lambda: uncertainty.predict(model, variables, x, batch_size=mc.batch_size))
    _, det_s = _timed(lambda: uncertainty.predict(model, variables, x, batch_size=mc.batch_size), reps)
    probs, first_s = _timed(lambda: uncertainty.mc_predict(model, variables, x, key, num_samples=T,
                                                           batch_size=mc.batch_size))
    cpu = []
    _, mc_s = _timed(lambda: uncertainty.mc_predict(model, variables, x, key, num_samples=T,
                                                    batch_size=mc.batch_size), reps, cpu)
    timing = {"deterministic_pass_s": det_s, "mc_first_call_s": first_s, "mc_vectorised_s": mc_s,
              "mc_vectorised_cpu_s": cpu[-1], "device": str(jax.devices()[0])}
    log(f"  T = {T} vectorised passes over {x.shape[0]} images: {mc_s:.2f} s "
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
    return timing, (det, probs)


def run(cfg, workdir, command, log=print):
    start = time.time()
    workdir = pathlib.Path(workdir)
    mc = cfg.study.mc
    T = mc.num_samples
    dataset = data_lib.load_dataset(train_config(cfg).data)
    x, labels = jax.device_put(dataset.test_x), jax.device_put(dataset.test_y)
    sets = {TEST: x}
    if mc.rotate_degrees:
        angles = np.full(len(dataset.test_y), mc.rotate_degrees, np.float32)
        sets[shifted_name(mc.rotate_degrees)] = augment.rotate_images(x, jax.numpy.asarray(angles))
    fractions = np.linspace(0.8, 1.0, 41)   # the interesting end: the top 80 % are ~all right
    runs, timing, curves, histos = [], None, None, None
    for seed in range(cfg.study.seeds):
        tcfg = train_config(cfg, seed)
        log(f"Seed {seed}: training {tcfg.train.num_epochs} epochs (drop_rate "
            f"{tcfg.model.drop_rate}) in {workdir / 'train' / f'seed_{seed}'} ...")
        result = loop.fit(tcfg, workdir / "train" / f"seed_{seed}", dataset=dataset)
        summary, state = result.summary, result.state
        log(f"  test accuracy {summary['test/accuracy']:.4f} (best epoch {summary['best_epoch']}, "
            f"{summary['wall_time_s']:.0f} s)")
        model = tcfg.model
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        key = jax.random.fold_in(jax.random.PRNGKey(mc.seed), seed)
        timed = None
        if seed == 0:
            timing, timed = _time_seed(model, variables, x, key, mc, log)
        record = {"seed": seed, "training": summary, "sets": {}}
        for name, xs in sets.items():
            if name == TEST and timed is not None:
                det, probs = timed
            else:
                det = uncertainty.predict(model, variables, xs, batch_size=mc.batch_size)
                probs = uncertainty.mc_predict(model, variables, xs, key, num_samples=T,
                                               batch_size=mc.batch_size)
            summaries = {"deterministic": uncertainty.predictive_summary(det[None]),
                         f"mc_T{T}": uncertainty.predictive_summary(probs)}
            first = seed == 0 and name == TEST
            methods, c, h = _methods(summaries, labels, mc, fractions if first else None)
            if first:
                curves, histos = c, h
            record["sets"][name] = methods
            log(f"  {name}: accuracy det {methods['deterministic']['accuracy']:.4f} / MC "
                f"{methods[f'mc_T{T}']['accuracy']:.4f}, NLL det "
                f"{methods['deterministic']['nll']:.4f} / MC {methods[f'mc_T{T}']['nll']:.4f}")
        runs.append(record)

    results = {
        "command": command,
        "config": cfg,
        "seeds": list(range(cfg.study.seeds)),
        "training": runs[0]["training"],
        "num_samples": T,
        "timing": timing,
        "methods": runs[0]["sets"][TEST],     # seed 0, test set: the figures and detail tables
        "runs": runs,
        "comparisons": comparisons(runs, f"mc_T{T}", mc.num_bins),
        "wall_time_s": None,
    }
    _figures(cfg, results, curves, fractions, histos, workdir)
    results["wall_time_s"] = time.time() - start
    return results


# metric -> (what the tables call it, how to read it from a method's metrics, scale, digits,
# unit, +1 if higher is better / -1 if lower is)
METRICS = {
    "accuracy": ("accuracy", lambda m, bins: m["accuracy"], 100.0, 2, "pp", +1),
    "nll": ("NLL", lambda m, bins: m["nll"], 1.0, 4, "nats", -1),
    "ece": ("ECE", lambda m, bins: m[f"ece_{bins}bin"], 100.0, 2, "pp", -1),
    "auroc_entropy": ("AUROC of the predictive entropy for error detection",
                      lambda m, bins: m["auroc_error_detection"]["predictive_entropy"], 1.0, 4,
                      "AUROC", +1),
}


def comparisons(runs, mc_name, num_bins):
    """The study's family: {"<set>/<metric>": {"set", "metric", "arm", "against", "seeds",
    "arm_values", "against_values", "inference"}}, MC minus deterministic per seed."""
    out = {}
    for set_name in runs[0]["sets"]:
        for metric, (_, read, *_rest) in METRICS.items():
            out[f"{set_name}/{metric}"] = {
                "set": set_name, "metric": metric, "arm": mc_name, "against": "deterministic",
                "seeds": [r["seed"] for r in runs],
                "arm_values": [read(r["sets"][set_name][mc_name], num_bins) for r in runs],
                "against_values": [read(r["sets"][set_name]["deterministic"], num_bins)
                                   for r in runs]}
    for c in out.values():
        c["differences"] = np.subtract(c["arm_values"], c["against_values"]).tolist()
    family = inference.compare_family({k: c["differences"] for k, c in out.items()})
    for k, inf in family.items():
        out[k]["inference"] = inf
    return out


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


def _mean_sd(values, scale=1.0, digits=4):
    v = scale * np.asarray(values, np.float64)
    return (f"{v.mean():.{digits}f}" if v.size < 2
            else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}")


def format_comparisons(results):
    """The comparison tables (one per metric, rows = test sets) and the verdict sentences."""
    comps = results["comparisons"]
    n = len(results["runs"])
    lines = [f"MC minus deterministic, paired by seed ({n} trainings): 95 % CIs by paired t and "
             f"by the bootstrap over seeds, Holm over all {len(comps)} comparisons of the study.",
             ""]
    for metric, (what, _, scale, digits, unit, _) in METRICS.items():
        rows = [(f"{c['arm']}, {c['set']}", c["against"], c["inference"])
                for c in comps.values() if c["metric"] == metric]
        lines += [f"## {what[0].upper()}{what[1:]}", "",
                  stats_report.comparison_table(rows, scale=scale, digits=digits, unit=unit)]
    lines += ["## Verdicts", ""]
    for c in comps.values():
        what, _, scale, digits, unit, sign = METRICS[c["metric"]]
        inf = c["inference"]
        if inf["decision"] == "differs":
            better = sign * float(inf["mean"]) > 0
            verdict = f"MC averaging is {'better' if better else 'worse'} than the deterministic net"
        elif float(inf["t"]["p"]) <= float(inf["alpha"]):
            verdict = ("the paired-t interval excludes 0, but the difference does not survive "
                       "Holm's adjustment over the family")
        else:
            verdict = (f"these seeds cannot tell the two apart (they detect "
                       f"{stats_report.number(inf['mde'], scale, digits)} {unit} at 80 % power)")
        lines.append(f"- {c['set']}, {what}: {stats_report.formal(inf, scale, digits, unit)}; "
                     f"{verdict}.")
    lines += ["", "## The chapter's claim", "",
              "The chapter's \"uncertainty for free\" (claims ledger DROP-10: NLL(MC) <= "
              "NLL(deterministic)):", ""]
    for c in comps.values():
        if c["metric"] != "nll":
            continue
        inf = c["inference"]
        if inf["decision"] == "differs":
            state = "supported" if float(inf["mean"]) < 0 else "contradicted"
        else:
            state = "not decided by these seeds"
        delta = stats_report.number(inf["mean"], 1.0, 4, True)
        lines.append(f"- {c['set']}: {state} (Δ NLL {delta} nats, Holm-adjusted p = "
                     f"{stats_report.p_value(inf.get('p_holm'))}); the cost is T = "
                     f"{results['num_samples']} forward passes, so it is not free.")
    return "\n".join(lines) + "\n"


def format_results(results):
    T = results["num_samples"]
    tr = results["training"]
    cfg = config_lib.to_dict(results["config"])
    methods = results["methods"]
    runs = results["runs"]
    ece_key = next(k for k in next(iter(methods.values())) if k.startswith("ece_"))
    lines = [
        f"{tr['dataset']['name']} test set ({tr['dataset']['num_test']} images), "
        f"{tr['model']}, {tr['epochs_run']} epochs (best epoch by val/loss; seed 0: "
        f"{tr['best_epoch']}), label smoothing {cfg['train']['label_smoothing']}, {len(runs)} "
        f"seeds (independent trainings). MC = mean of T = {T} passes with dropout on and "
        "BatchNorm on running statistics."
        + (f" Shifted set: the test images rotated by {cfg['mc']['rotate_degrees']:g} degrees."
           if len(runs[0]["sets"]) > 1 else ""),
        "",
        "Mean ± sd over seeds (descriptive; the comparisons below carry the inference):",
        "",
        f"| test set | prediction | accuracy (%) | NLL | Brier | {ece_key} | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for set_name in runs[0]["sets"]:
        for name in runs[0]["sets"][set_name]:
            ms = [r["sets"][set_name][name] for r in runs]
            lines.append(
                f"| {set_name} | {name} | {_mean_sd([m['accuracy'] for m in ms], 100, 2)} | "
                f"{_mean_sd([m['nll'] for m in ms])} | {_mean_sd([m['brier'] for m in ms])} | "
                f"{_mean_sd([m[ece_key] for m in ms])} | "
                f"{_mean_sd([m['errors'] for m in ms], 1, 1)} |")
    lines += ["", format_comparisons(results)]
    lines += [
        "",
        "Error detection (seed 0, test set): AUROC of each uncertainty for telling the method's "
        "own wrong predictions from its right ones (0.5 = chance), mean score on right / wrong "
        "predictions, and accuracy "
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
        f"Training {sum(float(r['training']['wall_time_s']) for r in runs):.0f} s ({len(runs)} "
        f"seeds); whole script {results['wall_time_s']:.0f} s. "
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
