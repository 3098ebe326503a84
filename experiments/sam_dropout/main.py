"""SAM against SGD + L2, each with and without dropout: python -m experiments.sam_dropout ...

The chapter's ★R2 (Foret et al. 2021, SAM). Each row of `rows.ROWS` x each seed trains with
`loop.fit` in <workdir>/<row>/seed_<s> (SAM is the library's `optim.sam_rho` inside the one
train step; dropout is the family's `model.drop_rate`); the last state is tested (early stopping
off in the config) and checkpointed. Then the tested checkpoint's sharpness is measured by
`analysis.sharpness.from_checkpoint` (with `dataset=` the study's dataset, on the first
`sharpness_examples` training images, in evaluation mode): the top Hessian eigenvalue by Lanczos
and by power iteration, and the epsilon-sharpness in the L2 ball of SAM's own radius, written to
<run>/sharpness.json. A run whose summary.json and sharpness.json exist with the same config is
read back, not retrained.

Statistics: per row and metric, the mean with its t interval over seeds; per comparison
(`rows.COMPARISONS`), per-seed paired differences through `analysis.inference.compare_family`,
Holm within each family; the two claims by the rules in `rows` (stated before the run).

Writes results.json, results.md, analysis.md (`report`), accuracy.png and sharpness.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from experiments import cli
from experiments.ablation.main import finished_run
from experiments.sam_dropout import report, rows
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, run_files
from ml_practical.analysis import inference, sharpness
from ml_practical.analysis import seeds as seed_stats
from ml_practical.config import Section, field

SHARPNESS_FILE = "sharpness.json"
METRICS = ("test_accuracy", "gap", "lambda_lanczos", "lambda_power", "epsilon_sharpness")


@dataclasses.dataclass(frozen=True)
class SamDropoutStudy(Section):
    """The study's own fields; the training sections are every row's base config.

    Attributes:
      seeds: seeds 0 .. seeds - 1 of every row (paired: the same init key and batch order).
      sam_rho: SAM's radius in the SAM rows (Foret et al. 2021, eq. 2); also the radius of the
        epsilon-sharpness ball.
      drop_rate: the dropout rows' `model.drop_rate` (flax's drop probability).
      sharpness_examples: training images the sharpness is measured on (0 = all).
      lanczos_steps: Lanczos steps of the top-eigenvalue estimate.
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=2)
    sam_rho: float = field(gt=0)
    drop_rate: float = field(gt=0, lt=1)
    sharpness_examples: int = field(ge=0)
    lanczos_steps: int = field(ge=2)


def row_config(cfg: config_lib.Config, row: str, seed: int) -> config_lib.Config:
    """One run's config: the study's training sections with the row's overrides and `seed`."""
    st = cfg.study
    return config_lib.override(cfg, {**rows.overrides(row, st.sam_rho, st.drop_rate),
                                     "seed": int(seed)}, what=f"row {row!r}")


def run_dir(workdir, row: str, seed: int) -> pathlib.Path:
    return loop.seed_dir(pathlib.Path(workdir) / row, seed)


def _record(seed: int, summary: dict, history: list[dict], sharp: dict) -> dict:
    last = history[-1] if history else {}
    train = sharp["train_accuracy_eval"]
    test = summary["test/accuracy"]
    return {"seed": seed, "test_accuracy": test, "test_loss": summary["test/loss"],
            "train_accuracy": train, "gap": train - test,
            "train_accuracy_logged": last.get("train/accuracy"),
            "train_loss": last.get("train/loss"), "epochs_run": summary["epochs_run"],
            "stop_reason": summary["stop_reason"], "wall_time_s": summary["wall_time_s"],
            "lambda_lanczos": sharp["lanczos"]["max"], "lambda_power": sharp["power"]["eigenvalue"],
            "power_converged": sharp["power"]["converged"],
            "epsilon_sharpness": sharp["epsilon"]["sharpness"], "sharpness_loss": sharp["loss"],
            "sharpness_time_s": sharp.get("time_s", math.nan)}


Interrupted = cli.StudyInterrupted  # a signal stopped a run (rerunning the command resumes it)


def train_accuracy(model, state, dataset, batch: int = 1000) -> float:
    """Accuracy of the tested state on the whole training set in evaluation mode (dropout off,
    BatchNorm on its running statistics): the train side of the train - test gap. The logged
    train/accuracy is measured under dropout, so it would not compare the rows."""
    import jax

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False).argmax(-1))
    x, y = dataset.train_x, dataset.train_y
    pred = np.concatenate([np.asarray(apply(variables, x[i:i + batch]))
                           for i in range(0, len(y), batch)])
    return float(np.mean(pred == y))


def measure(path: pathlib.Path, cfg: config_lib.Config, dataset, train_acc: float) -> dict:
    """The tested checkpoint's sharpness (`sharpness.from_checkpoint`) and its evaluation-mode
    training accuracy, written to the run dir."""
    st = cfg.study
    t0 = time.time()
    out = sharpness.from_checkpoint(path, which="best", split="train",
                                    num_examples=st.sharpness_examples, rho=st.sam_rho,
                                    region="l2", lanczos_steps=st.lanczos_steps, seed=0,
                                    dataset=dataset)
    out["time_s"] = time.time() - t0
    out["train_accuracy_eval"] = train_acc
    out["power"].pop("history", None)
    run_files.atomic_write_text(path / SHARPNESS_FILE,
                                json.dumps(run_files.to_jsonable(out), indent=1))
    return out


def train_run(cfg, row: str, seed: int, dataset, workdir, say) -> dict:
    """Trains (or reads back) one run and measures its sharpness; its record."""
    run_cfg = row_config(cfg, row, seed)
    path = run_dir(workdir, row, seed)
    done = finished_run(path, run_cfg)
    if done is not None and (path / SHARPNESS_FILE).exists():
        rec = _record(seed, *done, json.loads((path / SHARPNESS_FILE).read_text()))
        status = "read back"
    else:
        r = loop.fit(run_cfg, path, dataset=dataset)
        if r.summary["stop_reason"] == "interrupted":
            raise Interrupted(f"{row} seed {seed}")
        acc = train_accuracy(run_cfg.model, r.state, dataset)
        rec = _record(seed, r.summary, r.history, measure(path, cfg, dataset, acc))
        status = "trained"
    say(f"{row} seed {seed}: test {100 * rec['test_accuracy']:.2f}% (gap "
        f"{100 * rec['gap']:+.2f} pp), lambda_max {rec['lambda_power']:.3g} (Lanczos "
        f"{rec['lambda_lanczos']:.3g}), eps-sharpness {rec['epsilon_sharpness']:.3g}, "
        f"{rec['wall_time_s']:.0f} s + {rec['sharpness_time_s']:.0f} s [{status}]")
    return rec


def row_summary(runs: list[dict]) -> dict:
    """Per metric: mean, sd and the t interval of the mean over seeds."""
    out = {}
    for m in METRICS:
        values = [float(r[m]) for r in runs]
        mean, sd = seed_stats.summarize_seeds(values)
        t = inference.paired_t(values)
        out[m] = {"mean": mean, "sd": sd, "low": t["low"], "high": t["high"], "n": len(values),
                  "values": values}
    return out


def compare(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Every `rows.COMPARISONS` entry, paired by seed, Holm within its family."""
    out = {}
    for name, (family, metric, terms, question) in rows.COMPARISONS.items():
        if not all(row in runs for _, row in terms):
            continue
        values = {row: {r["seed"]: float(r[metric]) for r in rr} for row, rr in runs.items()}
        seeds, diffs = rows.difference(values, terms)
        out[name] = {"family": family, "metric": metric, "terms": terms, "question": question,
                     "seeds": seeds, "differences": diffs}
    for family in {c["family"] for c in out.values()}:
        names = [n for n, c in out.items() if c["family"] == family]
        inf = inference.compare_family({n: out[n]["differences"] for n in names})
        for n in names:
            out[n]["inference"] = inf[n]
    return out


def _ci(comps, name) -> tuple[float, float]:
    t = comps[name]["inference"].get("t") if name in comps else None
    return (float(t["low"]), float(t["high"])) if t else (-math.inf, math.inf)


def claims(comps: dict[str, dict]) -> dict[str, dict]:
    """The two claims, each by its rule in `rows` on the stored intervals."""
    flat = rows.flatter_verdict(_ci(comps, "lambda: sam - sgd"),
                                _ci(comps, "lambda: sam_dropout - sgd_dropout"))
    need = rows.need_verdict(_ci(comps, "acc: dropout under sgd"),
                             _ci(comps, "acc: interaction"),
                             _ci(comps, "acc: sam - sgd_dropout"))
    return {"EXP-07a": {**rows.CLAIMS["EXP-07a"], "verdict": flat,
                        "comparisons": ["lambda: sam - sgd", "lambda: sam_dropout - sgd_dropout"]},
            "EXP-07b": {**rows.CLAIMS["EXP-07b"], "verdict": need, "margin": rows.MARGIN,
                        "comparisons": ["acc: dropout under sgd", "acc: dropout under sam",
                                        "acc: interaction", "acc: sam - sgd_dropout"]}}


def run_study(cfg: config_lib.Config, workdir, dataset: data_lib.Dataset | None = None, *,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains (or reads back) every row x seed and returns the results dict."""
    say = log or (lambda _: None)
    workdir = pathlib.Path(workdir)
    if cfg.optim.sam_rho or getattr(cfg.model, "drop_rate", None) is None:
        raise config_lib.ConfigError(
            f"optim.sam_rho: {cfg.optim.sam_rho!r}; the study sets SAM per row from sam_rho, "
            "expected 0 in the training sections" if cfg.optim.sam_rho else
            f"model.name: {cfg.model_name!r} has no drop_rate; expected a family with dropout")
    for row in rows.ROWS:  # every run's config is checked before anything runs
        row_config(cfg, row, 0)
    if dataset is None:
        dataset = data_lib.load_dataset(cfg.data)
    seeds = list(range(cfg.study.seeds))
    runs: dict[str, list[dict]] = {row: [] for row in rows.ROWS}
    for s in seeds:  # seed-major: a stopped study has whole seeds of every row
        for row in rows.ROWS:
            runs[row].append(train_run(cfg, row, s, dataset, workdir, say))
    from ml_practical import models
    comps = compare(runs)
    return {"dataset": dataset.info(), "seeds": seeds,
            "model": models.describe(row_config(cfg, "sgd", 0).model, dataset.train_x.shape[1:]),
            "labels": dict(rows.LABELS), "runs": runs,
            "rows": {row: row_summary(r) for row, r in runs.items()},
            "comparisons": comps, "claims": claims(comps), "margin": rows.MARGIN,
            "train_time_s": sum(r["wall_time_s"] for v in runs.values() for r in v),
            "sharpness_time_s": sum(r["sharpness_time_s"] for v in runs.values() for r in v)}


def execute(run: cli.Start, dataset: data_lib.Dataset | None = None, *,
            log: Callable[[str], None] | None = None,
            quiet: bool = False) -> dict[str, Any] | None:
    """The study from a parsed `cli.Start` (`cli.execute_study`): the runs, the figures,
    results.json / results.md and analysis.md. None, and no report, when a signal stopped a run."""
    return cli.execute_study(run, run_study, report, dataset, log=log, quiet=quiet)


def main(argv):
    run = cli.start(argv, "experiments.sam_dropout", study=SamDropoutStudy)
    execute(run, log=lambda s: print(s, flush=True))
