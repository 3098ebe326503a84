"""BN before or after the ReLU, and the bias before BN: python -m experiments.bn_placement ...

Chapter 12.4.5's two claims, on a CNN (`models.CNN`, the study config's model section) and on an
MLP (`models.MLP` with `mlp_widths`, the same data, optimizer and budget): each row of
`rows.ROWS` (option A without and with the redundant bias, option B with and without its bias, no
norm) x each seed of the arm trains with `loop.fit` in <workdir>/<arm>/<row>/seed_<s> (with
`seed_mode` "vmap", or "auto" on a GPU/TPU, an arm whose training set lives on the device trains
a row's seeds as one vmapped program, `loop.fit_seeds`; a host-streamed arm, the CNN on a CPU,
always runs them one after the other). Every run trains its whole budget and the last state is
tested (early stopping off in the config), so paired runs differ only in their row.

After each run, from its final state: the test-set predictions (<run>/test_predictions.npy, for
the agreement between runs) and, for the rows with a bias, its size (`bias.bias_stats`); for
bn_before_bias, the trained network against itself with the biases removed, in training mode and
in evaluation mode with each bias folded into its BN's running mean (`bias.trained`), all in
<run>/bn_placement.json. A run whose summary.json and bn_placement.json exist with the same
config is read back, not retrained, so a finished study regenerates its report in seconds.

Before training, on each arm's first training batch: the bias at initialization
(`bias.at_init`): the training-mode output of the same kernels with and without a random bias
(BN(z + b) = BN(z)), the evaluation-mode output at the initial running statistics, and the
gradient of the loss with respect to the bias against the kernel's.

Statistics: per row, the mean test accuracy with its t interval over seeds; per comparison
(`rows.COMPARISONS`, in both arms), the per-seed paired differences through
`analysis.inference.compare_family` (paired t and exact bootstrap intervals, Holm over every
comparison of both arms); per claim (`rows.CLAIMS`), the equivalence reading of the comparison's
interval against the ledger's margin (`rows.claim_verdict`). The agreement of paired runs: the
share of test images on which bn_before_bias (or bn_after) and bn_before of the same seed predict
different classes, next to the share between bn_before runs of two different seeds.

Writes results.json (per arm, row and seed: accuracies, bias sizes, the fold check; per
comparison: seeds, differences, the `compare_family` entry; the claims; the bias at init; the
disagreements), results.md, analysis.md (`report`), accuracy.png and differences.png.
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
from experiments.bn_placement import bias as bias_lib
from experiments.bn_placement import report, rows
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, multiseed, run_files
from ml_practical.analysis import inference
from ml_practical.analysis import seeds as seed_stats
from ml_practical.config import Section, field

EXTRAS_FILE = "bn_placement.json"
PREDICTIONS_FILE = "test_predictions.npy"
PROBE_SIZE = 256        # test images of the fold check's training-mode batch
INIT_BATCH = 128        # training images of the at-init check
# The MLP arm takes these fields from the CNN's model section (the rest are the MLP's defaults).
SHARED_MODEL_FIELDS = ("activation", "hidden_init", "output_init", "bias_init", "bn_momentum",
                       "norm_epsilon", "bn_backward", "num_classes")


@dataclasses.dataclass(frozen=True)
class BNPlacementStudy(Section):
    """The study's own fields; the training sections are the CNN arm's config.

    Attributes:
      cnn_seeds: seeds 0 .. cnn_seeds - 1 of every CNN row (0: no CNN arm).
      mlp_seeds: seeds 0 .. mlp_seeds - 1 of every MLP row (0: no MLP arm).
      only: comma-separated rows (`rows.ROWS`); "" = every row.
      mlp_widths: the MLP arm's hidden widths (its other fields: `SHARED_MODEL_FIELDS` from the
        CNN's model section, the rest the MLP's defaults).
      seed_mode: "auto" (vmap on GPU/TPU), "sequential" or "vmap" (`loop.fit_seeds`, only for an
        arm whose data placement is "device": the MLP arm always is, the CNN arm when configured).
    """

    section: ClassVar[str] = ""
    cnn_seeds: int = field(ge=0)
    mlp_seeds: int = field(ge=0)
    only: str
    mlp_widths: tuple[int, ...] = field(ge=1)
    seed_mode: str = field(choices=multiseed.SEED_MODES)

    def check(self):
        try:
            rows.select_rows(self.only)
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None
        if not (self.cnn_seeds or self.mlp_seeds):
            raise config_lib.ConfigError("cnn_seeds: 0 and mlp_seeds: 0; expected at least one "
                                         "arm with seeds")

    def arms(self) -> list[str]:
        return [a for a in rows.ARMS if self.seeds(a)]

    def seeds(self, arm: str) -> list[int]:
        return list(range(getattr(self, f"{arm}_seeds")))


def arm_config(cfg: config_lib.Config, arm: str) -> config_lib.Config:
    """The training config of an arm (without the study fields): the study config itself for the
    CNN; for the MLP the same data, optimizer, training and budget with an MLP of `mlp_widths`,
    the training set on the device and the scans rolled (an MLP's step is matmuls)."""
    tree = config_lib.to_dict(config_lib.override(cfg, {}, what="arm"))
    if arm == "cnn":
        if cfg.model_name != "cnn":
            raise config_lib.ConfigError(f"model.name: {cfg.model_name!r}; the study's training "
                                         "sections are its CNN arm, expected 'cnn'")
        return config_lib.parse(tree)
    if arm != "mlp":
        raise ValueError(f"arm: {arm!r}; expected one of {rows.ARMS}")
    model = {"name": "mlp", "widths": tuple(cfg.study.mlp_widths)}
    model.update({k: tree["model"][k] for k in SHARED_MODEL_FIELDS})
    tree["model"] = model
    tree["data"]["placement"] = "device"
    tree["train"]["unroll"] = False
    try:
        return config_lib.parse(tree)
    except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"the MLP arm: {e}") from None


def row_config(arm_cfg: config_lib.Config, row: str, seed: int) -> config_lib.Config:
    """One run's config: the arm's config with the row's overrides and `seed`."""
    return config_lib.override(arm_cfg, {**rows.ROWS[row], "seed": int(seed)},
                               what=f"row {row!r}")


def run_dir(workdir, arm: str, row: str, seed: int) -> pathlib.Path:
    return loop.seed_dir(pathlib.Path(workdir) / arm / row, seed)


def _variables(state) -> dict:
    return {"params": jax.device_get(state.params),
            "batch_stats": jax.device_get(state.batch_stats)}


def run_extras(row: str, model, variables, dataset: data_lib.Dataset) -> tuple[dict, np.ndarray]:
    """What a run adds to its summary, from its final state: (extras, test predictions)."""
    logits = bias_lib.predict(model, variables, dataset.test_x)
    pred = logits.argmax(-1).astype(np.int8)
    extras: dict[str, Any] = {
        "test_accuracy_recomputed": float(np.mean(pred == dataset.test_y)),
        "bias": bias_lib.bias_stats(variables["params"])}
    if row == "bn_before_bias":
        extras["fold"] = bias_lib.trained(model, variables, dataset.test_x,
                                          dataset.test_x[:PROBE_SIZE], logits=logits)
    return extras, pred


def _record(seed: int, summary: dict, history: list[dict], extras: dict) -> dict:
    last = history[-1] if history else {}
    return {"seed": seed, "test_accuracy": summary["test/accuracy"],
            "test_loss": summary["test/loss"], "train_accuracy": last.get("train/accuracy"),
            "train_loss": last.get("train/loss"), "val_accuracy": last.get("val/accuracy"),
            "epochs_run": summary["epochs_run"], "stop_reason": summary["stop_reason"],
            "wall_time_s": summary["wall_time_s"], **extras}


def _reuse(path: pathlib.Path, run_cfg) -> dict | None:
    done = finished_run(path, run_cfg)
    if done is None or not (path / EXTRAS_FILE).exists() or not (path / PREDICTIONS_FILE).exists():
        return None
    summary, history = done
    return _record(run_cfg.seed, summary, history, json.loads((path / EXTRAS_FILE).read_text()))


def _has_checkpoints(path: pathlib.Path) -> bool:
    ckpt = path / "checkpoints"
    return ckpt.exists() and any(ckpt.iterdir())


Interrupted = cli.StudyInterrupted  # a signal stopped a run (rerunning the command resumes it)


def train_row(arm_cfg, arm: str, row: str, seeds, dataset, workdir, *, seed_mode: str,
              say: Callable[[str], None]) -> list[dict]:
    """Trains (or reads back) one row of an arm at every seed; its per-seed records.

    Raises:
      Interrupted: Ctrl-C / SIGTERM stopped a run (nothing of it is recorded here).
    """
    cfgs = {s: row_config(arm_cfg, row, s) for s in seeds}
    records = {s: _reuse(run_dir(workdir, arm, row, s), cfgs[s]) for s in seeds}
    todo = [s for s in seeds if records[s] is None]
    results = {}
    group = [s for s in todo if not _has_checkpoints(run_dir(workdir, arm, row, s))]
    if seed_mode == "vmap" and arm_cfg.data.placement == "device" and len(group) > 1:
        for s, r in zip(group, loop.fit_seeds(cfgs[group[0]], group,
                                              run_dir(workdir, arm, row, group[0]).parent,
                                              dataset=dataset)):
            results[s] = r
    for s in todo:
        if s not in results:
            results[s] = loop.fit(cfgs[s], run_dir(workdir, arm, row, s), dataset=dataset)
            if results[s].summary["stop_reason"] == "interrupted":
                break
    if any(r.summary["stop_reason"] == "interrupted" for r in results.values()):
        raise Interrupted(f"{arm} {row}")
    for s in seeds:
        status = "read back"
        if records[s] is None:
            r, path = results[s], run_dir(workdir, arm, row, s)
            extras, pred = run_extras(row, cfgs[s].model, _variables(r.state), dataset)
            np.save(path / PREDICTIONS_FILE, pred)
            run_files.atomic_write_text(path / EXTRAS_FILE,
                                        json.dumps(run_files.to_jsonable(extras), indent=1))
            records[s] = _record(s, r.summary, r.history, extras)
            status = "trained"
        rec = records[s]
        say(f"{arm} {row} seed {s}: test accuracy {100 * rec['test_accuracy']:.2f}% (train "
            f"{100 * (rec['train_accuracy'] or math.nan):.2f}%), {rec['wall_time_s']:.0f} s "
            f"[{status}]")
    return [records[s] for s in seeds]


def predictions(workdir, arm: str, row: str, seed: int) -> np.ndarray:
    return np.load(run_dir(workdir, arm, row, seed) / PREDICTIONS_FILE)


def row_summary(runs: list[dict]) -> dict:
    """Mean, sd and the t interval of the mean over seeds of a row's test accuracy."""
    values = [r["test_accuracy"] for r in runs]
    mean, sd = seed_stats.summarize_seeds(values)
    t = inference.paired_t(values)
    train = [r["train_accuracy"] for r in runs if r["train_accuracy"] is not None]
    return {"mean": mean, "sd": sd, "low": t["low"], "high": t["high"], "n": len(values),
            "values": values, "train_mean": float(np.mean(train)) if train else None}


def compare_rows(arms: dict[str, dict]) -> list[dict]:
    """Every comparison of `rows.COMPARISONS` in each arm, paired by seed, Holm over them all."""
    out = []
    for arm, result in arms.items():
        acc = {row: {r["seed"]: r["test_accuracy"] for r in runs}
               for row, runs in result["runs"].items()}
        for row, against, question in rows.comparisons(list(acc)):
            pair = seed_stats.paired_difference(acc[row], acc[against])
            out.append({"arm": arm, "row": row, "against": against, "question": question,
                        "seeds": sorted(set(acc[row]) & set(acc[against])),
                        "differences": pair["paired_differences"]})
    family = inference.compare_family({_key(c): c["differences"] for c in out})
    for c in out:
        c["inference"] = family[_key(c)]
    return out


def _key(c: dict) -> str:
    return f"{c['arm']}: {c['row']} - {c['against']}"


def seeds_for_equivalence(mean: float, sd: float, margin: float, max_seeds: int = 1000):
    """The fewest seeds whose paired-t 95 % interval, at this mean and sd, lies inside
    +-margin (None when |mean| >= margin: no number of seeds shows equivalence; inf beyond
    `max_seeds`)."""
    from scipy import stats

    if not (math.isfinite(mean) and math.isfinite(sd)) or abs(mean) >= margin:
        return None
    room = margin - abs(mean)
    for n in range(2, max_seeds + 1):
        if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= room:
            return n
    return math.inf


def claims(comps: list[dict]) -> dict[str, dict]:
    """Each `rows.CLAIMS` entry read on its comparison in every arm that ran it."""
    out = {}
    for claim_id, claim in rows.CLAIMS.items():
        row, against = claim["comparison"]
        per_arm = {}
        for c in comps:
            if (c["row"], c["against"]) != (row, against) or not c["inference"].get("n"):
                continue
            t = c["inference"]["t"]
            per_arm[c["arm"]] = {
                "n": c["inference"]["n"], "mean": t["mean"], "sd": t["sd"], "low": t["low"],
                "high": t["high"], "p_holm": c["inference"].get("p_holm"),
                "verdict": rows.claim_verdict(t["low"], t["high"], claim["margin"]),
                "decide": inference.decide(c["inference"], margin=claim["margin"]),
                "seeds_for_equivalence": seeds_for_equivalence(t["mean"], t["sd"],
                                                               claim["margin"])}
        primary = claim["primary"] if claim["primary"] in per_arm else next(iter(per_arm), None)
        verdict = (rows.combined_verdict(per_arm[primary]["verdict"],
                                         [v["verdict"] for k, v in per_arm.items() if k != primary])
                   if primary else "not run")
        out[claim_id] = {**claim, "comparison": [row, against], "arms": per_arm,
                         "primary": primary, "verdict": verdict}
    return out


def disagreements(workdir, arms: dict[str, dict]) -> dict[str, dict]:
    """Per arm: the share of test images on which paired runs predict different classes.

    "bn_before_bias" / "bn_after": each against bn_before of the same seed; "between_seeds":
    bn_before of seed s against bn_before of the next seed (s + 1, the last against the first),
    the level two unrelated runs reach.
    """
    out = {}
    for arm, result in arms.items():
        have = result["runs"]
        if "bn_before" not in have:
            continue
        seeds = [r["seed"] for r in have["bn_before"]]
        base = {s: predictions(workdir, arm, "bn_before", s) for s in seeds}
        entry = {}
        for row in ("bn_before_bias", "bn_after"):
            if row in have:
                common = [r["seed"] for r in have[row] if r["seed"] in base]
                entry[row] = [bias_lib.disagreement(predictions(workdir, arm, row, s), base[s])
                              for s in common]
        if len(seeds) > 1:
            entry["between_seeds"] = [bias_lib.disagreement(base[s], base[seeds[(i + 1) % len(
                seeds)]]) for i, s in enumerate(seeds)]
        out[arm] = {k: {"values": v, "mean": float(np.mean(v))} for k, v in entry.items() if v}
    return out


def run_study(cfg: config_lib.Config, workdir, dataset: data_lib.Dataset | None = None, *,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains (or reads back) every arm x row x seed and returns the results dict."""
    say = log or (lambda _: None)
    workdir = pathlib.Path(workdir)
    names = rows.select_rows(cfg.study.only)
    arm_cfgs = {arm: arm_config(cfg, arm) for arm in cfg.study.arms()}
    for arm, arm_cfg in arm_cfgs.items():  # every run's config is checked before anything runs
        for row in names:
            row_config(arm_cfg, row, 0)
    if dataset is None:
        dataset = data_lib.load_dataset(cfg.data)
    seed_mode = multiseed.resolve_seed_mode(cfg.study.seed_mode)
    at_init = {}
    arms: dict[str, dict] = {}
    for arm, arm_cfg in arm_cfgs.items():
        model = row_config(arm_cfg, "bn_before_bias", 0).model
        at_init[arm] = bias_lib.at_init(model, dataset.train_x[:INIT_BATCH],
                                        dataset.train_y[:INIT_BATCH], jax.random.key(cfg.seed))
        seeds = cfg.study.seeds(arm)
        runs = {row: train_row(arm_cfg, arm, row, seeds, dataset, workdir, seed_mode=seed_mode,
                               say=say) for row in names}
        from ml_practical import models
        arms[arm] = {"model": models.describe(row_config(arm_cfg, "bn_before", 0).model,
                                              dataset.train_x.shape[1:]),
                     "seeds": seeds, "runs": runs,
                     "rows": {row: row_summary(r) for row, r in runs.items()},
                     "train_time_s": sum(r["wall_time_s"] for v in runs.values() for r in v)}
    comps = compare_rows(arms)
    return {"dataset": dataset.info(), "seed_mode": seed_mode, "rows": names,
            "labels": {n: rows.LABELS[n] for n in names}, "arms": arms, "comparisons": comps,
            "claims": claims(comps), "bias_at_init": at_init,
            "disagreement": disagreements(workdir, arms)}


def execute(run: cli.Start, dataset: data_lib.Dataset | None = None, *,
            log: Callable[[str], None] | None = None,
            quiet: bool = False) -> dict[str, Any] | None:
    """The study from a parsed `cli.Start` (`cli.execute_study`): the runs, the figures,
    results.json / results.md and analysis.md. None, and no report, when a signal stopped a run."""
    return cli.execute_study(run, run_study, report, dataset, log=log, quiet=quiet)


def main(argv):
    run = cli.start(argv, "experiments.bn_placement", study=BNPlacementStudy)
    execute(run, log=lambda s: print(s, flush=True))
