"""Per-layer gradient norms of a network's weights, in forward order: the depth study's probe.

A layer is a module that holds a "kernel" (every conv, the head). Its gradient norm is the L2 norm
of dL/dW of that kernel for the plain cross entropy on one fixed batch, with the model in training
mode (BatchNorm normalizes with the batch's own statistics, as in a training step; its running
statistics are not updated). What `analysis.activations.grad_norms` gives per top-level module
(stem, stage_0, ...), this gives per conv, which is what a depth plot needs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import losses
from ml_practical.analysis.activations import natural_key

# Where a top-level module sits in the forward pass: the ResNet stem, the CNN's conv_j, the
# ResNet stages, the head (anything else between the stages and the head).
_TOP_RANK = {"stem": 0, "conv": 1, "stage": 2, "head": 4}


def forward_key(path: str) -> tuple:
    """Sort key of a layer path in forward order: "stem/conv" < "stage_0/block_0/conv_0" <
    "stage_0/block_0/conv_1" < "stage_0/block_0/shortcut_conv" < "stage_1/..." < "head"; CNN
    "conv_2" < "conv_10" < "head"."""
    top = path.split("/")[0]
    stem, _, index = top.rpartition("_")
    name = stem if index.isdigit() else top
    return (_TOP_RANK.get(name, 3), natural_key(path))


def kernel_paths(params: Mapping[str, Any]) -> list[str]:
    """The paths ("stage_0/block_1/conv_0") of every module holding a "kernel", forward order."""
    out = []

    def walk(tree, path):
        for name, value in tree.items():
            if name == "kernel" and not isinstance(value, Mapping):
                out.append("/".join(path))
            elif isinstance(value, Mapping):
                walk(value, (*path, name))

    walk(params, ())
    return sorted(out, key=forward_key)


def _kernel(tree: Mapping[str, Any], path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree["kernel"]


@functools.partial(jax.jit, static_argnames=("model",))
def _probe(model, params, batch_stats, images, labels):
    def loss_fn(p):
        if batch_stats:
            logits, _ = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
        else:
            logits = model.apply({"params": p}, images, train=True)
        return losses.cross_entropy(logits, labels), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    norms = {path: jnp.sqrt(jnp.sum(jnp.square(_kernel(grads, path).astype(jnp.float32))))
             for path in kernel_paths(params)}
    return norms, loss, jnp.std(logits)


def layer_grad_norms(model, params, batch_stats, images, labels) -> dict[str, Any]:
    """The probe on one batch: per-layer gradient norms, the loss and the logits' spread.

    Args:
      model: the linen module (`cfg.model`), called with `train=True`.
      params, batch_stats: its variables (batch_stats may be empty).
      images, labels: the fixed batch.

    Returns:
      {"layers": [path, ...] in forward order, "norms": [float per layer], "loss": float,
      "logit_std": float}; non-finite values (a diverged network) are kept as they are.
    """
    norms, loss, logit_std = jax.device_get(
        _probe(model, params, batch_stats or {}, jnp.asarray(images), jnp.asarray(labels)))
    layers = sorted(norms, key=forward_key)
    return {"layers": layers, "norms": [float(norms[k]) for k in layers], "loss": float(loss),
            "logit_std": float(logit_std)}


def spread_decades(norms) -> float:
    """log10(max / min) over the layers' finite, positive gradient norms: how many decades
    separate the layer that learns fastest from the slowest (0 = all equal; nan if < 2 layers)."""
    v = np.asarray([x for x in norms if math.isfinite(x) and x > 0], np.float64)
    return float(np.log10(v.max() / v.min())) if v.size >= 2 else float("nan")


def first_over_last(norms) -> float:
    """Gradient norm of the first conv over that of the last conv before the head (the ratio
    a vanishing gradient drives towards 0 and an exploding one up); nan when either is not
    finite and positive."""
    convs = list(norms)[:-1]  # the head is last
    if len(convs) < 2:
        return float("nan")
    a, b = convs[0], convs[-1]
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
        return float("nan")
    return float(a / b)
