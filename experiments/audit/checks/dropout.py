"""Checks of the ledger's section 3, dropout (DROP-*), and the proxy trainer the norm checks share.

Exact and statistical claims run `ml_practical.layers.Dropout` (rate = DROP probability; the
chapter's keep probability is p = 1 - rate). The experiment claims that no study covers run
`proxy_fit`: a small MLP on sklearn's 8x8 digits, every configuration of a claim vmapped into one
compiled program, so a claim costs about one compilation and a second of compute.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from scipy import stats

from experiments.audit.core import REGISTRY as R
from experiments.audit.core import Context, Finding, ci_text, not_run, verdict_of
from ml_practical import data as data_lib
from ml_practical import initializers, layers, models, train
from ml_practical.analysis import inference

MC_STUDY = "mc_dropout"
MC_COMMAND = ("python -m experiments.mc_dropout --config=experiments/configs/mc_dropout.py "
              "--workdir=checkpoints/mc_dropout --config.data.data_dir=../shared/data/mnist")


def _drop(rate: float, x, key, *, train: bool = True):
    return layers.Dropout(rate).apply({}, x, train=train, rngs={"dropout": key})


def _z(diff: float, se: float) -> float:
    return abs(diff) / se if se > 0 else (0.0 if diff == 0 else math.inf)


# ---------------------------------------------------------------------------------------------
# The proxy: a small MLP on the 8x8 digits, every run of a claim vmapped into one program.
# ---------------------------------------------------------------------------------------------

BN_EPS = 1e-5
BN_MOMENTUM = 0.9   # the chapter's / flax's convention: weight on the old running value
NORM_IDS = {"none": 0, "batch": 1, "layer": 2}
POOL = 1797         # sklearn's digits, train and test splits together


@functools.cache
def digits_pool() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (x, y): x float32 (1797, 64) pixel counts 0..16, y int32 labels."""
    raw = data_lib.load_digits()
    x = np.concatenate([raw.train_x, raw.test_x]).reshape(-1, 64).astype(np.float32)
    y = np.concatenate([raw.train_y, raw.test_y]).astype(np.int32)
    return x, y


@functools.cache
def digits_variants() -> dict[str, np.ndarray]:
    """"standard": per-pixel zero mean, unit variance over the pool (always-0 pixels stay 0);
    "raw": pixel counts rescaled to 0..255, the chapter's "raw 0-255 pixels"."""
    x, _ = digits_pool()
    sd = x.std(0)
    return {"standard": ((x - x.mean(0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32),
            "raw": (x * (255.0 / 16.0)).astype(np.float32)}


WIDTH = 64          # every hidden layer (and the input: 8 × 8 pixels), so layers stack and scan


def init_mlp(seed: int, depth: int, small_init: bool = False):
    """`depth` hidden Dense layers 64 -> 64 and a 64 -> 10 head, as stacked arrays.

    He-normal hidden kernels (`initializers.he_normal`; N(0, 0.01²) with `small_init`), a
    Xavier-normal head, zero biases, gamma 1 / beta 0 and running statistics 0 / 1 for every
    hidden layer's norm.

    Returns:
      (params {"hidden": {"w": (depth, 64, 64), "b", "g", "beta": (depth, 64)}, "head": {"w",
      "b"}}, running stats {"mean", "var": (depth, 64)}).
    """
    keys = jax.random.split(jax.random.key(seed), depth + 1)
    w = jnp.stack([initializers.he_normal()(k, (WIDTH, WIDTH)) for k in keys[:depth]])
    if small_init:
        w = w * (0.01 / math.sqrt(2.0 / WIDTH))
    zeros, ones = jnp.zeros((depth, WIDTH)), jnp.ones((depth, WIDTH))
    params = {"hidden": {"w": w, "b": zeros, "g": ones, "beta": zeros},
              "head": {"w": initializers.xavier_normal()(keys[depth], (WIDTH, 10)),
                       "b": jnp.zeros(10)}}
    return params, {"mean": zeros, "var": ones}


def forward(params, stats_, x, norm_id, *, train, keep=None, uniforms=None,
            norms=("none", "batch", "layer")):
    """(logits, new running statistics) of the proxy MLP, Dense -> norm -> ReLU [-> dropout].

    The hidden layers run as one `lax.scan` (compilation time does not grow with depth).
    `norm_id` (traced, per run) picks the norm of every hidden layer: 0 none, 1 BatchNorm
    (training: `layers.batch_norm_train`, the chapter's hand-written backward; evaluation: the
    running statistics, momentum `BN_MOMENTUM`), 2 LayerNorm (`layers.layer_norm`). Dropout, when
    `keep` is given, is `layers.Dropout`'s formula where(mask, h / keep, 0) with mask = uniform <
    keep (what `jax.random.bernoulli` computes), `uniforms` (depth, batch, 64) drawn by the
    caller: keep 1 is the identity exactly. The unselected norms are computed and discarded
    (jnp.where), so runs with different norms share one compiled program; `norms` (static) names
    the ones a program needs.
    """
    depth = params["hidden"]["w"].shape[0]

    def layer(h, inputs):
        p, s, u = inputs
        z = h @ p["w"] + p["b"]
        out = z
        if "batch" in norms:
            if train:
                bn, mu, var = layers.batch_norm_train(z, p["g"], p["beta"], BN_EPS)
                s = {"mean": BN_MOMENTUM * s["mean"] + (1 - BN_MOMENTUM) * mu,
                     "var": BN_MOMENTUM * s["var"] + (1 - BN_MOMENTUM) * var}
            else:
                bn = (z - s["mean"]) * lax.rsqrt(s["var"] + BN_EPS) * p["g"] + p["beta"]
            out = jnp.where(norm_id == NORM_IDS["batch"], bn, out)
        if "layer" in norms:
            ln = layers.layer_norm(z, p["g"], p["beta"], BN_EPS)
            out = jnp.where(norm_id == NORM_IDS["layer"], ln, out)
        h = jax.nn.relu(out)
        if keep is not None:
            h = jnp.where(u < keep, h / keep, 0.0)
        return h, s

    us = uniforms if keep is not None else jnp.zeros((depth,))
    h, new_stats = lax.scan(layer, x, (params["hidden"], stats_, us))
    return h @ params["head"]["w"] + params["head"]["b"], new_stats


def nll_rows(logits, y):
    """Per-row cross entropy; a non-finite row (a diverged run) counts as 1e3."""
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)[:, 0]
    return jnp.where(jnp.isfinite(nll), nll, 1e3)


@functools.partial(jax.jit, static_argnames=("batch", "steps", "eval_every", "probe_batches",
                                             "norms"))
def _fit(params, stats_, seed, x, y, n_train, lr, keep, norm_id, adam, *, batch, steps,
         eval_every, probe_batches, norms):
    """vmap over runs of: `steps` minibatch steps (rows drawn with replacement from the first
    n_train), SGD or Adam (traced choice), eval-mode metrics every `eval_every` steps."""
    depth = params["hidden"]["w"].shape[1]   # (runs, depth, 64, 64) outside the vmap

    def one(params, stats_, seed, x, y, n_train, lr, keep, norm_id, adam):
        run_key = jax.random.fold_in(jax.random.key(seed), 1)
        scale_by_adam = optax.scale_by_adam()
        is_train = jnp.arange(x.shape[0]) < n_train
        n_test = jnp.maximum(x.shape[0] - n_train, 1)

        def step(carry, k):
            params, stats_, opt = carry
            # One uniform draw per step gives the batch rows and every dropout mask.
            u = jax.random.uniform(k, (1 + depth * WIDTH, batch))
            idx = jnp.minimum((u[0] * n_train).astype(jnp.int32), n_train - 1)
            masks = u[1:].reshape(depth, WIDTH, batch).transpose(0, 2, 1)

            def loss_fn(q):
                logits, new = forward(q, stats_, x[idx], norm_id, train=True, keep=keep,
                                      uniforms=masks, norms=norms)
                return jnp.mean(nll_rows(logits, y[idx])), new

            (_, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            a, opt = scale_by_adam.update(g, opt)
            params = jax.tree.map(lambda w, ga, gs: w - lr * jnp.where(adam, ga, gs),
                                  params, a, g)
            return (params, new_stats, opt), None

        def chunk(carry, k):
            carry, _ = lax.scan(step, carry, jax.random.split(k, eval_every))
            logits, _ = forward(carry[0], carry[1], x, norm_id, train=False, norms=norms)
            nll = nll_rows(logits, y)
            ok = (jnp.argmax(logits, -1) == y) & jnp.all(jnp.isfinite(logits), -1)
            return carry, {"train_loss": jnp.sum(nll * is_train) / n_train,
                           "train_acc": jnp.sum(ok * is_train) / n_train,
                           "test_loss": jnp.sum(nll * ~is_train) / n_test,
                           "test_acc": jnp.sum(ok * ~is_train) / n_test}

        carry, curves = lax.scan(chunk, (params, stats_, scale_by_adam.init(params)),
                                 jax.random.split(run_key, steps // eval_every))
        if probe_batches:
            # Train-mode accuracy (batch statistics) on fresh training batches, against the
            # eval-mode curves["train_acc"]: the train / eval mismatch of a small-batch BatchNorm.
            def probe(u):
                idx = jnp.minimum((u * n_train).astype(jnp.int32), n_train - 1)
                logits, _ = forward(carry[0], carry[1], x[idx], norm_id, train=True, norms=norms)
                return jnp.mean(jnp.argmax(logits, -1) == y[idx])

            curves["train_mode_acc"] = jnp.mean(jax.vmap(probe)(jax.random.uniform(
                jax.random.fold_in(run_key, 7), (probe_batches, batch))))
        return curves

    return jax.vmap(one)(params, stats_, seed, x, y, n_train, lr, keep, norm_id, adam)


RUN_DEFAULTS = {"seed": 0, "n_train": 1437, "lr": 1e-3, "keep": 1.0, "small_init": False,
                "norm": "none", "optimizer": "adam", "data": "standard"}


SHARED_STEPS, SHARED_EVERY = 400, 40   # the shared program: 400 steps of 64, eval every 40


def proxy_fit(runs: Sequence[dict], *, depth=2, batch=64, steps=SHARED_STEPS,
              eval_every=SHARED_EVERY,
              probe_batches=0) -> dict[str, np.ndarray]:
    """Trains one digits MLP (64 inputs, `depth` hidden layers of 64, 10 outputs) per run, all
    runs vmapped in one compiled program.

    Each run is a dict over RUN_DEFAULTS' keys: "seed" (init and data order), "n_train" (the run
    trains on the first n_train rows of its seed's permutation of the 1797 digits and is tested on
    the rest), "lr", "keep" (dropout after every hidden layer; 1 = none), "small_init"
    (N(0, 0.01²) hidden kernels instead of He), "norm" ("none" | "batch" | "layer", before the
    ReLU), "optimizer" ("adam" | "sgd"), "data" ("standard" | "raw", `digits_variants`).

    Returns:
      {name: (runs, steps // eval_every)} eval-mode curves "train_loss", "train_acc",
      "test_loss", "test_acc" every `eval_every` steps, and with `probe_batches` > 0 also
      "train_mode_acc" (runs,).
    """
    runs = [{**RUN_DEFAULTS, **r} for r in runs]
    bad = [k for r in runs for k in r if k not in RUN_DEFAULTS]
    if bad:
        raise ValueError(f"proxy_fit: unknown run fields {sorted(set(bad))}; expected "
                         f"{sorted(RUN_DEFAULTS)}")
    for field, allowed in (("norm", tuple(NORM_IDS)), ("optimizer", ("adam", "sgd")),
                           ("data", ("raw", "standard"))):
        wrong = sorted({r[field] for r in runs} - set(allowed))
        if wrong:
            raise ValueError(f"proxy_fit: run field {field!r} {wrong}; expected one of "
                             f"{list(allowed)}")
    _, py = digits_pool()
    variants = digits_variants()
    perms = [np.random.default_rng(1000 + r["seed"]).permutation(POOL) for r in runs]
    inits = [init_mlp(r["seed"], depth, r["small_init"]) for r in runs]
    stack = lambda *a: jnp.stack(a)
    col = lambda k, dtype: jnp.asarray([r[k] for r in runs], dtype)
    out = _fit(jax.tree.map(stack, *[p for p, _ in inits]),
               jax.tree.map(stack, *[s for _, s in inits]),
               col("seed", jnp.uint32),
               jnp.asarray(np.stack([variants[r["data"]][p] for r, p in zip(runs, perms)])),
               jnp.asarray(np.stack([py[p] for p in perms])),
               col("n_train", jnp.int32), col("lr", jnp.float32), col("keep", jnp.float32),
               jnp.asarray([NORM_IDS[r["norm"]] for r in runs], jnp.int32),
               jnp.asarray([r["optimizer"] == "adam" for r in runs]),
               batch=batch, steps=steps, eval_every=eval_every, probe_batches=probe_batches,
               norms=tuple(n for n in NORM_IDS if any(r["norm"] == n for r in runs)))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


# The shared program: every claim whose proxy fits the default settings of `proxy_fit` adds its
# runs here at import (`share`), and the first check that needs one trains them all at once.
_SHARED: list[dict] = []


def share(runs: Sequence[dict]) -> None:
    """Adds runs (seeds as offsets 0, 1, 2 from the audit's seed) to the shared program."""
    for r in runs:
        full = {**RUN_DEFAULTS, **r}
        if full not in _SHARED:
            _SHARED.append(full)


@functools.cache
def _shared_out(seed: int, n_runs: int):
    # keyed by the number of registered runs too: a module that shares runs later retrains
    runs = [{**r, "seed": seed + r["seed"]} for r in _SHARED[:n_runs]]
    return proxy_fit(runs)


def shared(seed: int, **match) -> dict[str, np.ndarray]:
    """The shared runs matching every `match` field, ordered by seed: {curve: (seeds, evals)}."""
    out = _shared_out(seed, len(_SHARED))
    want = {**RUN_DEFAULTS, **match}
    rows = sorted((r["seed"], i) for i, r in enumerate(_SHARED)
                  if all(want[k] == r[k] for k in RUN_DEFAULTS if k != "seed"))
    idx = [i for _, i in rows]
    if not idx:
        raise ValueError(f"shared: no shared run matches {match}")
    return {k: v[idx] for k, v in out.items()}


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """`inference.compare` of the per-seed differences a - b."""
    return inference.compare(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def pp(comp: dict) -> str:
    """'+0.42 pp, 95 % CI [-0.1, +0.9] pp (paired t, n seeds)' for accuracy-fraction differences."""
    t = comp["t"]
    return (f"{100 * t['mean']:+.2f} pp, 95 % CI [{100 * t['low']:+.2f}, {100 * t['high']:+.2f}] "
            f"pp (paired t, {comp['n']} seeds)")


# ---------------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------------


@R.quick("DROP-01", test="tests/test_layers.py::test_dropout_preserves_mean_and_scales_kept_units")
def _(ctx: Context) -> Finding:
    a, n = 1.7, 1_000_000
    parts, ok = [], True
    for keep in (0.5, 0.8):
        y = np.asarray(_drop(1 - keep, jnp.full((n,), a), jax.random.key(ctx.seed)), np.float64)
        se = a * math.sqrt((1 - keep) / keep / n)
        z = _z(y.mean() - a, se)
        ok &= z < 4
        parts.append(f"keep {keep}: mean {y.mean():.5f} (a = {a}, |Δ| = {z:.2f} σ_MC, "
                     f"{ci_text(y.mean() - 1.96 * se, y.mean() + 1.96 * se, 5)})")
    return Finding(verdict_of(ok), "; ".join(parts),
                   "1e6 draws of layers.Dropout(rate = 1 − keep) on a constant a = 1.7",
                   artefact="ml_practical/layers.py (Dropout)")


@R.quick("DROP-02")
def _(ctx: Context) -> Finding:
    a, n = 1.7, 1_000_000
    parts, ok = [], True
    for keep in (0.5, 0.8):
        # The library's mask (kept units are the non-zero outputs), without the 1/p.
        mask = np.asarray(_drop(1 - keep, jnp.ones((n,)), jax.random.key(ctx.seed)) != 0)
        y = a * mask
        se = a * math.sqrt(keep * (1 - keep) / n)
        ok &= _z(y.mean() - a * keep, se) < 4 and _z(y.mean() - a, se) > 100
        parts.append(f"keep {keep}: E[a·mask] = {y.mean():.4f} vs a·p = {a * keep:.4f} "
                     f"(± {1.96 * se:.4f}), test output a = {a}")
    return Finding(verdict_of(ok), "; ".join(parts),
                   "1e6 layers.Dropout masks applied without the 1/p, a = 1.7",
                   artefact="ml_practical/layers.py (Dropout)")


@R.quick("DROP-03", test="tests/test_layers.py::test_dropout_preserves_mean_and_scales_kept_units")
def _(ctx: Context) -> Finding:
    keep, n = 0.5, 10_000
    y = np.asarray(_drop(1 - keep, jnp.ones((n,)), jax.random.key(ctx.seed)))
    mean, zeros = y.mean(), (y == 0).mean()
    # The same test over 1000 keys: how often does it land inside the chapter's bands?
    many = _drop(1 - keep, jnp.ones((1000, n)), jax.random.key(ctx.seed + 1))  # 1000 rows
    m_all, z_all = np.asarray(many.mean(1)), np.asarray((many == 0).mean(1))
    inside = np.mean((abs(m_all - 1) <= 0.03) & (abs(z_all - 0.5) <= 0.015))
    return Finding(
        verdict_of(abs(mean - 1) <= 0.03 and abs(zeros - 0.5) <= 0.015),
        f"mean {mean:.4f} (band 1 ± 0.03), zero fraction {zeros:.4f} (band 0.5 ± 0.015); over "
        f"1000 keys the mean has sd {m_all.std():.4f} (theory √(1/n) = 0.0100) and "
        f"{100 * inside:.1f} % of draws fall in both bands",
        "the chapter's Sec 13.2 test, layers.Dropout(0.5) on ones(10000), once and over 1000 keys",
        artefact="ml_practical/layers.py (Dropout)")


@R.quick("DROP-04", test="tests/test_layers.py::test_dropout_gradient_is_mask_over_keep_prob")
def _(ctx: Context) -> Finding:
    rows = []
    for keep in (0.5, 0.8):
        kx, kg, kd = jax.random.split(jax.random.key(ctx.seed + int(10 * keep)), 3)
        x = 0.5 + jax.random.uniform(kx, (4096,))           # non-zero, so zeros mark drops
        d_out = jax.random.normal(kg, (4096,))
        y, vjp = jax.vjp(lambda v, keep=keep, kd=kd: _drop(1 - keep, v, kd), x)
        (dx,) = vjp(d_out)
        mask = np.asarray(y) != 0
        formula = np.where(mask, np.asarray(d_out) / np.float32(keep), 0.0).astype(np.float32)
        dx = np.asarray(dx)
        ulps = np.abs(dx - formula) / np.spacing(np.abs(formula).astype(np.float32))
        rows.append((keep, float(ulps[mask].max()), int((~mask).sum()),
                     float(np.abs(dx[~mask]).max(initial=0.0))))
    ok = all(r[1] <= 1 and r[3] == 0.0 for r in rows)
    return Finding(
        verdict_of(ok),
        "; ".join(f"keep {k}: kept units' gradient = d_out/p to {u:g} ulp (float32), the {nd} "
                  f"dropped units get gradient max |·| = {g:g}" for k, u, nd, g in rows),
        "jax.vjp of layers.Dropout with a fixed key, random cotangent, against d_out·mask/p",
        artefact="ml_practical/layers.py (Dropout)",
        note="Both chapter versions agree: 12.3.2 folds 1/p into the stored mask, 13.2 divides in "
             "backward.")


@R.quick("DROP-05")
def _(ctx: Context) -> Finding:
    y = np.asarray(_drop(0.2, jnp.full((1000,), 2.5), jax.random.key(ctx.seed)))
    kept = np.unique(y[y != 0])
    ok = kept.size == 1 and math.isclose(float(kept[0]), 3.125, rel_tol=1e-6) and 2.5 / 0.8 == 3.125
    return Finding(verdict_of(ok),
                   f"2.5 / 0.8 = {2.5 / 0.8}; layers.Dropout(rate 0.2) outputs {kept.tolist()} for "
                   "every kept unit of 2.5",
                   "closed form; layers.Dropout(0.2) on 1000 copies of 2.5",
                   artefact="ml_practical/layers.py (Dropout)")


@R.quick("DROP-06", test="tests/test_layers.py::test_dropout_variance_matches_exercise_b6")
def _(ctx: Context) -> Finding:
    a, keep, n = 2.0, 0.6, 1_000_000
    y = np.asarray(_drop(1 - keep, jnp.full((n,), a), jax.random.key(ctx.seed)), np.float64)
    theory = a * a * (1 - keep) / keep
    # SE of a sample variance: sqrt((mu4 - sigma^4) / n), mu4 from the draws themselves.
    mu4 = np.mean((y - y.mean()) ** 4)
    se = math.sqrt((mu4 - y.var() ** 2) / n)
    return Finding(
        verdict_of(_z(y.var() - theory, se) < 4),
        f"Var/a² = {y.var() / a ** 2:.4f} ({ci_text((y.var() - 1.96 * se) / a ** 2, (y.var() + 1.96 * se) / a ** 2)}); "
        f"closed form (1 − p)/p = {theory / a ** 2:.4f}",
        "1e6 draws of layers.Dropout(rate 0.4) on a = 2",
        ci=((y.var() - 1.96 * se) / a ** 2, (y.var() + 1.96 * se) / a ** 2),
        artefact="ml_practical/layers.py (Dropout)",
        note="The chapter poses B6 without an answer; Var = a²(1 − p)/p = 0.667·a² at keep 0.6.")


@R.quick("DROP-07")
def _(ctx: Context) -> Finding:
    n = 10
    enumerated = len(set(itertools.product((0, 1), repeat=n)))
    masks = np.asarray(_drop(0.5, jnp.ones((30_000, n)), jax.random.key(ctx.seed)) != 0)
    seen = len({row.tobytes() for row in np.packbits(masks, axis=1)})
    return Finding(verdict_of(enumerated == 2 ** n and seen == 2 ** n),
                   f"n = {n}: {enumerated} masks enumerated = 2ⁿ = {2 ** n}; 30 000 layers.Dropout "
                   f"draws at keep 0.5 hit {seen} distinct masks (2n would be {2 * n})",
                   "itertools.product over {0,1}^10; distinct masks among 3e4 layers.Dropout draws",
                   artefact="ml_practical/layers.py (Dropout)",
                   note="The text's '2n sub-networks' is a mis-encoded 2ⁿ (the diagram says 2^n).")


@R.quick("DROP-08")
def _(ctx: Context) -> Finding:
    n, k, keep = 10, 5, 0.5
    rng = np.random.default_rng(ctx.seed)
    x, w = rng.normal(size=n) + 1.0, 1.5 * rng.normal(size=(n, k))
    masks = np.asarray(list(itertools.product((0.0, 1.0), repeat=n)))        # all 2^n
    weight = np.prod(np.where(masks == 1, keep, 1 - keep), axis=1)           # P(mask)
    logits = (x * masks / keep) @ w                                           # inverted dropout

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    logp = log_softmax(logits)
    geo = np.exp(log_softmax(weight @ logp))                                  # normalized geometric
    arith = weight @ np.exp(logp)                                             # arithmetic mean
    scaled = np.exp(log_softmax(x @ w))                                       # the test-time net
    e_geo, e_arith = np.abs(geo - scaled).max(), np.abs(arith - scaled).max()
    top = int(np.argmax(scaled))
    return Finding(
        "partly" if e_geo < 1e-9 and e_arith > 1e-3 else verdict_of(e_arith < 1e-9),
        f"max |weight-scaled − normalized geometric mean| = {e_geo:.1e}; "
        f"max |weight-scaled − arithmetic mean| = {e_arith:.3f} (top class {scaled[top]:.3f} vs "
        f"{arith[top]:.3f})",
        f"one softmax layer, n = {n} inputs, keep {keep}: all {2 ** n} masks enumerated "
        "(float64 numpy)",
        artefact="experiments/audit/checks/dropout.py",
        note="Weight scaling is exactly the (normalized) geometric mean of the sub-networks' "
             "softmax outputs for one softmax layer (Baldi & Sadowski 2013), not the arithmetic "
             "average the word 'averaging' suggests; for deeper nets it is an approximation "
             "(DROP-09).")


def _mc(ctx: Context):
    res = ctx.results(MC_STUDY)
    if res is None:
        return None, None
    methods = res.get("methods", {})
    mc_name = next((k for k in methods if k.startswith("mc_T")), None)
    if "deterministic" not in methods or mc_name is None:
        return res, None
    return res, (methods["deterministic"], methods[mc_name], mc_name)


def _seeded(res, metric: str):
    """The study's per-seed comparison "test/<metric>" (MC minus deterministic, paired over
    seeds; `experiments/mc_dropout/main.py::comparisons`), when it has two seeds or more."""
    comp = res.get("comparisons", {}).get(f"test/{metric}")
    if comp is None or len(comp.get("seeds", [])) < 2 or "inference" not in comp:
        return None
    return comp


def _setup(res) -> str:
    tr = res.get("training", {})
    seeds = len(res.get("seeds", [0]))
    return (f"the mc_dropout study: {tr.get('model', 'the recipe MLP')}, {tr.get('epochs_run', '?')} "
            f"epochs, T = {res.get('num_samples')}, {seeds} training seed{'s' if seeds > 1 else ''} "
            "(the ledger asked 784-512-512-10, keep 0.5, 20 epochs, T = 100)")


def _no_methods(ctx: Context) -> Finding:
    return Finding("inconclusive", "-", f"read {ctx.path(MC_STUDY)}",
                   note="results.json has no 'deterministic' and 'mc_T*' methods")


@R.study("DROP-09", test="tests/test_uncertainty.py::test_mc_predict_equals_a_python_loop_over_keys")
def _(ctx: Context) -> Finding:
    res, got = _mc(ctx)
    if res is None:
        return not_run(MC_STUDY, MC_COMMAND, ctx)
    if got is None:
        return _no_methods(ctx)
    det, mc, name = got
    margin = 0.002
    comp = _seeded(res, "accuracy")
    if comp is not None:
        t = comp["inference"]["t"]
        low, high = float(t["low"]), float(t["high"])
        inside, outside = -margin <= low and high <= margin, low > margin or high < -margin
        return Finding(
            "confirmed" if inside else ("refuted" if outside else "inconclusive"),
            f"test accuracy {name} − weight-scaled: {pp(comp['inference'])}; per seed "
            f"{[round(100 * d, 2) for d in comp['differences']]} pp",
            f"{_setup(res)}; criterion |Δ| ≤ 0.2 pp, read as equivalence (the 95 % CI inside "
            "±0.2 pp)",
            ci=(low, high), artefact=ctx.path(MC_STUDY))
    n = res["training"]["dataset"]["num_test"]
    diff = mc["accuracy"] - det["accuracy"]
    # One seed: the discordant pairs are not stored; their count is at most errors_det +
    # errors_mc, which bounds McNemar's variance: a conservative interval.
    half = 1.96 * math.sqrt(det["errors"] + mc["errors"]) / n
    return Finding(
        verdict_of(abs(diff) <= margin),
        f"accuracy {name} − weight-scaled = {100 * diff:+.2f} pp (weight-scaled "
        f"{100 * det['accuracy']:.2f} %, MC {100 * mc['accuracy']:.2f} %); conservative "
        f"{ci_text(100 * (diff - half), 100 * (diff + half), 3)} pp",
        f"{_setup(res)}; criterion |Δ| ≤ 0.2 pp on the point estimate",
        ci=(diff - half, diff + half), artefact=ctx.path(MC_STUDY),
        note="One training seed: verdict on the ledger's point criterion. The CI bounds the "
             "unknown discordant count by the two error counts, so it is wider than McNemar's; "
             "read 'confirmed' as 'the point estimate is within 0.2 pp'. With study.seeds ≥ 2 "
             "the check reads the paired-over-seeds interval instead.")


def _hanley_mcneil(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982): the standard error of an AUROC from n_pos positives, n_neg
    negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2)
                      + (n_neg - 1) * (q2 - auc ** 2)) / (n_pos * n_neg))


@R.study("DROP-10", test="tests/test_uncertainty.py::test_mc_predict_uses_running_statistics")
def _(ctx: Context) -> Finding:
    res, got = _mc(ctx)
    if res is None:
        return not_run(MC_STUDY, MC_COMMAND, ctx)
    if got is None:
        return _no_methods(ctx)
    det, mc, _ = got
    t = res.get("timing", {})
    cost = (t["mc_vectorised_s"] / t["deterministic_pass_s"]
            if t.get("deterministic_pass_s") else float("nan"))
    auc_comp, nll_comp = _seeded(res, "auroc_entropy"), _seeded(res, "nll")
    if auc_comp is not None and nll_comp is not None:
        # Per seed: the MC AUROC's mean with its t interval, and the paired NLL difference.
        at = inference.paired_t(auc_comp["arm_values"])
        auc, low, high = at["mean"], at["low"], min(1.0, at["high"])
        nt = nll_comp["inference"]["t"]
        nll_text = (f"NLL MC − deterministic {nt['mean']:+.4f} nats (95 % CI [{nt['low']:+.4f}, "
                    f"{nt['high']:+.4f}], paired over {nll_comp['inference']['n']} seeds)")
        nll_better, nll_worse = nt["high"] <= 0, nt["low"] > 0
        how = f"{at['n']} seeds, t interval"
    else:
        n = res["training"]["dataset"]["num_test"]
        auc = mc["auroc_error_detection"]["predictive_entropy"]
        se = _hanley_mcneil(auc, mc["errors"], n - mc["errors"])
        low, high = auc - 1.96 * se, min(1.0, auc + 1.96 * se)
        nll_text = f"NLL MC {mc['nll']:.4f} vs deterministic {det['nll']:.4f} (one seed)"
        nll_better, nll_worse = mc["nll"] <= det["nll"], mc["nll"] > det["nll"]
        how = "one seed, Hanley–McNeil"
    if low >= 0.85 and nll_better:
        verdict = "partly"
    elif high < 0.85 or nll_worse:
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    return Finding(
        verdict,
        f"AUROC(entropy → error) {auc:.3f} ({ci_text(low, high, 3)}, {how}; deterministic "
        f"{det['auroc_error_detection']['predictive_entropy']:.3f} on seed 0); {nll_text}; "
        f"T = {res['num_samples']} passes cost {cost:.1f}× one deterministic pass",
        f"{_setup(res)}; criterion AUROC ≥ 0.85 and NLL(MC) ≤ NLL(det), both by their CIs",
        ci=(low, high), artefact=ctx.path(MC_STUDY),
        note="'Useful' is tested; 'for free' is false by construction: T forward passes (the "
             "measured cost ratio). At best partly.")


KEEPS = (0.5, 0.7, 0.8, 0.9, 1.0)
SIZES = (300, 1437)
SEEDS = (0, 1, 2)
# DROP-11 and DROP-16 (and LN-02's no-norm row): keep × n_train × seed, Adam 1e-3, no norm.
share([{"seed": s, "n_train": n, "keep": k} for n in SIZES for k in KEEPS for s in SEEDS])


@R.quick("DROP-11")
def _(ctx: Context) -> Finding:
    best, parts, gains, half = {}, [], {}, {}
    for n in SIZES:
        acc = {k: shared(ctx.seed, n_train=n, keep=k)["test_acc"][:, -1] for k in KEEPS}
        best[n] = max(KEEPS, key=lambda k: acc[k].mean())
        gains[n] = paired(acc[best[n]], acc[1.0])
        half[n] = paired(acc[0.5], acc[1.0])
        parts.append(f"n = {n} (tested on {POOL - n}): test acc by keep " +
                     ", ".join(f"{k}: {100 * acc[k].mean():.1f}" for k in KEEPS) +
                     f" %; best keep {best[n]}"
                     + (f" (vs keep 1: {pp(gains[n])})" if best[n] != 1.0 else "")
                     + f"; keep 0.5 vs keep 1: {pp(half[n])}")
    small, large = SIZES
    order = best[small] <= best[large]
    decided = gains[small]["t"]["low"] > 0 or best[small] == 1.0
    return Finding(
        verdict_of(order) if decided else "inconclusive",
        "; ".join(parts),
        "proxy: digits MLP 64-64-64-10, Adam 1e-3, 400 steps of 64, n_train ∈ {300, 1437}, "
        "5 keeps × 3 seeds, tested on the held-out rest of the 1797",
        artefact="experiments/audit/checks/dropout.py (proxy_fit)",
        note="Criterion: best keep at the small size ≤ best keep at the large size, decided only "
             "when the small-size best keep beats keep 1 with a CI above 0 (else the argmax is "
             "seed noise). The proxy's sizes are 300 / 1437 digits, not 1k / 60k MNIST; "
             "'keep 0.5 for small data' is read from the keep 0.5 row.")


R.untestable("DROP-12", "Historical and configuration facts (Hinton's keep 0.5; BERT's "
             "hidden_dropout_prob = 0.1, i.e. keep 0.9). No transformers package or config file "
             "is on this machine to read BERT's default from without the internet; the keep-rate "
             "guidance itself is tested by the DROP-11 proxy.")

R.untestable("DROP-13", "The library's CNN (ml_practical/models/cnn.py) applies dropout only to "
             "the pooled features before the head, never after the convolutions, so 'drop 0.2 "
             "after the convs' cannot be run without a new model field. Settle it with a "
             "conv-dropout option and 3 seeds × {0, 0.2} of experiments/configs/mnist_cnn.py "
             "(about 7 min a run on this CPU, 45 min in all), paired difference with its CI.")


@R.quick("DROP-14")
def _(ctx: Context) -> Finding:
    rng = np.random.default_rng(ctx.seed)
    p, n = 0.5, 1_000_000
    a = np.linspace(0.1, 3.0, 8)

    def dropout_forward(a, p=0.5, training=True):  # the student's code, verbatim
        mask = rng.random(a.shape) < p
        if training:
            return a * mask
        else:
            return a * p

    train_mean = np.mean([dropout_forward(a, p) for _ in range(n // len(a) // 8)], axis=0)
    draws = n // len(a) // 8
    test = dropout_forward(a, p, training=False)
    se = a * math.sqrt(p * (1 - p) / draws)
    z = np.abs(train_mean - test) / se
    return Finding(
        verdict_of(z.max() > 4),
        f"max |E[train] − test| = {np.abs(train_mean - test).max():.4f} over 8 values of a "
        f"(max {z.max():.2f} σ_MC; test output a·p); E[train] = a·p holds",
        f"the chapter's student code verbatim, {draws} draws per value of a",
        artefact="experiments/audit/checks/dropout.py",
        note="The student's code is correct non-inverted dropout; the chapter's own explanation "
             "contradicts itself (ledger §9 item 5). Style nits only: the mask is drawn at test "
             "time too and not kept for backward.")


@functools.cache
def _step_times(seed: int, pairs: int = 12):
    """Per-step (wall, process CPU) times of the library's jitted train step at drop 0 and 0.5,
    interleaved so that the load of a shared machine hits both alike."""
    tx = optax.adam(1e-3)
    key = jax.random.key(seed)
    batch = {"image": jax.random.normal(key, (256, 784)),
             "label": jax.random.randint(key, (256,), 0, 10)}
    steps, states = {}, {}
    for rate in (0.0, 0.5):
        model = models.MLP(widths=(1024, 1024), drop_rate=rate)
        steps[rate] = jax.jit(functools.partial(train.train_step, model=model, tx=tx))
        states[rate] = train.create_train_state(model, tx, key, (784,))
        for _ in range(2):  # compile and warm up
            states[rate], _ = jax.block_until_ready(steps[rate](states[rate], batch))
    times = {0.0: [], 0.5: []}
    for i in range(pairs):
        for rate in ((0.0, 0.5) if i % 2 == 0 else (0.5, 0.0)):
            t0, c0 = time.perf_counter(), time.process_time()
            states[rate], _ = jax.block_until_ready(steps[rate](states[rate], batch))
            times[rate].append((time.perf_counter() - t0, time.process_time() - c0))
    return np.asarray(times[0.0]), np.asarray(times[0.5])


def _step_ratio(seed: int):
    """(median, low, high) of the per-pair CPU-time ratio drop 0.5 / drop 0, and the times."""
    t0, t5 = _step_times(seed)
    ratio = t5[:, 1] / t0[:, 1]
    low, high = _median_ci(ratio)
    return float(np.median(ratio)), low, high, t0, t5


def _median_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for a median: order statistics from the binomial(n, 1/2)."""
    v = np.sort(values)
    n = v.size
    k = max(int(stats.binom.ppf((1 - level) / 2, n, 0.5)), 1)  # P(X < k) <= (1 - level) / 2
    return float(v[k - 1]), float(v[n - k])


@R.quick("DROP-15")
def _(ctx: Context) -> Finding:
    med, low, high, t0, t5 = _step_ratio(ctx.seed)
    wall = float(np.median(t5[:, 0] / t0[:, 0]))
    verdict = "refuted" if low > 1 else ("confirmed" if high < 1 else "inconclusive")
    return Finding(
        verdict,
        f"CPU time per step, drop 0.5 / drop 0 = {med:.3f} (median of {len(t0)} interleaved "
        f"pairs, {ci_text(low, high, 3)} distribution-free; {1e3 * np.median(t5[:, 1]):.0f} vs "
        f"{1e3 * np.median(t0[:, 1]):.0f} ms); wall-time ratio {wall:.3f}",
        "jitted train.train_step of models.MLP 784-1024-1024-10, Adam, batch 256, this CPU",
        ci=(low, high), artefact="ml_practical/train.py (train_step); benchmarks/",
        note="Newly testable: the library's real jitted step, not a numpy proxy. A dense "
             "implementation multiplies the full matrices whatever the mask and adds the mask's "
             "RNG, so dropout cannot make a step cheaper; the chapter's own 12.8.4 table lists "
             "'slower training'. Read on CPU time (less sensitive than wall time to the other "
             "jobs of a shared machine); speed is not asserted by the tests.")


@R.quick("DROP-16")
def _(ctx: Context) -> Finding:
    n, threshold, every = SIZES[1], 0.05, SHARED_EVERY
    steps_to = {}
    for keep in (0.5, 1.0):
        curve = shared(ctx.seed, n_train=n, keep=keep)["train_loss"]
        hit = curve <= threshold
        # a run that never reaches the threshold counts as one evaluation past its end
        steps_to[keep] = np.where(hit.any(1), (hit.argmax(1) + 1) * every,
                                  SHARED_STEPS + every)
    censored = bool((steps_to[0.5] > SHARED_STEPS).any())
    ratio = steps_to[0.5] / steps_to[1.0]
    step_ratio = _step_ratio(ctx.seed)[0]
    wall = ratio * step_ratio
    more = bool((ratio > 1).all())
    similar = float(wall.mean()) <= 1.25
    comp = inference.compare(np.log(ratio))
    ge = "≥ " if censored else ""
    return Finding(
        "confirmed" if more and similar else ("partly" if more else "refuted"),
        f"steps to train loss ≤ {threshold}: keep 0.5 {steps_to[0.5].tolist()}"
        f"{f' (censored: not reached in {SHARED_STEPS})' if censored else ''} vs keep 1 "
        f"{steps_to[1.0].tolist()}; ratio {ge}{np.exp(comp['mean']):.2f}× (geometric mean over "
        f"seeds; {ci_text(math.exp(comp['t']['low']), math.exp(comp['t']['high']), 3)}) × "
        f"per-step time ratio {step_ratio:.2f} (DROP-15) = total time {ge}{wall.mean():.2f}×",
        f"proxy: the DROP-11 runs at n_train {n} (digits MLP, Adam 1e-3), train loss in eval "
        f"mode every {every} steps, 3 seeds",
        artefact="experiments/audit/checks/dropout.py (proxy_fit)",
        note="Criterion: 'more epochs' if keep 0.5 needs more steps in every seed; 'similar or "
             "slightly longer' total time if steps ratio × step-time ratio ≤ 1.25. A censored "
             "run makes the ratio a lower bound, which can only strengthen 'longer'.")


@R.quick("DROP-17", test="tests/test_layers.py::test_dropout_is_identity_in_eval_and_at_rate_zero")
def _(ctx: Context) -> Finding:
    x = jax.random.normal(jax.random.key(ctx.seed), (64, 32))
    same = bool(np.array_equal(np.asarray(_drop(0.0, x, jax.random.key(1))), np.asarray(x)))
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.ones(5)
        p = 0.0
        mask = (np.random.default_rng(ctx.seed).random(a.shape) < p) / p   # chapter 12.3.2
        chapter = a * mask
    try:
        layers.Dropout(1.0)
        refused = ""
    except ValueError as e:
        refused = str(e)
    return Finding(
        "partly" if same and np.isnan(chapter).all() else verdict_of(same and not np.isnan(chapter).any()),
        f"keep 1: layers.Dropout(0) output bitwise equal to its input: {same}; keep 0: the "
        f"chapter's forward gives {chapter.tolist()} (0/0), not an all-zero 'no network'",
        "layers.Dropout(rate 0) in training mode; the chapter's 12.3.2 mask code at p = 0",
        artefact="ml_practical/layers.py (Dropout)",
        note=f"keep 1 holds exactly; keep 0 needs a guard. The library refuses it: '{refused}'.")


R.untestable("DROP-18", "A statement about a paper (Gal & Ghahramani 2016), whose result is an "
             "approximate variational-inference interpretation, not a 'mathematical equivalence'. "
             "What is testable, MC dropout's uncertainty, is DROP-10 (the mc_dropout study).")

R.untestable("DROP-19", "A case-study configuration (feature-specific keep 0.7 / 0.9 at InMobi); "
             "no data to test it on here.")
