"""Tests for ml_practical.losses against the chapter's equations, numpy and optax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import losses

KERNELS = ["Dense_0/kernel", "Dense_1/kernel"]
ALL_LEAVES = [
    "BatchNorm_0/bias",
    "BatchNorm_0/scale",
    "Dense_0/bias",
    "Dense_0/kernel",
    "Dense_1/bias",
    "Dense_1/kernel",
    "Embed_0/embedding",
]


class _TinyNet(nn.Module):
    """Embedding -> Dense -> BatchNorm -> Dense: every leaf kind the default mask must tell apart."""

    @nn.compact
    def __call__(self, tokens, *, train: bool):
        x = nn.Embed(num_embeddings=10, features=4)(tokens).reshape(tokens.shape[0], -1)
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(3)(nn.relu(x))


@pytest.fixture(scope="module")
def params():
    variables = _TinyNet().init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32), train=False)
    # Fresh biases are 0 and BN scales are 1; randomize every leaf so an excluded leaf would change the sums.
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, w.shape) for k, w in zip(keys, leaves)])


def _numpy_leaves(params, paths):
    flat = {
        "/".join(str(k.key) for k in path): np.asarray(w, np.float64)
        for path, w in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    return [flat[p] for p in paths]


def _numpy_cross_entropy(logits, labels, smoothing):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    targets = (1 - smoothing) * np.eye(k)[labels] + smoothing / k
    return -(targets * log_p).sum(-1).mean()


# --------------------------------------------------------------------------- labels and loss


def test_smooth_labels_matches_chapter_example():
    got = losses.smooth_labels(jnp.array([2, 0]), num_classes=5, smoothing=0.1)
    np.testing.assert_allclose(got[0], [0.02, 0.02, 0.92, 0.02, 0.02], atol=1e-7)
    np.testing.assert_allclose(got[1], [0.92, 0.02, 0.02, 0.02, 0.02], atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_cross_entropy_matches_numpy(smoothing):
    logits = 5.0 * jax.random.normal(jax.random.key(0), (16, 7))
    labels = jax.random.randint(jax.random.key(1), (16,), 0, 7)
    got = losses.cross_entropy(logits, labels, label_smoothing=smoothing)
    np.testing.assert_allclose(got, _numpy_cross_entropy(logits, np.asarray(labels), smoothing), rtol=1e-5)


def test_cross_entropy_matches_optax_integer_labels():
    logits = 3.0 * jax.random.normal(jax.random.key(2), (32, 10))
    labels = jax.random.randint(jax.random.key(3), (32,), 0, 10)
    want = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), want, rtol=1e-6)


def test_cross_entropy_stable_for_huge_logits():
    logits = jnp.array([[1e4, 0.0, -1e4], [0.0, 2e4, 0.0]])
    labels = jnp.array([1, 1])
    got = losses.cross_entropy(logits, labels, label_smoothing=0.1)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _numpy_cross_entropy(logits, np.asarray(labels), 0.1), rtol=1e-5)


def test_smoothing_increases_loss_of_confident_correct_prediction():
    logits = jnp.array([[12.0, 0.0, 0.0, 0.0, 0.0]])
    labels = jnp.array([0])
    hard = losses.cross_entropy(logits, labels)
    soft = losses.cross_entropy(logits, labels, label_smoothing=0.1)
    assert hard < 1e-4
    assert soft > hard + 0.5  # the 4 * 0.02 mass on classes with log p ~ -12 costs ~0.96 nats
    np.testing.assert_allclose(soft, _numpy_cross_entropy(logits, np.asarray(labels), 0.1), rtol=1e-5)


def test_cross_entropy_refuses_float_labels_also_under_jit():
    """one_hot(0.5) is an all-zero row, so fractional labels would give loss 0.0 silently."""
    logits = jnp.zeros((2, 3))
    for fn in (losses.cross_entropy, jax.jit(losses.cross_entropy)):
        with pytest.raises(TypeError, match="float32; expected integer class indices.*"
                                            "soft_cross_entropy"):
            fn(logits, jnp.array([0.5, 1.0]))
    with pytest.raises(TypeError, match="smooth_labels"):
        losses.smooth_labels(jnp.array([0.5]), 3, 0.1)


def test_soft_cross_entropy_matches_optax_and_the_hard_case():
    logits = 4.0 * jax.random.normal(jax.random.key(5), (8, 6))
    raw = jax.random.uniform(jax.random.key(6), (8, 6))
    targets = raw / raw.sum(-1, keepdims=True)
    np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets),
                               optax.softmax_cross_entropy(logits, targets).mean(), rtol=1e-6)
    # numpy: -sum t log softmax
    z = np.asarray(logits, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = -(np.asarray(targets, np.float64) * logp).sum(-1).mean()
    np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets), want, rtol=1e-5)
    labels = jnp.array([0, 5, 2, 2, 1, 3, 4, 0])
    np.testing.assert_allclose(
        losses.soft_cross_entropy(logits, losses.smooth_labels(labels, 6, 0.1)),
        losses.cross_entropy(logits, labels, label_smoothing=0.1), rtol=1e-6)
    # mixup of two label sets: lam * CE(y_a) + (1 - lam) * CE(y_b), by linearity in the targets.
    other = labels[::-1]
    lam = 0.3
    mixed = lam * jax.nn.one_hot(labels, 6) + (1 - lam) * jax.nn.one_hot(other, 6)
    np.testing.assert_allclose(
        losses.soft_cross_entropy(logits, mixed),
        lam * losses.cross_entropy(logits, labels) + (1 - lam) * losses.cross_entropy(logits, other),
        rtol=1e-5)


def test_soft_cross_entropy_refuses_class_indices_and_wrong_shapes():
    with pytest.raises(TypeError, match="int32.*losses.cross_entropy"):
        losses.soft_cross_entropy(jnp.zeros((2, 3)), jnp.array([[0, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match=r"targets shape \(2,\) != logits shape \(2, 3\)"):
        losses.soft_cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))


def test_smoothing_out_of_range_raises():
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.smooth_labels(jnp.array([0]), 3, 1.5)


def test_check_labels():
    losses.check_labels(np.array([0, 4, 2]), num_classes=5)
    with pytest.raises(ValueError, match=r"labels out of range: found min -1 / max 5, expected 0\.\.4"):
        losses.check_labels(np.array([-1, 3, 5]), num_classes=5)
    with pytest.raises(ValueError, match=r"expected 0\.\.9"):
        losses.check_labels(np.array([10]), num_classes=10)
    with pytest.raises(ValueError, match="integer"):
        losses.check_labels(np.array([0.0, 1.0]), num_classes=2)


# --------------------------------------------------------------------------- masks


def test_default_mask_selects_only_kernels(params):
    assert losses.masked_leaves(params) == KERNELS
    assert losses.masked_leaves(params, losses.default_mask) == KERNELS
    mask = losses.default_mask(params)
    assert mask["Embed_0"]["embedding"] is False
    assert mask["BatchNorm_0"]["scale"] is False and mask["BatchNorm_0"]["bias"] is False


def test_masked_leaves_other_masks(params):
    assert losses.masked_leaves(params, losses.all_mask) == ALL_LEAVES
    # A bool pytree that is a prefix of params: one flag covers a whole module.
    prefix = {"BatchNorm_0": True, "Dense_0": False, "Dense_1": False, "Embed_0": True}
    assert losses.masked_leaves(params, prefix) == ["BatchNorm_0/bias", "BatchNorm_0/scale", "Embed_0/embedding"]
    only_bias = lambda p: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "bias", p)  # noqa: E731
    assert losses.masked_leaves(params, only_bias) == ["BatchNorm_0/bias", "Dense_0/bias", "Dense_1/bias"]


# --------------------------------------------------------------------------- penalties


def test_penalties_match_numpy_on_default_mask(params):
    kernels = _numpy_leaves(params, KERNELS)
    want_l2 = 0.5 * sum((w**2).sum() for w in kernels)
    want_l1 = sum(np.abs(w).sum() for w in kernels)
    np.testing.assert_allclose(losses.l2_penalty(params), want_l2, rtol=1e-6)
    np.testing.assert_allclose(losses.l1_penalty(params), want_l1, rtol=1e-6)
    np.testing.assert_allclose(
        losses.elastic_net_penalty(params, l1=0.3, l2=0.7), 0.3 * want_l1 + 0.7 * want_l2, rtol=1e-6
    )
    # Jitted (the mask is structural, so it traces once) gives the same number.
    np.testing.assert_allclose(jax.jit(losses.l2_penalty)(params), want_l2, rtol=1e-6)


def test_penalties_match_numpy_on_all_leaves(params):
    every = _numpy_leaves(params, ALL_LEAVES)
    np.testing.assert_allclose(
        losses.l2_penalty(params, losses.all_mask), 0.5 * sum((w**2).sum() for w in every), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.l1_penalty(params, losses.all_mask), sum(np.abs(w).sum() for w in every), rtol=1e-6
    )
    assert float(losses.l2_penalty(params, lambda p: jax.tree.map(lambda _: False, p))) == 0.0


def test_l2_penalty_gradient_is_w_on_kernels_and_zero_elsewhere(params):
    # The convention shared with optim: d/dw (l2 * l2_penalty) = l2 * w, like add_decayed_weights(l2).
    grads = jax.grad(lambda p: losses.elastic_net_penalty(p, l1=0.0, l2=0.2))(params)
    np.testing.assert_allclose(grads["Dense_1"]["kernel"], 0.2 * params["Dense_1"]["kernel"], rtol=1e-6)
    assert float(jnp.abs(grads["Dense_1"]["bias"]).max()) == 0.0
    assert float(jnp.abs(grads["Embed_0"]["embedding"]).max()) == 0.0
    l1_grads = jax.grad(lambda p: losses.elastic_net_penalty(p, l1=0.5, l2=0.0))(params)
    np.testing.assert_allclose(l1_grads["Dense_0"]["kernel"], 0.5 * np.sign(params["Dense_0"]["kernel"]))
