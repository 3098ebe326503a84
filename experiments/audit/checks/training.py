"""Checks of the ledger's section 5, augmentation, early stopping, label smoothing and clipping
(AUG-*, ES-*, LS-*, CLIP-*), and the proxy lab that the experiment-kind claims of sections 5-7
share (`lab`).

The proxy lab stands in for the chapter's MNIST experiments where no study measures them: a
one-hidden-layer ReLU MLP (up to 64 units) on the library's 8x8 digits split (`data.load_dataset`,
source "digits": 1150 train / 287 val / 360 test), Adam, minibatches of 32, 400 steps. Every
configuration of `ARMS` (training-set size, width, keep probability, L2, label smoothing,
BatchNorm, augmentation, int8 weights) is a traced number, so all arms x `LAB_SEEDS` seeds train as
ONE vmapped, jitted program: a few seconds on two cores. Seed s fixes the training subset (the
first n of a seed-dependent permutation of the pool, so n = 150 is inside n = 300), the init key,
the batch order, the dropout masks and the augmentation draws in every arm, so comparisons within a
seed are paired and their 95 % intervals (`analysis.inference.compare`) are over the seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import stats_report
from experiments.audit.core import REGISTRY as R, Context, Finding, not_run, verdict_of
from ml_practical import augment, initializers, layers, losses, optim
from ml_practical.analysis import calibration, inference
from ml_practical.config import DataConfig, OptimConfig
from ml_practical.early_stopping import EarlyStopping

# --------------------------------------------------------------------------------------------------
# Small statistics helpers shared by the proxy checks (sections 5-7)


def paired(a, b) -> dict:
    """`inference.compare` of the per-seed differences a_s - b_s."""
    return inference.compare(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def sign(comp) -> str:
    """"+" when the 95 % paired-t interval lies above 0, "-" below, "0" when it holds 0."""
    t = comp["t"]
    return "+" if t["low"] > 0 else ("-" if t["high"] < 0 else "0")


def ci(comp) -> tuple[float, float]:
    return float(comp["t"]["low"]), float(comp["t"]["high"])


def delta(comp, scale: float = 100.0, unit: str = "pp", digits: int = 2) -> str:
    """"+0.42 pp [-0.10, +0.94]": the mean paired difference and its 95 % paired-t interval."""
    t = comp["t"]
    return (f"{stats_report.number(t['mean'], scale, digits, True)} {unit} "
            f"{stats_report.interval(t['low'], t['high'], scale, digits)}")


# --------------------------------------------------------------------------------------------------
# The proxy lab

LAB_SEEDS = 10
LAB_STEPS = 400
LAB_BATCH = 32
LAB_EVAL_EVERY = 20          # 20 evaluation points (the curves' "epochs")
# Adam at 1e-2, not the chapter's 1e-3: on 150 digits 400 steps then reach the overfitting
# stretch (val loss past its minimum) that ES-02 and BV-02 need; at 1e-3 the val loss is still
# falling after 800 steps.
LAB_LR = 1e-2
LAB_WIDTH = 64               # the widest arm; narrower arms mask units (exactly a narrower net)
LAB_VARIANTS = 4             # augmented copies of each pool image drawn once (see `_bank`)
LAB_CURVE_TRAIN = 300        # training examples behind the curves' train loss
SMALL_N, MID_N = 150, 300
UNDERFIT_WIDTH = 1           # BV-02: a width whose training loss stays high (> ln 10 / 2)
REG_WIDTH = 2                # BV-04: the narrow net regularization is added to (train error ~50 %)
BN_EPS = 1e-5
BN_MOMENTUM = 0.9            # the library's (chapter, flax) convention: running = 0.9 running + 0.1 batch


@dataclasses.dataclass(frozen=True)
class Arm:
    """One configuration of the lab; every field becomes a traced number of the one program.

    Attributes:
      n: training examples (the first n of the seed's permutation of the 1150-image pool).
      width: hidden units (units beyond it are masked to 0, which is exactly a narrower net; the
        head's Xavier std uses this width as its fan-in).
      keep: dropout keep probability after the hidden ReLU (1 = no dropout).
      l2: coupled L2, `l2 * losses.l2_penalty` (gradient l2 * w on the kernels).
      smoothing: label smoothing alpha of `losses.cross_entropy`.
      bn: BatchNorm before the ReLU (`layers.batch_norm_train`; eval on running statistics).
      augment: train on the augmentation bank (rotation <= 10 deg, shift <= 2 px per 28 px).
      int8: kernels fake-quantized to 8 bits per tensor, straight-through gradient.
    """

    n: int = SMALL_N
    width: int = LAB_WIDTH
    keep: float = 1.0
    l2: float = 0.0
    smoothing: float = 0.0
    bn: bool = False
    augment: bool = False
    int8: bool = False


POOL_N = 1150
ARMS: dict[str, Arm] = {
    # n = 150: the small-data regime (AUG-01/02/03, ES-02, BV-02, EXP-05)
    "small": Arm(),
    "small_l2_1e-4": Arm(l2=1e-4),
    "small_l2_1e-3": Arm(l2=1e-3),
    "small_l2_1e-2": Arm(l2=1e-2),
    "small_keep0.5": Arm(keep=0.5),
    "small_keep0.8": Arm(keep=0.8),
    "small_aug": Arm(augment=True),
    "small_int8": Arm(int8=True),
    # n = 300: twice the data (AUG-01) and the keep sweep with and without BN (EXP-04)
    "mid": Arm(n=MID_N),
    **{f"mid_keep{k}": Arm(n=MID_N, keep=k) for k in (0.5, 0.8)},
    **{f"mid_bn_keep{k}": Arm(n=MID_N, keep=k, bn=True) for k in (0.5, 0.8, 1.0)},
    # the whole pool: label smoothing (LS-03), augmentation (AUG-02/03), the width sweep (BV-03)
    "full": Arm(n=POOL_N),
    "full_ls": Arm(n=POOL_N, smoothing=0.1),
    "full_aug": Arm(n=POOL_N, augment=True),
    **{f"full_w{w}": Arm(n=POOL_N, width=w) for w in (1, 2, 4, 16)},
    # an underfitting net with regularization added (BV-04)
    f"full_w{REG_WIDTH}_keep0.5": Arm(n=POOL_N, width=REG_WIDTH, keep=0.5),
    f"full_w{REG_WIDTH}_l2_1e-3": Arm(n=POOL_N, width=REG_WIDTH, l2=1e-3),
}
WIDTH_ARMS = {1: "full_w1", 2: "full_w2", 4: "full_w4", 16: "full_w16", LAB_WIDTH: "full"}

LAB_RAN = (f"proxy: 1-hidden-layer ReLU MLP on the 8x8 digits (library split 1150/287/360), Adam "
           f"{LAB_LR:g}, batch {LAB_BATCH}, {LAB_STEPS} steps, {LAB_SEEDS} paired seeds "
           "(experiments/audit/checks/training.py `lab`)")


@functools.lru_cache(maxsize=1)
def _digits():
    from ml_practical import data
    ds = data.load_dataset(DataConfig(source="digits", val_size=287))
    flat = lambda x: np.asarray(x, np.float32).reshape(len(x), -1)
    return (flat(ds.train_x), np.asarray(ds.train_y, np.int32), flat(ds.val_x),
            np.asarray(ds.val_y, np.int32), flat(ds.test_x), np.asarray(ds.test_y, np.int32),
            tuple(ds.train_x.shape[1:]))


def _bank(key, images):
    """The pool, then LAB_VARIANTS augmented copies of it: the library's "shift_rotate" (rotation
    <= 10 deg, then a shift of up to 2 px per 28 px of side, i.e. 0.57 px here). Drawn once and
    sampled per step: augmentation over a finite set of transforms per image, which costs a
    fraction of resampling every batch on a CPU."""
    fn = augment.get("shift_rotate")
    keys = jax.random.split(key, LAB_VARIANTS)
    return jnp.stack([images] + [fn(k, images) for k in keys])


def _nll(logits, labels):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]


def _lab_run(c, seed, key, pool_x, pool_y, bank, val_x, val_y, test_x, test_y):
    """Trains one arm x seed; returns its curves and final logits (see `lab`)."""
    k_perm, k_w1, k_w2, k_steps = jax.random.split(jax.random.fold_in(key, seed), 4)
    perm = jax.random.permutation(k_perm, pool_x.shape[0])
    n, width = c["n"], c["width"]
    d_in, w_max = pool_x.shape[1], LAB_WIDTH
    params = {
        "hidden": {"kernel": initializers.he_normal()(k_w1, (d_in, w_max)),
                   "bias": jnp.zeros(w_max)},
        "norm": {"scale": jnp.ones(w_max), "bias": jnp.zeros(w_max)},
        # xavier_normal draws with fan_in w_max; rescale to the arm's own fan-in.
        "head": {"kernel": initializers.xavier_normal()(k_w2, (w_max, 10))
                 * jnp.sqrt((w_max + 10.0) / (width + 10.0)),
                 "bias": jnp.zeros(10)},
    }
    unit = (jnp.arange(w_max) < width).astype(jnp.float32)
    tx = optim.make_optimizer(OptimConfig(name="adam", learning_rate=LAB_LR))

    def quantized(p):
        def q(w):  # per-tensor symmetric int8, straight-through estimator
            s = jnp.max(jnp.abs(w)) / 127.0
            return jnp.where(c["int8"], w + jax.lax.stop_gradient(jnp.round(w / s) * s - w), w)
        return {"hidden": {**p["hidden"], "kernel": q(p["hidden"]["kernel"])}, "norm": p["norm"],
                "head": {**p["head"], "kernel": q(p["head"]["kernel"])}}

    def forward(p, x, running, key=None):
        p = quantized(p)
        z = x @ p["hidden"]["kernel"] + p["hidden"]["bias"]
        if key is None:  # evaluation: running statistics, no dropout
            mean, var = running
            z_bn = (z - mean) * jax.lax.rsqrt(var + BN_EPS) * p["norm"]["scale"] + p["norm"]["bias"]
        else:
            z_bn, mean, var = layers.batch_norm_train(z, p["norm"]["scale"], p["norm"]["bias"],
                                                      BN_EPS)
        h = jax.nn.relu(jnp.where(c["bn"], z_bn, z)) * unit
        if key is not None:  # inverted dropout, layers.Dropout's equation with a traced keep
            h = h * jax.random.bernoulli(key, c["keep"], h.shape) / c["keep"]
        return h @ p["head"]["kernel"] + p["head"]["bias"], (mean, var)

    def step(carry, k):
        p, running, opt = carry
        k_b, k_v, k_d = jax.random.split(k, 3)
        idx = perm[jax.random.randint(k_b, (LAB_BATCH,), 0, n)]
        # Variant 0 of the bank is the clean pool; augmented arms draw from variants 1..V.
        v = jnp.where(c["augment"], jax.random.randint(k_v, (LAB_BATCH,), 1, LAB_VARIANTS + 1), 0)
        x = bank[v, idx]

        def loss_fn(p):
            logits, stats = forward(p, x, running, k_d)
            loss = losses.cross_entropy(logits, pool_y[idx], label_smoothing=c["smoothing"])
            return loss + c["l2"] * losses.l2_penalty(p), stats

        (_, (mean, var)), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, opt = tx.update(g, opt, p)
        running = jax.tree.map(lambda r, b: BN_MOMENTUM * r + (1 - BN_MOMENTUM) * b,
                               running, (mean, var))
        return (optax.apply_updates(p, updates), running, opt), None

    curve_idx = perm[:LAB_CURVE_TRAIN]
    # One forward over train (first <= 300 of the subset), val and test: one matmul, not three.
    eval_x = jnp.concatenate([pool_x[curve_idx], val_x, test_x])
    eval_y = jnp.concatenate([pool_y[curve_idx], val_y, test_y])
    parts = {"train": (jnp.arange(LAB_CURVE_TRAIN) < n).astype(jnp.float32),
             "val": jnp.ones(len(val_y)), "test": jnp.ones(len(test_y))}
    bounds = np.cumsum([0] + [len(v) for v in parts.values()])

    def evaluate(p, running):
        logits, _ = forward(p, eval_x, running)
        nll, right = _nll(logits, eval_y), (logits.argmax(-1) == eval_y)
        out = {}
        for (name, w), lo, hi in zip(parts.items(), bounds[:-1], bounds[1:]):
            out[f"{name}_loss"] = jnp.sum(nll[lo:hi] * w) / jnp.sum(w)
            out[f"{name}_acc"] = jnp.sum(right[lo:hi] * w) / jnp.sum(w)
        return out

    def chunk(carry, keys):
        carry, _ = jax.lax.scan(step, carry, keys)
        return carry, evaluate(carry[0], carry[1])

    running = (jnp.zeros(w_max), jnp.ones(w_max))
    keys = jax.random.split(k_steps, LAB_STEPS).reshape(LAB_STEPS // LAB_EVAL_EVERY,
                                                        LAB_EVAL_EVERY)
    (p, running, _), curves = jax.lax.scan(chunk, (params, running, tx.init(params)), keys)
    final, _ = forward(p, jnp.concatenate([pool_x[perm], test_x]), running)
    train_logits, test_logits = final[:pool_x.shape[0]], final[pool_x.shape[0]:]
    return {**curves, "train_logits": train_logits, "train_labels": pool_y[perm],
            "train_weight": (jnp.arange(pool_x.shape[0]) < n).astype(jnp.float32),
            "test_logits": test_logits}


@functools.lru_cache(maxsize=2)
def lab(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Trains every arm of `ARMS` x `LAB_SEEDS` seeds as one program; cached per `seed`.

    Returns:
      {arm: {key: array with a leading seed axis}}: curves at every LAB_EVAL_EVERY steps
      ("train_loss", "train_acc" on the first <= 300 training examples, "val_*", "test_*":
      unsmoothed NLL and accuracy, eval mode), "train_logits" / "train_labels" / "train_weight"
      (the whole pool in the seed's order; weight 1 on the arm's n training examples),
      "test_logits"; plus the derived "final_train_err", "final_train_loss", "final_test_acc",
      "final_test_loss".
    """
    pool_x, pool_y, val_x, val_y, test_x, test_y, shape = _digits()
    key = jax.random.key(seed)
    bank_key, run_key = jax.random.split(key)
    images = jnp.asarray(pool_x).reshape((-1, *shape))
    bank = _bank(bank_key, images).reshape(LAB_VARIANTS + 1, pool_x.shape[0], -1)
    names = list(ARMS)
    fields = [f.name for f in dataclasses.fields(Arm)]
    cfg = {f: jnp.asarray(np.repeat([float(getattr(ARMS[a], f)) for a in names], LAB_SEEDS),
                          jnp.float32) for f in fields}
    cfg["n"] = cfg["n"].astype(jnp.int32)
    seeds = jnp.tile(jnp.arange(LAB_SEEDS), len(names))
    program = jax.jit(jax.vmap(_lab_run, in_axes=(0, 0) + (None,) * 8))
    out = program(cfg, seeds, run_key, jnp.asarray(pool_x), jnp.asarray(pool_y), bank,
                  jnp.asarray(val_x), jnp.asarray(val_y), jnp.asarray(test_x),
                  jnp.asarray(test_y))
    out = {k: np.asarray(v, np.float64 if v.dtype.kind == "f" else v.dtype).reshape(
        len(names), LAB_SEEDS, *v.shape[1:]) for k, v in out.items()}
    result = {}
    for i, name in enumerate(names):
        r = {k: v[i] for k, v in out.items()}
        w = r["train_weight"]
        wrong = (r["train_logits"].argmax(-1) != r["train_labels"])
        r["final_train_err"] = (wrong * w).sum(-1) / w.sum(-1)
        r["final_train_loss"] = (np.asarray(_nll_np(r["train_logits"], r["train_labels"])) * w
                                 ).sum(-1) / w.sum(-1)
        r["final_test_acc"] = (r["test_logits"].argmax(-1) == test_y).mean(-1)
        r["final_test_loss"] = _nll_np(r["test_logits"], np.broadcast_to(
            test_y, r["test_logits"].shape[:-1])).mean(-1)
        result[name] = r
    return result


def _nll_np(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None].astype(np.int64), axis=-1)[..., 0]


def test_labels() -> np.ndarray:
    return _digits()[5]


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * float(np.mean(x)):.{digits}f} %"


# --------------------------------------------------------------------------------------------------
# AUG: augmentation


@R.quick("AUG-01")
def _(ctx: Context) -> Finding:
    L = lab(ctx.seed)
    regs = ["small_l2_1e-4", "small_l2_1e-3", "small_l2_1e-2", "small_keep0.5", "small_keep0.8",
            "small_aug"]
    # The regularizer is tuned on the validation split (mean over seeds), never on test.
    best = max(regs, key=lambda a: L[a]["val_acc"][:, -1].mean())
    comp = paired(L["mid"]["final_test_acc"], L[best]["final_test_acc"])
    base = paired(L[best]["final_test_acc"], L["small"]["final_test_acc"])
    s = sign(comp)
    verdict = {"+": "confirmed", "-": "refuted"}.get(s, "inconclusive")
    return Finding(
        verdict,
        f"test accuracy at n = {MID_N} with no regularizer {pct(L['mid']['final_test_acc'])} "
        f"against the best tuned regularizer at n = {SMALL_N} ({best}, chosen on validation) "
        f"{pct(L[best]['final_test_acc'])}: Δ {delta(comp)} (paired over {LAB_SEEDS} seeds); "
        f"that regularizer's own gain over none at n = {SMALL_N}: {delta(base)}",
        LAB_RAN + f"; n = {SMALL_N} with L2 1e-4/1e-3/1e-2, keep 0.5/0.8 or augmentation, "
                  f"against n = {MID_N} with none",
        ci=ci(comp), artefact="experiments/audit/checks/training.py::lab",
        note="The ledger's sizes are MNIST 1k/2k/5k; this proxy tests one doubling on the digits.")


def _aug_sizes(L, ctx: Context) -> list[tuple[str, dict]]:
    sizes = [(f"n = {SMALL_N}", paired(L["small_aug"]["final_test_acc"],
                                       L["small"]["final_test_acc"])),
             (f"n = {POOL_N}", paired(L["full_aug"]["final_test_acc"],
                                      L["full"]["final_test_acc"]))]
    study = _ablation_contribution(ctx, "augment")
    if study is not None:
        info = ctx.results("ablation").get("study", {}).get("dataset", {})
        sizes.append((f"{info.get('name', 'ablation')} n = {info.get('num_train', '?')} "
                      "(ablation row 8 − row 7)", study))
    return sizes


def _ablation_contribution(ctx: Context, name: str) -> dict | None:
    """The ablation's `compare` of row `name` against its parent (test accuracy), if it ran."""
    res = ctx.results("ablation")
    if res is None:
        return None
    for c in res.get("contributions", []):
        if c.get("experiment") == name:
            inf = c["test_accuracy"].get("inference")
            if inf is None:
                inf = inference.compare(c["test_accuracy"]["paired_differences"])
            return inf
    return None


@R.quick("AUG-02")
def _(ctx: Context) -> Finding:
    L = lab(ctx.seed)
    sizes = _aug_sizes(L, ctx)
    signs = [sign(c) for _, c in sizes]
    if "+" in signs and "-" not in signs:
        verdict = "confirmed"
    elif "-" in signs and "+" not in signs:
        verdict = "refuted"
    elif "+" in signs:
        verdict = "partly"
    else:
        verdict = "inconclusive"
    larger_small = sizes[0][1]["mean"] > sizes[1][1]["mean"]
    return Finding(
        verdict,
        "test accuracy with − without rotation ≤ 10° + shift: "
        + "; ".join(f"{label}: {delta(c)}" for label, c in sizes)
        + f"; the gain is {'larger' if larger_small else 'not larger'} at the smaller n",
        LAB_RAN + f"; augmentation = the library's 'shift_rotate' ({LAB_VARIANTS} pre-drawn "
                  "variants per image)",
        ci=ci(sizes[0][1]), artefact="experiments/audit/checks/training.py::lab; "
                                     "ablation row 8 when checkpoints/ablation ran",
        note="Without <studies>/ablation/results.json only the digits proxy decides; with it the "
             "ablation's row 8 (augment − label smoothing; MNIST 60k with its default config) is "
             "a third size.")


@R.quick("AUG-03")
def _(ctx: Context) -> Finding:
    L = lab(ctx.seed)
    rows = []
    for label, aug, base in ((f"n = {SMALL_N}", "small_aug", "small"),
                             (f"n = {POOL_N}", "full_aug", "full")):
        err = paired(L[aug]["final_train_err"], L[base]["final_train_err"])
        nll = paired(L[aug]["final_train_loss"], L[base]["final_train_loss"])
        rows.append((label, err, nll, L[aug]["final_train_err"], L[base]["final_train_err"]))
    # Train error decides; where it ties exactly (both 0), the clean-train NLL does.
    signs = [sign(e) if np.any(a != b) else sign(n) for _, e, n, a, b in rows]
    verdict = ("confirmed" if "-" in signs else "refuted" if "+" in signs else "inconclusive")
    return Finding(
        verdict,
        "; ".join(f"{label}: train error (clean images) {pct(a)} with augmentation vs {pct(b)} "
                  f"without, Δ {delta(e)}; train NLL Δ {delta(n, 1.0, 'nats', 4)}"
                  for label, e, n, a, b in rows),
        LAB_RAN + "; error and NLL on the un-augmented training subset",
        ci=ci(rows[0][1]), artefact="experiments/audit/checks/training.py::lab",
        note="Refuted where the clean training error (or, on a tie, the NLL) rises significantly "
             "at some size and falls at none; the ledger asks for a fall on the full training set. "
             "Augmentation is a variance-side tool: it makes the training task harder.")


R.untestable("AUG-04", "Practice advice (no augmentation at test time), not a measurable claim. "
                       "The library's augmentations are train-only by construction "
                       "(train.train_step applies cfg.train.augment; evaluation never does).")

# --------------------------------------------------------------------------------------------------
# ES: early stopping


@R.quick("ES-01", test="tests/test_early_stopping.py::test_table")
def _(ctx: Context) -> Finding:
    values = [1.0, 0.9, 0.85, 0.86, 0.8501, 0.84995, 0.8499, 0.7]
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=3, min_delta=1e-4)
    state = stopper.initial_state()
    for epoch, v in enumerate(values):  # the ledger counts epochs from 0
        state, _ = stopper.update(state, epoch, {"val/loss": v})
        if state.stopped:
            break
    passed = (state.stop_epoch, state.best_epoch, state.best_value, state.stop_reason) == (
        5, 2, 0.85, "patience")
    return Finding(
        verdict_of(passed),
        f"stops at epoch {state.stop_epoch} ({state.stop_reason}), best epoch {state.best_epoch} "
        f"(val loss {state.best_value}); 0.84995 is not an improvement under min_delta 1e-4",
        "ml_practical.early_stopping.EarlyStopping(patience=3, min_delta=1e-4) on the ledger's "
        "scripted losses",
        artefact="ml_practical/early_stopping.py; tests/test_loop.py::"
                 "test_early_stopping_disabled_trains_the_budget_and_tests_the_last_state",
        note="The chapter's class restores the best weights only when patience fires (a run that "
             "reaches max_epochs keeps the last weights, against its step 5). Newly testable: the "
             "rule is a pure object (state in, state out), so its stop and best epochs are "
             "asserted on scripted losses; loop.fit restores the best checkpoint whatever ends "
             "the run.")


@R.quick("ES-02")
def _(ctx: Context) -> Finding:
    L = lab(ctx.seed)["small"]
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=5)
    best = []
    for s in range(LAB_SEEDS):
        state = stopper.initial_state()
        for e, v in enumerate(L["val_loss"][s]):
            state, _ = stopper.update(state, e, {"val/loss": float(v)})
            if state.stopped:
                break
        best.append(state.best_epoch)
    pick = lambda key: np.array([L[key][s][b] for s, b in enumerate(best)])
    val_better = bool(np.all(pick("val_loss") < L["val_loss"][:, -1]))
    acc = paired(pick("test_acc"), L["test_acc"][:, -1])
    nll = paired(pick("test_loss"), L["test_loss"][:, -1])
    # Decided on the paired CIs of the test metrics: the ledger's point criterion "acc(ES) >=
    # acc(final)" would follow the noise of a handful of seeds.
    if sign(acc) == "-" or sign(nll) == "+":
        verdict = "refuted"
    elif sign(acc) == "+" or sign(nll) == "-":
        verdict = "confirmed"
    else:
        verdict = "inconclusive"
    return Finding(
        verdict,
        f"restored epochs {best} of {L['val_loss'].shape[1]} (each {LAB_EVAL_EVERY} steps); val "
        f"loss lower at the restored epoch in {'every' if val_better else 'not every'} seed; "
        f"test accuracy ES − full budget {delta(acc)}, test NLL {delta(nll, 1.0, 'nats', 3)}",
        LAB_RAN + f"; n = {SMALL_N}, no regularizer, EarlyStopping(val/loss, patience 5) over the "
                  "curve, best epoch restored, against the last of "
                  f"{LAB_STEPS} steps",
        ci=ci(acc), artefact="ml_practical/early_stopping.py; experiments/audit/checks/training.py",
        note="Decided on the test metrics' paired CIs (ES better: confirmed; worse: refuted); "
             "the val loss is lower at the restored epoch by selection, so it decides nothing.")


@R.quick("ES-03")
def _(ctx: Context) -> Finding:
    rng = np.random.default_rng(ctx.seed)
    n, d = 200, 20
    x = rng.standard_normal((n, d)) @ np.diag(np.logspace(0, -1.5, d))  # spread spectrum
    y = x @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n)
    h, b = x.T @ x / n, x.T @ y / n
    eta = 1.0 / np.linalg.eigvalsh(h).max()
    w, rows = np.zeros(d), {}
    for t in range(1, 401):
        w = w - eta * (h @ w - b)
        if t in (10, 50, 400):
            ridge = np.linalg.solve(h + np.eye(d) / (eta * t), b)
            rows[t] = (w @ ridge / np.linalg.norm(w) / np.linalg.norm(ridge),
                       np.linalg.norm(w - ridge) / np.linalg.norm(ridge))
    # In the eigenbasis GD keeps 1 - (1 - eta s)^t of each coordinate, ridge s / (s + lambda);
    # with x = eta s t these are about 1 - e^-x and x / (1 + x), which differ by up to 0.20.
    grid = np.linspace(0.0, 20.0, 20001)
    gap = np.max(np.abs((1 - np.exp(-grid)) - grid / (1 + grid)))
    cos_ok = all(c >= 0.95 for c, _ in rows.values())
    close = all(r <= 0.1 for _, r in rows.values())
    return Finding(
        verdict_of(cos_ok and close, partly=cos_ok),
        "; ".join(f"t = {t}: cos(w_t, w_ridge) = {c:.4f}, ‖w_t − w_ridge‖/‖w_ridge‖ = {r:.3f}"
                  for t, (c, r) in rows.items())
        + f"; the two spectral filters differ by up to {gap:.3f}",
        "numpy: least squares n = 200, d = 20 (spectrum 1 → 0.03), GD from 0 with eta = 1/s_max "
        "against ridge with lambda = 1/(eta t)",
        artefact="experiments/audit/checks/training.py",
        note="Stated criterion: cos ≥ 0.95 (the ledger's) and relative difference ≤ 0.1. The "
             "directions agree, the weights only approximately: early stopping is an L2-like "
             "spectral filter, not L2 with lambda = 1/(eta t) exactly.")


R.untestable("ES-04", "Typical patience values are practice advice, and 'no hyperparameters "
                      "except patience' is contradicted by the chapter's own code (min_delta); "
                      "ml_practical.early_stopping.EarlyStopping exposes both (and baseline, "
                      "start_from_epoch, divergence_threshold).")

# --------------------------------------------------------------------------------------------------
# LS: label smoothing


@R.quick("LS-01", test="tests/test_losses.py::test_smooth_labels_matches_chapter_example")
def _(ctx: Context) -> Finding:
    got = np.asarray(losses.smooth_labels(jnp.asarray([2]), 5, 0.1))[0]
    want = np.array([0.02, 0.02, 0.92, 0.02, 0.02])
    return Finding(
        verdict_of(np.allclose(got, want, atol=1e-7)),
        f"smooth_labels(2, K=5, α=0.1) = {np.round(got, 6).tolist()}",
        "ml_practical.losses.smooth_labels",
        artefact="ml_practical/losses.py")


def _optimal_gap(num_classes: int, alpha: float) -> tuple[float, float, bool]:
    """The logit gap (correct minus each wrong class) that minimizes the library's smoothed CE.

    The loss is convex in the logits and its gradient is softmax(z) - y_smooth, so z = log y_smooth
    is its minimum. This takes that z, checks with jax.grad of `losses.cross_entropy` that the
    gradient vanishes there and that moving the gap either way raises the loss.

    Returns:
      (gap, max |gradient| at z, whether both perturbations raise the loss).
    """
    target = losses.smooth_labels(jnp.asarray([0]), num_classes, alpha)[0]
    loss = lambda z: losses.cross_entropy(z[None], jnp.asarray([0]), label_smoothing=alpha)
    z = jnp.log(target)
    g = float(jnp.max(jnp.abs(jax.grad(loss)(z))))
    bump = jnp.zeros(num_classes).at[0].set(0.05)
    rises = bool(loss(z + bump) > loss(z)) and bool(loss(z - bump) > loss(z))
    return float(z[0] - z[1:].mean()), g, rises


@R.quick("LS-02", test="tests/test_losses.py::test_smooth_labels_matches_chapter_example")
def _(ctx: Context) -> Finding:
    t = np.asarray(losses.smooth_labels(jnp.asarray([0]), 1000, 0.1), np.float64)[0]
    gap, grad, rises = _optimal_gap(1000, 0.1)
    theory = math.log(0.9001 / 0.0001)
    ok = (abs(t[0] - 0.9001) < 1e-6 and np.allclose(t[1:], 1e-4, atol=1e-9)
          and abs(t.sum() - 1) < 1e-5 and abs(gap - theory) < 1e-3 and grad < 1e-6 and rises)
    return Finding(
        verdict_of(ok),
        f"correct class {t[0]:.6f}, each wrong class {t[1]:.6f} (sum {t.sum():.6f}); the "
        f"CE-optimal logit gap is {gap:.4f} (ln 9001 = {theory:.4f}; |∇| there {grad:.0e})",
        "ml_practical.losses.smooth_labels; jax.grad of losses.cross_entropy at z = log y_smooth",
        artefact="ml_practical/losses.py",
        note="'Effective temperature' is ill-posed: a distribution has no temperature without "
             "the logits it comes from; the computable quantity is the logit gap ln 9001.")


@R.quick("LS-03", test="tests/test_losses.py::test_smoothing_increases_loss_of_confident_correct_prediction")
def _(ctx: Context) -> Finding:
    gap, grad, rises = _optimal_gap(10, 0.1)
    exact_ok = abs(gap - math.log(91)) < 1e-4 and grad < 1e-6 and rises
    L = lab(ctx.seed)
    y = test_labels()

    def stats(arm):
        r = L[arm]
        z, labels, w = r["train_logits"], r["train_labels"].astype(int), r["train_weight"]
        correct = np.take_along_axis(z, labels[..., None], -1)[..., 0]
        train_gap = ((correct - (z.sum(-1) - correct) / 9) * w).sum(-1) / w.sum(-1)
        zt = r["test_logits"]
        p = np.exp(zt - zt.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        top2 = np.sort(zt, -1)[..., -2:]
        ece = [float(calibration.ece(jnp.asarray(p[s], jnp.float32), jnp.asarray(y)))
               for s in range(LAB_SEEDS)]
        return {"train_gap": train_gap, "max_p": p.max(-1).mean(-1),
                "test_gap": (top2[..., 1] - top2[..., 0]).mean(-1), "ece": np.array(ece)}

    base, ls = stats("full"), stats("full_ls")
    comps = {k: paired(ls[k], base[k]) for k in ("max_p", "test_gap", "ece")}
    train_gap_ok = abs(ls["train_gap"].mean() - math.log(91)) <= 0.2 * math.log(91)
    checks = {"mean max-softmax lower": comps["max_p"]["mean"] < 0,
              "test logit gap lower": comps["test_gap"]["mean"] < 0,
              "train gap ≈ ln 91 (±20 %)": train_gap_ok,
              "ECE ≤ baseline": comps["ece"]["mean"] <= 0}
    failed = [k for k, v in checks.items() if not v]
    return Finding(
        verdict_of(exact_ok and not failed, partly=exact_ok),
        f"(a) CE-optimal gap {gap:.4f} (ln 91 = {math.log(91):.4f}); (c) train gap with LS "
        f"{ls['train_gap'].mean():.2f} (without {base['train_gap'].mean():.2f}); LS − none: mean "
        f"max-softmax {delta(comps['max_p'], 1.0, '', 4)}, top-2 logit gap "
        f"{delta(comps['test_gap'], 1.0, '', 3)}, ECE(15 bins) {delta(comps['ece'], 1.0, '', 4)}"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        "jax.grad of losses.cross_entropy(label_smoothing=0.1) at its minimum; " + LAB_RAN
        + f"; n = {POOL_N}, label smoothing 0.1 vs 0",
        ci=ci(comps["max_p"]), artefact="ml_practical/losses.py; ml_practical/analysis/calibration.py",
        note="Newly testable: the (a) optimum is checked as a stationary point of the library's "
             "own loss, and (c)'s calibration with analysis.calibration.ece. The train gap is "
             "the correct logit minus the mean wrong logit on the training "
             "subset; the run need not reach the CE optimum. Label smoothing lowers the confidence, as "
             "claimed, but overshoots: on these digits the smoothed net is under-confident and "
             "its ECE is worse, so 'less overconfident' does not mean 'better calibrated'.")


@R.study("LS-04")
def _ls04(ctx: Context) -> Finding:
    command = ("python -m experiments.ablation --config=experiments/configs/ablation.py "
               "--workdir=checkpoints/ablation --config.data.data_dir=../shared/data/mnist")
    res = ctx.results("ablation")
    if res is None:
        return not_run("ablation", command, ctx)
    comp = _ablation_contribution(ctx, "label_smoothing")
    exps = res.get("experiments", {})
    if comp is None or "label_smoothing" not in exps or "l2" not in exps:
        return Finding("inconclusive", "-", f"read {ctx.path('ablation')}",
                       note=f"results.json has no label_smoothing/l2 rows; run: {command}")

    def epoch_time(name):
        # Median per-epoch time over every run's epochs after the first (which compiles).
        times = [c["epoch_time_s"] for r in exps[name]["runs"] for c in r.get("curves", [])[1:]
                 if "epoch_time_s" in c]
        return float(np.median(times)) if times else float("nan")

    overhead = epoch_time("label_smoothing") / epoch_time("l2") - 1
    inside = -0.0015 <= comp["t"]["low"] and comp["t"]["high"] <= 0.0015
    outside = comp["t"]["low"] > 0.0015 or comp["t"]["high"] < -0.0015
    fast = overhead < 0.02
    verdict = ("confirmed" if inside and fast else
               "refuted" if outside or (inside and not fast) else "inconclusive")
    dataset = res.get("study", {}).get("dataset", {}).get("name", "ablation")
    return Finding(
        verdict,
        f"{dataset}: label smoothing 0.1 − row 6: {delta(comp)} (Holm p "
        f"{stats_report.p_value(comp.get('p_holm'))}); median epoch time {100 * overhead:+.1f} %",
        f"read {ctx.path('ablation')} (contribution 'label_smoothing')", ci=ci(comp),
        artefact=ctx.path("ablation"),
        note="Proxy for ImageNet: confirmed if the 95 % CI lies within ±0.15 pt and the median "
             "epoch time (after the compiling first epoch; it includes evaluation) grows < 2 %; "
             "refuted if the CI lies outside ±0.15 pt; otherwise more seeds are needed. Epoch "
             "times on a shared CPU are noisy: the time half decides only once the accuracy "
             "half does.")


R.untestable("LS-05", "Citation/history: label smoothing comes from Szegedy et al. 2016, "
                      "'Rethinking the Inception Architecture' (the Inception-v3 paper), not an "
                      "'Inception v2 (2016)'; no computation can check attribution.")

# --------------------------------------------------------------------------------------------------
# CLIP: gradient clipping


def _grads(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"dense_0": {"kernel": 2.0 * jax.random.normal(k1, (16, 8)), "bias": jax.random.normal(k2, (8,))},
            "head": {"kernel": 0.5 * jax.random.normal(k3, (8, 4))}}


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _cos(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@R.quick("CLIP-01", test="tests/test_optim.py::test_value_clipping_bounds_entries_and_changes_direction")
def _(ctx: Context) -> Finding:
    g = _grads(jax.random.key(ctx.seed))
    tau = 1.0
    tx = optim.clip_transform("value", tau)
    clipped, _ = tx.update(g, tx.init(g))
    a, b = _flat(g), _flat(clipped)
    cos = _cos(a, b)
    return Finding(
        verdict_of(cos < 1 - 1e-6 and np.abs(b).max() <= tau),
        f"cos(g, clip_value(g)) = {cos:.4f} with {np.mean(np.abs(a) > tau):.0%} of entries "
        f"beyond τ = {tau}; max |g_c| = {np.abs(b).max():.3f}",
        "ml_practical.optim.clip_transform('value', 1.0) on a random 3-leaf gradient",
        artefact="ml_practical/optim.py")


@R.quick("CLIP-02", test="tests/test_optim.py::test_global_norm_clipping_caps_norm_and_keeps_direction")
def _(ctx: Context) -> Finding:
    tau = 1.0
    tx = optim.clip_transform("global_norm", tau)
    g2 = {"g": jnp.asarray([3.0, 4.0])}  # the chapter's figure: ||g|| = 5 -> 1
    c2, _ = tx.update(g2, tx.init(g2))
    g = _grads(jax.random.key(ctx.seed))
    c, _ = tx.update(g, tx.init(g))
    small = jax.tree.map(lambda x: 1e-3 * x, g)
    cs, _ = tx.update(small, tx.init(small))
    a, b, s, bs = _flat(g), _flat(c), _flat(small), _flat(cs)
    cos = _cos(a, b)
    ok = (abs(cos - 1) < 1e-6 and abs(np.linalg.norm(b) - tau) < 1e-6
          and np.allclose(_flat(c2), [0.6, 0.8], atol=1e-7) and np.array_equal(s, bs))
    return Finding(
        verdict_of(ok),
        f"‖(3, 4)‖ = 5 → {np.round(_flat(c2), 6).tolist()} (norm {np.linalg.norm(_flat(c2)):.6f}); "
        f"random gradient (‖g‖ = {np.linalg.norm(a):.2f}): cos = {cos:.9f}, ‖g_c‖ = "
        f"{np.linalg.norm(b):.7f}; ‖g‖ = {np.linalg.norm(s):.4f} ≤ τ is left bit-identical",
        "ml_practical.optim.clip_transform('global_norm', 1.0)",
        artefact="ml_practical/optim.py",
        note="float32: the cosine and the norm hold to 1e-6, not the ledger's 1e-12 (float64).")


@R.quick("CLIP-03", test="tests/test_optim.py::test_global_norm_clipping_caps_norm_and_keeps_direction")
def _(ctx: Context) -> Finding:
    g = _grads(jax.random.key(ctx.seed))
    tau = 1.0
    tx = optim.clip_transform("global_norm", tau)
    ours, _ = tx.update(g, tx.init(g))
    ref = optax.clip_by_global_norm(tau)
    theirs, _ = ref.update(g, ref.init(g))
    # torch.nn.utils.clip_grad_norm_: total = ||(||g_1||, ..., ||g_k||)||, coef = tau / (total
    # + 1e-6), clamped to 1; the chapter's clip_by_norm is the same without the 1e-6.
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
    total = np.linalg.norm([np.linalg.norm(x) for x in leaves])
    torch_like = np.concatenate([(x * min(1.0, tau / (total + 1e-6))).ravel() for x in leaves])
    per_leaf = np.concatenate([(x * min(1.0, tau / np.linalg.norm(x))).ravel() for x in leaves])
    d_optax = np.abs(_flat(ours) - _flat(theirs)).max()
    d_torch = np.abs(_flat(ours) - torch_like).max()
    d_leaf = np.abs(_flat(ours) - per_leaf).max()
    return Finding(
        verdict_of(d_optax <= 1e-6 and d_torch <= 1e-6 and d_leaf > 1e-3),
        f"max |ours − optax.clip_by_global_norm| = {d_optax:.1e}; max |ours − torch "
        f"clip_grad_norm_ formula| = {d_torch:.1e}; per-tensor clipping would differ by "
        f"{d_leaf:.3f}",
        "ml_practical.optim.clip_transform('global_norm') on a 3-leaf pytree against optax and a "
        "numpy copy of torch's formula",
        artefact="ml_practical/optim.py",
        note="torch adds 1e-6 to the norm, so its clipped norm is τ(1 − 1e-6/‖g‖): equal to 1e-6.")


@R.study("CLIP-04")
def _clip04(ctx: Context) -> Finding:
    command = ("python -m experiments.clipping --config=experiments/configs/clipping.py "
               "--workdir=checkpoints/clipping --config.data.data_dir=../shared/data/mnist")
    res = ctx.results("clipping")
    if res is None:
        return not_run("clipping", command, ctx)
    arms: dict = {}
    for r in res.get("runs", []):
        arms.setdefault((r["lr"], r["clip"]), []).append(r)

    def nonfinite(r):  # the key changed names as the study grew; read whichever is there
        for key in ("skipped_fraction", "nonfinite_fraction"):
            if key in r:
                return r[key]
        s = r["summary"]
        return s["nonfinite_steps"] / max(s["steps"], 1)

    lines, outcome = [], []
    for lr in sorted({lr for lr, _ in arms}):
        none, norm = arms.get((lr, "none")), arms.get((lr, "global_norm"))
        if not none or not norm:
            continue
        diverged = all(nonfinite(r) > 0 or r["test/accuracy"] < 0.2 for r in none)
        stable = all(nonfinite(r) == 0 for r in norm)
        acc = np.array([r["test/accuracy"] for r in norm])
        by_seed = {r.get("seed", 0): r["test/accuracy"] for r in none}
        common = [r for r in norm if r.get("seed", 0) in by_seed]
        gain = [r["test/accuracy"] - by_seed[r.get("seed", 0)] for r in common]
        # "Rescued": clipping trains where no clipping failed (paired CI above 0; with a single
        # seed, at least 20 points better).
        rescued = bool(gain) and (sign(inference.compare(gain)) == "+" if len(gain) > 1
                                  else gain[0] > 0.2)
        lines.append(f"lr {lr:g}: no clip {'diverged' if diverged else 'trained'} "
                     f"({np.mean([nonfinite(r) for r in none]):.1%} non-finite steps, test "
                     f"{pct([r['test/accuracy'] for r in none])}), global norm τ = "
                     f"{norm[0]['tau']:g} {'finite' if stable else 'NOT finite'}, test "
                     f"{pct(acc)} over {len(acc)} seed(s)")
        if diverged:
            outcome.append("confirmed" if stable and acc.mean() >= 0.95 else
                           "partly" if stable and rescued else "refuted")
    for c in res.get("comparisons", []):
        if c.get("metric") in ("skipped_fraction", "nonfinite_fraction") and (
                c.get("clip"), c.get("against")) == ("global_norm", "none"):
            lines.append(f"lr {c['lr']:g} non-finite share, global norm − none: "
                         f"{stats_report.formal(c['inference'])}")
    verdict = (outcome[0] if len(set(outcome)) == 1 else "partly") if outcome else "inconclusive"
    return Finding(
        verdict, "; ".join(lines) or "-", f"read {ctx.path('clipping')}",
        artefact=ctx.path("clipping"),
        note="At each learning rate where the unclipped run diverges (non-finite steps or test "
             "accuracy < 20 %): confirmed if global-norm clipping (τ = 1) stays finite at ≥ 95 % "
             "test accuracy, partly if it stays finite and trains significantly better than no "
             "clipping but below 95 %, refuted if it does not rescue training. The study raises "
             "the learning rate; it injects no ×100 gradient spikes.")


R.untestable("CLIP-05", "Typical thresholds (1-5 for RNNs, 1.0 for Transformers) are practice "
                        "advice, not a property; CLIP-04 measures what τ = 1 does on MNIST.")
