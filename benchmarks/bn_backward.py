"""BatchNorm's hand-written backward pass (chapter C1) against autodiff: time of one jitted
value_and_grad of a training-mode BatchNorm layer, both measured in the same run.

Run:  python -m benchmarks.bn_backward [--shapes=128x512,1024x512] [--rounds=30] [--calls=50]

For each input shape, `layers.BatchNorm(backward=...)` is applied with train=True (batch
statistics, running statistics updated) and `jax.value_and_grad` of sum(w * y) is taken with respect
to gamma, beta and the input, jitted. The two variants are timed in alternating rounds (so load on
the machine hits both alike); each round times `calls` back-to-back calls, and the reported time
per call is the median over rounds. The ratio is autodiff / manual: above 1 means the hand-written
backward is faster. The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import layers

BACKWARDS = ("autodiff", "manual")


def make_value_and_grad(backward: str):
    """Jitted (params, x, w) -> (loss, (dparams, dx)) for one BatchNorm layer in training mode."""
    bn = layers.BatchNorm(backward=backward)

    def loss(params, x, stats, w):
        y, new = bn.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
        return jnp.sum(w * y), new["batch_stats"]

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def time_shape(shape: tuple[int, ...], rounds: int, calls: int) -> dict[str, float]:
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    c = shape[-1]
    x = jax.random.normal(kx, shape) * 2.0 + 1.0
    w = jax.random.normal(kw, shape)
    params = {"scale": 1.0 + 0.1 * jax.random.normal(kg, (c,)), "bias": jnp.zeros(c)}
    stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}
    fns = {b: make_value_and_grad(b) for b in BACKWARDS}
    outs = {b: jax.block_until_ready(fns[b](params, x, stats, w)) for b in BACKWARDS}  # compile
    # The two agree (the tests check this tightly; here only a guard against timing a broken run).
    (_, _), (_, dx_a) = outs["autodiff"]
    (_, _), (_, dx_m) = outs["manual"]
    max_dx_diff = float(jnp.max(jnp.abs(dx_a - dx_m)) / jnp.max(jnp.abs(dx_a)))
    per_call = {b: [] for b in BACKWARDS}
    for _ in range(rounds):
        for b in BACKWARDS:
            fn = fns[b]
            t0 = time.perf_counter()
            for _ in range(calls):
                out = fn(params, x, stats, w)
            jax.block_until_ready(out)
            per_call[b].append((time.perf_counter() - t0) / calls)
    result = {f"{b}_us": float(np.median(per_call[b]) * 1e6) for b in BACKWARDS}
    result["ratio_autodiff_over_manual"] = result["autodiff_us"] / result["manual_us"]
    result["max_rel_dx_diff"] = max_dx_diff
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="128x512,1024x512",
                        help="comma-separated input shapes, e.g. 128x512,32x8x8x64")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    shapes = [tuple(int(s) for s in item.split("x")) for item in args.shapes.split(",")]
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'shape':>12} {'autodiff us':>12} {'manual us':>10} {'autodiff/manual':>16}")
    results = {}
    for shape in shapes:
        r = time_shape(shape, args.rounds, args.calls)
        name = "x".join(map(str, shape))
        results[name] = r
        print(f"{name:>12} {r['autodiff_us']:12.1f} {r['manual_us']:10.1f} "
              f"{r['ratio_autodiff_over_manual']:16.2f}")
    print(json.dumps({"device": str(device.device_kind), "rounds": args.rounds,
                      "calls": args.calls, "results": results}))


if __name__ == "__main__":
    main()
