"""Cost of the non-finite guard: the same epoch with no guard, `fit`'s replay guard and the inline
guard, interleaved in one process so that load drifts hit all three alike.

Run:  python -m benchmarks.guard_cost [--batch_size=128] [--variant=recipe] [--rounds=5]

"none": unguarded epoch, state donated. "replay" (what `loop.fit` runs, `train.replay_if_nonfinite`): unguarded
epoch that keeps its input state, replayed with the guard only if a step was non-finite.
"inline" (the previous design): a `lax.cond` on the gradient norm's finiteness in every step.
Each round times one epoch of each in turn; the best epoch per guard is reported, and the last
line is JSON with samples/s per guard and the ratios to "none".
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.speed import VARIANTS, make_config
from ml_practical import optim, tasks, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--variant", default="recipe", choices=sorted(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    cfg = make_config(args.variant)
    model = cfg.model
    tx = optim.make_optimizer(cfg.optim)
    n, bs = 60_000, args.batch_size
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((n, 28, 28, 1), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    steps = n // bs
    idx = jnp.asarray(rng.permutation(n)[: steps * bs].reshape(steps, bs).astype(np.int32))
    make = functools.partial(train.make_train_epoch, model, tx,
                             task=tasks.Classification(cfg.train.label_smoothing))
    fns = {
        "none": make(skip_nonfinite=False),
        "replay": functools.partial(train.replay_if_nonfinite, make(skip_nonfinite=False, donate=False),
                                    make(skip_nonfinite=True)),
        "inline": make(skip_nonfinite=True),
        "none_kept": make(skip_nonfinite=False, donate=False),  # isolates the cost of no donation
    }
    states = {g: train.create_train_state(model, tx, jax.random.PRNGKey(0), (28, 28, 1))
              for g in fns}
    best = {g: float("inf") for g in fns}
    for r in range(args.rounds + 1):  # round 0 compiles and warms up
        for g, fn in fns.items():
            t0 = time.perf_counter()
            states[g], m = fn(states[g], images, labels, idx)
            jax.block_until_ready((states[g], m))
            if r:
                best[g] = min(best[g], time.perf_counter() - t0)
    rate = {g: steps * bs / t for g, t in best.items()}
    for g in fns:
        print(f"guard={g:<6} {rate[g]:>10,.0f} samples/s  ratio to none {rate[g] / rate['none']:.3f}")
    print(json.dumps({"variant": args.variant, "batch_size": bs, "rounds": args.rounds,
                      "samples_per_s": {g: round(x, 1) for g, x in rate.items()},
                      "ratio_to_none": {g: round(rate[g] / rate["none"], 4) for g in fns}}))


if __name__ == "__main__":
    main()
