"""Cost of SAM and ASAM in the train step against the plain step, interleaved in one process so
that load drifts hit every variant alike.

Run:  python -m benchmarks.sam [--batch_size=128] [--steps=4] [--rounds=3]

Model: the MNIST CNN of experiments/configs/mnist_cnn.py (16-32-64 channels, two 3x3 convs a
stage, BatchNorm before the ReLU, the faster CPU lowerings), on random 28x28 images, Adam.
Variants, all on the same batch of `batch_size` rows:

  plain   one forward/backward
  sam     `optim.sam_rho = 0.05`: forward/backward at w, then at w + rho g / ||g||
  asam    `optim.sam_rho = 0.5, optim.sam_adaptive = True`: the same two passes, T = |w| + 0.01

SAM's second pass is a whole forward/backward, so its step costs up to 2x the plain step's (a
ratio down to 0.5; the optimizer update runs once); the perturbation itself is a few elementwise
passes over the parameters.
Each compiled call is `steps` unrolled steps (`train.unroll`, as the CNN configs run on CPU; a
convolution inside a rolled scan is ~25x slower on XLA:CPU). Prints samples/s and the ratio to
plain per variant (best of `rounds` timed rounds each); the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_practical import models, tasks, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bs, steps = args.batch_size, args.steps
    fields = {"widths": (16, 32, 64), "convs_per_stage": 2, "norm": "batch",
              "conv_backward": "chunked", "bn_backward": "manual"}
    variants = {"plain": None, "sam": train.SAM(0.05),
                "asam": train.SAM(0.5, adaptive=True, eta=0.01)}
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((steps, bs, 28, 28, 1), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, (steps, bs)).astype(np.int32))
    tx = optax.adam(1e-3)
    model = models.build_model("cnn", fields)
    fns, states = {}, {}
    for name, sam in variants.items():
        fns[name] = train.make_train_epoch(model, tx, task=tasks.Classification(),
                                           skip_nonfinite=False, gather=False, unroll=True,
                                           sam=sam)
        states[name] = train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1))
    best = {name: float("inf") for name in fns}
    for r in range(args.rounds + 1):  # round 0 compiles
        for name, fn in fns.items():
            t0 = time.perf_counter()
            states[name], m = fn(states[name], images, labels)
            jax.block_until_ready((states[name], m))
            if r:
                best[name] = min(best[name], time.perf_counter() - t0)
    rate = {name: steps * bs / t for name, t in best.items()}
    for name in fns:
        print(f"{name:<6} {rate[name]:>8,.0f} samples/s  ratio to plain "
              f"{rate[name] / rate['plain']:.3f}")
    print(json.dumps({"batch_size": bs, "steps": steps, "rounds": args.rounds,
                      "samples_per_s": {n: round(x, 1) for n, x in rate.items()},
                      "ratio_to_plain": {n: round(rate[n] / rate["plain"], 4) for n in fns}}))


if __name__ == "__main__":
    main()
