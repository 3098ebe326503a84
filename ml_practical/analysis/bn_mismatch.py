"""BatchNorm's train/eval mismatch: running statistics against the statistics a layer meets.

BatchNorm normalizes with the statistics of its (ghost) batch in training and with running
averages of them in evaluation (Ioffe & Szegedy 2015, Algorithm 1 and its inference step,
Algorithm 2). The two disagree when the running averages are not the statistics of the inputs
the layer sees at test time (a small or noisy BN batch, a network still changing), and when the
noise of small-batch statistics was part of what the network learned to work with. Two measures:

  * `evaluate_modes`: the same weights evaluated with running statistics (eval mode) and with
    the statistics of consecutive groups of `bn_batch` rows (train mode at the training BN batch,
    the running statistics left as they were): accuracy, loss and prediction agreement.
  * `input_statistics` + `normalization_error`: for every BatchNorm layer, the mean and variance
    of its input over a large batch, and the affine error that using the running statistics
    instead makes in the normalized value (below).

With z a layer input, (mu, var) its statistics over the large batch and (m, v) the running
statistics, eval mode computes zhat_eval = (z - m) / sqrt(v + eps) while the large-batch
normalization is zhat = (z - mu) / sqrt(var + eps). Hence, per feature,

    zhat_eval = scale * zhat + offset,   scale = sqrt((var + eps) / (v + eps)),
                                         offset = (mu - m) / sqrt(v + eps),

and, over the inputs of the large batch (zhat has mean 0 and variance var / (var + eps) ~ 1),
E[(zhat_eval - zhat)^2] = (scale - 1)^2 var / (var + eps) + offset^2: `rms` is its square root.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_practical import layers
from ml_practical.analysis.activations import natural_key


def _for_measuring(model: nn.Module, ghost_batch_size: int) -> nn.Module:
    """`model` with BatchNorm statistics over groups of `ghost_batch_size` rows in training mode
    (0: the whole batch) and dropout off, so train mode differs from eval mode in BatchNorm only.

    Needs a family with a `ghost_batch_size` field (the `ml_practical.models` families have one).
    """
    if not hasattr(model, "ghost_batch_size"):
        raise ValueError(f"model: {type(model).__name__} has no ghost_batch_size field; expected "
                         "a family whose BatchNorm takes a ghost batch (mlp, cnn, resnet)")
    changes: dict[str, Any] = {"ghost_batch_size": int(ghost_batch_size)}
    if getattr(model, "drop_rate", 0.0):
        changes["drop_rate"] = 0.0  # dropout has no params: the same variables apply
    return model.clone(**changes)


def has_batch_norm(variables: Mapping[str, Any]) -> bool:
    """Whether the variables hold running statistics (a "batch_stats" collection)."""
    return bool(jax.tree.leaves(variables.get("batch_stats", {})))


@functools.lru_cache(maxsize=64)
def _mode_sums(measuring: nn.Module, batch_norm: bool) -> Callable:
    """The jitted per-piece sums of `evaluate_modes`, one per model (modules hash by their
    fields), so a study measuring many runs of one model traces it once."""

    @jax.jit
    def sums(variables, xb, yb, wb):
        def stats(logits):
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            pred = jnp.argmax(logits, -1)
            return pred, {"loss": jnp.sum(wb * loss), "correct": jnp.sum(wb * (pred == yb))}

        pred_e, eval_sums = stats(measuring.apply(variables, xb, train=False))
        if not batch_norm:
            return eval_sums, eval_sums, jnp.sum(wb)
        logits_t, _ = measuring.apply(variables, xb, train=True, mutable=["batch_stats"])
        pred_t, train_sums = stats(logits_t)
        train_sums["agree"] = jnp.sum(wb * (pred_e == pred_t))
        return eval_sums, train_sums, jnp.sum(wb)

    return sums


def evaluate_modes(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                   *, bn_batch: int, piece_rows: int = 1000) -> dict[str, Any]:
    """Accuracy and loss of one model in eval mode and in train mode at BN batch `bn_batch`.

    Train mode normalizes each group of `bn_batch` consecutive rows with that group's own
    statistics (Ioffe & Szegedy 2015, Algorithm 1; a ghost batch, Hoffer et al. 2017), as the
    network did in training when its BN batch was `bn_batch`; the running statistics are not
    changed. Both modes see the same rows: the first floor(n / bn_batch) * bn_batch, processed in
    pieces of a whole number of groups (about `piece_rows` rows; the last piece is completed with
    copies of whole groups, which do not change the statistics of the others, and weight 0).
    Dropout is off in both modes (`_for_measuring`), so the two differ only in BatchNorm.

    Args:
      model: a classifier of the `ml_practical.models` contract (logits (N, K)).
      variables: {"params", "batch_stats"?}.
      x, y: inputs and integer labels.
      bn_batch: rows per group of train-mode statistics (>= 1).
      piece_rows: rows per compiled call.

    Returns:
      {"rows", "bn_batch", "eval": {"accuracy", "loss"}, "train": {"accuracy", "loss"},
       "agreement": share of rows whose predicted class is the same in both modes,
       "accuracy_gap": eval minus train accuracy}. Without running statistics (no BatchNorm) the
      two modes are the same function and "train" repeats "eval".
    """
    if bn_batch < 1:
        raise ValueError(f"bn_batch: {bn_batch}; expected an integer >= 1")
    x, y = np.asarray(x), np.asarray(y)
    groups = len(x) // bn_batch
    if groups == 0:
        raise ValueError(f"bn_batch: {bn_batch} is more than the {len(x)} rows given")
    rows = groups * bn_batch
    per_piece = max(1, piece_rows // bn_batch)
    piece = per_piece * bn_batch
    measuring = _for_measuring(model, bn_batch)
    batch_norm = has_batch_norm(variables)

    sums = _mode_sums(measuring, batch_norm)

    totals = {"eval": {"loss": 0.0, "correct": 0.0}, "train": {"loss": 0.0, "correct": 0.0}}
    agree = 0.0
    for start in range(0, rows, piece):
        xb, yb = x[start:min(start + piece, rows)], y[start:min(start + piece, rows)]
        w = np.ones(len(xb), np.float32)
        if len(xb) < piece:  # complete the piece with whole copies of its first groups
            reps = -(-(piece - len(xb)) // len(xb))
            fill = np.concatenate([xb] * reps)[:piece - len(xb)]
            fill_y = np.concatenate([yb] * reps)[:piece - len(xb)]
            xb, yb = np.concatenate([xb, fill]), np.concatenate([yb, fill_y])
            w = np.concatenate([w, np.zeros(len(fill), np.float32)])
        e, t, _ = jax.device_get(sums(variables, jnp.asarray(xb), jnp.asarray(yb),
                                      jnp.asarray(w)))
        for mode, s in (("eval", e), ("train", t)):
            totals[mode]["loss"] += float(s["loss"])
            totals[mode]["correct"] += float(s["correct"])
        agree += float(t["agree"]) if batch_norm else float(np.sum(w))
    out = {mode: {"accuracy": v["correct"] / rows, "loss": v["loss"] / rows}
           for mode, v in totals.items()}
    return {"rows": rows, "bn_batch": int(bn_batch), **out, "agreement": agree / rows,
            "accuracy_gap": out["eval"]["accuracy"] - out["train"]["accuracy"]}


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def input_statistics(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, *,
                     train: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Per BatchNorm layer, the mean and (biased) variance of its input over the batch `x`.

    The statistics are over every axis but the last (N, and H, W for images), in two passes,
    as BatchNorm takes them (`layers.BatchNorm`). `train=False`: the network in eval mode, so
    each layer's input is what it meets at test time (the layers before it use their running
    statistics). `train=True`: the network in train mode on `x` as one batch (no ghost groups,
    dropout off), so each layer's statistics are those it would store with momentum 0 after a
    step on `x`. Running statistics are not changed.

    Args:
      model: a model of the `ml_practical.models` contract whose BatchNorm layers are
        `layers.BatchNorm`.
      variables: {"params", "batch_stats"}.
      x: one batch of inputs (large: the statistics are the reference).

    Returns:
      {layer path ("norm_0", "stage_1/block_0/norm_1", ...): {"mean": (C,), "var": (C,),
       "count": values per feature}} as float64 numpy, in natural path order ("norm_2" before
      "norm_10").
    """
    stats = jax.device_get(_input_stats_fn(_for_measuring(model, 0), train)(
        variables, jnp.asarray(x)))
    return {path: {"mean": np.asarray(s["mean"], np.float64),
                   "var": np.asarray(s["var"], np.float64), "count": int(s["count"])}
            for path, s in sorted(stats.items(), key=lambda kv: natural_key(kv[0]))}


@functools.lru_cache(maxsize=64)
def _input_stats_fn(measuring: nn.Module, train: bool) -> Callable:
    """The jitted forward pass of `input_statistics`, one per model and mode."""

    @jax.jit
    def forward(variables, x):
        seen: list[tuple[str, jax.Array]] = []

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, layers.BatchNorm) and context.method_name == "__call__":
                seen.append((_path(context.module), args[0]))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            if train:
                measuring.apply(variables, x, train=True, mutable=["batch_stats"])
            else:
                measuring.apply(variables, x, train=False)
        out = {}
        for path, z in seen:
            axes = tuple(range(z.ndim - 1))
            z = z.astype(jnp.float32)
            mean = jnp.mean(z, axis=axes)
            out[path] = {"mean": mean, "var": jnp.mean(jnp.square(z - mean), axis=axes),
                         "count": jnp.asarray(int(np.prod(z.shape[:-1])), jnp.int32)}
        return out

    return forward


def running_statistics(variables: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """{layer path: {"mean", "var"}} of every BatchNorm's running statistics, float64 numpy."""
    out: dict[str, dict[str, np.ndarray]] = {}

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        if "mean" in tree and "var" in tree and not isinstance(tree["mean"], Mapping):
            out["/".join(path)] = {"mean": np.asarray(tree["mean"], np.float64),
                                   "var": np.asarray(tree["var"], np.float64)}
            return
        for name, value in tree.items():
            if isinstance(value, Mapping):
                walk(value, (*path, name))

    walk(jax.device_get(variables.get("batch_stats", {})), ())
    return out


def normalization_error(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray,
                        var: np.ndarray, eps: float) -> dict[str, np.ndarray]:
    """Per feature, the affine map from the large-batch normalization to eval mode's.

    zhat_eval = scale * zhat + offset with scale = sqrt((var + eps) / (v + eps)) and
    offset = (mu - m) / sqrt(v + eps) (the module docstring; Ioffe & Szegedy 2015, Algorithm 1
    step 3 with the running statistics in place of the batch's).

    Args:
      running_mean, running_var: m, v, shape (C,).
      mean, var: mu, var of the layer's input over a large batch, shape (C,).
      eps: the BatchNorm's epsilon.

    Returns:
      {"offset", "scale", "rms"}, each (C,): rms = sqrt((scale - 1)^2 var / (var + eps) +
      offset^2), the root mean square error of the eval-mode normalized value.
    """
    m, v = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    mu, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    scale = np.sqrt((var + eps) / (v + eps))
    offset = (mu - m) / np.sqrt(v + eps)
    rms = np.sqrt((scale - 1.0) ** 2 * var / (var + eps) + offset ** 2)
    return {"offset": offset, "scale": scale, "rms": rms}


def running_stat_mismatch(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, *,
                          eps: float, train: bool = False) -> dict[str, dict[str, float]]:
    """Per BatchNorm layer, how far its running statistics are from its input's over `x`.

    `input_statistics(model, variables, x, train=train)` against `running_statistics`, through
    `normalization_error`, summarized over the layer's features.

    Returns:
      {layer path: {"mean_abs_offset": mean_c |offset_c|, "mean_abs_log_scale": mean_c
       |log scale_c|, "mean_rms": mean_c rms_c, "max_rms": max_c rms_c, "count": values per
       feature of the reference}}, in natural path order; {} for a model without BatchNorm.
    """
    running = running_statistics(variables)
    if not running:
        return {}
    measured = input_statistics(model, variables, x, train=train)
    out = {}
    for path, s in measured.items():
        if path not in running:
            raise ValueError(f"running statistics: no entry for BatchNorm layer {path!r}; have "
                             f"{sorted(running)}")
        err = normalization_error(running[path]["mean"], running[path]["var"], s["mean"],
                                  s["var"], eps)
        out[path] = {"mean_abs_offset": float(np.mean(np.abs(err["offset"]))),
                     "mean_abs_log_scale": float(np.mean(np.abs(np.log(err["scale"])))),
                     "mean_rms": float(np.mean(err["rms"])), "max_rms": float(np.max(err["rms"])),
                     "count": s["count"]}
    return out
