"""Activation functions by name, shared by every model family (`model.activation`)."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    # The chapter's "Leaky ReLU with slope alpha"; 0.01 is torch's and flax's default slope.
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01),
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name`.

    Args:
      name: one of `ACTIVATIONS`.

    Returns:
      An elementwise jnp function.

    Raises:
      ValueError: an unknown name, listing the known ones.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation: unknown {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
