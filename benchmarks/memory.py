"""Peak resident memory of a short MNIST training run (`loop.fit`), measured in a fresh subprocess.

Run:  python -m benchmarks.memory --data_dir=../shared/data/mnist [--epochs=1] [--placement=host]
                                  [--config=experiments/configs/mnist_mlp.py]

Three children run one after the other, each a new Python process so that nothing of this one
counts: "baseline" imports ml_practical.train and starts the JAX CPU backend, and does nothing
else; "load" does that and `data.load_dataset` (the host arrays and their temporaries); "fit"
trains `--epochs` epochs of the config with `ml_practical.loop.fit` (data from `--data_dir`,
workdir in a temporary directory, evaluation and checkpoints included). Each child
reports its own peak resident set size (VmHWM of /proc/self/status, Linux); the parent also
reads `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, the largest of its waited-for children,
as a cross-check. The dataset size is that of the arrays training holds (float32 images, int32
labels, all three splits) and of the files in `--data_dir`.

`--placement` is passed as `cfg.data.placement` only if the config has that field (the
host-streaming input mode); otherwise it is reported as ignored. The last line printed is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile

MIB = 2**20


def _vmhwm_bytes() -> int | None:
    """This process's peak resident set size (VmHWM), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _child_baseline(spec: dict) -> dict:
    import jax

    from ml_practical import loop  # noqa: F401  (what the fit child imports, without running)

    jax.devices()
    return {"peak_rss_bytes": _vmhwm_bytes()}


def _config(spec: dict):
    module_spec = importlib.util.spec_from_file_location("bench_config", spec["config"])
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.data.data_dir = spec["data_dir"]
    cfg.train.num_epochs = spec["epochs"]
    cfg.train.progress = "never"
    if spec["placement"] is not None and "placement" in cfg.data:
        cfg.data.placement = spec["placement"]
    from ml_practical import config
    return config.parse(cfg)


def _child_load(spec: dict) -> dict:
    import jax

    from ml_practical import data, loop  # noqa: F401

    jax.devices()
    data.load_dataset(_config(spec).data)
    return {"peak_rss_bytes": _vmhwm_bytes()}


def _child_fit(spec: dict) -> dict:
    from ml_practical import loop

    cfg = _config(spec)
    placement_used = cfg.data.placement
    with tempfile.TemporaryDirectory() as workdir:
        summary = loop.fit(cfg, workdir).summary
    info = summary["dataset"]
    n_rows = info["num_train"] + info["num_val"] + info["num_test"]
    image_bytes = n_rows * math.prod(info["image_shape"]) * 4  # float32 after normalization
    label_bytes = n_rows * 4  # int32
    return {"peak_rss_bytes": _vmhwm_bytes(), "placement": placement_used,
            "dataset_array_bytes": image_bytes + label_bytes,
            "dataset_train_bytes": info["num_train"] * (math.prod(info["image_shape"]) + 1) * 4,
            "num_train": info["num_train"], "num_val": info["num_val"],
            "num_test": info["num_test"], "epochs_run": summary["epochs_run"],
            "test_accuracy": summary["test/accuracy"], "wall_time_s": summary["wall_time_s"]}


_CHILDREN = {"baseline": _child_baseline, "load": _child_load, "fit": _child_fit}


def _run_child(mode: str, spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--_child", mode, "--_spec", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"benchmarks.memory: the {mode} child failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if os.path.isfile(os.path.join(path, f)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("ML_PRACTICAL_DATA_DIR", ""),
                        help="MNIST IDX directory (default: $ML_PRACTICAL_DATA_DIR)")
    parser.add_argument("--config", default="experiments/configs/mnist_mlp.py")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--placement", default=None,
                        help="cfg.data.placement, if the config has that field (e.g. device, "
                             "host, auto)")
    parser.add_argument("--_child", choices=tuple(_CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--_spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        print(json.dumps(_CHILDREN[args._child](json.loads(args._spec))))
        return

    if not args.data_dir or not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir: {args.data_dir!r} is not a directory (MNIST IDX files)")
    if args.epochs < 1:
        parser.error(f"--epochs: {args.epochs}; expected >= 1")
    spec = {"config": os.path.abspath(args.config), "data_dir": os.path.abspath(args.data_dir),
            "epochs": args.epochs, "placement": args.placement}
    base = _run_child("baseline", spec)
    load = _run_child("load", spec)
    fit = _run_child("fit", spec)
    children_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    files = _dir_bytes(args.data_dir)

    placement_note = fit["placement"]
    if args.placement is not None and fit["placement"] is None:
        placement_note = f"ignored ({args.placement!r}: the config has no data.placement)"
    print(f"config {args.config}, {args.epochs} epoch(s), data {args.data_dir}, "
          f"placement: {placement_note}")
    print(f"dataset: {fit['num_train']:,} train / {fit['num_val']:,} val / {fit['num_test']:,} "
          f"test rows; arrays {fit['dataset_array_bytes'] / MIB:,.1f} MiB (train "
          f"{fit['dataset_train_bytes'] / MIB:,.1f} MiB), files {files / MIB:,.1f} MiB")
    peak = {name: child["peak_rss_bytes"] / MIB for name, child in
            (("base", base), ("load", load), ("fit", fit))}
    print(f"peak RSS, baseline (python + jax + ml_practical): {peak['base']:,.1f} MiB")
    print(f"peak RSS, baseline + data.load_dataset:           {peak['load']:,.1f} MiB")
    print(f"peak RSS, fit:                                    {peak['fit']:,.1f} MiB"
          f"  (+{(fit['peak_rss_bytes'] - base['peak_rss_bytes']) / MIB:,.1f} MiB, "
          f"{fit['peak_rss_bytes'] / fit['dataset_array_bytes']:.2f}x the dataset arrays)")
    print(f"ru_maxrss of children (cross-check): {children_max / MIB:,.1f} MiB")
    print(json.dumps({
        "config": args.config, "epochs": args.epochs, "placement": placement_note,
        "peak_rss_bytes": fit["peak_rss_bytes"], "baseline_peak_rss_bytes": base["peak_rss_bytes"],
        "load_dataset_peak_rss_bytes": load["peak_rss_bytes"],
        "children_ru_maxrss_bytes": children_max,
        "dataset_array_bytes": fit["dataset_array_bytes"],
        "dataset_train_bytes": fit["dataset_train_bytes"], "dataset_file_bytes": files,
        "num_train": fit["num_train"], "num_val": fit["num_val"], "num_test": fit["num_test"],
        "test_accuracy": fit["test_accuracy"], "fit_wall_time_s": fit["wall_time_s"]}))


if __name__ == "__main__":
    main()
