"""The nnx convolutional families (`ml_practical.nnx.cnn.CNN`, `ml_practical.nnx.resnet.ResNet`)
against their linen twins on the same weights: the variable structure, eval and train outputs,
the running statistics a training step leaves, the gradients, and the sown statistics.

The linen variables are perturbed before loading (params plus noise, running statistics moved off
0 / 1): the zero inits of Fixup, zero_gamma, SkipInit and ReZero would otherwise switch whole
branches off and hide a wrong branch, and fresh running statistics would make eval mode a no-op.
Outputs, running statistics and sown statistics are compared exactly (both run op by op, the same
ops on the same arrays); gradients, each side jitted on its own, to rtol 1e-5 / atol 1e-6, as XLA
may fuse two different (if equivalent) programs differently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ml_practical import models
from ml_practical.analysis.activations import sown_by_layer
from ml_practical.config import ConfigError
from ml_practical.nnx import capture, linen_variables, load_variables, mc_dropout
from ml_practical.nnx.cnn import CNN
from ml_practical.nnx.resnet import ResNet

NNX = {"cnn": CNN, "resnet": ResNet}

_R = {"depth": 8, "width_multiplier": 0.5}  # a CIFAR ResNet-8 of widths 8-16-32
_IMAGENET = {"variant": "imagenet", "width_multiplier": 0.125}

# id -> (family, fields, input shape (H, W, C), batch). "chunked" cases take 16 images so that the
# kernel gradient is really chunked (a batch of <= 8 takes XLA's gradient unchanged).
CASES = {
    "cnn_batch_before": ("cnn", {"widths": (4, 8), "convs_per_stage": 2, "norm": "batch"},
                         (8, 8, 3), 8),
    "cnn_batch_after_avg_ghost": ("cnn", {"widths": (4, 8), "norm": "batch",
                                          "norm_position": "after", "pool": "avg",
                                          "ghost_batch_size": 4}, (8, 8, 3), 8),
    "cnn_group_nopool": ("cnn", {"widths": (4, 8), "norm": "group", "num_groups": 2,
                                 "pool": "none"}, (8, 8, 3), 8),
    "cnn_instance_avg": ("cnn", {"widths": (4, 8), "norm": "instance", "pool": "avg"},
                         (8, 8, 3), 8),
    "cnn_layer_max": ("cnn", {"widths": (4, 8), "norm": "layer", "activation": "tanh"},
                      (8, 8, 3), 8),
    "cnn_none_k5_gray": ("cnn", {"widths": (4, 8), "kernel_size": 5}, (8, 8, 1), 8),
    "cnn_dropout": ("cnn", {"widths": (4, 8), "norm": "batch", "drop_rate": 0.5}, (8, 8, 3), 8),
    "cnn_chunked_manual_bn": ("cnn", {"widths": (4, 8), "norm": "batch", "bias_before_bn": True,
                                      "conv_backward": "chunked", "bn_backward": "manual"},
                              (8, 8, 3), 16),
    "resnet_cifar_A_standard": ("resnet", _R, (8, 8, 3), 8),
    "resnet_cifar_zero_gamma": ("resnet", {**_R, "residual": "zero_gamma"}, (8, 8, 3), 8),
    "resnet_cifar_fixup": ("resnet", {**_R, "residual": "fixup", "norm": "none"}, (8, 8, 3), 8),
    "resnet_cifar_skipinit_chunked": ("resnet", {**_R, "residual": "skipinit",
                                                 "conv_backward": "chunked"}, (8, 8, 3), 16),
    "resnet_cifar_rezero_layer": ("resnet", {**_R, "residual": "rezero", "norm": "layer"},
                                  (8, 8, 3), 8),
    "resnet_preact_group": ("resnet", {**_R, "variant": "preact", "norm": "group",
                                       "num_groups": 4}, (8, 8, 3), 8),
    "resnet_preact_A_instance": ("resnet", {**_R, "variant": "preact", "norm": "instance",
                                            "shortcut": "A"}, (8, 8, 3), 8),
    "resnet_wide_dropout": ("resnet", {"variant": "wide", "depth": 10, "width_multiplier": 0.5,
                                       "drop_rate": 0.3}, (8, 8, 3), 8),
    "resnet_imagenet18_B": ("resnet", {**_IMAGENET, "depth": 18, "shortcut": "B"},
                            (32, 32, 3), 8),
    "resnet_imagenet50_bottleneck": ("resnet", {**_IMAGENET, "depth": 50}, (32, 32, 3), 8),
    "resnet_imagenet50_fixup": ("resnet", {**_IMAGENET, "depth": 50, "residual": "fixup",
                                           "norm": "none"}, (16, 16, 3), 8),
}
NO_DROPOUT = [k for k, (_, fields, _, _) in CASES.items() if not fields.get("drop_rate")]
WITH_DROPOUT = [k for k in CASES if k not in NO_DROPOUT]

_BUILT: dict[str, tuple] = {}
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _perturbed(variables):
    """Params plus N(0, 0.1^2) noise; running means moved, running variances scaled (numpy's
    generator: drawing with jax.random compiles one op per leaf shape, seconds on a ResNet-50)."""
    rng = np.random.default_rng(7)

    def noisy(a, path):
        a = np.asarray(a)
        if path[-1].key == "var":
            return jnp.asarray(a * rng.uniform(0.5, 1.5, a.shape).astype(a.dtype))
        return jnp.asarray(a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype))

    return {c: jax.tree_util.tree_map_with_path(lambda path, a: noisy(a, path), tree)
            for c, tree in variables.items()}


def _build(case: str):
    """(linen model, its perturbed variables, the nnx twin, the input), built once per case."""
    if case not in _BUILT:
        family, fields, shape, batch = CASES[case]
        m = models.build_model(family, fields)
        x = jax.random.normal(jax.random.key(1), (batch, *shape))
        v = _perturbed(jax.tree.map(lambda a: a, dict(m.init(jax.random.key(0), x, train=False))))
        n = NNX[family](shape, rngs=nnx.Rngs(params=0, dropout=1), config=m)
        _BUILT[case] = (m, v, n, x)
    m, v, n, x = _BUILT[case]
    load_variables(n, v)  # every test starts from the linen weights (training moves statistics)
    return m, v, n, x


def _assert_trees_close(actual, expected, rtol=0.0, atol=0.0):
    """Same structure, leaves equal (exactly, by default)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual),
                            jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("case", list(CASES))
def test_variables_match_and_eval_outputs_equal(case):
    m, v, n, x = _build(case)
    # `v` is the linen init (perturbed in value only): the nnx model has its structure and shapes.
    ours = linen_variables(n)
    assert jax.tree.structure(ours) == jax.tree.structure(v)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, v)
    n.eval()
    np.testing.assert_array_equal(n(x), m.apply(v, x, train=False))


@pytest.mark.parametrize("case", NO_DROPOUT)
def test_train_outputs_and_running_statistics_equal(case):
    m, v, n, x = _build(case)
    want, state = m.apply(v, x, train=True, mutable=["batch_stats"])
    n.train()
    np.testing.assert_array_equal(n(x), want)
    got = linen_variables(n).get("batch_stats", {})
    _assert_trees_close(got, dict(state).get("batch_stats", {}))


@pytest.mark.parametrize("case", NO_DROPOUT)
def test_gradients_equal(case):
    m, v, n, x = _build(case)

    def linen_loss(params):
        logits, _ = m.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits))

    # Jitted (op by op, a ResNet-50's backward pass compiles each of its ops on its own, 3x the
    # time of compiling the whole) without XLA's backend optimizations (a third less compiling).
    # The nnx model is a pytree, so jax.jit takes it; the statistics it moves stay in the trace.
    want = jax.jit(jax.grad(linen_loss), compiler_options=_FAST_COMPILE)(v["params"])
    n.train()
    grads = jax.jit(nnx.grad(lambda model: jnp.sum(jnp.sin(model(x)))),
                    compiler_options=_FAST_COMPILE)(n)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(grads, nnx.Param)), want, rtol=1e-5,
                        atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_sown_statistics_equal(case):
    m, v, n, x = _build(case)
    _, state = m.apply(v, x, train=False, mutable=["intermediates"])
    want = sown_by_layer(state["intermediates"])
    n.eval()
    _, sown = capture.intermediates(lambda mod, x: mod(x), n, x)
    got = sown_by_layer(sown)
    assert list(got) == list(want)
    for layer in want:
        assert sorted(got[layer]) == sorted(want[layer]) == ["act", "preact"], layer
        for kind in want[layer]:
            np.testing.assert_array_equal(got[layer][kind], want[layer][kind],
                                          err_msg=f"{layer}/{kind}")


@pytest.mark.parametrize("case", WITH_DROPOUT)
def test_mc_dropout_drops_units_on_running_statistics(case):
    _, v, n, x = _build(case)
    n.eval()
    y_eval = n(x)
    y_mc = mc_dropout(n)(x)
    assert y_mc.shape == y_eval.shape and bool(jnp.all(jnp.isfinite(y_mc)))
    assert not np.allclose(y_mc, y_eval)
    # BatchNorm stays on its running statistics (it does not move them).
    _assert_trees_close(linen_variables(n)["batch_stats"], v["batch_stats"])


def test_bad_fields_raise_the_linen_config_errors():
    with pytest.raises(ConfigError, match="model.norm"):
        CNN((8, 8, 3), rngs=nnx.Rngs(0), norm="bogus")
    with pytest.raises(ConfigError, match="model.depth"):
        ResNet((8, 8, 3), rngs=nnx.Rngs(0), depth=9)
    with pytest.raises(ConfigError, match="model.residual"):
        ResNet((8, 8, 3), rngs=nnx.Rngs(0), residual="fixup")  # fixup needs norm "none"


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"input_shape .* \(H, W, C\)"):
        CNN((64,), rngs=nnx.Rngs(0), widths=(4,))
    model = ResNet((8, 8, 3), rngs=nnx.Rngs(0), **_R)
    with pytest.raises(ValueError, match=r"ResNet: expected images \(N, H, W, C\)"):
        model(jnp.zeros((2, 8, 8)))
