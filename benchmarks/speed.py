"""Training and evaluation throughput of the MNIST MLP against numpy's GEMM rate and PyTorch.

Run:  python -m benchmarks.speed [--batch_sizes=128,1024] [--variants=plain,bn,...] [--rounds=3]
                                 [--eval_batch_sizes=1000,128] [--torch_rows=30000] [--no_torch]

What is timed (784-512-256-10 MLP of experiments/configs/mnist_mlp.py, Adam 1e-3, no L2, no
clipping, no label smoothing unless the variant says so; random MNIST-shaped data, 60,000 rows,
since throughput does not depend on pixel values):
  JAX train  one whole epoch as `loop.fit` runs it: `train.replay_if_nonfinite` over the unguarded epoch of
             `train.make_train_epoch` (a jitted lax.scan over device-resident batches), replayed
             with the non-finite guard only if a step was non-finite (never, here).
  JAX eval   `train.make_evaluate` over a 10,000-row split (MNIST's test size), three times.
  torch      eager PyTorch on the CPU: the same layers, init (He normal / Xavier normal, zero
             biases), BatchNorm (torch momentum 0.1 = our 0.9), dropout, Adam and cross-entropy,
             data as in-memory tensors, `torch.set_num_threads(cores)`. A training chunk is the
             first `--torch_rows` rows of a shuffled epoch (eager steps cost the same at every
             step, so a part of an epoch measures the same rate in less time); eval as for JAX
             under `torch.inference_mode()`.
FLOPs: 4*P1 + 6*(P2 + P3) per trained sample (P_i: weights of layer i; forward, weight gradient
and input gradient are 2P each, and layer 1 needs no input gradient), 2*(P1 + P2 + P3) per
evaluated sample; the fraction divides the achieved rate by numpy's float32 2048^3 matmul rate
(the better of a measurement at the start and one at the end).

Every round times one JAX epoch, then the matching torch chunk, for each row in turn, so load
drifts hit both alike; round 0 compiles and warms up, and the best of rounds 1..N is reported.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import mnist_mlp
from ml_practical import config, optim, tasks, train

# "recipe" is the chapter's production recipe (BatchNorm, dropout 0.2, coupled L2, global-norm
# clipping, label smoothing). "sampler" is `layers.Dropout.sampler`; a ":threefry16" row is
# compared with the torch row of the same model (torch has one dropout sampler).
VARIANTS = {
    "plain": dict(norm="none", drop_rate=0.0, l2=0.0, clip="none", label_smoothing=0.0),
    "bn": dict(norm="batch", drop_rate=0.0, l2=0.0, clip="none", label_smoothing=0.0),
    "dropout": dict(norm="none", drop_rate=0.2, l2=0.0, clip="none", label_smoothing=0.0),
    "bn+dropout": dict(norm="batch", drop_rate=0.2, l2=0.0, clip="none", label_smoothing=0.0),
    "recipe": dict(norm="batch", drop_rate=0.2, l2=1e-4, clip="global_norm", label_smoothing=0.1),
}
for _v in VARIANTS.values():
    _v["sampler"] = "bernoulli"
for _name in ("dropout", "bn+dropout"):
    VARIANTS[f"{_name}:threefry16"] = dict(VARIANTS[_name], sampler="threefry16")
DEFAULT_VARIANTS = ("plain", "bn", "dropout", "bn+dropout", "dropout:threefry16",
                    "bn+dropout:threefry16")
WIDTHS = (784, 512, 256, 10)
EVAL_ROWS = 10_000
EVAL_REPEATS = 3
# The targets (plain variant): JAX/torch at batch 128, fraction of GEMM at 128 and 1024.
TARGETS = {"jax_over_torch@128": 2.5, "fraction_of_gemm@128": 0.65, "fraction_of_gemm@1024": 0.75}


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


def eval_flops_per_sample(widths=WIDTHS) -> int:
    return 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def torch_key(variant: str) -> str:
    """The torch row a variant is compared with: the model without the JAX-only sampler suffix."""
    return variant.split(":")[0]


def make_config(variant: str):
    v = VARIANTS[variant]
    cfg = mnist_mlp.get_config()
    cfg.model.norm, cfg.model.drop_rate = v["norm"], v["drop_rate"]
    cfg.model.dropout_sampler = v["sampler"]
    cfg.optim.l2, cfg.optim.clip = v["l2"], v["clip"]
    cfg.train.label_smoothing = v["label_smoothing"]
    return config.parse(cfg)


# ------------------------------------------------------------------------------------------------
# JAX


class JaxTrainRow:
    """One (variant, batch size): `fit`'s compiled epoch and the state it carries across rounds."""

    def __init__(self, variant, batch_size, images, labels, seed=0):
        cfg = make_config(variant)
        model = cfg.model
        tx = optim.make_optimizer(cfg.optim)
        make = functools.partial(train.make_train_epoch, model, tx,
                                 task=tasks.Classification(cfg.train.label_smoothing))
        # As `fit` builds it with the guard configured (the default): an unguarded epoch that
        # keeps its input state, and the guarded replay, compiled only if ever needed.
        self.epoch = functools.partial(train.replay_if_nonfinite, make(skip_nonfinite=False, donate=False),
                                       make(skip_nonfinite=True))
        self.state = train.create_train_state(model, tx, jax.random.PRNGKey(seed), (28, 28, 1))
        n = len(labels)
        steps = n // batch_size
        perm = np.random.default_rng(seed).permutation(n)[: steps * batch_size]
        self.idx = jnp.asarray(perm.reshape(steps, batch_size).astype(np.int32))
        self.samples = steps * batch_size
        self.images, self.labels = images, labels

    def time(self) -> float:
        t0 = time.perf_counter()
        self.state, metrics = self.epoch(self.state, self.images, self.labels, self.idx)
        jax.block_until_ready(self.state)
        dt = time.perf_counter() - t0
        if not np.all(np.isfinite(metrics["loss"])):
            raise RuntimeError("non-finite training loss in the benchmark")
        return dt


class JaxEvalRow:
    def __init__(self, variant, batch_size, images, labels, seed=0):
        cfg = make_config(variant)
        model = cfg.model
        variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((2, 28, 28, 1)), train=False)
        self.params, self.batch_stats = variables["params"], variables.get("batch_stats", {})
        self.evaluate = train.make_evaluate(model, batch_size)
        self.split = train.put_split(np.asarray(images), np.asarray(labels), batch_size)
        self.samples = EVAL_REPEATS * len(labels)

    def time(self) -> float:
        t0 = time.perf_counter()
        for _ in range(EVAL_REPEATS):  # evaluate() returns floats: it syncs every call
            self.evaluate(self.params, self.batch_stats, self.split)
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# PyTorch


def make_torch_model(torch, variant: str):
    """The MLP in torch: Linear (no bias before BN) -> [BN] -> ReLU -> [Dropout]; Xavier head."""
    v = VARIANTS[variant]
    nn = torch.nn
    bn, drop = v["norm"] == "batch", v["drop_rate"]
    if v["norm"] not in ("none", "batch"):
        raise ValueError(f"--variants: {variant!r} has norm {v['norm']!r}; torch rows support "
                         "'none' and 'batch'")
    mods = [nn.Flatten()]
    for fan_in, width in zip(WIDTHS[:-2], WIDTHS[1:-1]):
        lin = nn.Linear(fan_in, width, bias=not bn)
        nn.init.kaiming_normal_(lin.weight, mode="fan_in", nonlinearity="relu")  # untruncated
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)
        mods.append(lin)
        if bn:
            # torch's momentum is the weight on the new batch value: 0.1 here is our 0.9.
            mods.append(nn.BatchNorm1d(width, eps=1e-5, momentum=0.1))
        mods.append(nn.ReLU())
        if drop:
            mods.append(nn.Dropout(drop))
    head = nn.Linear(WIDTHS[-2], WIDTHS[-1])
    nn.init.xavier_normal_(head.weight)
    nn.init.zeros_(head.bias)
    mods.append(head)
    return nn.Sequential(*mods)


class TorchTrainRow:
    def __init__(self, torch, variant, batch_size, images, labels, rows, seed=0):
        v = VARIANTS[variant]
        self.torch = torch
        torch.manual_seed(seed)
        self.model = make_torch_model(torch, variant)
        named = list(self.model.named_parameters())
        kernels = [p for n, p in named if n.endswith("weight") and p.ndim == 2]
        others = [p for n, p in named if not (n.endswith("weight") and p.ndim == 2)]
        # Coupled L2 on kernels only (our default mask), as torch's Adam weight_decay does it.
        self.opt = torch.optim.Adam([{"params": kernels, "weight_decay": v["l2"]},
                                     {"params": others, "weight_decay": 0.0}], lr=1e-3)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=v["label_smoothing"])
        self.clip = v["clip"] == "global_norm"
        self.images, self.labels = images, labels
        steps = min(rows, len(labels)) // batch_size
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels))
                                [: steps * batch_size].astype(np.int64))
        self.batches = perm.reshape(steps, batch_size)
        self.samples = steps * batch_size

    def time(self) -> float:
        torch, model, opt = self.torch, self.model, self.opt
        model.train()
        t0 = time.perf_counter()
        for idx in self.batches:
            x, y = self.images[idx], self.labels[idx]
            opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(model(x), y)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        loss = loss.item()  # eager: everything has run, this only reads the last value
        dt = time.perf_counter() - t0
        if not np.isfinite(loss):
            raise RuntimeError("non-finite torch training loss in the benchmark")
        return dt


class TorchEvalRow:
    def __init__(self, torch, variant, batch_size, images, labels, seed=0):
        self.torch = torch
        torch.manual_seed(seed)
        self.model = make_torch_model(torch, variant).eval()
        self.batch_size = batch_size
        self.images, self.labels = images, labels
        self.samples = EVAL_REPEATS * len(labels)

    def time(self) -> float:
        torch, F = self.torch, self.torch.nn.functional
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(EVAL_REPEATS):
                loss_sum, correct = 0.0, 0
                for i in range(0, len(self.labels), self.batch_size):
                    x, y = self.images[i:i + self.batch_size], self.labels[i:i + self.batch_size]
                    logits = self.model(x)
                    loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(1) == y).sum())
        return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------


def machine() -> str:
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=_csv(int), default=[128, 1024])
    parser.add_argument("--eval_batch_sizes", type=_csv(int), default=[1000, 128])
    parser.add_argument("--variants", type=_csv(str), default=list(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {sorted(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (best is reported)")
    parser.add_argument("--torch_rows", type=int, default=30_000,
                        help="rows of the shuffled epoch in one timed torch chunk")
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {sorted(VARIANTS)}")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds}; expected >= 1")

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch not installed: pip install -e '.[bench]'  (torch columns skipped)")
    if torch is not None:
        torch.set_num_threads(os.cpu_count())

    gemm_start = gemm_gflops()
    n = 60_000
    rng = np.random.default_rng(0)
    images_np = rng.standard_normal((n, 28, 28, 1), dtype=np.float32)
    labels_np = rng.integers(0, 10, n).astype(np.int32)
    images, labels = jnp.asarray(images_np), jnp.asarray(labels_np)

    # rows: (kind, variant, batch size) -> {"jax": timer, "torch": timer or None}
    rows = {}
    torch_rows = {}
    if torch is not None:
        t_images = torch.from_numpy(images_np[..., 0].copy())
        t_labels = torch.from_numpy(labels_np.astype(np.int64))
    for bs in args.batch_sizes:
        for v in args.variants:
            rows[("train", v, bs)] = JaxTrainRow(v, bs, images, labels)
            if torch is not None and ("train", torch_key(v), bs) not in torch_rows:
                torch_rows[("train", torch_key(v), bs)] = TorchTrainRow(
                    torch, torch_key(v), bs, t_images, t_labels, args.torch_rows)
    # Dropout is the identity in evaluation: one eval row per model architecture.
    eval_variants = list(dict.fromkeys("bn" if VARIANTS[v]["norm"] == "batch" else "plain"
                                       for v in args.variants))
    for bs in args.eval_batch_sizes:
        for v in eval_variants:
            rows[("eval", v, bs)] = JaxEvalRow(v, bs, images_np[:EVAL_ROWS], labels_np[:EVAL_ROWS])
            if torch is not None:
                torch_rows[("eval", v, bs)] = TorchEvalRow(
                    torch, v, bs, t_images[:EVAL_ROWS], t_labels[:EVAL_ROWS])

    best = {key: float("inf") for key in [*rows, *[("torch", *k) for k in torch_rows]]}
    t_start = time.time()
    for r in range(args.rounds + 1):  # round 0 compiles and warms up
        done_torch = set()
        for key, row in rows.items():
            dt = row.time()
            if r:
                best[key] = min(best[key], dt)
            tkey = (key[0], torch_key(key[1]), key[2])
            if tkey in torch_rows and tkey not in done_torch:
                dt = torch_rows[tkey].time()
                done_torch.add(tkey)
                if r:
                    best[("torch", *tkey)] = min(best[("torch", *tkey)], dt)
        print(f"round {r}/{args.rounds} done ({time.time() - t_start:.0f} s)", flush=True)
    gemm_end = gemm_gflops()
    gemm = max(gemm_start, gemm_end)

    results = {"train": [], "eval": []}
    for (kind, v, bs), row in rows.items():
        rate = row.samples / best[(kind, v, bs)]
        flops = flops_per_sample(WIDTHS) if kind == "train" else eval_flops_per_sample()
        rec = {"variant": v, "batch_size": bs, "jax_samples_per_s": round(rate, 1),
               "fraction_of_gemm": round(rate * flops / 1e9 / gemm, 4)}
        tkey = (kind, torch_key(v), bs)
        if tkey in torch_rows:
            trate = torch_rows[tkey].samples / best[("torch", *tkey)]
            rec["torch_samples_per_s"] = round(trate, 1)
            rec["jax_over_torch"] = round(rate / trate, 3)
        results[kind].append(rec)

    print(f"\nmachine: {machine()}; jax {jax.__version__} ({jax.devices()[0].platform})"
          + (f", torch {torch.__version__}" if torch is not None else "")
          + f"; {datetime.date.today().isoformat()}")
    print(f"numpy float32 GEMM 2048^3: {gemm:.1f} GFLOP/s (start {gemm_start:.1f}, "
          f"end {gemm_end:.1f}); best of {args.rounds} rounds; torch chunks "
          f"{min(args.torch_rows, n)} rows")
    header = (f"{'':5} {'variant':<22} {'batch':>5} {'JAX samples/s':>14} {'of GEMM':>8}"
              + (f" {'torch samples/s':>16} {'JAX/torch':>10}" if torch is not None else ""))
    print(header)
    for kind in ("train", "eval"):
        for rec in results[kind]:
            line = (f"{kind:5} {rec['variant']:<22} {rec['batch_size']:>5} "
                    f"{rec['jax_samples_per_s']:>14,.0f} {rec['fraction_of_gemm']:>8.1%}")
            if "torch_samples_per_s" in rec:
                line += f" {rec['torch_samples_per_s']:>16,.0f} {rec['jax_over_torch']:>9.2f}x"
            print(line)

    plain = {rec["batch_size"]: rec for rec in results["train"] if rec["variant"] == "plain"}
    reached = {}
    checks = [("jax_over_torch@128", plain.get(128, {}).get("jax_over_torch")),
              ("fraction_of_gemm@128", plain.get(128, {}).get("fraction_of_gemm")),
              ("fraction_of_gemm@1024", plain.get(1024, {}).get("fraction_of_gemm"))]
    for name, value in checks:
        if value is None:
            continue
        reached[name] = {"value": value, "target": TARGETS[name], "reached": value >= TARGETS[name]}
        print(f"target {name} (plain) >= {TARGETS[name]}: {value} -> "
              f"{'reached' if value >= TARGETS[name] else 'missed'}")

    print(json.dumps({
        "machine": machine(), "jax": jax.__version__,
        "torch": None if torch is None else torch.__version__,
        "date": datetime.date.today().isoformat(), "rounds": args.rounds,
        "torch_rows": min(args.torch_rows, n), "gemm_gflops": round(gemm, 2),
        "gemm_gflops_start_end": [round(gemm_start, 2), round(gemm_end, 2)],
        "train_flops_per_sample": flops_per_sample(WIDTHS),
        "eval_flops_per_sample": eval_flops_per_sample(),
        **results, "targets": reached}))


if __name__ == "__main__":
    main()
