"""A CNN's train step inside and outside a while loop on this backend: why `train.unroll` exists.

Run:  python -m benchmarks.conv_loop [--batch_size=128] [--steps=8] [--rounds=3]

The model is `experiments/configs/mnist_cnn.py`'s CNN (32-32-64-64 3x3 convs, BatchNorm) on
28x28x1 inputs, Adam. The same `steps` train steps, run three ways, interleaved in rounds so that
load drift hits all alike:

  "steps"     a Python loop over one jitted step (the reference: one dispatch per step);
  "scan"      one jitted `lax.scan` over the steps (what an epoch is by default);
  "unrolled"  the same scan with `unroll=True` (`train.unroll`: no while loop in the program).

XLA:CPU runs a convolution inside a while-loop body far slower than outside one
(jax-ml/jax#12868). The last line is JSON: images/s of each, and the ratios to "steps".
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_practical import models


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    b, s = args.batch_size, args.steps
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(s, b, 28, 28, 1)).astype(np.float32))
    ys = jnp.asarray(rng.integers(0, 10, (s, b)))
    model = models.CNN(widths=(32, 64), convs_per_stage=2, norm="batch")
    variables = model.init(jax.random.key(0), xs[0], train=False)
    tx = optax.adam(1e-3)

    def step(carry, batch):
        params, stats, opt = carry
        x, y = batch

        def loss(p):
            out, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), new

        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), new["batch_stats"], opt), value

    carry = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    one = jax.jit(step)
    scan = jax.jit(lambda c, batches: jax.lax.scan(step, c, batches))
    unrolled = jax.jit(lambda c, batches: jax.lax.scan(step, c, batches, unroll=True))
    runs = {
        "steps": lambda: [one(carry, (xs[i], ys[i])) for i in range(s)][-1],
        "scan": lambda: scan(carry, (xs, ys)),
        "unrolled": lambda: unrolled(carry, (xs, ys)),
    }
    for fn in runs.values():
        jax.block_until_ready(fn())  # compile
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t)
    rate = {name: s * b / t for name, t in best.items()}
    for name in runs:
        print(f"{name:9s} {rate[name]:8.0f} images/s  ({rate[name] / rate['steps']:.3f} of steps)")
    print(json.dumps({"backend": jax.default_backend(), "batch_size": b, "steps": s,
                      "images_per_s": rate,
                      "ratio_to_steps": {k: v / rate["steps"] for k, v in rate.items()}}))


if __name__ == "__main__":
    main()
