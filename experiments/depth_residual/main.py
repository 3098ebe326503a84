"""Depth and residual connections (the chapter's ★R1): python -m experiments.depth_residual ...

For every cell of the grid (every row of `rows.ROWS` at each of `depths`; the rows `deep_rows`
also at each of `deep_depths`) and every seed s in `seed` .. `seed + seeds - 1`, trains the cell
with `loop.fit` in <workdir>/runs/<row>/depth_<d>/seed_<s>. A run whose summary.json exists for
the same config is read back, not trained again, so the report can be regenerated at no cost.

The rows: ResNets (`models.ResNet`, variant "cifar", depth 6n+2) with He + BatchNorm, zero-γ,
Fixup, SkipInit and He without any norm, and plain CNNs (`models.CNN`, the same 6n convs without
the stem conv and the shortcuts, `plain_model`) with and without BatchNorm. Seed s gives every
cell the same batch order, so runs of one seed are paired.

What each run records:
  * the `GradProbe` hook: the gradient norm of every layer's kernel (forward order) on a fixed
    batch of the first `grad_batch` training images, model in training mode, at initialization
    (<run>/probe_init.json) and after every epoch (in metrics.jsonl as "probe/..."), with that
    batch's loss and the logits' standard deviation;
  * `loop.StepLog`: every step's training loss, global gradient norm and skip flag (the inline
    guard skips a non-finite step and counts it; `train.max_consecutive_skips` in a row stop
    the run);
  * the test accuracy of the last state (early stopping is off: every run trains its budget).

The comparisons (report.py): at each depth, `rows.COMPARISONS` on test accuracy, per-seed paired
differences, `inference.compare_family` with Holm over that depth's table; and `rows.DEPTH_ROWS`
at each deeper depth against the same row at its shallowest depth (Holm over that table).

Writes results.json (per cell and seed: accuracy, stability, step losses, probe; per comparison
the seeds, the differences and the `compare_family` entry), results.md, analysis.md (each claim
of the chapter this tests, with the measurement and a verdict, and the R1 analysis), curves.png,
accuracy.png and grad_norms.png into the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, ClassVar

import numpy as np

from experiments import cli
from experiments.depth_residual import gradients, report
from experiments.depth_residual.rows import ROWS
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, run_files
from ml_practical.config import ConfigError, Section, field

PROBE_INIT_FILE = "probe_init.json"
# What a run's data and probe depend on beyond its config: the study fields that build them.
CELL_FILE = "cell.json"
PROBE_PREFIX = "probe/"
# The seeded test subset (`test_size`) is drawn with this seed, the same for every run.
TEST_SUBSET_SEED = 0


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


@dataclasses.dataclass(frozen=True)
class DepthResidualStudy(Section):
    """The study's own fields.

    Attributes:
      rows: comma-separated rows of `rows.ROWS` run at every depth of `depths`, in this order
        ("" = all).
      depths: comma-separated depths 6n+2 (8, 20, 56, 110, ...) at which every row runs.
      deep_rows: comma-separated rows also run at `deep_depths` (the expensive depths).
      deep_depths: comma-separated depths 6n+2 for `deep_rows` only ("" = none).
      seeds: seeds per cell: `seed`, `seed` + 1, ... (the config's `seed` is the first).
      grad_batch: training images of the gradient-norm probe's fixed batch (the first ones).
      downsample: average-pool the images by this factor before training (1: 28 x 28 MNIST;
        2: 14 x 14), then standardize them again with the pooled training set's mean and std.
      test_size: test images (a seeded subset of the test split; 0 = all of it).
    """

    section: ClassVar[str] = ""
    rows: str
    depths: str
    deep_rows: str
    deep_depths: str
    seeds: int = field(ge=1)
    grad_batch: int = field(ge=1)
    downsample: int = field(ge=1)
    test_size: int = field(ge=0)

    def check(self):
        for name, value in (("rows", self.rows), ("deep_rows", self.deep_rows)):
            bad = [r for r in _names(value) if r not in ROWS]
            if bad:
                raise ConfigError(f"{name}: unknown row(s) {bad}; expected some of {list(ROWS)}")
        for name, value in (("depths", self.depths), ("deep_depths", self.deep_depths)):
            try:
                depths = _ints(value)
            except ValueError:
                raise ConfigError(f"{name}: {value!r} is not a comma-separated list of "
                                  "integers") from None
            bad = [d for d in depths if d < 8 or (d - 2) % 6]
            if bad:
                raise ConfigError(f"{name}: {bad} not of the form 6n+2 with n >= 1; expected "
                                  "e.g. 8, 20, 56, 110")
        if not _ints(self.depths) and not (_ints(self.deep_depths) and _names(self.deep_rows)):
            raise ConfigError("depths: empty and no deep_rows at deep_depths; nothing to run")

    def row_list(self) -> list[str]:
        return _names(self.rows) or list(ROWS)

    def cells(self) -> list[tuple[str, int]]:
        """(row, depth) in run order: every row at `depths`, then `deep_rows` at `deep_depths`."""
        out = [(r, d) for d in _ints(self.depths) for r in self.row_list()]
        out += [(r, d) for d in _ints(self.deep_depths) for r in _names(self.deep_rows)
                if (r, d) not in out]
        return out


def seed_list(cfg: config_lib.Config) -> list[int]:
    return list(range(cfg.seed, cfg.seed + cfg.study.seeds))


def plain_model(resnet, depth: int, norm: str) -> dict[str, Any]:
    """The `models.CNN` fields of the plain network matching a ResNet of `depth` = 6n+2: three
    stages of 2n 3x3 convs at the ResNet's stage widths, the first conv of stages 2 and 3 with
    stride 2 (pool "none"), global average pool and the head, and the ResNet's initializers,
    activation and norm settings: the ResNet without its stem conv and its shortcuts."""
    n = (depth - 2) // 6
    return {"name": "cnn", "widths": tuple(resnet.stage_widths()), "convs_per_stage": 2 * n,
            "num_classes": resnet.num_classes, "kernel_size": 3, "pool": "none",
            "activation": resnet.activation, "norm": norm, "norm_position": "before",
            "drop_rate": 0.0, "hidden_init": resnet.hidden_init,
            "output_init": resnet.output_init, "bias_init": resnet.bias_init,
            "use_bias": resnet.use_bias, "bn_momentum": resnet.bn_momentum,
            "norm_epsilon": resnet.norm_epsilon, "bn_backward": resnet.bn_backward,
            "ghost_batch_size": resnet.ghost_batch_size, "conv_backward": resnet.conv_backward}


def cell_config(cfg: config_lib.Config, row: str, depth: int,
                seed: int | None = None) -> config_lib.Config:
    """The training config of one cell (and seed): the study config's ResNet section with the
    row's fields and the depth, or the matching plain CNN (`plain_model`). The study's own fields
    are not part of it (`CELL_FILE` records those that change a run's data)."""
    spec = ROWS[row]
    tree = {k: v for k, v in config_lib.to_dict(cfg).items() if k in config_lib.SECTIONS}
    if spec["family"] == "resnet":
        tree["model"] = {**tree["model"], "depth": depth, **spec["model"]}
    else:
        tree["model"] = plain_model(cfg.model, depth, **spec["model"])
    if seed is not None:
        tree["seed"] = int(seed)
    try:
        return config_lib.parse(tree)
    except ConfigError as e:
        raise ConfigError(f"row {row!r} at depth {depth}: {e}") from None


def downsample_images(x: np.ndarray, factor: int) -> np.ndarray:
    """Average pool of factor x factor pixels (N, H, W, C) -> (N, H // f, W // f, C); the last
    rows / columns that do not fill a window are dropped."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    h2, w2 = h // factor, w // factor
    x = x[:, :h2 * factor, :w2 * factor, :].reshape(n, h2, factor, w2, factor, c)
    return x.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


def study_dataset(cfg: config_lib.Config) -> data_lib.Dataset:
    """`cfg.data`'s dataset, downsampled by `downsample` and standardized again on the pooled
    training set, with the test split cut to a seeded subset of `test_size` images."""
    ds = data_lib.load_dataset(cfg.data, expected_classes=cfg.model.num_classes)
    study = cfg.study
    splits = {k: getattr(ds, k) for k in ("train_x", "val_x", "test_x")}
    name = ds.name
    if study.downsample > 1:
        splits = {k: downsample_images(v, study.downsample) for k, v in splits.items()}
        mean = float(splits["train_x"].mean(dtype=np.float64))
        std = float(splits["train_x"].std(dtype=np.float64))
        splits = {k: ((v - mean) / std).astype(np.float32) for k, v in splits.items()}
        h, w = splits["train_x"].shape[1:3]
        name = f"{ds.name}, average-pooled to {h}x{w}"
    test_y = ds.test_y
    if 0 < study.test_size < len(test_y):
        keep = np.sort(np.random.default_rng(TEST_SUBSET_SEED).permutation(len(test_y))
                       [:study.test_size])
        splits["test_x"], test_y = splits["test_x"][keep], test_y[keep]
        name += f", {study.test_size} test images (seeded subset)"
    return dataclasses.replace(ds, train_x=splits["train_x"], val_x=splits["val_x"],
                               test_x=splits["test_x"], test_y=test_y, name=name)


class GradProbe(loop.Hook):
    """`gradients.layer_grad_norms` on a fixed batch: at init (<run>/probe_init.json) and after
    every epoch (record entries "probe/grad/<layer>", "probe/loss", "probe/logit_std")."""

    metric_prefixes = (PROBE_PREFIX,)

    def __init__(self, images: np.ndarray, labels: np.ndarray, cell: dict[str, Any]):
        self.images, self.labels, self.cell = images, labels, cell

    def _probe(self, exp, state):
        return gradients.layer_grad_norms(exp.model, state.params, state.batch_stats,
                                          self.images, self.labels)

    def init_state(self, exp, state, runs):
        runs[0].files.write_json(CELL_FILE, self.cell)
        runs[0].files.write_json(PROBE_INIT_FILE, self._probe(exp, state))
        return state

    def on_start(self, exp, state, runs):
        self._exp = exp

    def metrics(self, event):
        p = self._probe(self._exp, event.state)
        record = event.record
        for layer, norm in zip(p["layers"], p["norms"]):
            record[f"{PROBE_PREFIX}grad/{layer}"] = norm
        record[f"{PROBE_PREFIX}loss"] = p["loss"]
        record[f"{PROBE_PREFIX}logit_std"] = p["logit_std"]


class EpochLine(loop.Hook):
    def __init__(self, label: str):
        self.label = label

    def on_epoch_end(self, event):
        r = event.record
        print(f"  {self.label} epoch {event.epoch}: train/loss {r['train/loss']:.4f}, skipped "
              f"{r['train/skipped_steps']}, val/accuracy {r['val/accuracy']:.4f} "
              f"({r['epoch_time_s']:.1f} s)", flush=True)


def _float(x) -> float:
    return float(x) if x is not None else float("nan")


def run_record(run_dir) -> dict[str, Any]:
    """A finished run's per-seed record, read from its files (summary, metrics, steps, probe)."""
    files = run_files.RunFiles(run_dir, tensorboard=False)
    summary = json.loads(files.summary_path.read_text())
    history = files.read_metrics()
    init = files.read_json(PROBE_INIT_FILE)
    steps = files.read_steps()
    layers = init["layers"]
    # JSON keeps non-finite floats as "nan" / "inf" strings (`run_files.to_jsonable`).
    probe = [{"epoch": 0, "norms": [_float(x) for x in init["norms"]],
              "loss": _float(init["loss"]), "logit_std": _float(init["logit_std"])}]
    for r in history:
        probe.append({"epoch": r["epoch"],
                      "norms": [_float(r.get(f"{PROBE_PREFIX}grad/{k}")) for k in layers],
                      "loss": _float(r.get(f"{PROBE_PREFIX}loss")),
                      "logit_std": _float(r.get(f"{PROBE_PREFIX}logit_std"))})
    step_loss, step_skipped = [], []
    for epoch in sorted(steps):
        step_loss += [float(v) for v in steps[epoch]["loss"]]
        step_skipped += [int(v) for v in steps[epoch]["skipped"]]
    skipped = int(sum(step_skipped))
    return {
        "seed": summary["seed"], "test/accuracy": float(summary["test/accuracy"]),
        "test/loss": _float(summary["test/loss"]), "stop_reason": summary["stop_reason"],
        "epochs_run": summary["epochs_run"], "num_params": summary["num_params"],
        "description": summary["model"], "skipped_steps": skipped,
        "steps_run": len(step_loss),
        "train_loss": [_float(r["train/loss"]) for r in history],
        "step_loss": step_loss, "layers": layers, "probe": probe,
        "train_time_s": float(summary["wall_time_s"]),
    }


def cell_fields(study: DepthResidualStudy, row: str, depth: int) -> dict[str, Any]:
    """The run's identity beyond its config: its cell, and the study fields that build its data
    and its probe batch."""
    return {"row": row, "depth": depth, "downsample": study.downsample,
            "test_size": study.test_size, "test_subset_seed": TEST_SUBSET_SEED,
            "grad_batch": study.grad_batch}


def finished(run_dir, cfg: config_lib.Config, cell: dict[str, Any]) -> bool:
    """The run in `run_dir` ended (not interrupted) with this config (up to
    `run_files.RESUME_NEUTRAL_FIELDS`) and these `cell_fields`."""
    files = run_files.RunFiles(run_dir, tensorboard=False)
    if not (files.summary_path.exists() and files.config_path.exists()
            and (run_dir / PROBE_INIT_FILE).exists()):
        return False
    stored = json.loads(files.config_path.read_text())
    summary = json.loads(files.summary_path.read_text())
    # Fields that do not change what a run computes (progress bar, checkpoint cadence) may differ.
    new = json.loads(json.dumps(run_files.to_jsonable(config_lib.to_dict(cfg))))
    return (not run_files.config_diff(stored, new) and files.read_json(CELL_FILE) == cell
            and summary.get("stop_reason") != "interrupted")


def run_cell(cfg: config_lib.Config, row: str, depth: int, seed: int, workdir,
             dataset: data_lib.Dataset) -> dict[str, Any]:
    """One cell at one seed, in <workdir>/runs/<row>/depth_<d>/seed_<s>: its per-seed record."""
    cell_cfg = cell_config(cfg, row, depth, seed)
    cell = cell_fields(cfg.study, row, depth)
    run_dir = loop.seed_dir(workdir / "runs" / row / f"depth_{depth}", seed)
    if not finished(run_dir, cell_cfg, cell):
        g = cfg.study.grad_batch
        hooks = [GradProbe(dataset.train_x[:g], dataset.train_y[:g], cell),
                 loop.StepLog(keys=("loss", "skipped", "grad_norm")),
                 EpochLine(f"{row:>12} depth {depth:>3} seed {seed}")]
        loop.fit(cell_cfg, run_dir, dataset=dataset, hooks=hooks)
    return run_record(run_dir)


def main(argv):
    run = cli.start(argv, "experiments.depth_residual", study=DepthResidualStudy)
    cfg, workdir = run.cfg, run.workdir
    if cfg.model_name != "resnet":
        raise ConfigError(f"model.name: {cfg.model_name!r}; the study's base model section is "
                          "the ResNet's ('resnet'); the plain rows are built from it")
    cells, seeds = cfg.study.cells(), seed_list(cfg)
    for row, depth in cells:  # every cell's config is checked before anything runs
        cell_config(cfg, row, depth, seeds[-1])
    t0 = time.time()
    dataset = study_dataset(cfg)
    print(f"{len(cells)} cells x {len(seeds)} seeds on {dataset.name} "
          f"({len(dataset.train_y)} train / {len(dataset.val_y)} val / {len(dataset.test_y)} "
          "test)", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for row, depth in cells:
        runs = []
        for seed in seeds:
            r = run_cell(cfg, row, depth, seed, workdir, dataset)
            if r["stop_reason"] == "interrupted":
                # Ctrl-C / SIGTERM: the run in flight saved its state; stop the grid here (a
                # rerun resumes that run and reads the finished ones back).
                print(f"{row} depth {depth} seed {seed} was interrupted; stopping the study "
                      "(rerun the same command to resume)", flush=True)
                return
            print(f"{row} depth {depth} seed {seed}: test accuracy {100 * r['test/accuracy']:.2f}%"
                  f", skipped {r['skipped_steps']} of {r['steps_run']} steps "
                  f"({r['train_time_s']:.0f} s)", flush=True)
            runs.append(r)
        results.setdefault(row, {})[str(depth)] = report.cell_record(
            cell_config(cfg, row, depth), runs, chance=1.0 / dataset.num_classes)
    wall = time.time() - t0
    out = report.build_results(cfg, results, dataset)
    figures = report.figures(out, workdir)
    md = report.results_md(run.command, cfg, out, wall, figures)
    analysis = report.analysis_md(run.command, cfg, out, wall)
    run_files.atomic_write_text(workdir / "analysis.md", analysis)
    cli.finish(run, wall, out, md, figures)
