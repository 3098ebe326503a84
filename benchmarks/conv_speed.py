"""ResNet-20 and the MNIST CNN: training and evaluation throughput against eager PyTorch, the
convolutions' FLOP rate against numpy's GEMM rate, where a training step's time goes, and memory.

Run:  python -m benchmarks.conv_speed [--models=resnet20,mnist_cnn] [--batch_sizes=128,512]
                                      [--variants=xla,chunked] [--rounds=3] [--steps=4]
                                      [--no_torch] [--no_layers]
      XLA_FLAGS=--xla_cpu_use_onednn=true python -m benchmarks.conv_speed ...   (an XLA option)

Models (the library's, through `models.build_model`, and their twins in `benchmarks.torch_twins`,
tested equal on copied weights in tests/test_resnet.py; torch starts from our initial weights):
  resnet20   `ResNet(depth=20)`: CIFAR, 16/32/64 channels, BatchNorm, option-A shortcuts, 32x32x3
             input, SGD momentum 0.9, lr 0.1 (the recipe of experiments/configs/cifar10_resnet20.py
             without weight decay);
  mnist_cnn  `CNN(widths=(16, 32, 64), convs_per_stage=2, norm="batch")` of
             experiments/configs/mnist_cnn.py, 28x28x1 input, Adam 1e-3.
Variants of the JAX side: `model.conv_backward` "xla" (XLA's own convolution gradients) or
"chunked" (`ml_practical.conv`: the kernel gradient summed over chunks of 8 images), and
"chunked+bn_manual" (also `model.bn_backward="manual"`: BatchNorm's hand-written backward).

Rows, interleaved round by round (round 0 compiles and warms up; the best of rounds 1..N counts):
  JAX train    `train.make_train_epoch(..., gather=False, unroll=True)`: the compiled chunk of
               `--steps` steps that `loop.fit` runs for these configs (`data.placement="host"`,
               `train.unroll`), on random batches already on the device, without the guard.
  JAX eval     `train.make_split_sums(..., unroll=True)` jitted, over `--steps` batches.
  torch train  eager: zero_grad, forward, cross-entropy, backward, optimizer step, per batch,
               on in-memory tensors, `torch.set_num_threads(os.cpu_count())`.
  torch eval   the same batches under `torch.inference_mode()`.
FLOPs: XLA's cost analysis of the model's forward pass (`eval` FLOPs/sample); training counts
3x that (forward, input gradient, kernel gradient). "of GEMM" divides the achieved rate by
numpy's float32 2048^3 matmul rate, measured at the start and the end (the better is used).

Layers (`--no_layers` skips it): every distinct convolution of the two models at each batch size,
timed alone (forward, input gradient, kernel gradient XLA's and chunked, torch's forward +
backward); with the count of each layer in the network it gives the convolutions' share of the
measured step. Memory: XLA's buffer assignment of each compiled train chunk (arguments + temps:
the peak the program can need) and, for torch, the bytes autograd saves for the backward pass
of one step (saved-tensor hooks) plus parameters and optimizer state.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.speed import gemm_gflops, machine
from ml_practical import models, train

MODELS = {
    "resnet20": dict(family="resnet", fields=dict(depth=20), shape=(32, 32, 3),
                     optimizer="sgd"),
    "mnist_cnn": dict(family="cnn", fields=dict(widths=(16, 32, 64), convs_per_stage=2,
                                                norm="batch", pool="max"),
                      shape=(28, 28, 1), optimizer="adam"),
}
# JAX-side variants: model fields on top of the model's.
VARIANTS = {
    "xla": dict(conv_backward="xla"),
    "chunked": dict(conv_backward="chunked"),
    "chunked+bn_manual": dict(conv_backward="chunked", bn_backward="manual"),
}


def _optax(name):
    return optax.sgd(0.1, momentum=0.9) if name == "sgd" else optax.adam(1e-3)


def _build(name, variant):
    spec = MODELS[name]
    return models.build_model(spec["family"], {**spec["fields"], **VARIANTS[variant]})


def forward_flops(model, shape) -> float:
    """XLA's count of one sample's forward FLOPs (eval mode)."""
    x = jnp.zeros((1, *shape), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _data(shape, batch, steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, (steps, batch)).astype(np.int32)
    return x, y


# ------------------------------------------------------------------------------------------------
# JAX rows


class JaxTrain:
    def __init__(self, name, variant, batch, steps):
        spec = MODELS[name]
        self.model = _build(name, variant)
        tx = _optax(spec["optimizer"])
        self.state = train.create_train_state(self.model, tx, jax.random.key(0), spec["shape"])
        self.chunk = train.make_train_epoch(self.model, tx, skip_nonfinite=False, gather=False,
                                            unroll=True)
        x, y = _data(spec["shape"], batch, steps)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.samples = batch * steps
        self.compiled = self.chunk.lower(self.state, self.x, self.y).compile()

    def memory_bytes(self) -> int:
        m = self.compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.temp_size_in_bytes)

    def time(self) -> float:
        t0 = time.perf_counter()
        self.state, metrics = self.chunk(self.state, self.x, self.y)
        jax.block_until_ready(self.state)
        dt = time.perf_counter() - t0
        if not np.all(np.isfinite(np.asarray(metrics["loss"]))):
            raise RuntimeError("non-finite training loss in the benchmark")
        return dt


class JaxEval:
    def __init__(self, name, variant, batch, steps):
        spec = MODELS[name]
        model = _build(name, variant)
        v = model.init(jax.random.key(0), jnp.zeros((2, *spec["shape"])), train=False)
        self.params, self.stats = v["params"], v.get("batch_stats", {})
        x, y = _data(spec["shape"], batch, steps)
        self.split = train.put_split(x.reshape(-1, *spec["shape"]), y.reshape(-1), batch)
        self.sums = jax.jit(train.make_split_sums(model, batch, unroll=True))
        self.samples = batch * steps

    def time(self) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self.sums(self.params, self.stats, *self.split))
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# torch rows


def _torch_net(torch, name):
    from benchmarks import torch_twins

    spec = MODELS[name]
    model = _build(name, "xla")
    v = model.init(jax.random.key(0), jnp.zeros((2, *spec["shape"])), train=False)
    if name == "resnet20":
        net = torch_twins.ResNet20()
        torch_twins.copy_resnet20(v, net)
    else:
        f = spec["fields"]
        net = torch_twins.CNN(spec["shape"][-1], f["widths"], f["convs_per_stage"])
        torch_twins.copy_cnn(v, net)
    return net


class TorchTrain:
    def __init__(self, torch, name, batch, steps):
        spec = MODELS[name]
        self.torch = torch
        self.net = _torch_net(torch, name)
        params = list(self.net.parameters())
        self.opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9) if spec["optimizer"] == "sgd"
                    else torch.optim.Adam(params, lr=1e-3))
        x, y = _data(spec["shape"], batch, steps)
        self.x = torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy())  # NCHW
        self.y = torch.from_numpy(y.astype(np.int64))
        self.samples = batch * steps

    def _step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.net(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def memory_bytes(self) -> int:
        """Bytes autograd saves for one step's backward, plus parameters and optimizer state."""
        torch = self.torch
        saved = []

        def pack(t):
            saved.append(t.untyped_storage().nbytes())
            return t

        self.net.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self._step(self.x[0], self.y[0])
        state = sum(t.numel() * t.element_size() for s in self.opt.state.values()
                    for t in s.values() if torch.is_tensor(t))
        params = sum(p.numel() * p.element_size() for p in self.net.parameters())
        return int(sum(saved) + state + 2 * params)  # params and their gradients

    def time(self) -> float:
        self.net.train()
        t0 = time.perf_counter()
        for x, y in zip(self.x, self.y):
            loss = self._step(x, y)
        loss = loss.item()
        dt = time.perf_counter() - t0
        if not np.isfinite(loss):
            raise RuntimeError("non-finite torch training loss in the benchmark")
        return dt


class TorchEval:
    def __init__(self, torch, name, batch, steps):
        spec = MODELS[name]
        self.torch = torch
        self.net = _torch_net(torch, name).eval()
        x, y = _data(spec["shape"], batch, steps)
        self.x = torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy())
        self.y = torch.from_numpy(y.astype(np.int64))
        self.samples = batch * steps

    def time(self) -> float:
        torch, F = self.torch, self.torch.nn.functional
        t0 = time.perf_counter()
        with torch.inference_mode():
            total = 0.0
            for x, y in zip(self.x, self.y):
                logits = self.net(x)
                total += float(F.cross_entropy(logits, y, reduction="sum"))
                total += float((logits.argmax(1) == y).sum())
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Single convolutions


def conv_layers(name, batch):
    """(batch, height, width, in, out, kernel, stride, count) of each distinct conv of a model.

    The first convolution sees the images: training computes no input gradient for it."""
    spec = MODELS[name]
    model = _build(name, "xla")
    x = jnp.zeros((batch, *spec["shape"]))
    v = model.init(jax.random.key(0), x, train=False)
    shapes = []  # each nn.Conv's input shape and settings, seen by a method interceptor

    def interceptor(next_fun, args, kwargs, context):
        if type(context.module).__name__ == "Conv" and context.method_name == "__call__":
            k = context.module.kernel_size[0]
            s = context.module.strides[0] if context.module.strides else 1
            shapes.append((*args[0].shape, context.module.features, k, s))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(v, x, train=False)
    counts = {}
    for sh in shapes:
        counts[sh] = counts.get(sh, 0) + 1
    return [(*sh, n) for sh, n in counts.items()]


def _best(fn, rounds, inner=3):
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            jax.block_until_ready(fn())
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def time_layer(layer, rounds, torch=None):
    """Seconds of each pass of one convolution (torch's padding: k // 2 on every side)."""
    from ml_practical import conv as conv_lib

    b, h, w, cin, cout, k, s, _ = layer
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, h, w, cin)).astype(np.float32))
    kern = jnp.asarray(rng.normal(size=(k, k, cin, cout)).astype(np.float32) * 0.1)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    kw = dict(window_strides=(s, s), padding=pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    native = lambda x, w: jax.lax.conv_general_dilated(x, w, **kw)
    chunked = lambda x, w: conv_lib.chunked()(x, w, **kw)
    dy = jnp.asarray(rng.normal(size=native(x, kern).shape).astype(np.float32))
    fwd = jax.jit(native)
    dx = jax.jit(lambda x, w, dy: jax.vjp(lambda x: native(x, w), x)[1](dy)[0])
    dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: native(x, w), w)[1](dy)[0])
    dwc = jax.jit(lambda x, w, dy: jax.vjp(lambda w: chunked(x, w), w)[1](dy)[0])
    out = {"fwd": _best(lambda: fwd(x, kern), rounds), "dx": _best(lambda: dx(x, kern, dy), rounds),
           "dw": _best(lambda: dw(x, kern, dy), rounds),
           "dw_chunked": _best(lambda: dwc(x, kern, dy), rounds)}
    if torch is not None:
        tx = torch.randn(b, cin, h, w, requires_grad=True)
        tw = (torch.randn(cout, cin, k, k) * 0.1).requires_grad_()
        ty = torch.nn.functional.conv2d(tx, tw, stride=s, padding=k // 2)
        tdy = torch.randn_like(ty)

        def fb():
            y = torch.nn.functional.conv2d(tx, tw, stride=s, padding=k // 2)
            y.backward(tdy)

        out["torch_fwd_bwd"] = _best(fb, rounds)
    ho = (h + 2 * (k // 2) - k) // s + 1
    flops = 2 * b * ho * ho * cin * cout * k * k
    return out, flops


# ------------------------------------------------------------------------------------------------


def _csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_csv(str), default=list(MODELS))
    parser.add_argument("--batch_sizes", type=_csv(int), default=[128, 512])
    parser.add_argument("--variants", type=_csv(str), default=list(VARIANTS))
    parser.add_argument("--eval_variant", default="xla", help="the JAX eval row's variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--no_layers", action="store_true")
    args = parser.parse_args()
    for m in args.models:
        if m not in MODELS:
            parser.error(f"--models: {m!r}; expected some of {', '.join(MODELS)}")
    for v in args.variants:
        if v not in VARIANTS:
            parser.error(f"--variants: {v!r}; expected some of {', '.join(VARIANTS)}")
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            parser.error("torch is not installed (pip install -e '.[bench]'), or pass --no_torch")
        torch.set_num_threads(os.cpu_count())

    gemm0 = gemm_gflops()
    flops = {m: forward_flops(_build(m, "xla"), MODELS[m]["shape"]) for m in args.models}
    rows = {}
    for m in args.models:
        for b in args.batch_sizes:
            for v in args.variants:
                rows[(m, b, "train", f"jax:{v}")] = JaxTrain(m, v, b, args.steps)
            rows[(m, b, "eval", "jax")] = JaxEval(m, args.eval_variant, b, args.steps)
            if torch is not None:
                rows[(m, b, "train", "torch")] = TorchTrain(torch, m, b, args.steps)
                rows[(m, b, "eval", "torch")] = TorchEval(torch, m, b, args.steps)
    best = {key: float("inf") for key in rows}
    for r in range(args.rounds + 1):
        for key, row in rows.items():
            dt = row.time()
            if r:
                best[key] = min(best[key], dt)
    gemm = max(gemm0, gemm_gflops())

    results = []
    print(f"{machine()}; jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"numpy GEMM {gemm:.1f} GFLOP/s")
    print("| model | batch | pass | impl | samples/s | GFLOP/s | of GEMM | over torch | memory MiB |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for key, row in rows.items():
        m, b, kind, impl = key
        rate = row.samples / best[key]
        gf = rate * flops[m] * (3 if kind == "train" else 1) / 1e9
        ref = best.get((m, b, kind, "torch"))
        over = None if ref is None or impl == "torch" else rate / (rows[(m, b, kind, "torch")]
                                                                   .samples / ref)
        mem = row.memory_bytes() / 2**20 if hasattr(row, "memory_bytes") else None
        results.append(dict(model=m, batch=b, kind=kind, impl=impl, samples_per_s=rate,
                            gflops=gf, of_gemm=gf / gemm, over_torch=over, memory_mib=mem))
        print(f"| {m} | {b} | {kind} | {impl} | {rate:,.0f} | {gf:.1f} | {gf / gemm:.1%} | "
              f"{'' if over is None else f'{over:.2f}x'} | "
              f"{'' if mem is None else f'{mem:,.0f}'} |")

    layers = []
    if not args.no_layers:
        print("\n| model | batch | conv (HxW, in->out, k/s) x count | fwd GF/s | dx GF/s | "
              "dw GF/s | dw chunked GF/s | torch fwd+bwd GF/s | share of step (xla / chunked) |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---|")
        for m in args.models:
            for b in args.batch_sizes:
                tot = {"xla": 0.0, "chunked": 0.0}
                per = []
                for layer in conv_layers(m, b):
                    t, fl = time_layer(layer, args.rounds, torch)
                    n = layer[-1]
                    dx = 0.0 if layer[3] == MODELS[m]["shape"][-1] else t["dx"]  # the stem's
                    tot["xla"] += n * (t["fwd"] + dx + t["dw"])
                    tot["chunked"] += n * (t["fwd"] + dx + t["dw_chunked"])
                    per.append((layer, t, fl))
                steps = {v: best.get((m, b, "train", f"jax:{v}")) for v in tot}
                for layer, t, fl in per:
                    _, h, w, cin, cout, k, s, n = layer
                    rates = {p: fl * (3 if p == "torch_fwd_bwd" else 1) / t[p] / 1e9 for p in t}
                    layers.append(dict(model=m, batch=b, layer=layer[:-1], count=n, seconds=t,
                                       gflops=rates))
                    print(f"| {m} | {b} | {h}x{w}, {cin}->{cout}, {k}/{s} x {n} | "
                          f"{rates['fwd']:.0f} | {rates['dx']:.0f} | {rates['dw']:.0f} | "
                          f"{rates['dw_chunked']:.0f} | {rates.get('torch_fwd_bwd', 0):.0f} | |")
                share = {v: (tot[v] / (steps[v] / args.steps) if steps[v] else None) for v in tot}
                print(f"| {m} | {b} | all convs: {tot['xla'] * 1e3:.1f} ms (xla), "
                      f"{tot['chunked'] * 1e3:.1f} ms (chunked) a step | | | | | | "
                      + " / ".join("" if share[v] is None else f"{share[v]:.0%}" for v in tot)
                      + " |")
                layers.append(dict(model=m, batch=b, all_convs_s=tot, share_of_step=share))
    print(json.dumps({
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "jax": jax.__version__,
        "torch": None if torch is None else torch.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "gemm_gflops": gemm,
        "forward_flops_per_sample": flops, "steps": args.steps, "rounds": args.rounds,
        "rows": results, "layers": layers}))


if __name__ == "__main__":
    main()
