"""Tests for ml_practical.augment: each transform against numpy or an exact property."""

# Compiling dominates the runtime, so tests share input shapes and static options (BATCH, _disks)
# wherever they can: a jitted transform called twice with the same shapes compiles once.

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import augment


BATCH = (8, 10, 10, 2)


def _images(n=8, h=10, w=10, c=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, h, w, c), jnp.float32)


def _disks(h=29):
    """(4, h, h, 1): two random images, then twice a centred disk (1 on a -0.5 background)."""
    yy, xx = np.mgrid[:h, :h] - (h - 1) / 2
    r = np.hypot(yy, xx)
    disk = np.where(r <= 8.0, 1.0, -0.5).astype(np.float32)
    noise = np.asarray(_images(n=2, h=h, w=h, c=1))[..., 0]
    return np.stack([noise[0], noise[1], disk, disk])[..., None], r


def _roll_with_fill(image, dy, dx, fill):
    """numpy reference: np.roll, with the wrapped-around rows / columns set to fill."""
    out = np.roll(image, (dy, dx), axis=(0, 1)).copy()
    if dy > 0:
        out[:dy] = fill
    elif dy < 0:
        out[dy:] = fill
    if dx > 0:
        out[:, :dx] = fill
    elif dx < 0:
        out[:, dx:] = fill
    return out


# --------------------------------------------------------------------------------------------------
# Shift


def test_shift_images_equals_numpy_roll_with_min_fill():
    images = _images()
    # Including shifts past the edge, which leave only fill.
    shifts = jnp.array([[0, 0], [2, -1], [-3, 3], [9, 0], [1, 11], [-10, 0], [0, -4], [5, 5]])
    out = np.asarray(augment.shift_images(images, shifts))
    x = np.asarray(images)
    for i, (dy, dx) in enumerate(np.asarray(shifts)):
        fill = x[i].min(axis=(0, 1))  # per-channel minimum
        np.testing.assert_array_equal(out[i], _roll_with_fill(x[i], dy, dx, fill))


def test_shift_images_edge_fill_replicates_border():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = np.asarray(augment.shift_images(jnp.asarray(image), jnp.array([[1, -2]]), fill="edge"))
    expected = np.pad(image[0, :, :, 0], ((1, 0), (0, 2)), mode="edge")[:4, 2:]
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_random_shift_uses_sampled_shifts_within_bound():
    shifts = np.asarray(augment.sample_shifts(jax.random.key(3), 500, 2))
    assert set(np.unique(shifts)) == {-2, -1, 0, 1, 2}
    assert np.all(np.abs(np.bincount(shifts.ravel() + 2) / 1000 - 0.2) < 0.05)  # uniform
    images, key = _images(), jax.random.key(3)
    np.testing.assert_array_equal(augment.random_shift(key, images, max_shift=2),
                                  augment.shift_images(images, augment.sample_shifts(key, 8, 2)))


# --------------------------------------------------------------------------------------------------
# Rotation


def test_rotate_90_equals_rot90_and_0_is_identity():
    x, _ = _disks()
    out = np.asarray(augment.rotate_images(jnp.asarray(x), jnp.array([90.0, 0.0, 0.0, -90.0])))
    # cos(90 deg) is -4e-8 in float32, so border samples leak a hair of fill: compare the interior.
    np.testing.assert_allclose(out[0, 1:-1, 1:-1, 0], np.rot90(x[0, :, :, 0])[1:-1, 1:-1],
                               atol=1e-5)
    np.testing.assert_allclose(out[1], x[1], atol=1e-6)
    np.testing.assert_allclose(out[3, 1:-1, 1:-1, 0], np.rot90(x[3, :, :, 0], k=-1)[1:-1, 1:-1],
                               atol=1e-5)


def test_rotation_preserves_centred_disk_and_fills_corners_with_min():
    x, r = _disks()
    out = np.asarray(augment.rotate_images(jnp.asarray(x), jnp.array([45.0, 0.0, 30.0, -17.0])))
    disk = x[2, ..., 0]  # background -0.5, as normalized data
    far = np.abs(r - 8.0) > 1.5  # away from the disk's edge, bilinear sampling is exact
    for i in (2, 3):
        np.testing.assert_allclose(out[i, ..., 0][far], disk[far], atol=1e-5)
        # Bilinear resampling of a rotated disk keeps its mass (sum above background) to < 1 %.
        np.testing.assert_allclose((out[i] + 0.5).sum(), (disk + 0.5).sum(), rtol=0.01)
    # Corners come from outside the image: filled with that image's minimum.
    np.testing.assert_allclose(out[2:, 0, 0, 0], -0.5, atol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0, 0], x[0].min(), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Flip


def test_flip_is_np_flip_or_identity_and_rate_is_p():
    images = _images(n=2000, h=4, w=5, c=1)
    out = np.asarray(augment.random_flip(jax.random.key(7), images, p=0.3))
    x = np.asarray(images)
    flipped = np.all(out == np.flip(x, axis=2), axis=(1, 2, 3))
    same = np.all(out == x, axis=(1, 2, 3))
    assert np.all(flipped ^ same)  # each image is exactly one of the two (random data: no symmetry)
    assert abs(flipped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 2000)


# --------------------------------------------------------------------------------------------------
# Erasing


def test_erasing_box_area_within_scale_and_rest_untouched():
    h = w = 28
    n, scale = 400, (0.02, 0.33)
    images = jax.random.uniform(jax.random.key(0), (n, h, w, 1))  # values in [0, 1)
    out = np.asarray(augment.random_erasing(jax.random.key(1), images, p=0.5, scale=scale,
                                            value=100.0))
    x = np.asarray(images)
    mask = out[..., 0] == 100.0
    np.testing.assert_array_equal(out[~mask], x[~mask])  # the rest untouched
    erased = mask.any(axis=(1, 2))
    assert abs(erased.mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    for m in mask[erased]:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        bh, bw = len(rows), len(cols)
        # A filled rectangle: every row and column of its bounding box is erased.
        assert m.sum() == bh * bw and np.ptp(rows) + 1 == bh and np.ptp(cols) + 1 == bw
        # h, w are sqrt(A r), sqrt(A / r) rounded (errors e <= 1/2), so
        # |h w - A| <= (h + w + 1) / 2 + 1/4.
        slack = ((bh + bw + 1) / 2 + 0.25) / (h * w)
        assert scale[0] - slack <= m.mean() <= scale[1] + slack


def test_erasing_random_value_spans_the_image_range():
    # Background -1 with one +1 pixel per image: the range the random fill must be uniform on.
    flat = np.full((50, 16, 16, 1), -1.0, np.float32)
    flat[:, 0, 0] = 1.0
    out = np.asarray(augment.random_erasing(jax.random.key(0), jnp.asarray(flat), p=1.0,
                                            value="random"))
    noise = out[(out != -1.0) & (out != 1.0)]
    assert noise.size > 50 * 0.02 * 256
    assert noise.min() >= -1.0 and noise.max() <= 1.0
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1 / np.sqrt(3)) < 0.05  # U(-1, 1)


# --------------------------------------------------------------------------------------------------
# Color jitter


def test_color_jitter_zero_strength_is_identity():
    images = _images()
    out = augment.color_jitter(jax.random.key(0), images, brightness=0.0, contrast=0.0,
                               saturation=0.0)
    np.testing.assert_array_equal(out, images)


def test_color_jitter_factors_act_as_documented():
    images = _images(n=200, c=1)
    x = np.asarray(images)
    # Contrast alone: the mean is kept, the spread about it scaled by c in [0.8, 1.2].
    out = np.asarray(augment.color_jitter(jax.random.key(1), images, brightness=0.0, contrast=0.2))
    assert out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
    c = out.std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
    assert c.min() >= 0.8 - 1e-5 and c.max() <= 1.2 + 1e-5 and c.max() - c.min() > 0.3
    # Brightness alone: the background (minimum) is kept, everything above it scaled by b.
    out = np.asarray(augment.color_jitter(jax.random.key(2), images, brightness=0.2, contrast=0.0))
    bg = x.min(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out.min(axis=(1, 2, 3), keepdims=True), bg, atol=1e-6)
    b = (out - bg).max(axis=(1, 2, 3)) / (x - bg).max(axis=(1, 2, 3))
    assert b.min() >= 0.8 - 1e-5 and b.max() <= 1.2 + 1e-5
    np.testing.assert_allclose(out - bg, b[:, None, None, None] * (x - bg), atol=1e-5)


def test_color_jitter_saturation_only_touches_rgb():
    gray = _images()  # C = 2: not RGB, so saturation does nothing
    np.testing.assert_array_equal(
        augment.color_jitter(jax.random.key(0), gray, 0.0, 0.0, saturation=0.5), gray)
    rgb = np.asarray(_images(c=3, seed=1))
    out = np.asarray(augment.color_jitter(jax.random.key(0), jnp.asarray(rgb), 0.0, 0.0, 0.5))
    # The per-pixel channel mean (the gray level) is kept, the chroma scaled by s in [0.5, 1.5].
    gray = rgb.mean(axis=3, keepdims=True)
    np.testing.assert_allclose(out.mean(axis=3, keepdims=True), gray, atol=1e-5)
    s = (out - gray).std(axis=(1, 2, 3)) / (rgb - gray).std(axis=(1, 2, 3))
    np.testing.assert_allclose(out - gray, s[:, None, None, None] * (rgb - gray), atol=1e-5)
    assert s.min() >= 0.5 - 1e-5 and s.max() <= 1.5 + 1e-5 and s.max() - s.min() > 0.2


# --------------------------------------------------------------------------------------------------
# mixup and CutMix


def test_mixup_images_and_labels_share_lambda():
    n = BATCH[0]
    images = _images()
    labels = jax.nn.one_hot(jnp.arange(n), n)  # class i = image i, so labels reveal the pairing
    out, mixed = map(np.asarray, augment.mixup(jax.random.key(4), images, labels, alpha=1.0))
    x = np.asarray(images)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-6)
    lam = mixed[np.arange(n), np.arange(n)]
    assert np.allclose(lam, lam[0])  # one lambda for the batch
    assert 0.0 < lam[0] < 1.0
    for i in range(n):
        others = mixed[i].copy()
        others[i] = 0
        j = int(others.argmax()) if others.max() > 0 else i  # pi(i); pi(i) == i leaves x_i as is
        np.testing.assert_allclose(out[i], lam[i] * x[i] + (1 - lam[i]) * x[j], atol=1e-5)


def test_cutmix_label_weight_equals_pasted_area():
    n, h, w, c = BATCH
    values = np.arange(1, n + 1, dtype=np.float32)
    images = jnp.asarray(np.broadcast_to(values[:, None, None, None], BATCH))
    labels = jax.nn.one_hot(jnp.arange(n), n)
    areas = []
    for seed in range(6):
        out, mixed = map(np.asarray, augment.cutmix(jax.random.key(seed), images, labels))
        np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-6)
        for i in range(n):
            own = out[i, ..., 0] == values[i]
            sources = np.unique(out[i][~own])
            if sources.size == 0:  # nothing pasted, or pasted from itself (pi(i) == i)
                continue
            assert sources.size == 1
            j = int(sources[0]) - 1
            np.testing.assert_allclose(mixed[i, i], own.mean(), atol=1e-6)
            np.testing.assert_allclose(mixed[i, j], 1.0 - own.mean(), atol=1e-6)
            pasted = ~own
            rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
            assert pasted.sum() == len(rows) * len(cols)  # a rectangle
            areas.append(pasted.mean())
    assert len(set(np.round(areas, 6))) > 2  # the box size varies between draws


# --------------------------------------------------------------------------------------------------
# Keys, jit, scan, config names

# The library's transforms are jax.jit-wrapped already; compose() results get jitted here, once.
_JITTED = {name: fn if hasattr(fn, "lower") else jax.jit(fn)
           for name, fn in ((n, augment.get(n)) for n in augment.NAMES if n != "none")}
_LABELLED = {"mixup": functools.partial(augment.mixup, alpha=1.0), "cutmix": augment.cutmix}
_IMAGE_ONLY = {
    "random_flip": augment.random_flip,
    "random_rotation": augment.random_rotation,
    **{f"get:{name}": fn for name, fn in _JITTED.items()},
}


@pytest.mark.parametrize("name", sorted(_IMAGE_ONLY) + sorted(_LABELLED))
def test_jit_same_key_same_output_different_key_different(name):
    images = _images()
    if name in _LABELLED:
        labels = jax.nn.one_hot(jnp.arange(BATCH[0]), BATCH[0])
        assert hasattr(getattr(augment, name), "lower")  # a jax.jit-wrapped function
        fn = functools.partial(lambda f, key, x: f(key, x, labels), _LABELLED[name])
    else:
        fn = _IMAGE_ONLY[name]
        assert hasattr(fn, "lower")
    a, b, c = (fn(jax.random.key(k), images) for k in (0, 0, 1))
    for u, v, w in zip(*(jax.tree.leaves(t) for t in (a, b, c))):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)
        assert not np.array_equal(u, w)
    assert jax.tree.leaves(a)[0].shape == images.shape


def test_composed_pipeline_runs_inside_scan_and_matches_loop():
    fn = _JITTED["shift_rotate"]
    images = _images()
    keys = jax.random.split(jax.random.key(0), 3)

    def body(x, key):
        y = fn(key, x)
        return y, y.sum()

    final, _ = jax.lax.scan(body, images, keys)
    looped = images
    for key in keys:
        looped = fn(key, looped)
    np.testing.assert_allclose(final, looped, atol=1e-5)


def test_compose_splits_key_in_order():
    images, key = _images(), jax.random.key(5)
    k1, k2 = jax.random.split(key)
    expected = augment.random_shift(k2, augment.random_flip(k1, images), max_shift=4,
                                    fill="value", fill_value=0.0)
    np.testing.assert_array_equal(augment.get("flip_crop")(key, images), expected)
    np.testing.assert_array_equal(augment.compose()(key, images), images)


def test_get_resolves_names_and_rejects_unknown():
    assert augment.get("none") is None
    images, key = _images(), jax.random.key(2)
    np.testing.assert_array_equal(augment.get("shift")(key, images),
                                  augment.scaled_shift(key, images))  # 28 px: random_shift, below
    np.testing.assert_array_equal(augment.get("erasing")(key, images),
                                  augment.random_erasing(key, images))
    expected = "train.augment: unknown 'mixup'; expected one of ['color_jitter', 'erasing', " \
               "'flip_crop', 'none', 'rand_augment', 'shift', 'shift_rotate', 'trivial_augment']"
    with pytest.raises(ValueError) as err:
        augment.get("mixup")
    assert str(err.value) == expected


def test_bad_arguments_raise_naming_the_field():
    images = _images()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"random_flip\.p"):
        augment.random_flip(key, images, p=1.5)
    with pytest.raises(ValueError, match=r"random_shift\.max_shift"):
        augment.random_shift(key, images, max_shift=-1)
    with pytest.raises(ValueError, match=r"shift_images\.fill: unknown 'zero'; expected one of"):
        augment.shift_images(images, jnp.zeros((8, 2), jnp.int32), fill="zero")
    with pytest.raises(ValueError, match=r"random_erasing\.scale"):
        augment.random_erasing(key, images, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match=r"images: expected a \(N, H, W, C\) batch"):
        augment.random_flip(key, images[0])
    with pytest.raises(ValueError, match=r"labels_onehot"):
        augment.mixup(key, images, jnp.zeros((3, 10)))


def test_flip_crop_pads_with_the_raw_zero_like_torchvision():
    """torchvision: RandomCrop(8, padding=4) pads raw images with 0, then Normalize. Here the
    images arrive normalized, so the padding must be (0 - mean) / std per channel."""
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.2, 1.0, size=(16, 8, 8, 3)).astype(np.float32)
    mean = raw.mean((0, 1, 2))
    std = raw.std((0, 1, 2))
    normalized = (raw - mean) / std
    fn = augment.get("flip_crop", norm_stats=(mean, std))
    out = np.asarray(fn(jax.random.key(0), jnp.asarray(normalized)))
    back = out * std + mean  # undo the normalization: padding must be exactly raw 0
    k_flip, k_shift = jax.random.split(jax.random.key(0))
    shifts = np.asarray(augment.sample_shifts(k_shift, 16, 4))
    flipped = np.asarray(augment.random_flip(k_flip, jnp.asarray(raw)))
    for i, (dy, dx) in enumerate(shifts):
        padded = np.pad(flipped[i], ((4, 4), (4, 4), (0, 0)))  # torch's zero padding
        oy, ox = 4 - dy, 4 - dx  # the crop offset that is this shift
        np.testing.assert_allclose(back[i], padded[oy:oy + 8, ox:ox + 8], atol=1e-5)
    assert (shifts != 0).any()
    np.testing.assert_allclose(augment.raw_zero((mean, std)), -mean / std, rtol=1e-6)


def test_translate_images_equals_shift_images_on_integer_shifts():
    rng = np.random.default_rng(11)
    images = jnp.asarray(rng.normal(size=(4, 8, 9, 2)).astype(np.float32))
    shifts = jnp.asarray([[1, -2], [0, 0], [-3, 1], [2, 2]])
    for fill in ("min", "edge"):
        np.testing.assert_allclose(augment.translate_images(images, shifts.astype(jnp.float32), fill),
                                   augment.shift_images(images, shifts, fill), atol=1e-6)
    # A half-pixel shift is the mean of the two neighbours (bilinear), inside the image.
    half = augment.translate_images(images, jnp.asarray([[0.0, 0.5]] * 4), "edge")
    np.testing.assert_allclose(half[:, :, 1:], 0.5 * (images[:, :, 1:] + images[:, :, :-1]),
                               atol=1e-6)


def test_scaled_shift_is_mnists_integer_shift_and_a_fraction_of_a_small_image():
    key = jax.random.key(3)
    rng = np.random.default_rng(12)
    mnist = jnp.asarray(rng.normal(size=(6, 28, 28, 1)).astype(np.float32))
    # 28 px: exactly the preset the MNIST study always used (random_shift, 2 px), bit for bit.
    np.testing.assert_array_equal(augment.scaled_shift(key, mnist),
                                  augment.random_shift(key, mnist, max_shift=2))
    np.testing.assert_array_equal(augment.get("shift")(key, mnist),
                                  augment.random_shift(key, mnist, max_shift=2))
    # 8 px: at most 2 * 8 / 28 = 0.571 px, so a single bright pixel's mass moves that far at most.
    digits = jnp.zeros((200, 8, 8, 1)).at[:, 4, 4, 0].set(1.0)
    out = augment.scaled_shift(jax.random.key(4), digits)
    ys, xs = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    mass = np.asarray(out[..., 0]) - np.asarray(out[..., 0]).min(axis=(1, 2), keepdims=True)
    cy = (mass * ys).sum((1, 2)) / mass.sum((1, 2))
    cx = (mass * xs).sum((1, 2)) / mass.sum((1, 2))
    assert np.max(np.abs(cy - 4)) <= 2 * 8 / 28 + 1e-5 and np.max(np.abs(cx - 4)) <= 0.5715
    assert np.max(np.abs(cx - 4)) > 0.4          # the whole range is used
    assert np.mean(np.abs(cx - np.round(cx)) > 1e-3) > 0.5   # sub-pixel, not integer


# --------------------------------------------------------------------------------------------------
# Pinned by the equations: each test below fails for a plausible one-line slip in augment.py that
# the property tests above let through (a box side of H (1 - lam), a per-channel contrast pivot,
# an erasing corner that never reaches the bottom edge, Beta(1/alpha, 1/alpha) for alpha != 1).

_NUM_DRAWS = 2000


def _cutmix_box_numpy(lam, u_cy, u_cx, h, w):
    """Yun et al.'s box in numpy: sides floor(H sqrt(1 - lam)), floor(W sqrt(1 - lam)), centred at
    (floor(u H), floor(u W)), clipped to the image (the paper's code, `rand_bbox`)."""
    cut_h, cut_w = int(np.floor(h * np.sqrt(1.0 - lam))), int(np.floor(w * np.sqrt(1.0 - lam)))
    cy, cx = min(int(np.floor(u_cy * h)), h - 1), min(int(np.floor(u_cx * w)), w - 1)
    y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    box = np.zeros((h, w), bool)
    box[y0:y1, x0:x1] = True
    return box


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_cutmix_box_is_the_papers_box_for_the_drawn_lambda(alpha):
    # The same draws as augment.cutmix (lam from the first half of the key, the permutation and
    # the centre from the second), then the box by the paper's equation. H != W, so a side of
    # H (1 - lam) or the two sides swapped differ from floor(H sqrt(1 - lam)).
    n, h, w = 4, 20, 28
    images = jnp.asarray(np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None,
                                                                                None], (n, h, w, 1)))
    labels = jax.nn.one_hot(jnp.arange(n), n)
    for seed in range(8):
        key = jax.random.key(seed)
        out, _ = augment.cutmix(key, images, labels, alpha=alpha)
        lam_key, draw_key = jax.random.split(key)
        lam = float(augment._beta_symmetric(lam_key, alpha))
        u = np.asarray(jax.random.uniform(draw_key, (n + 2,)))
        box = _cutmix_box_numpy(lam, u[n], u[n + 1], h, w)
        perm = np.argsort(u[:n])  # augment._permutation: the ranks of the uniforms
        np.testing.assert_array_equal(np.asarray(out)[..., 0],
                                      np.where(box[None], np.asarray(images)[perm, ..., 0],
                                               np.asarray(images)[..., 0]))


def _ks_p(sample, cdf):
    from scipy import stats

    return stats.kstest(sample, cdf).pvalue


@pytest.mark.parametrize("alpha", [0.4, 3.0])
def test_mixup_lambda_is_beta_alpha_alpha(alpha):
    # lam read off the mixed labels (class i = image i, at a row whose partner is another image),
    # 2,000 draws, against scipy's Beta(alpha, alpha): at alpha = 0.4 Beta(1/alpha, 1/alpha) is
    # Beta(2.5, 2.5), hump-shaped instead of U-shaped, and the KS test rejects it at p < 1e-20.
    from scipy import stats

    n = 8
    images = jnp.zeros((n, 4, 4, 1))
    labels = jax.nn.one_hot(jnp.arange(n), n)
    keys = jax.random.split(jax.random.key(11), _NUM_DRAWS)
    _, mixed = jax.vmap(lambda k: augment.mixup(k, images, labels, alpha=alpha))(keys)
    mixed = np.asarray(mixed)
    diag = mixed[:, np.arange(n), np.arange(n)]  # lam where pi(i) != i, 1 where pi(i) == i
    lam = np.array([d[d < 1.0][0] if np.any(d < 1.0) else 1.0 for d in diag])
    assert _ks_p(lam, stats.beta(alpha, alpha).cdf) > 1e-3
    assert _ks_p(lam, stats.beta(1 / alpha, 1 / alpha).cdf) < 1e-6


@pytest.mark.parametrize("alpha", [0.4, 3.0])
def test_cutmix_pasted_area_follows_the_papers_distribution(alpha):
    # End to end, without the library's own draws: the pasted fraction over 2,000 batches against
    # a numpy simulation of the paper's recipe (numpy's Beta, a uniform centre, the clipped box);
    # two-sample KS. Both the box side and lam ~ Beta(alpha, alpha) enter the distribution.
    from scipy import stats

    n, h, w = 2, 16, 16
    images = jnp.asarray(np.stack([np.zeros((h, w, 1)), np.ones((h, w, 1))]).astype(np.float32))
    labels = jax.nn.one_hot(jnp.arange(n), n)
    keys = jax.random.split(jax.random.key(5), _NUM_DRAWS)
    _, mixed = jax.vmap(lambda k: augment.cutmix(k, images, labels, alpha=alpha))(keys)
    mixed = np.asarray(mixed)
    swapped = mixed[:, 0, 1] > 0  # draws where image 0 got a patch of image 1 (pi swaps them)
    ours = mixed[swapped, 0, 1]
    rng = np.random.default_rng(0)
    lam = rng.beta(alpha, alpha, 20_000)
    ref = np.array([_cutmix_box_numpy(l, a, b, h, w).mean()
                    for l, a, b in zip(lam, rng.random(20_000), rng.random(20_000))])
    ref = ref[ref > 0]  # the library's draws where nothing was pasted are not in `ours` either
    assert ours.size > 500
    assert stats.ks_2samp(ours, ref).pvalue > 1e-3


def test_color_jitter_contrast_pivots_on_the_whole_images_mean():
    # x <- mu + c (x - mu) with mu the mean over H, W and C of each image. On RGB images whose
    # channel means differ, a per-channel pivot gives a different image; the factor c is read off
    # the output, so nothing about the library's draws is assumed.
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(6, 5, 7, 3)) + np.array([-2.0, 0.0, 3.0])).astype(np.float32)
    out = np.asarray(augment.color_jitter(jax.random.key(2), jnp.asarray(x), brightness=0.0,
                                          contrast=0.5, saturation=0.0))
    mu = x.mean(axis=(1, 2, 3), keepdims=True)
    c = ((out - mu) * (x - mu)).sum(axis=(1, 2, 3)) / ((x - mu) ** 2).sum(axis=(1, 2, 3))
    assert np.all((c >= 0.5) & (c <= 1.5)) and np.ptp(c) > 0.05  # a factor per image
    np.testing.assert_allclose(out, mu + c[:, None, None, None] * (x - mu), atol=1e-5)


def test_erasing_corner_is_uniform_over_every_position_where_the_box_fits():
    # A 4 x 4 box on 8 x 8 images (scale 1/4, ratio 1) fits at tops 0 .. 4 and lefts 0 .. 4: every
    # position, the last one (the bottom / right edge) included, equally often (chi-square).
    from scipy import stats

    h = w = 8
    x = jnp.ones((_NUM_DRAWS, h, w, 1))
    out = np.asarray(augment.random_erasing(jax.random.key(9), x, p=1.0, scale=(0.25, 0.25),
                                            ratio=(1.0, 1.0), value=0.0))
    erased = out[..., 0] == 0.0
    assert np.all(erased.sum(axis=(1, 2)) == 16)  # every image got its 4 x 4 box
    tops = erased.any(axis=2).argmax(axis=1)
    lefts = erased.any(axis=1).argmax(axis=1)
    for corner in (tops, lefts):
        counts = np.bincount(corner, minlength=h - 4 + 1)
        assert counts.size == 5 and np.all(counts > 0)
        assert stats.chisquare(counts).pvalue > 1e-3
