"""Shared by the step-variant benchmarks (accumulation, sam): the MNIST CNN, the interleaved
timing of several compiled epochs of the same steps, and the report against the plain one."""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_practical import models, tasks, train

# The MNIST CNN of experiments/configs/mnist_cnn.py with the faster CPU lowerings.
CNN_FIELDS = {"widths": (16, 32, 64), "convs_per_stage": 2, "norm": "batch",
              "conv_backward": "chunked", "bn_backward": "manual"}


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def time_variants(variants: dict[str, tuple[dict, dict]], args) -> dict[str, float]:
    """{name: samples/s}: each variant (model field overrides, make_train_epoch keywords) runs
    `steps` unrolled steps of random 28x28 batches per call, one call per variant in turn for
    `rounds` rounds after a compiling one (so load drifts hit every variant alike); best round.
    A "tx" keyword replaces the optimizer (default Adam 1e-3)."""
    bs, steps = args.batch_size, args.steps
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((steps, bs, 28, 28, 1), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, (steps, bs)).astype(np.int32))
    fns, states = {}, {}
    for name, (extra, kwargs) in variants.items():
        kwargs = dict(kwargs)
        tx = kwargs.pop("tx", None) or optax.adam(1e-3)
        model = models.build_model("cnn", {**CNN_FIELDS, **extra})
        fns[name] = train.make_train_epoch(model, tx, task=tasks.Classification(),
                                           skip_nonfinite=False, gather=False, unroll=True,
                                           **kwargs)
        states[name] = train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1))
    best = {name: float("inf") for name in fns}
    for r in range(args.rounds + 1):  # round 0 compiles
        for name, fn in fns.items():
            t0 = time.perf_counter()
            states[name], m = fn(states[name], images, labels)
            jax.block_until_ready((states[name], m))
            if r:
                best[name] = min(best[name], time.perf_counter() - t0)
    return {name: steps * bs / t for name, t in best.items()}


def report(rate: dict[str, float], args) -> None:
    """Samples/s and the ratio to "plain" per variant; the last line is JSON."""
    width = max(len(n) for n in rate) + 3
    for name in rate:
        print(f"{name:<{width}} {rate[name]:>8,.0f} samples/s  ratio to plain "
              f"{rate[name] / rate['plain']:.3f}")
    print(json.dumps({"batch_size": args.batch_size, "steps": args.steps,
                      "rounds": args.rounds,
                      "samples_per_s": {n: round(x, 1) for n, x in rate.items()},
                      "ratio_to_plain": {n: round(rate[n] / rate["plain"], 4) for n in rate}}))
