"""ml_practical.augment_policy: each op against numpy / scipy at a fixed magnitude and sign, and
the two policies against the ops they draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ml_practical import augment, augment_policy as ap

OP = {name: i for i, name in enumerate(ap.OPS)}


def _image(seed=0, h=9, w=11, c=2):
    return np.random.default_rng(seed).random((h, w, c)).astype(np.float32)


def _op(name, image, m, sign=1.0):
    return np.asarray(ap.apply_op(OP[name], jnp.asarray(image), jnp.float32(m),
                                  jnp.float32(sign)))


def test_colour_ops_equal_their_pixel_formulas():
    x = _image()
    m = 0.6
    np.testing.assert_allclose(_op("brightness", x, m, -1.0),
                               np.clip(x * (1 - 0.9 * m), 0, 1), atol=1e-6)
    mu = x.mean()  # over pixels and channels
    np.testing.assert_allclose(_op("contrast", x, m), np.clip(mu + (1 + 0.9 * m) * (x - mu), 0, 1),
                               atol=1e-6)
    np.testing.assert_allclose(_op("solarize", x, m), np.where(x >= 1 - m, 1 - x, x), atol=1e-6)
    # posterize at m = 0.5: 2 bits dropped, 8-bit values floored to multiples of 4.
    want = np.floor(np.round(x * 255) / 4) * 4 / 255
    np.testing.assert_allclose(_op("posterize", x, 0.5), want, atol=1e-6)
    np.testing.assert_allclose(_op("identity", x, m), x)


def test_equalize_is_each_values_rank_in_its_channel():
    x = _image(1)
    out = _op("equalize", x, 0.3)
    for ch in range(x.shape[2]):
        col = x[..., ch].ravel()
        want = np.array([(col <= v).sum() for v in col]) / col.size
        np.testing.assert_allclose(out[..., ch].ravel(), want, atol=1e-6)


def test_rotate_equals_the_librarys_rotation():
    x = _image(2, 13, 13, 1)
    for sign in (1.0, -1.0):
        got = _op("rotate", x, 0.5, sign)
        ref = np.asarray(augment.rotate_images(jnp.asarray(x)[None],
                                               jnp.array([sign * 15.0])))[0]
        np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=1e-5)


def test_shear_and_translate_equal_scipys_affine_transform():
    # scipy's affine_transform samples input[matrix @ o + offset] at output o, bilinear, the
    # same map about the centre; uncovered pixels get the image's minimum there too. jax's
    # map_coordinates "constant" interpolates with cval across the edge: scipy's "grid-constant".
    x = _image(3, 10, 12, 1)
    h, w = x.shape[:2]
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    m, s = 0.5, 0.3 * 0.5
    cases = {"shear_x": (np.array([[1, 0], [s, 1]]), np.zeros(2)),
             "shear_y": (np.array([[1, s], [0, 1]]), np.zeros(2)),
             "translate_x": (np.eye(2), np.array([0.0, -0.3 * m * w])),
             "translate_y": (np.eye(2), np.array([-0.3 * m * h, 0.0]))}
    for name, (mat, off) in cases.items():
        bg = x[..., 0].min()
        ref = ndimage.affine_transform(x[..., 0] - bg, mat, offset=c - mat @ c + off, order=1,
                                       mode="grid-constant", cval=0.0) + bg
        np.testing.assert_allclose(_op(name, x, m)[..., 0], np.clip(ref, 0, 1), atol=1e-5,
                                   err_msg=name)


def test_trivial_augment_applies_the_op_and_magnitude_it_draws_and_round_trips_the_norm():
    n = 16
    raw = np.random.default_rng(4).random((n, 8, 8, 1)).astype(np.float32)
    stats = (0.3, 0.2)
    x = (raw - stats[0]) / stats[1]
    key = jax.random.key(7)
    out = np.asarray(ap.trivial_augment(key, jnp.asarray(x), norm_stats=stats))
    ops, mags, signs = ap._draws(key, n)
    for i in range(n):
        want = _op(ap.OPS[int(ops[i])], raw[i], float(mags[i]), float(signs[i]))
        np.testing.assert_allclose(out[i] * stats[1] + stats[0], want, atol=1e-5)
    assert len(set(np.asarray(ops).tolist())) > 5  # a different op per image


def test_rand_augment_uses_the_fixed_magnitude_and_num_ops():
    x = jnp.asarray(np.random.default_rng(5).random((8, 6, 6, 1)).astype(np.float32))
    key = jax.random.key(3)
    out = np.asarray(ap.rand_augment(key, x, num_ops=2, magnitude=0.4))
    k1, k2 = jax.random.split(key, 2)
    (o1, _, s1), (o2, _, s2) = ap._draws(k1, 8), ap._draws(k2, 8)
    for i in range(8):
        first = _op(ap.OPS[int(o1[i])], np.asarray(x[i]), 0.4, float(s1[i]))
        np.testing.assert_allclose(out[i], _op(ap.OPS[int(o2[i])], first, 0.4, float(s2[i])),
                                   atol=1e-5)
    with pytest.raises(ValueError, match="magnitude"):
        ap.rand_augment(key, x, magnitude=1.5)


def test_the_policies_are_config_names():
    x = jnp.zeros((4, 8, 8, 1))
    for name in ("trivial_augment", "rand_augment"):
        fn = augment.get(name, (0.1, 0.3), magnitude=0.7, num_ops=1)
        assert fn(jax.random.key(0), x).shape == x.shape
