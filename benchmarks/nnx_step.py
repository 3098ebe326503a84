"""The nnx path against the linen path: time of one training step of the same model, same run.

Run:  python -m benchmarks.nnx_step [--family=mlp] [--batch=128] [--rounds=20] [--calls=20]

The model is the chapter's MLP (784-512-256-10, BatchNorm before ReLU, dropout 0.2) or, with
--family=cnn, the two-stage CNN on 28x28x1 images, with the library's optax chain (momentum 0.9,
L2 5e-4, global-norm clipping at 1). Three steps, the same arithmetic:

  linen         `jax.jit` of value_and_grad + optax update on (params, batch_stats, opt_state)
                (the reference, what `ml_practical.train` does);
  nnx.jit       `nnx.jit` of `nnx.value_and_grad` + `nnx.Optimizer.update` on the nnx model, the
                form the Flax NNX guides lead with (the graph of Python objects is traversed on
                every call);
  nnx split     the nnx model split once (`nnx.split`) and the step `jax.jit`ed over its state,
                merged inside (`nnx.merge`), the form flax's performance guide recommends.

The three are timed in alternating rounds (load on the machine hits all alike); each round times
`calls` back-to-back steps; the time per step is the median over rounds, and the ratios are
against linen (above 1: slower than linen). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ml_practical import config, models, optim
from ml_practical import nnx as mpx

FIELDS = {"mlp": dict(widths=(512, 256), norm="batch", drop_rate=0.2),
          "cnn": dict(widths=(32, 64), norm="batch", drop_rate=0.2)}
SHAPES = {"mlp": (784,), "cnn": (28, 28, 1)}


def build(family: str, batch: int):
    fields, shape = FIELDS[family], SHAPES[family]
    x = jax.random.normal(jax.random.key(0), (batch, *shape))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    tx_cfg = config.OptimConfig(name="momentum", learning_rate=0.05, momentum=0.9, l2=5e-4,
                                clip="global_norm", clip_value=1.0)
    loss_of = lambda logits: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    lin = models.build_model(family, fields)
    v = lin.init(jax.random.key(2), x, train=False)
    tx = optim.make_optimizer(tx_cfg)

    @jax.jit
    def linen_step(carry, x):
        params, stats, opt_state, step = carry
        key = jax.random.fold_in(jax.random.key(4), step)  # a fresh mask per step, in the graph

        def f(p):
            out, st = lin.apply({"params": p, "batch_stats": stats}, x, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])
            return loss_of(out), st["batch_stats"]
        (loss, stats), g = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state, step + 1), loss

    def nnx_model():
        net = mpx.build_model(family, fields, shape, rngs=nnx.Rngs(params=2, dropout=3))
        mpx.load_variables(net, v)
        net.train()
        return net, nnx.Optimizer(net, optim.make_optimizer(tx_cfg), wrt=nnx.Param)

    net, opt = nnx_model()

    @nnx.jit
    def nnx_step(net, opt, x):
        loss, g = nnx.value_and_grad(lambda m: loss_of(m(x)))(net)
        opt.update(net, g)
        return loss

    net2, opt2 = nnx_model()
    graphdef, state = nnx.split((net2, opt2))

    @jax.jit
    def split_step(state, x):
        net, opt = nnx.merge(graphdef, state)
        loss, g = nnx.value_and_grad(lambda m: loss_of(m(x)))(net)
        opt.update(net, g)
        return nnx.state((net, opt)), loss

    carry = [(v["params"], v["batch_stats"], tx.init(v["params"]), jnp.zeros((), jnp.uint32))]
    split_carry = [state]

    def run_linen():
        carry[0], loss = linen_step(carry[0], x)
        return loss

    def run_nnx():
        return nnx_step(net, opt, x)

    def run_split():
        split_carry[0], loss = split_step(split_carry[0], x)
        return loss

    return {"linen": run_linen, "nnx.jit": run_nnx, "nnx split": run_split}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="mlp", choices=sorted(FIELDS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args(argv)
    steps = build(args.family, args.batch)
    for fn in steps.values():  # compile and warm up
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    per_step = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                out = fn()
            jax.block_until_ready(out)
            per_step[name].append((time.perf_counter() - t0) / args.calls)
    median = {name: float(np.median(t)) for name, t in per_step.items()}
    print(f"{args.family}, batch {args.batch}, {jax.devices()[0].platform}: median of "
          f"{args.rounds} rounds x {args.calls} steps")
    for name, t in median.items():
        print(f"  {name:10s} {t * 1e3:8.3f} ms/step   x{t / median['linen']:.3f} of linen")
    print(json.dumps({"benchmark": "nnx_step", "family": args.family, "batch": args.batch,
                      "ms_per_step": {k: t * 1e3 for k, t in median.items()},
                      "ratio_to_linen": {k: t / median["linen"] for k, t in median.items()},
                      "jax": jax.__version__, "machine": platform.machine()}))


if __name__ == "__main__":
    main()
