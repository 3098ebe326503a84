"""MLP: structure (no bias before BN, norm placement), initializers per layer, MC dropout, errors."""

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
    act_a = ia["intermediates"]["act_0"][0]
    act_b = ib["intermediates"]["act_0"][0]
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
    with pytest.raises(ValueError, match=needle):
        _init(models.MLP(widths=(4,), **{field: value}), jnp.ones((2, 3)))


def test_make_model_rejects_unknown_fields():
    import ml_collections
    cfg = ml_collections.ConfigDict({"name": "mlp", "widths": (4,), "colour": "red"})
    with pytest.raises(ValueError, match="colour"):
        models.make_model(cfg)
    with pytest.raises(ValueError, match="model.name"):
        models.make_model(ml_collections.ConfigDict({"name": "resnet"}))


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
