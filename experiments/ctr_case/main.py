"""The InMobi / Meta DLRM case studies on a synthetic click log: python -m experiments.ctr_case ...

Chapter 12, sections 16-17: a DLRM (`models.dlrm.DLRM`) trained with the chapter's recipe (the
study config) on `clicks.click_splits` (a seeded log with a known generating model, so the
Bayes-optimal AUC / NE are known, and viral bursts, all in the training split). Each row of
`rows.ROWS` x each seed trains with `loop.fit` in <workdir>/<row>/seed_<s>, with:

  * `ValCTR`, a hook that adds "val/auc" and "val/ne" to each epoch's record, so early stopping
    monitors the validation AUC (mode "max", patience 5): `loop.check_monitor` accepts a
    metric a hook declares in `metric_names`, and the loop's early-stopping rule reads the record
    after the hooks' `metrics`, so no study-side stopping logic is needed;
  * `table_monitor.TableGradMonitor` (record_clip=True): per-epoch table alerts and table gradient
    norms (the chapter's "alert if any table exceeds 10x its average");
  * `ClipStats`, a hook that logs the raw global gradient norm's max and the fraction of clipped
    steps per epoch (from the same clip record).

After each run, from the restored best state: the test split's AUC, log loss and NE
(`analysis.ctr.ctr_metrics`), the monitor's alerts (and, for log-order rows, how many fell on a
step whose batch held burst examples), whether the run diverged (`diverged`), in <run>/ctr.json.
A run whose summary.json and ctr.json exist with the same config is read back, not retrained.

Statistics: per row, mean and t 95 % CI over seeds of test AUC / NE / log loss; per comparison
(`rows.COMPARISONS`), the per-seed paired differences through `analysis.inference.
compare_family` (Holm over the AUC family; NE differences reported beside); per claim
(`rows.CLAIMS`), `rows.verdict` on the AUC difference's paired-t interval.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np

from experiments import cli
from experiments.ablation.main import finished_run
from experiments.ctr_case import report, rows
from ml_practical import clicks as clicks_lib
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, run_files
from ml_practical.analysis import ctr as ctr_lib
from ml_practical.analysis import inference
from ml_practical.analysis import seeds as seed_stats
from ml_practical.config import Section, field
from ml_practical.hooks import Hook
from ml_practical.table_monitor import TableGradMonitor

EXTRAS_FILE = "ctr.json"
METRICS = ("auc", "ne", "log_loss")


@dataclasses.dataclass(frozen=True)
class CTRCaseStudy(Section):
    """The study's own fields; the training sections are the recipe row's run config.

    Attributes:
      seeds: seeds 0 .. seeds - 1 of every row.
      only: comma-separated rows (`rows.ROWS`); "" = every row.
      clicks: the synthetic log (`clicks.ClickSpec`); the model's num_dense and table_sizes are
        taken from it.
      val_fraction, test_fraction: the chronological split (`clicks.click_splits`).
      alert_factor: the table monitor's threshold (the chapter's 10x).
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    only: str
    clicks: clicks_lib.ClickSpec
    val_fraction: float = field(gt=0, lt=1)
    test_fraction: float = field(gt=0, lt=1)
    alert_factor: float = field(gt=0)

    def check(self):
        try:
            rows.select_rows(self.only)
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None


# --------------------------------------------------------------------------- hooks


def _predict_fn(model):
    @jax.jit
    def predict(params, batch_stats, x):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        return model.apply(variables, x, train=False)
    return predict


def predict(predict_fn, state, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    out = [np.asarray(predict_fn(state.params, state.batch_stats, x[i:i + batch]))
           for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float64)


def _safe_metrics(logits, labels) -> dict[str, float]:
    if not np.all(np.isfinite(logits)):
        return {k: math.nan for k in ("auc", "log_loss", "ne", "calibration", "ctr")}
    return ctr_lib.ctr_metrics(logits, labels)


class ValCTR(Hook):
    """Adds the validation split's "val/auc" and "val/ne" to every epoch's record."""

    metric_names = ("val/auc", "val/ne")

    def __init__(self, val_x: np.ndarray, val_y: np.ndarray):
        self.val_x, self.val_y = np.asarray(val_x), np.asarray(val_y)
        self._predict = None

    def on_start(self, exp, state, runs):
        self._predict = _predict_fn(exp.model)

    def metrics(self, event):
        m = _safe_metrics(predict(self._predict, event.state, self.val_x), self.val_y)
        event.record["val/auc"] = m["auc"]
        event.record["val/ne"] = m["ne"]


class ClipStats(Hook):
    """Per epoch: the largest raw global gradient norm and the fraction of clipped steps."""

    metric_prefixes = ("clip/",)

    def step_metrics(self, old_state, new_state, metrics):
        from ml_practical.clip_recorder import find_record

        record = find_record(new_state.opt_state)
        return {"raw_global_norm": record.raw_norm, "clipped": record.clipped}

    def metrics(self, event):
        steps = event.steps
        norm = np.asarray(steps["raw_global_norm"], np.float64).reshape(-1)
        ok = np.isfinite(norm)
        event.record["clip/raw_global_norm_max"] = float(norm[ok].max()) if ok.any() else math.nan
        event.record["clip/raw_global_norm_mean"] = (float(norm[ok].mean()) if ok.any()
                                                     else math.nan)
        event.record["clip/clipped_fraction"] = float(np.mean(np.asarray(steps["clipped"]) > 0))


# --------------------------------------------------------------------------- data and configs


def load_data(study: CTRCaseStudy) -> clicks_lib.ClickSplits:
    return clicks_lib.click_splits(study.clicks, study.val_fraction, study.test_fraction)


def log_order_dataset(dataset: data_lib.Dataset, seed: int) -> data_lib.Dataset:
    """The same dataset with its training split stored so that the loop's epoch-1 batches
    (`data.batch_indices(seed, 1, ...)`: stored[perm[k B:(k + 1) B]]) are the log's examples
    k B .. (k + 1) B - 1 in order: stored[perm[i]] = log[i]."""
    n = len(dataset.train_y)
    perm = data_lib.epoch_permutation(seed, 1, n)
    x = np.empty_like(dataset.train_x)
    y = np.empty_like(dataset.train_y)
    x[perm] = dataset.train_x
    y[perm] = dataset.train_y
    return dataclasses.replace(dataset, train_x=x, train_y=y)


def base_config(cfg: config_lib.Config) -> config_lib.Config:
    """The recipe's run config (without the study fields), its model sized by the click log."""
    spec = cfg.study.clicks
    return config_lib.override(cfg, {"model.num_dense": spec.num_dense,
                                     "model.table_sizes": tuple(spec.table_sizes),
                                     "data.source": "arrays"}, what="ctr_case")


def row_config(base: config_lib.Config, row: str, seed: int) -> config_lib.Config:
    return config_lib.override(base, {**rows.ROWS[row]["overrides"], "seed": int(seed)},
                               what=f"row {row!r}")


def run_dir(workdir, row: str, seed: int) -> pathlib.Path:
    return loop.seed_dir(pathlib.Path(workdir) / row, seed)


# --------------------------------------------------------------------------- one run


def diverged(rec: dict) -> bool:
    """A run diverged when training hit a non-finite loss (stop reason "non_finite" or a
    non-finite epoch train loss), or its test NE is not finite or above 1 (worse than always
    predicting the base rate)."""
    ne = rec["test"]["ne"]
    return bool(rec["stop_reason"] in ("non_finite", "diverged") or rec["nonfinite_train"]
                or not math.isfinite(ne) or ne > 1.0)


def _burst_steps(burst: np.ndarray, batch: int) -> set[int]:
    """Epoch-1 steps (0-based) whose log-order batch holds at least one burst example."""
    n = (len(burst) // batch) * batch
    per_step = burst[:n].reshape(-1, batch).any(axis=1)
    return set(np.flatnonzero(per_step).tolist())


def run_extras(splits, row, run_cfg, result, monitor, predict_fn) -> dict:
    ds = splits.dataset
    logits = predict(predict_fn, result.state, ds.test_x)
    alerts = monitor.alerts
    extras: dict[str, Any] = {
        "test": _safe_metrics(logits, ds.test_y),
        "alerts": len(alerts),
        "alerts_epoch1": sum(a["epoch"] == 1 for a in alerts),
        "alert_tables": sorted({a["table"] for a in alerts}),
    }
    if rows.ROWS[row]["order"] == "log":
        bursts = _burst_steps(np.asarray(splits.train_burst), run_cfg.train.batch_size)
        extras["alerts_on_burst_steps"] = sum(a["epoch"] == 1 and a["step"] in bursts
                                              for a in alerts)
        extras["burst_steps"] = len(bursts)
    return extras


def _record(seed: int, summary: dict, history: list[dict], extras: dict) -> dict:
    def series(prefix):
        return [v for r in history for k, v in r.items() if k.startswith(prefix)]

    table_max = [v for v in series("table_grad_norm_max/") if v is not None]
    table_mean = [v for v in series("table_grad_norm_mean/") if v is not None]
    glob = [v for v in series("clip/raw_global_norm_max") if v is not None]
    rec = {"seed": seed, "epochs_run": summary["epochs_run"],
           "best_epoch": summary.get("best_epoch"), "stop_reason": summary["stop_reason"],
           "wall_time_s": summary["wall_time_s"],
           "best_val_auc": max((r.get("val/auc", -1) for r in history), default=math.nan),
           "nonfinite_train": any(not math.isfinite(r.get("train/loss", 0.0)) for r in history),
           "table_grad_norm_max": float(np.nanmax(table_max)) if table_max else math.nan,
           "table_grad_norm_mean": float(np.nanmean(table_mean)) if table_mean else math.nan,
           "global_grad_norm_max": float(np.nanmax(glob)) if glob else math.nan,
           "clipped_fraction": float(np.mean(series("clip/clipped_fraction")))
           if series("clip/clipped_fraction") else math.nan,
           **extras}
    rec["diverged"] = diverged(rec)
    return rec


def _reuse(path: pathlib.Path, run_cfg) -> dict | None:
    done = finished_run(path, run_cfg)
    if done is None or not (path / EXTRAS_FILE).exists():
        return None
    summary, history = done
    return _record(run_cfg.seed, summary, history, json.loads((path / EXTRAS_FILE).read_text()))


def train_run(splits, base, row: str, seed: int, workdir, alert_factor: float,
              datasets: dict) -> tuple[dict, str]:
    run_cfg = row_config(base, row, seed)
    path = run_dir(workdir, row, seed)
    rec = _reuse(path, run_cfg)
    if rec is not None:
        return rec, "read back"
    ds = splits.dataset
    if rows.ROWS[row]["order"] == "log":
        key = ("log", seed)
        if key not in datasets:
            datasets[key] = log_order_dataset(ds, seed)
        ds = datasets[key]
    monitor = TableGradMonitor(alert_factor, warn=False)
    val = ValCTR(ds.val_x, ds.val_y)
    result = loop.fit(run_cfg, path, dataset=ds, hooks=[val, monitor, ClipStats()],
                      record_clip=True)
    if result.summary["stop_reason"] == "interrupted":
        raise cli.StudyInterrupted(f"{row} seed {seed}")
    extras = run_extras(splits, row, run_cfg, result, monitor, val._predict)
    run_files.atomic_write_text(path / EXTRAS_FILE,
                                json.dumps(run_files.to_jsonable(extras), indent=1))
    return _record(seed, result.summary, result.history, extras), "trained"


# --------------------------------------------------------------------------- statistics


def row_summary(runs: list[dict]) -> dict:
    out: dict[str, Any] = {"n": len(runs)}
    for m in METRICS:
        values = [r["test"][m] for r in runs]
        finite = [v for v in values if math.isfinite(v)]
        mean, sd = seed_stats.summarize_seeds(finite) if finite else (math.nan, math.nan)
        t = inference.paired_t(finite) if len(finite) >= 1 else {"low": math.nan,
                                                                 "high": math.nan}
        out[m] = {"mean": mean, "sd": sd, "low": t["low"], "high": t["high"], "values": values}
    for k in ("alerts", "alerts_epoch1", "alerts_on_burst_steps", "table_grad_norm_max",
              "global_grad_norm_max", "clipped_fraction", "epochs_run"):
        vals = [r.get(k) for r in runs if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    out["diverged"] = sum(bool(r["diverged"]) for r in runs)
    return out


def compare_rows(runs: dict[str, list[dict]]) -> list[dict]:
    out = []
    for row, against, question in rows.comparisons(list(runs)):
        c = {"row": row, "against": against, "question": question}
        for m in METRICS:
            a = {r["seed"]: r["test"][m] for r in runs[row]}
            b = {r["seed"]: r["test"][m] for r in runs[against]}
            seeds = sorted(s for s in set(a) & set(b)
                           if math.isfinite(a[s]) and math.isfinite(b[s]))
            c[m] = {"seeds": seeds, "differences": [a[s] - b[s] for s in seeds]}
        out.append(c)
    for m in METRICS:
        family = inference.compare_family({f"{c['row']} - {c['against']}": c[m]["differences"]
                                           for c in out})
        for c in out:
            c[m]["inference"] = family[f"{c['row']} - {c['against']}"]
    return out


def _interval(c: dict, m: str = "auc") -> dict:
    inf = c[m]["inference"]
    if not inf.get("n"):
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "p_holm": None}
    t = inf["t"]
    return {"n": inf["n"], "mean": t["mean"], "low": t["low"], "high": t["high"],
            "p_holm": inf.get("p_holm")}


def claims(comps: list[dict], summaries: dict[str, dict]) -> dict[str, dict]:
    out = {}
    by_pair = {(c["row"], c["against"]): c for c in comps}
    for cid, claim in rows.CLAIMS.items():
        entry = {**claim, "comparison": list(claim["comparison"])}
        c = by_pair.get(tuple(claim["comparison"]))
        entry["auc"] = _interval(c, "auc") if c else None
        entry["ne"] = _interval(c, "ne") if c else None
        if claim["kind"] == "diverges":
            counts = {r: summaries[r]["diverged"] for r in claim["rows"] if r in summaries}
            totals = {r: summaries[r]["n"] for r in claim["rows"] if r in summaries}
            alerts = {r: summaries[r]["alerts"] for r in claim["rows"] if r in summaries}
            entry.update(diverged=counts, runs=totals, mean_alerts=alerts)
            if not counts:
                entry["verdict"] = "not run"
            elif sum(counts.values()) == 0:
                entry["verdict"] = "contradicted"  # no unclipped run diverged
            elif all(counts[r] == totals[r] for r in counts):
                entry["verdict"] = "supported"
            else:
                entry["verdict"] = "partly"
        elif c is None or not entry["auc"]["n"]:
            entry["verdict"] = "not run"
        else:
            a = entry["auc"]
            entry["verdict"] = rows.verdict(claim["kind"], a["low"], a["high"],
                                            claim.get("margin", 0.0))
        out[cid] = entry
    return out


# --------------------------------------------------------------------------- the study


def run_study(cfg: config_lib.Config, workdir, dataset=None, *,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains (or reads back) every selected row x seed; the results dict."""
    del dataset  # the study generates its own log (`clicks`)
    say = log or (lambda _: None)
    workdir = pathlib.Path(workdir)
    study = cfg.study
    names = rows.select_rows(study.only)
    base = base_config(cfg)
    for row in names:  # every run's config is checked before anything runs
        row_config(base, row, 0)
    splits = load_data(study)
    seeds = list(range(study.seeds))
    runs: dict[str, list[dict]] = {}
    datasets: dict = {}
    for row in names:
        runs[row] = []
        for s in seeds:
            rec, status = train_run(splits, base, row, s, workdir, study.alert_factor, datasets)
            runs[row].append(rec)
            t = rec["test"]
            say(f"{row} seed {s}: test AUC {t['auc']:.4f} NE {t['ne']:.4f} log loss "
                f"{t['log_loss']:.4f}; {rec['epochs_run']} epochs ({rec['stop_reason']}), "
                f"{rec['alerts']} table alerts, max table grad norm "
                f"{rec['table_grad_norm_max']:.3g}{', DIVERGED' if rec['diverged'] else ''}; "
                f"{rec['wall_time_s']:.0f} s [{status}]")
    summaries = {row: row_summary(r) for row, r in runs.items()}
    comps = compare_rows(runs)
    from ml_practical import models
    return {"dataset": splits.dataset.info(), "clicks": dataclasses.asdict(study.clicks),
            "bayes": splits.bayes, "model": models.describe(base.model,
                                                             splits.dataset.train_x.shape[1:]),
            "train_burst_examples": int(np.sum(splits.train_burst)),
            "seeds": seeds, "rows": names, "labels": {n: rows.LABELS[n] for n in names},
            "orders": {n: rows.ROWS[n]["order"] for n in names},
            "runs": runs, "summaries": summaries, "comparisons": comps,
            "claims": claims(comps, summaries),
            "train_time_s": sum(r["wall_time_s"] for v in runs.values() for r in v)}


def execute(run: cli.Start, dataset=None, *, log=None, quiet: bool = False):
    return cli.execute_study(run, run_study, report, dataset, log=log, quiet=quiet)


def main(argv):
    run = cli.start(argv, "experiments.ctr_case", study=CTRCaseStudy)
    execute(run, log=lambda s: print(s, flush=True))
