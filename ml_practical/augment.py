"""Data augmentation on device: jittable pure functions of (key, images), the chapter's 12.6.1.

Every random transform has the signature `fn(key, images, **options) -> images`, with `images` a
float (N, H, W, C) batch. The key is explicit, nothing draws Python randomness, and every shape is
static, so a transform runs inside the jitted train step and inside a `lax.scan` over an epoch.
Each image in a batch gets its own draw (its own shift, angle, box), except in `mixup` / `cutmix`,
which follow their papers' reference code: one mixing coefficient per batch. The public
transforms are `jax.jit`-wrapped with their options static (so tuple options must be tuples, not
lists): an eager call compiles once, and inside another jit they are simply inlined.

Background. Images arrive already normalized, so "black" is not 0. Where a transform uncovers
pixels (shift, rotation), they are filled with the per-image, per-channel minimum (`fill="min"`):
for MNIST, normalized globally, that is exactly the background value; for natural images it is the
darkest value of that channel, close to the zero padding torchvision's `RandomCrop(padding=...)`
applies before normalization. `fill="edge"` replicates the border pixels instead.

Transforms that change the labels, `mixup` and `cutmix`, take and return the one-hot labels too;
they are not in `get`, whose transforms map images to images.

Config names (`cfg.train.augment`) resolve through `get(name)`:
  "none"          no augmentation (None)
  "shift"         scaled_shift: up to 2 px per 28 px of side (MNIST: random_shift, max_shift=2;
                  8x8 digits: 0.57 px, bilinear)
  "shift_rotate"  random_rotation up to 10 degrees, then the same scaled_shift
  "flip_crop"     random_flip, then random_shift 4 px filled with the raw zero: torchvision's
                  RandomHorizontalFlip + RandomCrop(32, padding=4), whose zero padding comes
                  before Normalize, i.e. -mean/std after it (`raw_zero`)
  "erasing"       random_erasing with its defaults
  "color_jitter"  color_jitter with its defaults (brightness 0.2, contrast 0.2)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

Array = jax.Array
Augment = Callable[[Array, Array], Array]  # (key, images) -> images

FILLS = ("edge", "min", "value")
# torchvision's RandomErasing draws up to 10 boxes and keeps the first that fits; so do we,
# all 10 at once so the shape is static.
ERASING_ATTEMPTS = 10

# Each call to a jax.random sampler compiles its own threefry hash, about 0.3 s of XLA time on a
# CPU; so each transform draws all its uniforms in one call and slices them.


# --------------------------------------------------------------------------------------------------
# Validation (runs at trace time on static Python values)


def _check_images(images: Array, name: str = "images") -> tuple[int, int, int, int]:
    if images.ndim != 4:
        raise ValueError(f"{name}: expected a (N, H, W, C) batch; got shape {tuple(images.shape)}")
    return tuple(int(s) for s in images.shape)


def _check_probability(value: float, field: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{field}: {value!r} is not a probability; expected 0 <= {field} <= 1")


def _check_fill(fill: str, field: str) -> None:
    if fill not in FILLS:
        raise ValueError(f"{field}: unknown {fill!r}; expected one of {list(FILLS)}")


def _check_range(bounds: Sequence[float], field: str, *, low: float, high: float) -> None:
    if len(bounds) != 2 or not low <= bounds[0] <= bounds[1] <= high:
        raise ValueError(f"{field}: {tuple(bounds)!r}; expected (lo, hi) with "
                         f"{low} <= lo <= hi <= {high}")


def _check_labels(images: Array, labels_onehot: Array) -> None:
    if labels_onehot.ndim != 2 or labels_onehot.shape[0] != images.shape[0]:
        raise ValueError(f"labels_onehot: expected shape (N, num_classes) with N = "
                         f"{images.shape[0]}; got {tuple(labels_onehot.shape)}")


def _beta_symmetric(key: Array, alpha: float) -> Array:
    """lam ~ Beta(alpha, alpha) as sigmoid(log G1 - log G2), G1, G2 ~ Gamma(alpha) independent.

    G1 / (G1 + G2) is Beta(alpha, alpha); drawing log G keeps it exact for small alpha, where G
    underflows to 0 (what jax.random.beta does too, with two gamma calls instead of one).
    """
    log_g = jax.random.loggamma(key, jnp.full((2,), alpha, jnp.float32))
    return jax.nn.sigmoid(log_g[0] - log_g[1])


def _permutation(uniforms: Array) -> Array:
    """A uniformly random permutation: the argsort of i.i.d. uniforms (ties have probability ~0)."""
    return jnp.argsort(uniforms)


def _background(images: Array) -> Array:
    """The per-image, per-channel minimum, shape (N, 1, 1, C): the fill for uncovered pixels."""
    return jnp.min(images, axis=(1, 2), keepdims=True)


# --------------------------------------------------------------------------------------------------
# Geometric transforms


@functools.partial(jax.jit, static_argnames=("p",))
def random_flip(key: Array, images: Array, p: float = 0.5) -> Array:
    """Horizontal flip of each image with probability p (torchvision's RandomHorizontalFlip).

    The oldest label-preserving augmentation (Krizhevsky et al. 2012, "ImageNet Classification
    with Deep Convolutional Neural Networks"). Only for data whose labels survive a mirror:
    natural images yes, digits no.

    Args:
      key: PRNG key.
      images: (N, H, W, C) batch.
      p: probability that an image is flipped, independently per image.

    Returns:
      The batch with a random subset of images mirrored left-right (axis 2).
    """
    _check_images(images)
    _check_probability(p, "random_flip.p")
    flip = jax.random.bernoulli(key, p, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


@functools.partial(jax.jit, static_argnames=("fill",))
def shift_images(images: Array, shifts: Array, fill: str = "min",
                 fill_value: Array | float = 0.0) -> Array:
    """Translate each image by an integer number of pixels: the deterministic core of random_shift.

    out[i, y, x] = images[i, y - dy_i, x - dx_i] where that pixel exists, and the fill otherwise:
    numpy's `np.roll` without the wrap-around. A gather, so any shift works without a static pad.

    Args:
      images: (N, H, W, C) batch.
      shifts: (N, 2) integers (dy, dx); positive dy moves content down, positive dx right.
      fill: "min" fills uncovered pixels with the per-image, per-channel minimum (the background
        of normalized MNIST); "edge" replicates the border pixel; "value" uses `fill_value`.
      fill_value: for fill "value": a scalar, or an array broadcastable to (H, W, C) (a
        per-channel (C,) value, or per pixel), e.g. `raw_zero(norm_stats)`.

    Returns:
      The shifted batch, same shape and dtype.
    """
    n, h, w, _ = _check_images(images)
    _check_fill(fill, "shift_images.fill")
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts: expected shape ({n}, 2); got {tuple(shifts.shape)}")
    shifts = shifts.astype(jnp.int32)
    rows = jnp.arange(h)[None, :] - shifts[:, 0:1]  # (N, H): source row of each output row
    cols = jnp.arange(w)[None, :] - shifts[:, 1:2]  # (N, W)
    # Clipping the source index is edge replication; "min" then overwrites the uncovered pixels.
    out = jnp.take_along_axis(images, jnp.clip(rows, 0, h - 1)[:, :, None, None], axis=1)
    out = jnp.take_along_axis(out, jnp.clip(cols, 0, w - 1)[:, None, :, None], axis=2)
    if fill == "edge":
        return out
    inside = (((rows >= 0) & (rows < h))[:, :, None, None]
              & ((cols >= 0) & (cols < w))[:, None, :, None])
    if fill == "value":
        return jnp.where(inside, out, jnp.asarray(fill_value, images.dtype))
    return jnp.where(inside, out, _background(images))


@functools.partial(jax.jit, static_argnames=("num_images", "max_shift"))
def sample_shifts(key: Array, num_images: int, max_shift: int) -> Array:
    """The (N, 2) integer shifts (dy, dx) random_shift draws: uniform on [-max_shift, max_shift]."""
    return jax.random.randint(key, (num_images, 2), -max_shift, max_shift + 1)


@functools.partial(jax.jit, static_argnames=("max_shift", "fill"))
def random_shift(key: Array, images: Array, max_shift: int = 2, fill: str = "min",
                 fill_value: Array | float = 0.0) -> Array:
    """Random translation of each image by up to max_shift pixels on each axis.

    The "random crop with padding" of the chapter (torchvision's `RandomCrop(size,
    padding=max_shift)`, used on CIFAR since Krizhevsky et al. 2012 and He et al. 2016, "Deep
    Residual Learning for Image Recognition"): padding by m and cropping at a uniform offset
    o in [0, 2m] is a shift by m - o, uniform on [-m, m], independently on each axis.

    Args:
      key: PRNG key.
      images: (N, H, W, C) batch.
      max_shift: the largest shift in pixels, >= 0.
      fill: "min" (per-image, per-channel minimum), "edge" (replicate the border) or "value"
        (`fill_value`; torchvision's zero padding of raw images is `raw_zero(norm_stats)`).
      fill_value: see `shift_images`.

    Returns:
      The shifted batch, same shape and dtype.
    """
    n, _, _, _ = _check_images(images)
    if int(max_shift) != max_shift or max_shift < 0:
        raise ValueError(f"random_shift.max_shift: {max_shift!r}; expected an integer >= 0")
    return shift_images(images, sample_shifts(key, n, int(max_shift)), fill=fill,
                        fill_value=fill_value)


def raw_zero(norm_stats: tuple[Any, Any] | None) -> np.ndarray:
    """Where a raw 0 lands after normalization, (0 - mean) / std, as float32 (scalar, (C,) or
    (H, W, C), the shape of the statistics): the fill of torchvision's zero padding
    (`RandomCrop(padding=...)` runs before `Normalize`). None (unnormalized data): 0."""
    if norm_stats is None:
        return np.zeros((), np.float32)
    mean, std = (np.asarray(v, np.float64) for v in norm_stats)
    return ((0.0 - mean) / std).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("fill",))
def rotate_images(images: Array, degrees: Array, fill: str = "min") -> Array:
    """Rotate each image about its centre by its own angle: random_rotation's deterministic core.

    Positive angles turn the picture counter-clockwise as displayed (row 0 at the top), the
    convention of torchvision's `rotate` and numpy's `np.rot90`. Output pixel (y, x) samples the
    input at the inverse rotation about c = ((H-1)/2, (W-1)/2):
        y' = c_y + (x - c_x) sin t + (y - c_y) cos t,
        x' = c_x + (x - c_x) cos t - (y - c_y) sin t,
    by bilinear interpolation (`jax.scipy.ndimage.map_coordinates`, order=1).

    Args:
      images: (N, H, W, C) batch.
      degrees: (N,) angles in degrees.
      fill: "min" fills the corners uncovered by the rotation with the per-image, per-channel
        minimum; "edge" takes the nearest border pixel.

    Returns:
      The rotated batch, same shape and dtype.
    """
    n, h, w, _ = _check_images(images)
    _check_fill(fill, "rotate_images.fill")
    if degrees.shape != (n,):
        raise ValueError(f"degrees: expected shape ({n},); got {tuple(degrees.shape)}")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                        jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")

    def source(angle):  # () -> the input coordinates each output pixel samples
        t = jnp.deg2rad(angle.astype(jnp.float32))
        cos, sin = jnp.cos(t), jnp.sin(t)
        return [cy + x * sin + y * cos, cx + x * cos - y * sin]

    return _resample(images, degrees, source, fill)


def _resample(images: Array, params: Array, source: Callable, fill: str) -> Array:
    """Bilinear resampling of each image at `source(params[i])` (a [rows, cols] pair of (H, W)
    coordinate arrays), uncovered pixels filled per `fill` ("min" or "edge"): the core of
    `rotate_images` and `translate_images`."""
    mode = "nearest" if fill == "edge" else "constant"

    def one(image, p):  # (H, W, C), one image's parameters
        src = source(p)

        def channel(plane):
            return ndimage.map_coordinates(plane, src, order=1, mode=mode, cval=0.0)

        return jax.vmap(channel, in_axes=2, out_axes=2)(image)

    # map_coordinates wants a static cval, and the background is data. Bilinear weights sum to 1,
    # so resampling (x - bg) with cval 0 and adding bg back is the same as resampling x with cval bg.
    background = _background(images)
    out = jax.vmap(one)((images - background).astype(jnp.float32), params)
    return (out + background).astype(images.dtype)


@functools.partial(jax.jit, static_argnames=("max_degrees", "fill"))
def random_rotation(key: Array, images: Array, max_degrees: float = 10.0,
                    fill: str = "min") -> Array:
    """Rotation of each image by an angle uniform on [-max_degrees, max_degrees].

    torchvision's `RandomRotation(max_degrees)` with bilinear interpolation; small rotations
    (about 10-15 degrees) are the classic label-preserving distortion for digits (Simard et al.
    2003, "Best Practices for Convolutional Neural Networks Applied to Visual Document Analysis").

    Args:
      key, images: the PRNG key and the (N, H, W, C) batch.
      max_degrees: the largest angle in degrees, >= 0.
      fill: as in `rotate_images` ("min" or "edge").

    Returns:
      The rotated batch (shape and dtype of `images`).
    """
    n, _, _, _ = _check_images(images)
    if max_degrees < 0:
        raise ValueError(f"random_rotation.max_degrees: {max_degrees!r}; expected >= 0")
    degrees = jax.random.uniform(key, (n,), minval=-max_degrees, maxval=max_degrees)
    return rotate_images(images, degrees, fill=fill)


def translate_images(images: Array, shifts: Array, fill: str = "min") -> Array:
    """Translate each image by a real-valued (dy, dx): bilinear resampling, for sub-pixel shifts.

    out[i, y, x] = images[i, y - dy_i, x - dx_i] interpolated bilinearly
    (`jax.scipy.ndimage.map_coordinates`, order=1); uncovered pixels take the fill as in
    `rotate_images` ("min": the per-image, per-channel minimum; "edge": the nearest border
    pixel). For integer shifts this equals `shift_images` (tested).

    Args:
      images: (N, H, W, C) batch.
      shifts: (N, 2) floats (dy, dx); positive dy moves content down, positive dx right.
      fill: "min" or "edge".
    """
    n, h, w, _ = _check_images(images)
    _check_fill(fill, "translate_images.fill")
    if fill == "value":
        raise ValueError("translate_images.fill: 'value' is not supported; expected 'min' or "
                         "'edge'")
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts: expected shape ({n}, 2); got {tuple(shifts.shape)}")
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
    return _resample(images, shifts.astype(jnp.float32),
                     lambda shift: [y - shift[0], x - shift[1]], fill)


# The presets' shift, stated for MNIST: up to 2 pixels of a 28-pixel side.
SHIFT_PIXELS_PER_28 = 2


def scaled_shift(key: Array, images: Array, pixels_per_28: float = SHIFT_PIXELS_PER_28,
                 fill: str = "min") -> Array:
    """Random translation whose size scales with the image: up to `pixels_per_28` / 28 of the
    side on each axis (2 px on 28x28 MNIST, 0.57 px on the 8x8 digits, 2.29 px on 32x32).

    Where that is a whole number of pixels on both axes (MNIST's 2) this is `random_shift` itself,
    integer shifts uniform on {-m, ..., m}; otherwise each image's (dy, dx) is uniform on
    [-m_y, m_y] x [-m_x, m_x] and applied by bilinear resampling (`translate_images`). Why: a
    preset written as "2 px" is a quarter of an 8-pixel digit, a different augmentation from the
    one the chapter means.
    """
    _, h, w, _ = _check_images(images)
    my, mx = pixels_per_28 * h / 28.0, pixels_per_28 * w / 28.0
    if my == mx and float(my).is_integer():
        return random_shift(key, images, max_shift=int(my), fill=fill)
    u = jax.random.uniform(key, (images.shape[0], 2), minval=-1.0, maxval=1.0)
    return translate_images(images, u * jnp.asarray([my, mx], jnp.float32), fill=fill)


# --------------------------------------------------------------------------------------------------
# Photometric transforms


@functools.partial(jax.jit, static_argnames=("brightness", "contrast", "saturation"))
def color_jitter(key: Array, images: Array, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.0) -> Array:
    """Random brightness, contrast and (for RGB) saturation of each image, in that order.

    torchvision's `ColorJitter` (as in Krizhevsky et al. 2012's colour augmentation, simplified),
    adapted to normalized images. Each factor is drawn per image, uniform on [1 - s, 1 + s]:
      brightness b: x <- m0 + b (x - m0), m0 the per-image, per-channel minimum (the "black" that
                    torchvision's x <- b x scales towards, in normalized units);
      contrast c:   x <- mu + c (x - mu), mu the per-image mean over all pixels and channels;
      saturation s: x <- g + s (x - g), g the per-pixel mean over channels; only for C == 3, and
                    a no-op for other C, as torchvision leaves grayscale images alone.
    Unlike torchvision, the order is fixed and nothing is clipped (normalized data has no [0, 1]).

    Args:
      key: PRNG key.
      images: (N, H, W, C) batch.
      brightness, contrast, saturation: strengths s in [0, 1]; 0 turns that part off.

    Returns:
      The jittered batch, same shape and dtype.
    """
    n, _, _, c = _check_images(images)
    for field, value in (("brightness", brightness), ("contrast", contrast),
                         ("saturation", saturation)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"color_jitter.{field}: {value!r}; expected 0 <= {field} <= 1")
    u = jax.random.uniform(key, (3, n, 1, 1, 1), images.dtype, -1.0, 1.0)
    # x + (f - 1)(x - ref) with f - 1 = s u, u ~ U(-1, 1): exactly the identity when s == 0.
    out = images
    if brightness > 0:
        out = out + brightness * u[0] * (out - _background(out))
    if contrast > 0:
        out = out + contrast * u[1] * (out - out.mean(axis=(1, 2, 3), keepdims=True))
    if saturation > 0 and c == 3:
        out = out + saturation * u[2] * (out - out.mean(axis=3, keepdims=True))
    return out


@functools.partial(jax.jit, static_argnames=("p", "scale", "ratio", "value"))
def random_erasing(key: Array, images: Array, p: float = 0.25,
                   scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3),
                   value: float | str = 0.0) -> Array:
    """Random Erasing (Zhong et al. 2017, "Random Erasing Data Augmentation"; also "Cutout").

    With probability p per image, a rectangle of area A = s H W, s ~ U(scale), and aspect
    h / w = r, log r ~ U(log ratio), gets h = round(sqrt(A r)), w = round(sqrt(A / r)) and a
    top-left corner uniform over the positions where it fits; its pixels are replaced by `value`.
    The paper redraws until the box fits; like torchvision we try 10 draws (all at once, so the
    shape stays static), keep the first that fits, and erase nothing if none does. The erased
    area is then A up to the rounding of h and w. Draws of log r are uniform, as in torchvision,
    so tall and wide boxes are equally likely.

    Args:
      key: PRNG key.
      images: (N, H, W, C) batch.
      p: probability that an image gets a box.
      scale: (lo, hi) bounds on the erased fraction of the image, within [0, 1].
      ratio: (lo, hi) bounds on the aspect ratio h / w, > 0.
      value: the fill, a number (0.0 is the dataset mean of normalized data), or "random": each
        pixel uniform between the image's per-channel minimum and maximum, the paper's random
        values in [0, 255] carried to normalized units.

    Returns:
      The batch with the boxes filled, same shape and dtype.
    """
    n, h, w, c = _check_images(images)
    _check_probability(p, "random_erasing.p")
    _check_range(scale, "random_erasing.scale", low=0.0, high=1.0)
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"random_erasing.ratio: {tuple(ratio)!r}; expected (lo, hi) with "
                         f"0 < lo <= hi")
    if isinstance(value, str) and value != "random":
        raise ValueError(f"random_erasing.value: unknown {value!r}; expected a number or 'random'")
    draw_key, noise_key = jax.random.split(key)
    a = ERASING_ATTEMPTS
    u = jax.random.uniform(draw_key, (n, 2 * a + 3))
    area = (scale[0] + (scale[1] - scale[0]) * u[:, :a]) * (h * w)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[:, a:2 * a])
    box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_h >= 1) & (box_h <= h) & (box_w >= 1) & (box_w <= w)
    first = jnp.argmax(fits, axis=1)  # index of the first box that fits (0 if none does)
    box_h = jnp.take_along_axis(box_h, first[:, None], axis=1)[:, 0]
    box_w = jnp.take_along_axis(box_w, first[:, None], axis=1)[:, 0]
    erase = (u[:, 2 * a] < p) & jnp.any(fits, axis=1)
    # Corner uniform on {0, ..., H - h}: floor(u (H - h + 1)), clipped against u's float rounding.
    top = jnp.minimum(jnp.floor(u[:, 2 * a + 1] * (h - box_h + 1)).astype(jnp.int32), h - box_h)
    left = jnp.minimum(jnp.floor(u[:, 2 * a + 2] * (w - box_w + 1)).astype(jnp.int32), w - box_w)
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # (N, W)
    mask = in_rows[:, :, None, None] & in_cols[:, None, :, None] & erase[:, None, None, None]
    if value == "random":
        low, high = _background(images), jnp.max(images, axis=(1, 2), keepdims=True)
        fill = jax.random.uniform(noise_key, images.shape, images.dtype, low, high)
    else:
        fill = jnp.asarray(value, images.dtype)
    return jnp.where(mask, fill, images)


# --------------------------------------------------------------------------------------------------
# Label-mixing transforms


@functools.partial(jax.jit, static_argnames=("alpha",))
def mixup(key: Array, images: Array, labels_onehot: Array,
          alpha: float = 0.2) -> tuple[Array, Array]:
    """mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization").

    With lam ~ Beta(alpha, alpha) and a random permutation pi of the batch,
        x~_i = lam x_i + (1 - lam) x_pi(i),   y~_i = lam y_i + (1 - lam) y_pi(i).
    One lam per batch, pairs from a shuffled copy of the batch, as in the paper's code.

    Args:
      key: PRNG key.
      images: (N, H, W, C) batch.
      labels_onehot: (N, K) one-hot (or already soft) labels.
      alpha: Beta concentration, > 0; small alpha keeps lam near 0 or 1.

    Returns:
      (mixed images, mixed labels), each row of the labels still summing to 1.
    """
    _check_images(images)
    _check_labels(images, labels_onehot)
    if alpha <= 0:
        raise ValueError(f"mixup.alpha: {alpha!r}; expected > 0")
    lam_key, perm_key = jax.random.split(key)
    lam = _beta_symmetric(lam_key, alpha)
    perm = _permutation(jax.random.uniform(perm_key, (images.shape[0],)))
    mixed_images = lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * images[perm]
    lam_y = lam.astype(labels_onehot.dtype)
    mixed_labels = lam_y * labels_onehot + (1 - lam_y) * labels_onehot[perm]
    return mixed_images, mixed_labels


@functools.partial(jax.jit, static_argnames=("alpha",))
def cutmix(key: Array, images: Array, labels_onehot: Array,
           alpha: float = 1.0) -> tuple[Array, Array]:
    """CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers").

    With lam ~ Beta(alpha, alpha) and a random permutation pi of the batch, a box of size
    (floor(H sqrt(1 - lam)), floor(W sqrt(1 - lam))) centred at a uniform pixel, clipped to the
    image, is cut from x_pi(i) and pasted onto x_i. Since clipping can shrink the box, the label
    weight is recomputed from the pasted area, as in the paper's code:
        lam' = 1 - box area / (H W),   y~_i = lam' y_i + (1 - lam') y_pi(i).
    One box per batch, as in the paper's code.

    Args:
      key: PRNG key.
      images: (N, H, W, C) batch.
      labels_onehot: (N, K) one-hot (or already soft) labels.
      alpha: Beta concentration, > 0 (the paper uses 1, i.e. lam uniform).

    Returns:
      (images with the pasted box, mixed labels weighted by the exact pasted area).
    """
    _, h, w, _ = _check_images(images)
    _check_labels(images, labels_onehot)
    if alpha <= 0:
        raise ValueError(f"cutmix.alpha: {alpha!r}; expected > 0")
    n = images.shape[0]
    lam_key, draw_key = jax.random.split(key)
    lam = _beta_symmetric(lam_key, alpha)
    u = jax.random.uniform(draw_key, (n + 2,))
    perm = _permutation(u[:n])
    cut = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(h * cut).astype(jnp.int32)
    cut_w = jnp.floor(w * cut).astype(jnp.int32)
    cy = jnp.minimum(jnp.floor(u[n] * h).astype(jnp.int32), h - 1)  # uniform on {0, ..., H-1}
    cx = jnp.minimum(jnp.floor(u[n + 1] * w).astype(jnp.int32), w - 1)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    rows, cols = jnp.arange(h), jnp.arange(w)
    box = (((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :])
    mixed_images = jnp.where(box[None, :, :, None], images[perm], images)
    lam_area = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    lam_y = lam_area.astype(labels_onehot.dtype)
    mixed_labels = lam_y * labels_onehot + (1 - lam_y) * labels_onehot[perm]
    return mixed_images, mixed_labels


@functools.partial(jax.jit, static_argnames=("alpha",))
def mixup_per_sample(key: Array, images: Array, labels_onehot: Array,
                     alpha: float = 0.2) -> tuple[Array, Array]:
    """mixup with one lam_i ~ Beta(alpha, alpha) per example (timm's `mode="elem"`).

        x~_i = lam_i x_i + (1 - lam_i) x_pi(i),   y~_i = lam_i y_i + (1 - lam_i) y_pi(i),
    pi a random permutation of the batch, as in `mixup`.

    Returns:
      (mixed images, mixed labels).
    """
    _check_images(images)
    _check_labels(images, labels_onehot)
    if alpha <= 0:
        raise ValueError(f"mixup.alpha: {alpha!r}; expected > 0")
    n = images.shape[0]
    lam_key, perm_key = jax.random.split(key)
    lam = jax.vmap(lambda k: _beta_symmetric(k, alpha))(jax.random.split(lam_key, n))
    perm = _permutation(jax.random.uniform(perm_key, (n,)))
    lam_x = lam.astype(images.dtype).reshape((n,) + (1,) * (images.ndim - 1))
    lam_y = lam.astype(labels_onehot.dtype)[:, None]
    return (lam_x * images + (1 - lam_x) * images[perm],
            lam_y * labels_onehot + (1 - lam_y) * labels_onehot[perm])


LabelMixer = Callable[[Array, Array, Array], tuple[Array, Array]]


def label_mixer(mix: str, num_classes: int, *, mixup_alpha: float = 0.2,
                cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                per_sample: bool = False) -> LabelMixer | None:
    """The step's label-mixing transform `(key, images, int labels) -> (images, soft targets)`.

    mix: "none" (returns None), "mixup", "cutmix", or "mixup_cutmix": per batch, CutMix with
    probability `switch_prob` and mixup otherwise (timm's `Mixup(switch_prob=...)`), the choice
    drawn from its own part of the key. The targets are the mixed one-hot rows of
    `num_classes` classes; label smoothing is not applied here (the task applies it once, to
    the mixed targets: `tasks.Classification.soft_objective`).
    """
    if mix == "none":
        return None
    mix_mixup = functools.partial(mixup_per_sample if per_sample else mixup, alpha=mixup_alpha)
    mix_cutmix = functools.partial(cutmix, alpha=cutmix_alpha)
    if mix not in ("mixup", "cutmix", "mixup_cutmix"):
        raise ValueError(f"train.mix: unknown {mix!r}; expected 'none', 'mixup', 'cutmix' or "
                         "'mixup_cutmix'")

    def apply(key, images, labels):
        onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        if mix == "mixup":
            return mix_mixup(key, images, onehot)
        if mix == "cutmix":
            return mix_cutmix(key, images, onehot)
        choice_key, key = jax.random.split(key)
        use_cutmix = jax.random.uniform(choice_key) < switch_prob
        return jax.lax.cond(use_cutmix, lambda a: mix_cutmix(*a), lambda a: mix_mixup(*a),
                            (key, images, onehot))

    return apply


def mixer_from_config(cfg) -> LabelMixer | None:
    """`label_mixer` of a parsed config's `train.mix*` fields and `model.num_classes`."""
    t = cfg.train
    return label_mixer(t.mix, getattr(cfg.model, "num_classes", 0), mixup_alpha=t.mixup_alpha,
                       cutmix_alpha=t.cutmix_alpha, switch_prob=t.mix_switch_prob,
                       per_sample=t.mix_per_sample)


# --------------------------------------------------------------------------------------------------
# Composition and config names


def compose(*fns: Augment) -> Augment:
    """Chain (key, images) -> images transforms, left to right, each with its own split of the key.

    Args:
      *fns: transforms; none gives the identity.

    Returns:
      fn(key, images) applying fns[0] first.
    """
    def composed(key: Array, images: Array) -> Array:
        if not fns:
            return images
        for fn, sub_key in zip(fns, jax.random.split(key, len(fns))):
            images = fn(sub_key, images)
        return images

    return composed


def _flip_crop(norm_stats) -> Augment:
    zero = jnp.asarray(raw_zero(norm_stats))
    return compose(random_flip, lambda key, images: random_shift(
        key, images, max_shift=4, fill="value", fill_value=zero))


_NAMED: dict[str, Callable[[Any], Augment | None]] = {
    "none": lambda stats: None,
    "shift": lambda stats: scaled_shift,
    # The ablation's "small random shifts/rotations": rotate first, so an integer shift is exact.
    "shift_rotate": lambda stats: compose(
        lambda key, images: random_rotation(key, images, max_degrees=10.0), scaled_shift),
    "flip_crop": _flip_crop,
    "erasing": lambda stats: random_erasing,
    "color_jitter": lambda stats: color_jitter,
    "trivial_augment": lambda stats: _policy("trivial_augment", stats),
    "rand_augment": lambda stats, **kw: _policy("rand_augment", stats, **kw),
}
# Augmentations whose function depends on the data's normalization statistics.
USES_NORM_STATS = ("flip_crop", "trivial_augment", "rand_augment")


def _policy(name: str, stats, **options) -> Augment:
    from ml_practical import augment_policy  # the op tables; imported when a policy is used

    fn = getattr(augment_policy, name)
    return jax.jit(functools.partial(fn, norm_stats=stats, **options))

NAMES = tuple(sorted(_NAMED))


def get(name: str, norm_stats: tuple[Any, Any] | None = None, *, magnitude: float = 0.5,
        num_ops: int = 2) -> Augment | None:
    """The augmentation a config names (`cfg.train.augment`), or None for "none".

    Args:
      name: one of NAMES: "color_jitter", "erasing", "flip_crop", "none", "rand_augment",
        "shift", "shift_rotate", "trivial_augment".
      norm_stats: the data's (mean, std) (`data.Dataset.norm_stats`), for the names in
        USES_NORM_STATS: "flip_crop" pads with the raw zero, `raw_zero(norm_stats)`; the two
        policies (`augment_policy`) work on raw intensities.
      magnitude, num_ops: "rand_augment"'s M (in [0, 1]) and N (`train.augment_magnitude`,
        `train.augment_num_ops`).

    Returns:
      A jittable fn(key, images) -> images, or None.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in _NAMED:
        raise ValueError(f"train.augment: unknown {name!r}; expected one of {list(NAMES)}")
    if name == "rand_augment":
        return _NAMED[name](norm_stats, magnitude=magnitude, num_ops=num_ops)
    return _NAMED[name](norm_stats)
