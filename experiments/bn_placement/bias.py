"""The bias before BatchNorm, at the level of the function a network computes (chapter 12.4.5).

For a layer z = W a + b followed by BatchNorm (option A), training-mode BN subtracts the batch
mean of each channel, so BN(z + b) = BN(z) for every b: the bias changes neither the output nor
the gradients of the other parameters, and its own gradient sum_n dL/dz_n is zero (up to float32
rounding). In evaluation BN subtracts the running mean instead, which absorbs b as it is
accumulated from z + b: a network with bias b and running mean mu computes exactly what the same
network without the bias and with running mean mu - b computes (`fold_bias`). What is left is
what the optimizer does with the bias's rounding-level gradient: Adam divides it by
sqrt(v) + eps, so the bias can drift (`bias_stats` measures it), and a drifting bias changes
z + b's float32 rounding, from which two otherwise identical runs part.

Functions here take a model of the `ml_practical.models` contract with hidden layers "conv_j" /
"dense_j" each followed by "norm_j" (models.CNN, models.MLP).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import losses

PREFIXES = ("conv_", "dense_")


def biased_layers(params: Any) -> list[str]:
    """The hidden layers "conv_j" / "dense_j" that have a bias and are followed by "norm_j"."""
    out = []
    for name, leaves in params.items():
        for prefix in PREFIXES:
            if name.startswith(prefix) and "bias" in leaves \
                    and f"norm_{name[len(prefix):]}" in params:
                out.append(name)
    return sorted(out, key=lambda n: int(n.rsplit("_", 1)[1]))


def _plain(tree):
    return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else {
        k: (_plain(v) if isinstance(v, dict) else v) for k, v in tree.items()}


def drop_bias(variables: Any, *, fold: bool) -> dict:
    """The variables of the same network without the biases of `biased_layers`.

    Args:
      variables: {"params", "batch_stats"} of an option-A network with a bias before each BN.
      fold: also move each bias into its BN's running mean (mu -> mu - b), so that evaluation
        mode computes the same function; False leaves the running statistics as they are.

    Returns:
      {"params", "batch_stats"} for the same model built with `bias_before_bn=False`.
    """
    params, stats = _plain(variables["params"]), _plain(variables.get("batch_stats", {}))
    for name in biased_layers(params):
        b = params[name].pop("bias")
        norm = f"norm_{name.rsplit('_', 1)[1]}"
        if fold and norm in stats:
            stats[norm] = {**stats[norm], "mean": stats[norm]["mean"] - b}
    return {"params": params, "batch_stats": stats}


def bias_stats(params: Any) -> dict[str, dict[str, float]]:
    """Per biased layer: the largest |b| and the rms of b (float)."""
    out = {}
    for name in biased_layers(params):
        b = np.asarray(params[name]["bias"], np.float64)
        out[name] = {"max_abs": float(np.abs(b).max()), "rms": float(np.sqrt(np.mean(b ** 2)))}
    return out


def _apply(model, variables, x, train: bool):
    if train:
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    return model.apply(variables, x, train=False)


# Modules hash by their fields, so each network compiles once per process (and, through the
# persistent compilation cache, once per machine).
@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(model, variables, x):
    return model.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_mode_diff(model_a, model_b, va, vb, x):
    return jnp.abs(_apply(model_a, va, x, True) - _apply(model_b, vb, x, True)).max()


def predict(model, variables, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Evaluation-mode logits of `x`, in batches (float32 numpy, (N, K))."""
    chunks = [_eval_logits(model, variables, jnp.asarray(x[i:i + batch_size]))
              for i in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(c) for c in chunks])


def at_init(model_bias, x: np.ndarray, y: np.ndarray, key: jax.Array, *,
            bias_std: float = 1.0) -> dict[str, Any]:
    """The bias's effect on a freshly initialized option-A network, on one batch.

    `model_bias` is the network with a bias before each BN (`bias_before_bn=True`); the network
    without them is the same module with `bias_before_bn=False`, on the same kernels (the same
    init key gives both the same kernels: asserted here).

    Returns:
      {"train_max_abs_diff": max |f_b(x) - f_0(x)| in training mode with the biases drawn from
       N(0, bias_std^2) (0 up to float32 rounding: BN(z + b) = BN(z)),
       "logit_scale": max |f_0(x)| (what the difference is small against),
       "eval_max_abs_diff_at_init": the same in evaluation mode on the initial running statistics
       (mean 0, var 1), which do not absorb b yet,
       "running_mean_shift_error": max |(mu_b - mu_0) - (1 - momentum) b| after one training step
       (the running mean moves by exactly the bias's share),
       "grad_bias_rms" / "grad_kernel_rms": per biased layer, the rms of dL/db and dL/dW at the
       real start (zero biases), and "grad_ratio": their ratio,
       "bias_std", "layers"}.
    """
    model0 = model_bias.clone(bias_before_bn=False)
    x, y = jnp.asarray(x), jnp.asarray(y)
    vb = model_bias.init(key, x, train=False)
    v0 = model0.init(key, x, train=False)
    names = biased_layers(vb["params"])
    for name in names:
        if not np.array_equal(np.asarray(vb["params"][name]["kernel"]),
                              np.asarray(v0["params"][name]["kernel"])):
            raise AssertionError(f"{name}: the two networks' kernels differ at the same init key")
    drawn = _plain(vb["params"])
    keys = jax.random.split(jax.random.fold_in(key, 1), len(names))
    for k, name in zip(keys, names):
        b = drawn[name]["bias"]
        drawn[name]["bias"] = bias_std * jax.random.normal(k, b.shape, b.dtype)
    norms = {name: f"norm_{name.rsplit('_', 1)[1]}" for name in names}

    @jax.jit
    def compute(drawn, vb, v0):
        with_b = {"params": drawn, "batch_stats": vb["batch_stats"]}
        fb_train, new_b = model_bias.apply(with_b, x, train=True, mutable=["batch_stats"])
        f0_train, new_0 = model0.apply(v0, x, train=True, mutable=["batch_stats"])
        f0_eval = model0.apply(v0, x, train=False)
        fb_eval = model_bias.apply(with_b, x, train=False)
        shift = jnp.zeros(())
        for name, norm in norms.items():
            moved = new_b["batch_stats"][norm]["mean"] - new_0["batch_stats"][norm]["mean"]
            want = (1.0 - model_bias.bn_momentum) * drawn[name]["bias"]
            shift = jnp.maximum(shift, jnp.abs(moved - want).max())

        def loss(params):
            logits = model_bias.apply({"params": params, "batch_stats": vb["batch_stats"]}, x,
                                      train=True, mutable=["batch_stats"])[0]
            return losses.cross_entropy(logits, y)

        grads = jax.grad(loss)(vb["params"])
        rms = lambda g: jnp.sqrt(jnp.mean(g ** 2))
        return {"train": jnp.abs(fb_train - f0_train).max(), "scale": jnp.abs(f0_train).max(),
                "eval": jnp.abs(fb_eval - f0_eval).max(), "shift": shift,
                "g_b": {n: rms(grads[n]["bias"]) for n in names},
                "g_w": {n: rms(grads[n]["kernel"]) for n in names}}

    r = jax.tree.map(float, jax.device_get(compute(drawn, vb, v0)))
    g_b, g_w = r["g_b"], r["g_w"]
    return {"layers": names, "bias_std": bias_std,
            "train_max_abs_diff": r["train"], "logit_scale": r["scale"],
            "eval_max_abs_diff_at_init": r["eval"], "running_mean_shift_error": r["shift"],
            "grad_bias_rms": g_b, "grad_kernel_rms": g_w,
            "grad_ratio": {n: g_b[n] / g_w[n] if g_w[n] else float("nan") for n in names}}


def trained(model_bias, variables: Any, x_eval: np.ndarray, x_batch: np.ndarray,
            logits: np.ndarray | None = None) -> dict[str, Any]:
    """A trained option-A network with biases against itself with the biases removed.

    Args:
      model_bias, variables: the network with a bias before each BN and its trained variables.
      x_eval: the images of the evaluation-mode comparisons (the test set).
      x_batch: one batch for the training-mode comparison (batch statistics).
      logits: `predict(model_bias, variables, x_eval)` if already computed.

    Returns:
      {"train_max_abs_diff": training mode on `x_batch`, biases simply removed: 0 up to
       rounding; "eval_max_abs_diff_folded" / "eval_predictions_changed_folded": evaluation mode
       on `x_eval` with each bias folded into its running mean (`drop_bias(fold=True)`): 0 up to
       rounding; "eval_max_abs_diff_unfolded" / "eval_predictions_changed_unfolded": biases
       removed but running means kept, which is what deleting the bias after training would do;
       "logit_scale": max |logit| on `x_eval`; "num_eval"; "bias": `bias_stats`}.
    """
    model0 = model_bias.clone(bias_before_bn=False)
    xb = jnp.asarray(x_batch)
    out: dict[str, Any] = {"bias": bias_stats(variables["params"]), "num_eval": len(x_eval)}
    plain = drop_bias(variables, fold=False)
    out["train_max_abs_diff"] = float(_train_mode_diff(model_bias, model0, variables, plain, xb))
    ref = predict(model_bias, variables, x_eval) if logits is None else logits
    out["logit_scale"] = float(np.abs(ref).max())
    for label, fold in (("folded", True), ("unfolded", False)):
        other = predict(model0, drop_bias(variables, fold=fold), x_eval)
        out[f"eval_max_abs_diff_{label}"] = float(np.abs(other - ref).max())
        out[f"eval_predictions_changed_{label}"] = int(
            np.sum(other.argmax(-1) != ref.argmax(-1)))
    return out


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of test images on which two runs' predicted classes differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"predictions: shapes {a.shape} and {b.shape} differ")
    return float(np.mean(a != b))
