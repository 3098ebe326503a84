"""One normalization factory for every model family: none, batch, layer, group, instance.

A family takes `norm` (the kind) and the norm options as fields and asks `make_norm` for the layer,
so an ablation axis is one config field whatever the architecture (the flax ImageNet example passes
its norm layer into the network the same way). Every layer it returns is called
`layer(x, train=train)` (`ml_practical.layers`).

Kinds (features = the last axis; for images (N, H, W, C) the channels):

  "none"      no layer (`make_norm` returns None)
  "batch"     BatchNorm: per feature, statistics over the batch (and H, W); running statistics
  "layer"     LayerNorm: per sample, over the features ("features") or over every non-batch axis
              ("all": C, H, W for images, Ba et al.'s convolutional form)
  "group"     GroupNorm: per sample and group of `num_groups` contiguous features (and H, W)
  "instance"  InstanceNorm: per sample and feature, over the spatial axes (needs H, W)
  "rms"       RMSNorm: per sample, x / sqrt(mean over the features of x^2 + eps), gamma only
              (Zhang & Sennrich 2019; no mean subtracted)
"""

from __future__ import annotations

import flax.linen as nn

from ml_practical import layers

NORMS = ("batch", "group", "instance", "layer", "none", "rms")
LAYER_NORM_AXES = layers.LAYER_NORM_AXES


def make_norm(kind: str, *, name: str, momentum: float = 0.9, epsilon: float = 1e-5,
              num_groups: int = 8, layer_norm_axes: str = "features",
              bn_backward: str = "autodiff", axis_name: str | None = None,
              scale_init=None, ghost_batch_size: int = 0) -> nn.Module | None:
    """The normalization layer of `kind`, or None for "none".

    Args:
      kind: one of NORMS.
      name: the layer's module name (its params and statistics live under it).
      momentum: BatchNorm's weight on the old running statistics (chapter / flax convention).
      epsilon: added to the variance, every kind.
      num_groups: GroupNorm's G (must divide the features).
      layer_norm_axes: LayerNorm's reduction, "features" or "all".
      bn_backward: BatchNorm's backward pass, "autodiff" or "manual" (the chapter's C1).
      axis_name: BatchNorm's mapped axis for cross-device statistics (None under jit sharding).
      ghost_batch_size: BatchNorm's ghost batch (`layers.BatchNorm`; 0 = the whole batch); the
        per-sample kinds ignore it (they have no batch statistics).
      scale_init: initializer of gamma (default ones); zeros gives a residual block whose branch
        starts switched off (`models.resnet`'s "zero_gamma").

    Returns:
      A linen module called `layer(x, train=...)`, or None.

    Raises:
      ValueError: an unknown kind.
    """
    if kind == "none":
        return None
    extra = {} if scale_init is None else {"scale_init": scale_init}
    if kind == "batch":
        return layers.BatchNorm(momentum=momentum, epsilon=epsilon, backward=bn_backward,
                                axis_name=axis_name, ghost_batch_size=ghost_batch_size,
                                name=name, **extra)
    if kind == "layer":
        return layers.LayerNorm(epsilon=epsilon, axes=layer_norm_axes, name=name, **extra)
    if kind == "group":
        return layers.GroupNorm(num_groups=num_groups, epsilon=epsilon, name=name, **extra)
    if kind == "instance":
        return layers.InstanceNorm(epsilon=epsilon, name=name, **extra)
    if kind == "rms":
        return layers.RMSNorm(epsilon=epsilon, name=name, **extra)
    raise ValueError(f"model.norm: unknown {kind!r}; expected one of {list(NORMS)}")
