"""`ml_practical.conv.chunked`: XLA's convolution with the kernel gradient summed over batch chunks.

Reference: `lax.conv_general_dilated` and its autodiff. The forward value and the input gradient
must be bit-identical (they are XLA's own); the kernel gradient equal to float32 rounding (only
the order of the additions over the batch changes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ml_practical import config, conv, models


def _loss(f, x, w, **kw):
    return jnp.sum(jnp.sin(f(x, w, **kw)))


CASES = [  # batch, image, in, out, kernel, stride, padding, dimension numbers, groups
    (20, 8, 3, 4, 3, 1, ((1, 1), (1, 1)), ("NHWC", "HWIO", "NHWC"), 1),
    (17, 9, 4, 6, 3, 2, ((1, 1), (1, 1)), ("NHWC", "HWIO", "NHWC"), 1),   # 17 = 8 + 8 + 1
    (12, 8, 4, 8, 1, 2, "VALID", ("NHWC", "HWIO", "NHWC"), 1),
    (10, 11, 2, 3, 7, 2, ((3, 3), (3, 3)), ("NHWC", "HWIO", "NHWC"), 1),
    (11, 6, 4, 6, 3, 1, "SAME", ("NCHW", "OIHW", "NCHW"), 1),               # batch still axis 0
    (9, 6, 4, 6, 3, 1, "SAME", ("HWNC", "HWIO", "NHWC"), 1),                # input batch axis 2
    (16, 6, 4, 8, 3, 1, "SAME", ("NHWC", "HWIO", "NHWC"), 2),               # grouped
]


@pytest.mark.parametrize("b,h,cin,cout,k,s,pad,dn,groups", CASES)
def test_gradients_equal_xla_and_forward_is_xlas(b, h, cin, cout, k, s, pad, dn, groups):
    rng = np.random.default_rng(b * h)
    lhs_shape = {"N": b, "H": h, "W": h, "C": cin}
    x = jnp.asarray(rng.normal(size=[lhs_shape[a] for a in dn[0]]).astype(np.float32))
    rhs_shape = {"H": k, "W": k, "I": cin // groups, "O": cout}
    w = jnp.asarray(rng.normal(size=[rhs_shape[a] for a in dn[1]]).astype(np.float32))
    kw = dict(window_strides=(s, s), padding=pad, dimension_numbers=dn, feature_group_count=groups)
    mine = conv.chunked(4)
    np.testing.assert_array_equal(jax.jit(lambda x, w: mine(x, w, **kw))(x, w),
                                  lax.conv_general_dilated(x, w, **kw))
    ref = jax.grad(lambda x, w: _loss(lax.conv_general_dilated, x, w, **kw), (0, 1))(x, w)
    got = jax.jit(jax.grad(lambda x, w: _loss(mine, x, w, **kw), (0, 1)))(x, w)
    np.testing.assert_array_equal(got[0], ref[0])                     # the input gradient: XLA's
    scale = float(jnp.max(jnp.abs(ref[1])))
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=2e-6 * scale * b)
    assert float(jnp.max(jnp.abs(got[1] - ref[1]))) < 1e-4 * scale   # a relative bound too
    assert scale > 0                                                  # on a nonzero gradient


def test_the_kernel_gradient_is_the_sum_over_images():
    """The equation: dL/dW = sum over images of each image's kernel gradient (numpy sum)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(13, 6, 6, 3)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)).astype(np.float32))
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    per_image = [np.asarray(jax.grad(lambda w: _loss(lax.conv_general_dilated, x[i:i + 1], w,
                                                      **kw))(w), np.float64) for i in range(13)]
    got = jax.grad(lambda w: _loss(conv.chunked(3), x, w, **kw))(w)
    np.testing.assert_allclose(got, np.sum(per_image, axis=0), rtol=1e-5, atol=1e-5)


def test_small_batches_vmap_and_second_derivatives():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 12, 5, 5, 2)).astype(np.float32))  # 3 seeds x 12 images
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 4)).astype(np.float32))
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mine = conv.chunked(5)
    loss_ref = lambda x, w: _loss(lax.conv_general_dilated, x, w, **kw)
    loss_mine = lambda x, w: _loss(mine, x, w, **kw)
    got = jax.jit(jax.vmap(jax.grad(loss_mine, 1)))(x, w)  # vmapped seeds
    ref = jax.vmap(jax.grad(loss_ref, 1))(x, w)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    # A Hessian-vector product in the kernel (sharpness diagnostics differentiate twice).
    v = jnp.asarray(rng.normal(size=w.shape[1:]).astype(np.float32))
    hvp = lambda f: jax.jvp(jax.grad(f, 1), (x[0], w[0]), (jnp.zeros_like(x[0]), v))[1]
    np.testing.assert_allclose(hvp(loss_mine), hvp(loss_ref), rtol=1e-4, atol=1e-3)
    # A batch no larger than the chunk is XLA's own convolution, gradient included.
    small = jax.grad(lambda w: _loss(mine, x[0, :5], w, **kw))(w[0])
    np.testing.assert_array_equal(small, jax.grad(lambda w: loss_ref(x[0, :5], w))(w[0]))
    with pytest.raises(ValueError, match="images_per_chunk"):
        conv.chunked(0)


@pytest.mark.parametrize("name,fields", [
    ("cnn", dict(widths=(8, 16), convs_per_stage=2, norm="batch")),
    ("resnet", dict(depth=8, norm="batch", shortcut="B")),
])
def test_models_with_chunked_backward_train_the_same(name, fields):
    """conv_backward="chunked" keeps the parameter tree, the outputs and (to rounding) the grads."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(24, 12, 12, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 24))
    out = {}
    for backward in ("xla", "chunked"):
        model = models.build_model(name, {**fields, "conv_backward": backward})
        v = model.init(jax.random.key(0), x, train=False)

        def loss(p, model=model, v=v):
            logits, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(24), y]), logits

        out[backward] = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
    (la, lg_a), ga = out["xla"]
    (lb, lg_b), gb = out["chunked"]
    assert jax.tree.structure(ga) == jax.tree.structure(gb)
    np.testing.assert_array_equal(lg_a, lg_b)
    np.testing.assert_array_equal(la, lb)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-7)


def test_conv_backward_is_a_config_field_checked_once():
    cfg = config.defaults("cnn")
    assert cfg.model.conv_backward == "xla"
    cfg.model.conv_backward = "fast"
    with pytest.raises(config.ConfigError, match="model.conv_backward"):
        config.parse(cfg)


@pytest.mark.parametrize("shape", [(4, 8, 8, 3), (3, 7, 9, 2)])  # odd sizes: VALID drops the edge
def test_max_pool_2x2_equals_flax_values_and_gradients(shape):
    from flax import linen as nn

    from ml_practical.models.cnn import max_pool_2x2

    rng = np.random.default_rng(sum(shape))
    z = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(z), ref(z))
    cot = jnp.asarray(rng.normal(size=ref(z).shape).astype(np.float32))
    grad = lambda pool, act: jax.grad(lambda x: jnp.sum(cot * pool(act(x))))(z)
    np.testing.assert_array_equal(grad(max_pool_2x2, lambda x: x), grad(ref, lambda x: x))
    # Ties at nonzero values (flat backgrounds): the whole gradient goes to the first maximum in
    # row-major order, as XLA's select-and-scatter does; the derivative of a plain max over the
    # reshape would split it, and fails this.
    tied = jnp.round(z)  # integers: many windows hold two or more equal maxima
    g_mine = jax.grad(lambda x: jnp.sum(cot * max_pool_2x2(x)))(tied)
    g_ref = jax.grad(lambda x: jnp.sum(cot * ref(x)))(tied)
    np.testing.assert_array_equal(g_mine, g_ref)
    h2, w2 = shape[1] // 2 * 2, shape[2] // 2 * 2
    plain = jax.grad(lambda x: jnp.sum(cot * jnp.max(x[:, :h2, :w2].reshape(
        shape[0], h2 // 2, 2, w2 // 2, 2, shape[3]), axis=(2, 4))))(tied)
    assert float(jnp.max(jnp.abs(plain - g_ref))) > 0.1   # the rule is not vacuous here
    # Forward mode too (custom JVP): the tangent of the selected entry.
    t = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    np.testing.assert_array_equal(jax.jvp(max_pool_2x2, (tied,), (t,))[1],
                                  jax.jvp(ref, (tied,), (t,))[1])
