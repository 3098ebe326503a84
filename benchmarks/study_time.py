"""Where a study's wall time goes: training, evaluation, checkpointing, compilation, start-up, rest.

Run:  python -m benchmarks.study_time [--config=experiments/configs/ablation.py]
          [--data_dir=../shared/data/mnist] [--only=he,he_bn] [--seeds=3] [--workdir=DIR]
          [--pure_epochs=3] [--compilation_cache=DIR] [--set checkpoint.every=5 ...]

Runs the ablation study (`experiments.ablation.main.run_study`, in this process, into a fresh
temporary workdir unless --workdir is given) with timers around the library's phases, then
measures the pure training time of the same epochs in the same process, and prints the split and
the ratio study wall time / pure training time. Last line: JSON.

The phases (each a sum of wall time over the whole study; they do not overlap):
  compilation    XLA tracing, lowering and backend compilation (`jax.monitoring` duration events),
                 wherever they happen; subtracted from the phase they happened in
  training       the loop's epochs (`Experiment.run_epoch`: the compiled scan, the host transfer
                 of the per-step metrics, a replay when a step was non-finite)
  evaluation     validation every epoch and the test pass at the end (`train.make_evaluate`)
  checkpointing  orbax: opening the manager, every save (with its SHA-256), every restore
  start-up       from the start of this process to the first epoch of the first run: imports,
                 JAX start, loading the data (without the compilations in it)
  rest           everything else: experiment building (device transfers of the data), run
                 files, early stopping, the reports and figures, Python between the phases

Pure training: for every distinct training program of the study (a row; its seeds share it), the
compiled epoch function is timed warm on `--pure_epochs` epochs (their mean) right after the study, and the
study's pure training time is the sum over runs of (epochs run) x (that row's warm epoch time).
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax import monitoring  # noqa: E402

from experiments.ablation import main as ablation  # noqa: E402
from experiments.ablation.rows import AblationStudy  # noqa: E402
from ml_practical import checkpointing, config, experiment, loop, train  # noqa: E402

PHASES = ("training", "evaluation", "checkpointing")
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class Timers:
    """Sums of wall time per phase; compile events are credited to compilation and taken out of
    the phase that was running when they happened."""

    def __init__(self):
        self.total = collections.defaultdict(float)
        self.compile_in = collections.defaultdict(float)
        self.current: str | None = None
        self.first_epoch_at: float | None = None
        monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name, secs, **kwargs):
        if name in COMPILE_EVENTS:
            self.total["compilation"] += secs
            where = self.current
            if where is None:  # outside the timed phases: start-up, or the rest
                where = "start-up" if self.first_epoch_at is None else "rest"
            self.compile_in[where] += secs

    @contextlib.contextmanager
    def phase(self, name):
        if self.current is not None:  # nested: the outer phase keeps the time
            yield
            return
        self.current = name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.total[name] += time.perf_counter() - t0
            self.current = None

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            with self.phase(name):
                out = fn(*args, **kwargs)
                if name != "checkpointing":
                    jax.block_until_ready(out)
                return out
        return timed

    def split(self, startup: float, wall: float) -> dict[str, float]:
        out = {p: self.total[p] - self.compile_in[p] for p in PHASES}
        out["compilation"] = self.total["compilation"]
        out["start-up"] = startup - self.compile_in["start-up"]
        out["rest"] = wall - sum(out.values())
        return out


def instrument(timers: Timers, experiments: list) -> None:
    """Wraps the library's phases (the objects the loop calls) with `timers`."""
    original_run_epoch = experiment.Experiment.run_epoch

    def run_epoch(self, state, epoch):
        if timers.first_epoch_at is None:
            timers.first_epoch_at = time.perf_counter()
        with timers.phase("training"):
            out = original_run_epoch(self, state, epoch)
            jax.block_until_ready(out)
        return out

    experiment.Experiment.run_epoch = run_epoch
    original_make_evaluate = train.make_evaluate
    train.make_evaluate = lambda *a, **k: timers.wrap("evaluation", original_make_evaluate(*a, **k))
    experiment.train_lib.make_evaluate = train.make_evaluate
    for name in ("__init__", "save", "restore_latest", "restore_best", "close"):
        setattr(checkpointing.RunCheckpointer, name,
                timers.wrap("checkpointing", getattr(checkpointing.RunCheckpointer, name)))
    original_build = experiment.build_experiment

    def build(*args, **kwargs):
        exp = original_build(*args, **kwargs)
        experiments.append(exp)
        return exp

    loop.build_experiment = build


def pure_training(experiments: list, results: dict, pure_epochs: int) -> tuple[float, dict]:
    """(pure training seconds of the study, warm epoch seconds per row)."""
    epochs_by_row = {name: [r["epochs_run"] for r in e["runs"]]
                     for name, e in results["experiments"].items()}
    # One Experiment per run, in the order the study ran them (rows in table order, seeds in
    # order); the rows' names come from the results, which list them in the same order.
    names = [name for name, counts in epochs_by_row.items() for _ in counts]
    per_row: dict[str, float] = {}
    for name, exp in zip(names, experiments):
        if name in per_row:
            continue
        state = exp.init_state()
        state, _ = exp.run_epoch(state, 1)  # warm: compiled in the study already
        jax.block_until_ready(state)
        times = []
        for epoch in range(2, 2 + pure_epochs):
            t0 = time.perf_counter()
            state, _ = exp.run_epoch(state, epoch)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
        per_row[name] = float(np.mean(times))
    total = sum(per_row[name] * sum(counts) for name, counts in epochs_by_row.items())
    return total, per_row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/configs/ablation.py")
    parser.add_argument("--data_dir", default="", help="IDX directory (data.data_dir)")
    parser.add_argument("--only", default="", help="config.only (default: the config's)")
    parser.add_argument("--seeds", type=int, default=0, help="config.seeds (0: the config's)")
    parser.add_argument("--workdir", default="", help="study directory (default: a fresh temp)")
    parser.add_argument("--pure_epochs", type=int, default=5)
    parser.add_argument("--compilation_cache", default="",
                        help="JAX persistent compilation cache directory, as the study scripts "
                             "use it (experiments/cli.py); default: off")
    parser.add_argument("--set", action="append", default=[],
                        help="extra dotted override, e.g. --set checkpoint.every=5")
    args = parser.parse_args()
    if args.compilation_cache:
        from experiments import cli
        cli.use_compilation_cache(args.compilation_cache)

    import importlib.util
    spec = importlib.util.spec_from_file_location("study_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = module.get_config()
    if args.data_dir:
        raw.data.data_dir = args.data_dir
    if args.only:
        raw.only = args.only
    if args.seeds:
        raw.seeds = args.seeds
    raw.train.progress = "never"
    cfg = config.parse(raw, study=AblationStudy)
    if args.set:
        import ast
        overrides = {}
        for item in args.set:
            key, _, text = item.partition("=")
            try:
                overrides[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                overrides[key] = text
        cfg = config.override(cfg, overrides, study=AblationStudy, what="--set")

    timers, experiments = Timers(), []
    instrument(timers, experiments)
    with contextlib.ExitStack() as stack:
        workdir = (pathlib.Path(args.workdir) if args.workdir else
                   pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory())))
        results = ablation.run_study(cfg, workdir / "study")
        study_end = time.perf_counter()
        startup = (timers.first_epoch_at or study_end) - _PROCESS_START
        wall = study_end - _PROCESS_START
        split = timers.split(startup, wall)
        pure, per_row = pure_training(experiments, results, args.pure_epochs)
    runs = sum(len(e["runs"]) for e in results["experiments"].values())
    epochs = sum(r["epochs_run"] for e in results["experiments"].values() for r in e["runs"])
    print(f"study: {args.config} only={cfg.study.only or 'default'} seeds={cfg.study.seeds}: "
          f"{runs} runs, {epochs} epochs, {len(per_row)} distinct programs")
    for name, secs in split.items():
        print(f"  {name:<14} {secs:8.1f} s  {100 * secs / wall:5.1f} %")
    print(f"  {'wall':<14} {wall:8.1f} s")
    print(f"pure training (warm epochs x epochs run): {pure:.1f} s")
    print(f"ratio study wall / pure training: {wall / pure:.3f}")
    print(json.dumps({"config": args.config, "only": cfg.study.only, "seeds": cfg.study.seeds,
                      "set": args.set, "compilation_cache": bool(args.compilation_cache),
                      "runs": runs, "epochs": epochs, "wall_s": round(wall, 2),
                      "split_s": {k: round(v, 2) for k, v in split.items()},
                      "pure_training_s": round(pure, 2),
                      "warm_epoch_s": {k: round(v, 3) for k, v in per_row.items()},
                      "ratio": round(wall / pure, 4), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
