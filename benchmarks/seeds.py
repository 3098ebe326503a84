"""S seeds of the MNIST MLP: one after the other (`loop.fit`'s epoch) vs one vmapped program, interleaved.

Run:  python -m benchmarks.seeds --seeds=4 [--rounds=3] [--data_dir=/work/shared/data/mnist]

Config: experiments/configs/mnist_mlp.py (the chapter's production recipe: BatchNorm, dropout 0.2,
L2, global-norm clipping, label smoothing, Adam, batch 128), training set on the device. Data:
random MNIST-shaped arrays (55,000 train / 5,000 val / 10,000 test; speed does not depend on pixel
values) unless --data_dir points at the MNIST IDX files.

One round = one epoch of every seed plus the validation pass, as `fit` runs it per epoch:
"sequential" calls `Experiment.run_epoch` and `evaluate` once per seed (each seed with its own
`cfg.seed`, batch order and state), "vmap" calls `multiseed.SeedGroup.run_epoch` and its
vmapped evaluation once. Round 0 compiles both and is not timed. The two modes alternate which goes
first each round, so a load change on a shared machine hits both alike; the reported ratio is
the median over rounds of vmap time / sequential time (> 1: vmapping is slower), in wall time
and in this process's CPU time (less sensitive to other processes on the cores). Last line: JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np

from experiments.configs import mnist_mlp
from ml_practical import data as data_lib
from ml_practical import config, loop, multiseed


def random_mnist(seed: int = 0) -> data_lib.Dataset:
    """MNIST's shapes (55,000 / 5,000 / 10,000 of 28x28x1, 10 classes) filled with N(0, 1) noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        return (rng.standard_normal((n, 28, 28, 1), dtype=np.float32),
                rng.integers(0, 10, n).astype(np.int32))

    (trx, tr_y), (vx, vy), (tx, ty) = split(55_000), split(5_000), split(10_000)
    return data_lib.Dataset(train_x=trx, train_y=tr_y, val_x=vx, val_y=vy, test_x=tx, test_y=ty,
                            num_classes=10, name="random_mnist")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="S: seeds 0 .. S-1")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the compile one")
    parser.add_argument("--data_dir", default="", help="MNIST IDX directory (default: random data)")
    args = parser.parse_args()

    cfg = mnist_mlp.get_config()
    cfg.train.num_epochs = args.rounds + 1
    cfg.train.progress = "never"
    cfg.data.placement = "device"
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    cfg = config.parse(cfg)
    dataset = data_lib.load_dataset(cfg.data) if args.data_dir else random_mnist()
    seeds = list(range(args.seeds))
    group = multiseed.build_seed_group(cfg, seeds, dataset=dataset)
    exp = group.exp
    # Sequential: the same compiled epoch and evaluation, one Experiment view per seed.
    runs = [dataclasses.replace(exp, cfg=loop.with_seed(cfg, s)) for s in seeds]
    seq_states = [r.init_state() for r in runs]
    vmap_states = group.init_states()

    def sequential(epoch):
        for i, r in enumerate(runs):
            seq_states[i], _ = r.run_epoch(seq_states[i], epoch)
            r.evaluate(seq_states[i].params, seq_states[i].batch_stats, exp.val_split)

    def vmapped(epoch):
        nonlocal vmap_states
        vmap_states, _ = group.run_epoch(vmap_states, epoch)
        group.evaluate(vmap_states.params, vmap_states.batch_stats, exp.val_split)

    modes = {"sequential": sequential, "vmap": vmapped}
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds + 1):  # round 0 compiles and warms up
        order = list(modes) if r % 2 else list(modes)[::-1]
        for m in order:
            t0, c0 = time.perf_counter(), time.process_time()
            modes[m](r + 1)
            jax.block_until_ready((seq_states, vmap_states))
            if r:
                times[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
    ratios = [v / s for v, s in zip(times["vmap"], times["sequential"])]
    ratio = statistics.median(ratios)
    # CPU seconds of this process (all its threads): less sensitive than wall time to other
    # processes taking the cores, though the thread pools' spinning counts too.
    cpu_ratio = statistics.median([v / s for v, s in zip(cpu["vmap"], cpu["sequential"])])
    samples = args.seeds * exp.steps_per_epoch * cfg.train.batch_size
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  "
          f"data: {dataset.name}  S={args.seeds}  {exp.steps_per_epoch} steps/epoch/seed")
    for m in modes:
        print(f"{m:<10} epoch of {args.seeds} seeds (+val): "
              + ", ".join(f"{t:.2f}" for t in times[m]) + f" s  "
              f"(median {statistics.median(times[m]):.2f} s, "
              f"{samples / statistics.median(times[m]):,.0f} train samples/s)")
    print("vmap / sequential per round: " + ", ".join(f"{x:.3f}" for x in ratios)
          + f"; median {ratio:.3f} ({'vmap slower' if ratio > 1 else 'vmap faster'}); "
          f"CPU-time ratio median {cpu_ratio:.3f}")
    print(json.dumps({"seeds": args.seeds, "rounds": args.rounds, "data": dataset.name,
                      "device": jax.devices()[0].device_kind,
                      "sequential_s": [round(t, 3) for t in times["sequential"]],
                      "vmap_s": [round(t, 3) for t in times["vmap"]],
                      "ratio_vmap_to_sequential": round(ratio, 4),
                      "ratios": [round(x, 4) for x in ratios],
                      "cpu_s": {m: [round(t, 3) for t in v] for m, v in cpu.items()},
                      "cpu_ratio_vmap_to_sequential": round(cpu_ratio, 4)}))


if __name__ == "__main__":
    main()
