"""The model registry and contract, the norm factory, and the MLP: structure, initializers, MC dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import layers, models


def _init(model, x):
    return model.init({"params": jax.random.PRNGKey(0)}, x, train=False)


def test_no_bias_on_dense_followed_by_batchnorm():
    x = jnp.ones((4, 8))
    v = _init(models.MLP(widths=(16, 8), norm="batch", norm_position="before"), x)
    assert "bias" not in v["params"]["dense_0"] and "bias" not in v["params"]["dense_1"]
    assert "bias" in v["params"]["head"]
    # Option B (BN after the activation): the Dense keeps its bias.
    v = _init(models.MLP(widths=(16,), norm="batch", norm_position="after"), x)
    assert "bias" in v["params"]["dense_0"]
    assert v["batch_stats"]["norm_0"]["mean"].shape == (16,)


def test_norm_position_changes_the_function():
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 8))
    a = models.MLP(widths=(16,), norm="batch", norm_position="before")
    b = models.MLP(widths=(16,), norm="batch", norm_position="after")
    va, vb = _init(a, x), _init(b, x)
    # Option A normalizes pre-activations: exactly half-rectified standard normals per unit,
    # so the post-ReLU activation of a unit is >= 0 with ~half zeros; option B's activations are
    # normalized after ReLU, so they have mean 0 per unit (negative values appear).
    _, ia = a.apply(va, x, train=True, mutable=["batch_stats", "intermediates"])
    _, ib = b.apply(vb, x, train=True, mutable=["batch_stats", "intermediates"])
    act_a = ia["intermediates"]["dense_0"]["act"][0]
    act_b = ib["intermediates"]["dense_0"]["act"][0]
    assert float(act_a.min()) >= 0.0
    np.testing.assert_allclose(np.asarray(act_b.mean(0)), 0.0, atol=1e-5)


def test_hidden_and_output_initializers_are_separate():
    x = jnp.ones((2, 256))
    model = models.MLP(widths=(512,), num_classes=128, hidden_init="he_normal",
                       output_init="xavier_normal")
    p = _init(model, x)["params"]
    # He: sqrt(2/256) = 0.0884; Xavier on (512, 128): sqrt(2/640) = 0.0559.
    assert abs(float(p["dense_0"]["kernel"].std()) / np.sqrt(2 / 256) - 1) < 0.02
    assert abs(float(p["head"]["kernel"].std()) / np.sqrt(2 / 640) - 1) < 0.03


def test_small_random_init_by_name():
    p = _init(models.MLP(widths=(300,), hidden_init="normal", output_init="normal"),
              jnp.ones((2, 400)))["params"]
    assert abs(float(p["dense_0"]["kernel"].std()) - 0.01) < 0.0005


def test_mc_dropout_keeps_dropout_on_and_bn_on_running_stats():
    x = jax.random.normal(jax.random.PRNGKey(2), (64, 8))
    model = models.MLP(widths=(32,), norm="batch", drop_rate=0.5)
    v = _init(model, x)
    # Eval: deterministic.
    e1 = model.apply(v, x, train=False)
    e2 = model.apply(v, x, train=False)
    np.testing.assert_array_equal(e1, e2)
    # MC: stochastic across keys, no batch_stats mutation needed (BN reads running stats).
    m1 = model.apply(v, x, train=False, mc_dropout=True, rngs={"dropout": jax.random.PRNGKey(0)})
    m2 = model.apply(v, x, train=False, mc_dropout=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert float(jnp.abs(m1 - m2).max()) > 1e-3
    # The MC mean over many keys approaches the eval output (inverted dropout keeps E[a]).
    keys = jax.random.split(jax.random.PRNGKey(3), 400)
    mc = jax.vmap(lambda k: model.apply(v, x[:4], train=False, mc_dropout=True,
                                        rngs={"dropout": k}))(keys)
    # Dropout sits after the last activation and the head is linear, so E[MC logits] equals the
    # eval logits exactly; allow 5 standard errors.
    stderr = mc.std(0) / np.sqrt(len(keys))
    assert bool(jnp.all(jnp.abs(mc.mean(0) - e1[:4]) < 5 * stderr + 1e-6))
    # BN in MC mode is per-sample (running stats): one sample alone gives the same logits as in a
    # batch, for the same mask. Check with dropout off (rate 0) to isolate BN.
    plain = models.MLP(widths=(32,), norm="batch", drop_rate=0.0)
    vp = _init(plain, x)
    single = plain.apply(vp, x[:1], train=False, mc_dropout=True)
    np.testing.assert_allclose(single, plain.apply(vp, x, train=False)[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_other_norms_build(norm):
    v = _init(models.MLP(widths=(16,), norm=norm, num_groups=4), jnp.ones((2, 8)))
    assert set(v["params"]["norm_0"]) == {"scale", "bias"}


@pytest.mark.parametrize("field,value,needle", [
    ("activation", "relu6", "model.activation"),
    ("norm", "weight", "model.norm"),
    ("norm_position", "middle", "model.norm_position"),
    ("drop_rate", 1.0, "drop_rate"),
    ("drop_rate", -0.1, "drop_rate"),
    ("hidden_init", "glorot", "glorot"),
    ("dropout_sampler", "philox", "model.dropout_sampler"),
])
def test_bad_model_fields_name_the_field(field, value, needle):
    # Refused when the module is built (not when it is first called), as a config would be.
    with pytest.raises(ValueError, match=needle):
        models.MLP(widths=(4,), **{field: value})


def test_build_model_rejects_unknown_fields_and_families():
    with pytest.raises(ValueError, match="colour"):
        models.build_model("mlp", {"widths": (4,), "colour": "red"})
    with pytest.raises(ValueError, match="did you mean 'widths'"):
        models.build_model("mlp", {"widht": (4,)})
    with pytest.raises(ValueError, match="model.name"):
        models.build_model("rnn")


def test_dropout_sampler_reaches_every_dropout_layer():
    fast = models.MLP(widths=(32, 16), drop_rate=0.25, dropout_sampler="threefry16")
    default = models.MLP(widths=(32, 16), drop_rate=0.25)
    x = jax.random.normal(jax.random.key(0), (64, 8))
    v = _init(fast, x)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.Dropout):
            seen.append(context.module.sampler)
        return next_fun(*args, **kwargs)

    @jax.jit
    def outputs(v, x, key):
        with nn.intercept_methods(record):
            train = fast.apply(v, x, train=True, rngs={"dropout": key})
        return (train, default.apply(v, x, train=True, rngs={"dropout": key}),
                fast.apply(v, x, train=False), default.apply(v, x, train=False))

    out, ref, out_eval, ref_eval = outputs(v, x, jax.random.key(3))
    assert seen == ["threefry16", "threefry16"]
    assert not np.allclose(out, ref)  # another mask stream for the same key
    np.testing.assert_array_equal(out_eval, ref_eval)  # evaluation is the identity either way


# ------------------------------------------------------------------------------ registry, contract


def test_registry_builds_each_family_with_its_defaults_and_checks():
    assert {"mlp", "linear"} <= set(models.FAMILIES)
    mlp = models.build_model("mlp", {"widths": [8, 4]})
    assert isinstance(mlp, models.MLP) and mlp.widths == (8, 4)   # list -> tuple, checked
    assert models.family_name(mlp) == "mlp"
    assert models.build_model("linear") == models.Linear()
    with pytest.raises(ValueError, match="model.num_classes"):
        models.build_model("linear", {"num_classes": -1})
    with pytest.raises(ValueError, match="model.widths"):
        models.build_model("mlp", {"widths": (8, 0)})


def test_register_refuses_a_second_family_under_one_name():
    class Other(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            return x
    with pytest.raises(ValueError, match="already"):
        models.register("mlp", Other)


@pytest.mark.parametrize("name,fields", [
    ("mlp", {"widths": (6, 5), "num_classes": 3, "norm": "batch", "drop_rate": 0.1}),
    ("linear", {"num_classes": 3}),
    ("cnn", {"widths": (4, 8), "convs_per_stage": 2, "num_classes": 3, "norm": "batch",
             "drop_rate": 0.1}),
    ("resnet", {"depth": 8, "num_classes": 3, "width_multiplier": 0.5, "drop_rate": 0.1}),
    ("resnet", {"depth": 8, "num_classes": 3, "variant": "preact", "shortcut": "B",
                "width_multiplier": 0.5}),
    ("resnet", {"depth": 8, "num_classes": 3, "residual": "fixup", "norm": "none"}),
], ids=["mlp", "linear", "cnn", "resnet", "preact_resnet", "fixup_resnet"])
def test_every_family_follows_the_contract(name, fields):
    from flax import traverse_util
    model = models.build_model(name, fields)
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 8, 8, 1))
    v = model.init({"params": jax.random.PRNGKey(1)}, x, train=False)
    out = model.apply(v, x, train=False)
    assert out.shape == (7, 3)                       # logits (N, num_classes)
    import inspect
    call = inspect.signature(type(model).__call__).parameters
    assert call["train"].kind == inspect.Parameter.KEYWORD_ONLY
    assert call["train"].default is inspect.Parameter.empty   # `train` has no default
    # Statistics are sown in the scope of the layer that computed the pre-activation.
    _, state = model.apply(v, x, train=False, mutable=["intermediates"])
    sown: dict = {}
    for path in traverse_util.flatten_dict(state.get("intermediates", {})):
        sown.setdefault(path[:-1], set()).add(path[-1])
    params = traverse_util.flatten_dict(v["params"])
    for layer, kinds in sown.items():
        assert kinds == {"preact", "act"}, layer
        # the sowing module owns parameters (nested paths: "stage_0/block_0/conv_1")
        assert any(p[:len(layer)] == layer for p in params), layer
    if name != "linear":
        assert sown  # every hidden layer sows
    assert models.describe(model, x.shape[1:])


def test_linear_family_with_no_classes_is_one_real_output_per_example():
    model = models.Linear()
    x = jnp.ones((5, 3))
    v = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)
    assert v["params"]["kernel"].shape == (3,) and v["params"]["bias"].shape == ()
    assert model.apply(v, x, train=False).shape == (5,)
    assert not models.supports_mc_dropout(model)
    assert models.supports_mc_dropout(models.MLP())


def test_kernel_shapes_are_in_forward_order():
    model = models.MLP(widths=(6, 5), num_classes=3)
    x = jnp.ones((2, 4))
    v = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)
    assert models.kernel_shapes(model, v, x) == [(4, 6), (6, 5), (5, 3)]
    # Abstract variables are enough (nothing is computed).
    abstract = jax.eval_shape(lambda k: model.init({"params": k}, x, train=False),
                              jax.random.PRNGKey(0))
    assert models.kernel_shapes(model, abstract, jax.ShapeDtypeStruct(x.shape, x.dtype)) == \
        [(4, 6), (6, 5), (5, 3)]


@pytest.mark.parametrize("kind", models.NORMS)
def test_norm_factory_gives_every_kind(kind):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 8)) * 2 + 1
    norm = models.make_norm(kind, name="norm", num_groups=2)
    if kind == "none":
        assert norm is None
        return
    v = norm.init({"params": jax.random.PRNGKey(1)}, x, train=False)
    y, _ = norm.apply(v, x, train=True, mutable=["batch_stats"])
    axes = {"batch": (0, 1, 2), "layer": (3,), "instance": (1, 2)}.get(kind)
    if kind == "rms":  # no mean removed: the mean square over the features is 1
        np.testing.assert_allclose(np.mean(np.square(np.asarray(y)), axis=-1), 1.0, rtol=1e-3)
        assert abs(float(np.asarray(y).mean())) > 0.1
        return
    if kind == "group":
        g = np.asarray(y).reshape(4, 3, 3, 2, 4)
        np.testing.assert_allclose(g.mean(axis=(1, 2, 4)), 0.0, atol=1e-5)
        np.testing.assert_allclose(g.var(axis=(1, 2, 4)), 1.0, rtol=1e-3)
    else:
        np.testing.assert_allclose(np.asarray(y).mean(axis=axes), 0.0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(y).var(axis=axes), 1.0, rtol=1e-3)


def test_layer_norm_axes_reach_the_layer():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 8)) * 2 + 1
    norm = models.make_norm("layer", name="n", layer_norm_axes="all")
    v = norm.init({"params": jax.random.PRNGKey(1)}, x, train=False)
    y = np.asarray(norm.apply(v, x, train=False))
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(1, 2, 3)), 1.0, rtol=1e-3)


def test_mlp_refuses_instance_norm_and_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="spatial"):
        models.MLP(norm="instance")
    with pytest.raises(ValueError, match="model.num_groups"):
        models.MLP(widths=(10,), norm="group", num_groups=4)


def test_initializer_specs_with_arguments():
    model = models.MLP(widths=(5,), hidden_init="constant(0.25)", output_init="normal(stddev=0.5)")
    v = model.init({"params": jax.random.PRNGKey(0)}, jnp.ones((2, 300)), train=False)
    np.testing.assert_array_equal(v["params"]["dense_0"]["kernel"], 0.25)
    with pytest.raises(ValueError, match="model.hidden_init"):
        models.MLP(hidden_init="constant(")
