"""Train-step throughput of the MNIST MLP against this machine's float32 GEMM rate, in one run.

Run:  python -m benchmarks.train_throughput [--batch_size=128] [--variant=recipe] [--epochs=3]

Counts 4*P1 + 6*(P2 + P3) FLOPs per trained sample (P_i: weights of layer i; forward 2P, weight
gradient 2P, input gradient 2P, and the first layer needs no input gradient), and divides the
achieved FLOP rate by numpy's 2048x2048 @ 2048x2048 float32 matmul rate measured in the same run.
Data are random MNIST-shaped arrays (60,000 x 784): throughput does not depend on pixel values.

Variants: "plain" (no BatchNorm, no dropout, Adam), "recipe" (the chapter's production recipe:
BatchNorm, dropout 0.2, coupled L2, global-norm clipping, label smoothing).
The last line printed is one JSON object: samples_per_s, gemm_gflops, fraction_of_gemm, batch_size.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import mnist_mlp
from ml_practical import models, optim, train

VARIANTS = {
    "plain": dict(norm="none", drop_rate=0.0, l2=0.0, clip="none", label_smoothing=0.0),
    "bn": dict(norm="batch", drop_rate=0.0, l2=0.0, clip="none", label_smoothing=0.0),
    "dropout": dict(norm="none", drop_rate=0.2, l2=0.0, clip="none", label_smoothing=0.0),
    "recipe": dict(norm="batch", drop_rate=0.2, l2=1e-4, clip="global_norm", label_smoothing=0.1),
}


def gemm_gflops(n: int = 2048, repeats: int = 7) -> float:
    """Best-of-`repeats` numpy float32 n x n matmul rate, in GFLOP/s (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (thread pool start, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_sample(widths=(784, 512, 256, 10)) -> int:
    weights = [a * b for a, b in zip(widths[:-1], widths[1:])]
    return 4 * weights[0] + 6 * sum(weights[1:])


def measure_train(variant: str, batch_size: int, epochs: int, n: int = 60_000,
                  guard: str = "replay") -> float:
    """Samples/s of whole jitted epochs (one lax.scan each), after a compile/warm-up epoch."""
    v = VARIANTS[variant]
    cfg = mnist_mlp.get_config()
    cfg.model.norm, cfg.model.drop_rate = v["norm"], v["drop_rate"]
    cfg.optim.l2, cfg.optim.clip = v["l2"], v["clip"]
    model = models.make_model(cfg.model)
    tx = optim.make_optimizer(cfg.optim)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((n, 28, 28, 1), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (28, 28, 1))
    # What `fit` runs: with the guard, an unguarded epoch that keeps its input state (and would
    # be replayed guarded if a step were non-finite); without, an unguarded donating epoch.
    # "inline" is the previous design: the guard (a lax.cond) inside every step.
    make = functools.partial(train.make_train_epoch, model, tx,
                             label_smoothing=v["label_smoothing"])
    if guard == "replay":
        epoch_fn = functools.partial(train.run_epoch, make(skip_nonfinite=False, donate=False),
                                     make(skip_nonfinite=True))
    else:
        epoch_fn = make(skip_nonfinite=guard == "inline")
    steps = n // batch_size
    idx = [jnp.asarray(np.random.default_rng(e).permutation(n)[: steps * batch_size]
                       .reshape(steps, batch_size).astype(np.int32)) for e in range(epochs + 1)]
    state, m = epoch_fn(state, images, labels, idx[0])  # compile + warm-up
    jax.block_until_ready(m)
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        state, m = epoch_fn(state, images, labels, idx[e])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return steps * batch_size / min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--variant", default="recipe", choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (best is reported)")
    parser.add_argument("--guard", default="replay", choices=("replay", "inline", "none"),
                        help="non-finite guard: replay (fit's: unguarded epoch, replayed guarded "
                             "if a step was non-finite), inline (lax.cond in every step), none")
    args = parser.parse_args()

    gemm = gemm_gflops()
    rate = measure_train(args.variant, args.batch_size, args.epochs,
                         guard=args.guard)
    gflops = rate * flops_per_sample() / 1e9
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}")
    print(f"variant={args.variant} batch={args.batch_size} guard={args.guard}: "
          f"{rate:,.0f} samples/s = {gflops:.1f} GFLOP/s")
    print(f"numpy float32 GEMM 2048^3: {gemm:.1f} GFLOP/s -> fraction {gflops / gemm:.3f}")
    print(json.dumps({"samples_per_s": round(rate, 1), "gemm_gflops": round(gemm, 2),
                      "fraction_of_gemm": round(gflops / gemm, 4), "batch_size": args.batch_size,
                      "variant": args.variant, "nonfinite_guard": args.guard}))


if __name__ == "__main__":
    main()
