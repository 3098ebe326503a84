"""Convolution lowerings: `lax.conv_general_dilated` with the weight gradient summed over batch chunks.

The kernel gradient of a convolution is a contraction over every (image, output pixel) pair:
dL/dW[i, j, c, k] = sum_{b, h, w} x[b, s*h + i, s*w + j, c] * dy[b, h, w, k]. XLA:CPU (jax
0.10.2, Eigen's spatial convolution) computes it as one convolution whose contraction runs over
the whole batch, and on the small-channel layers of CIFAR ResNets and MNIST CNNs that runs at
13-37 GFLOP/s, 3-4x slower than the forward pass and the input gradient of the same layer
(`benchmarks/conv_speed.py` measures it). The same sum, taken as the total of per-chunk kernel
gradients over chunks of a few images, keeps each chunk's operands in cache and runs 2-4x faster
on this backend. The result differs from the single contraction only by the order of the float32
additions.

`chunked(images)` returns a drop-in for `lax.conv_general_dilated` (same signature, so it fits
`flax.linen.Conv(conv_general_dilated=...)`): the forward pass and the input gradient are XLA's
own; only the kernel gradient is chunked. Second derivatives go through the chunked rule's own
autodiff (the rule is written with `jax.vjp`), so Hessian-vector products still work.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

# Images per chunk of the kernel gradient. 8 was the best or within noise of the best on every
# layer shape `benchmarks/conv_speed.py --layers` times here (32x32x16 to 7x7x64, batch 128 and
# 512); larger chunks fall out of cache, smaller ones pay per-call overhead.
DEFAULT_IMAGES_PER_CHUNK = 8


def _batch_axes(dimension_numbers, ndim: int) -> tuple[int, int]:
    """The batch axes of the input and of the output under `dimension_numbers`."""
    dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    return dn.lhs_spec[0], dn.out_spec[0]


def chunked(images_per_chunk: int = DEFAULT_IMAGES_PER_CHUNK):
    """`lax.conv_general_dilated` whose kernel gradient is summed over chunks of the batch.

    Args:
      images_per_chunk: batch entries per chunk (>= 1); a batch no larger than this takes
        XLA's kernel gradient unchanged.

    Returns:
      A function with `lax.conv_general_dilated`'s signature and forward value.
    """
    if int(images_per_chunk) < 1:
        raise ValueError(f"images_per_chunk: {images_per_chunk}; expected an integer >= 1")
    n = int(images_per_chunk)

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             batch_group_count=1, precision=None, preferred_element_type=None):
        conv = functools.partial(
            lax.conv_general_dilated, window_strides=window_strides, padding=padding,
            lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            batch_group_count=batch_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
        axes = _batch_axes(dimension_numbers, lhs.ndim)
        batch = lhs.shape[axes[0]]
        # batch_group_count splits the batch itself (depthwise kernel gradients): not chunkable.
        if batch <= n or batch_group_count != 1:
            return conv(lhs, rhs)
        return _chunked_kernel_grad(conv, axes, n)(lhs, rhs)

    return conv_general_dilated


def _chunked_kernel_grad(conv, axes: tuple[int, int], n: int):
    x_axis, y_axis = axes

    @jax.custom_vjp
    def f(x, w):
        return conv(x, w)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(res, dy):
        x, w = res
        dx = jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0]
        dw = None
        batch = x.shape[x_axis]
        for start in range(0, batch, n):
            stop = min(start + n, batch)
            xc = lax.slice_in_dim(x, start, stop, axis=x_axis)
            dyc = lax.slice_in_dim(dy, start, stop, axis=y_axis)
            part = jax.vjp(lambda w_, xc=xc: conv(xc, w_), w)[1](dyc)[0]
            dw = part if dw is None else dw + part
        return dx, dw

    f.defvjp(fwd, bwd)
    return f
