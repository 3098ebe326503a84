"""RandAugment and TrivialAugment as jittable NHWC ops: one op per image, drawn per image.

The ops act on raw intensities in [0, 1] (the data are un-normalized with their (mean, std)
first and normalized back after, so solarize and posterize mean what they mean on pixels), each
with a magnitude m in [0, 1] and, for the signed ones, a random sign:

  identity
  rotate      +-30 m degrees about the centre (bilinear; uncovered pixels the image's minimum)
  shear_x     x' = x + s y, s = +-0.3 m (about the centre);   shear_y likewise
  translate_x +-0.3 m of the width;                          translate_y likewise
  brightness  x <- (1 +- 0.9 m) x (PIL's ImageEnhance.Brightness: a blend with black)
  contrast    x <- mu + (1 +- 0.9 m)(x - mu), mu the image's mean over pixels and channels
  solarize    x <- 1 - x where x >= 1 - m
  posterize   keep b = 8 - round(4 m) bits of the 8-bit value: floor(255 x / 2^(8-b)) 2^(8-b) / 255
  equalize    x <- its rank in its channel, (# pixels <= x) / (H W): histogram equalization with
              one bin per distinct value (the cheap, sort-based form)

and every result is clipped to [0, 1] (PIL works on uint8). The ranges are timm's / the
TrivialAugment paper's "wide" ones scaled to a magnitude in [0, 1].

  trivial_augment  (Mueller & Hutter 2021): per image one op uniformly at random, with a uniform
                   magnitude.
  rand_augment     (Cubuk et al. 2020): per image `num_ops` ops in sequence, each uniformly at
                   random, all at the fixed `magnitude` (config `train.augment_magnitude`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

Array = jax.Array

OPS = ("identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness",
       "contrast", "solarize", "posterize", "equalize")
MAX_DEGREES, MAX_SHEAR, MAX_TRANSLATE, MAX_ENHANCE = 30.0, 0.3, 0.3, 0.9


def _affine(image: Array, matrix: Array, offset: Array) -> Array:
    """Bilinear resampling of one (H, W, C) image at source = matrix (p - c) + c + offset, p the
    output pixel (row, col), c the centre; uncovered pixels the image's per-channel minimum."""
    h, w, _ = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                        jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    src = [matrix[0, 0] * y + matrix[0, 1] * x + cy + offset[0],
           matrix[1, 0] * y + matrix[1, 1] * x + cx + offset[1]]
    bg = jnp.min(image, axis=(0, 1), keepdims=True)

    def channel(plane):
        return ndimage.map_coordinates(plane, src, order=1, mode="constant", cval=0.0)

    return jax.vmap(channel, in_axes=2, out_axes=2)(image - bg) + bg


def _geometry(op: int, m: Array, sign: Array, h: int, w: int) -> tuple[Array, Array]:
    """The inverse map (matrix, offset) of a geometric op; identity for the others."""
    eye = jnp.eye(2, dtype=jnp.float32)
    zero = jnp.zeros(2, jnp.float32)
    s = sign * m
    t = jnp.deg2rad(MAX_DEGREES * s)
    c, si = jnp.cos(t), jnp.sin(t)
    table = {
        1: (jnp.array([[c, si], [-si, c]]), zero),             # rotate (counter-clockwise)
        2: (jnp.array([[1.0, 0.0], [MAX_SHEAR * s, 1.0]]), zero),  # shear_x: x_src = x + s y
        3: (jnp.array([[1.0, MAX_SHEAR * s], [0.0, 1.0]]), zero),  # shear_y: y_src = y + s x
        4: (eye, jnp.array([0.0, -MAX_TRANSLATE * s * w])),   # translate_x: content moves right
        5: (eye, jnp.array([-MAX_TRANSLATE * s * h, 0.0])),   # translate_y: content moves down
    }
    matrix, offset = table.get(op, (eye, zero))
    return matrix.astype(jnp.float32), offset.astype(jnp.float32)


def apply_op(op: int, image: Array, m: Array, sign: Array) -> Array:
    """Op number `op` (an index into OPS, a Python int) on one raw (H, W, C) image in [0, 1]."""
    name = OPS[op]
    h, w, _ = image.shape
    if name == "identity":
        out = image
    elif name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        out = _affine(image, *_geometry(op, m, sign, h, w))
    elif name == "brightness":
        out = image * (1.0 + MAX_ENHANCE * sign * m)
    elif name == "contrast":
        mu = jnp.mean(image)
        out = mu + (1.0 + MAX_ENHANCE * sign * m) * (image - mu)
    elif name == "solarize":
        out = jnp.where(image >= 1.0 - m, 1.0 - image, image)
    elif name == "posterize":
        shift = 2.0 ** jnp.round(4.0 * m)  # 2^(8 - b)
        out = jnp.floor(jnp.round(image * 255.0) / shift) * shift / 255.0
    else:  # equalize: each value's empirical CDF in its channel
        flat = image.reshape(h * w, -1)
        ranks = jax.vmap(lambda col: jnp.searchsorted(jnp.sort(col), col, side="right"),
                         in_axes=1, out_axes=1)(flat)
        out = (ranks / (h * w)).reshape(image.shape).astype(image.dtype)
    return jnp.clip(out, 0.0, 1.0)


def _one_image(image: Array, op: Array, m: Array, sign: Array) -> Array:
    branches = [functools.partial(apply_op, k) for k in range(len(OPS))]
    return jax.lax.switch(op, branches, image, m, sign)


def _raw(images: Array, norm_stats) -> tuple[Array, Any]:
    if norm_stats is None:
        return images, None
    mean, std = (jnp.asarray(np.asarray(v, np.float32)) for v in norm_stats)
    return images * std + mean, (mean, std)


def _back(raw: Array, stats) -> Array:
    return raw if stats is None else (raw - stats[0]) / stats[1]


def _draws(key: Array, n: int) -> tuple[Array, Array, Array]:
    k_op, k_m, k_sign = jax.random.split(key, 3)
    ops = jax.random.randint(k_op, (n,), 0, len(OPS))
    mags = jax.random.uniform(k_m, (n,))
    signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n,)), 1.0, -1.0)
    return ops, mags, signs


def trivial_augment(key: Array, images: Array, norm_stats=None) -> Array:
    """TrivialAugment: per image one op of OPS, uniformly, at a uniform magnitude in [0, 1]."""
    raw, stats = _raw(images, norm_stats)
    ops, mags, signs = _draws(key, images.shape[0])
    out = jax.vmap(_one_image)(raw.astype(jnp.float32), ops, mags, signs)
    return _back(out, stats).astype(images.dtype)


def rand_augment(key: Array, images: Array, norm_stats=None, *, num_ops: int = 2,
                 magnitude: float = 0.5) -> Array:
    """RandAugment: per image `num_ops` ops of OPS in sequence, each uniformly, at `magnitude`."""
    if not 0.0 <= magnitude <= 1.0 or num_ops < 1:
        raise ValueError(f"rand_augment: magnitude {magnitude!r} in [0, 1] and num_ops "
                         f"{num_ops!r} >= 1 expected")
    raw, stats = _raw(images, norm_stats)
    out = raw.astype(jnp.float32)
    n = images.shape[0]
    for sub in jax.random.split(key, num_ops):
        ops, _, signs = _draws(sub, n)
        out = jax.vmap(_one_image)(out, ops, jnp.full((n,), magnitude, jnp.float32), signs)
    return _back(out, stats).astype(images.dtype)
