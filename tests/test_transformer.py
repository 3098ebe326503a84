"""The Transformer family, RMSNorm, and the synthetic sequence tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from ml_practical import config, layers, models, normalization, sequences
from ml_practical import nnx as mpx

SMALL = dict(d_model=16, num_heads=2, num_layers=2, vocab_size=20, max_len=12, num_classes=3)


def _tokens(n=6, length=12, seed=0, vocab=20):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, (n, length))
    lengths = rng.integers(3, length + 1, n)
    x[np.arange(length)[None, :] >= lengths[:, None]] = 0  # right padding
    return jnp.asarray(x, jnp.float32), lengths


# ------------------------------------------------------------------------------------ RMSNorm

def test_rms_norm_is_the_equation_and_flax_rmsnorm():
    x = jax.random.normal(jax.random.key(0), (5, 7, 16)) * 3 + 1
    gamma = 1 + 0.1 * jax.random.normal(jax.random.key(1), (16,))
    y = normalization.rms_norm(x, gamma, None, 1e-6)
    xn = np.asarray(x, np.float64)
    ref = xn / np.sqrt(np.mean(xn ** 2, axis=-1, keepdims=True) + 1e-6) * np.asarray(gamma)
    np.testing.assert_allclose(y, ref, rtol=1e-5)
    flax_ref = nn.RMSNorm(epsilon=1e-6)
    v = flax_ref.init(jax.random.key(0), x)
    v = {"params": {"scale": gamma}}
    np.testing.assert_allclose(layers.RMSNorm(epsilon=1e-6).apply(v, x, train=True),
                               flax_ref.apply(v, x), rtol=1e-5, atol=1e-6)
    # No mean is removed: a constant shift changes the output (LayerNorm's would not).
    assert not np.allclose(normalization.rms_norm(x + 5, None, None, 1e-6),
                           normalization.rms_norm(x, None, None, 1e-6), atol=1e-2)


def test_rms_norm_linen_and_nnx_agree_and_have_no_bias():
    x = jax.random.normal(jax.random.key(2), (4, 16))
    lin = layers.RMSNorm()
    v = lin.init(jax.random.key(0), x, train=False)
    assert list(v["params"]) == ["scale"]
    mod = mpx.layers.RMSNorm(16, rngs=nnx.Rngs(0))
    mpx.load_variables(mod, {"params": {"scale": v["params"]["scale"] * 1.5}})
    np.testing.assert_allclose(mod(x), lin.apply({"params": {"scale": v["params"]["scale"] * 1.5}},
                                                 x, train=False), rtol=1e-6)
    assert models.make_norm("rms", name="n") is not None
    assert isinstance(mpx.layers.make_norm("rms", 16, rngs=nnx.Rngs(0)), mpx.layers.RMSNorm)


# -------------------------------------------------------------------------------- Transformer

@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("norm", ["layer", "rms", "batch", "none"])
def test_transformer_shapes_modes_and_padding(placement, norm):
    m = models.build_model("transformer", {**SMALL, "placement": placement, "norm": norm})
    x, lengths = _tokens()
    v = m.init(jax.random.key(0), x, train=False)
    assert ("batch_stats" in v) == (norm == "batch")
    y = m.apply(v, x, train=False)
    assert y.shape == (6, 3) and bool(jnp.all(jnp.isfinite(y)))
    # Eval mode is per example (BatchNorm on its running statistics too): batch 1 = in a batch.
    np.testing.assert_allclose(m.apply(v, x[:1], train=False), y[:1], rtol=1e-4, atol=1e-5)
    out, st = m.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)},
                      mutable=["batch_stats", "intermediates"])
    sown = st["intermediates"]
    assert sorted(sown) == ["block_0", "block_1"] and "mlp_in" in sown["block_0"]


def test_transformer_mask_hides_padding_from_attention():
    """Appending padding to every sequence leaves the logits unchanged (mask, per-token norms,
    masked mean pooling); a BatchNorm Transformer's logits change (its statistics see pads)."""
    x, _ = _tokens(length=8)
    padded = jnp.concatenate([x, jnp.zeros((x.shape[0], 4))], axis=1)
    for norm, same in (("layer", True), ("batch", False)):
        m = models.build_model("transformer", {**SMALL, "norm": norm, "attn_drop_rate": 0.0,
                                               "resid_drop_rate": 0.0, "embed_drop_rate": 0.0})
        v = m.init(jax.random.key(0), padded, train=False)
        a, _ = m.apply(v, x, train=True, mutable=["batch_stats"])
        b, _ = m.apply(v, padded, train=True, mutable=["batch_stats"])
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5) == same, norm


def test_transformer_attention_matches_a_numpy_reference():
    """One block's attention sublayer against softmax(QK^T/sqrt(dh))V written in numpy."""
    m = models.build_model("transformer", {**SMALL, "num_layers": 1, "norm": "none",
                                           "attn_drop_rate": 0.0, "resid_drop_rate": 0.0,
                                           "embed_drop_rate": 0.0})
    x, lengths = _tokens(n=3)
    v = m.init(jax.random.key(0), x, train=False)
    p = jax.tree.map(np.asarray, v["params"])
    _, st = m.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    attn_out = np.asarray(st["intermediates"]["block_0"]["attn"]["__call__"][0])
    tok = np.asarray(x, int)
    h = p["token_embed"]["embedding"][tok] + p["pos_embed"][None, : tok.shape[1]]
    a = p["block_0"]["attn"]
    heads, d = 2, 16
    proj = lambda name: (h @ a[name]["kernel"] + a[name]["bias"]).reshape(3, 12, heads, d // heads)
    q, k, val = proj("query"), proj("key"), proj("value")
    logits = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(d // heads)
    logits = np.where((tok != 0)[:, None, None, :], logits, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("nhqk,nkhd->nqhd", w, val).reshape(3, 12, d) @ a["out"]["kernel"] + a["out"]["bias"]
    np.testing.assert_allclose(attn_out, out, rtol=1e-4, atol=1e-5)


def test_transformer_post_ln_output_is_normalized_and_pre_ln_residual_stream_is_not():
    x, _ = _tokens()
    for placement in ("post", "pre"):
        m = models.build_model("transformer", {**SMALL, "placement": placement,
                                               "pooling": "first", "num_classes": 3})
        v = m.init(jax.random.key(0), x, train=False)
        _, st = m.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        h = np.asarray(st["intermediates"]["block_1"]["__call__"][0])
        per_token_std = h.std(-1)
        if placement == "post":  # ends in a LayerNorm (gamma 1, beta 0 at init)
            np.testing.assert_allclose(per_token_std, 1.0, rtol=1e-3)
        else:
            assert not np.allclose(per_token_std, 1.0, rtol=1e-2)


def test_transformer_config_errors_name_the_field():
    with pytest.raises(config.ConfigError, match="model.num_heads"):
        models.build_model("transformer", {"d_model": 10, "num_heads": 4})
    with pytest.raises(config.ConfigError, match="model.norm"):
        models.build_model("transformer", {"norm": "group"})
    with pytest.raises(config.ConfigError, match="model.pad_id"):
        models.build_model("transformer", {"vocab_size": 4, "pad_id": 4})
    m = models.build_model("transformer", {**SMALL, "max_len": 4})
    with pytest.raises(ValueError, match="max_len"):
        m.init(jax.random.key(0), jnp.ones((2, 6)), train=False)


def test_transformer_mc_dropout_and_last_pooling():
    m = models.build_model("transformer", {**SMALL, "pooling": "last", "norm": "batch"})
    x, _ = _tokens()
    v = m.init(jax.random.key(0), x, train=False)
    assert models.supports_mc_dropout(m)
    a = m.apply(v, x, train=False, mc_dropout=True, rngs={"dropout": jax.random.key(1)})
    b = m.apply(v, x, train=False, mc_dropout=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(m.apply(v, x, train=False), m.apply(v, x, train=False))


# ------------------------------------------------------------------------------- the tasks

def test_retrieval_sequences_follow_their_rule():
    spec = sequences.SequenceSpec(rule="retrieval", num_classes=4, vocab_size=32, min_pairs=2,
                                  max_pairs=6)
    x, y = sequences.make_sequences(spec, 500, seed=3)
    assert x.shape == (500, spec.length) and x.dtype == np.float32
    x = x.astype(int)
    for row, label in zip(x, y):
        sep = int(np.where(row == sequences.SEP)[0][0])
        keys, values = row[0:sep:2], row[1:sep:2]
        assert len(set(keys)) == len(keys) and sep % 2 == 0
        query = row[sep + 1]
        assert values[list(keys).index(query)] - sequences.FIRST_CLASS_TOKEN == label
        assert np.all(row[sep + 2:] == sequences.PAD)
    lengths = (x != 0).sum(1)
    assert lengths.min() == 2 * 2 + 2 and lengths.max() == 2 * 6 + 2  # variable length
    np.testing.assert_array_equal(sequences.make_sequences(spec, 5, seed=3)[0],
                                  sequences.make_sequences(spec, 5, seed=3)[0])
    assert abs(np.bincount(y, minlength=4) / 500 - 0.25).max() < 0.07


def test_majority_sequences_follow_their_rule():
    spec = sequences.SequenceSpec(rule="majority", num_classes=3, min_len=6, max_len=20)
    x, y = sequences.make_sequences(spec, 400, seed=1)
    x = x.astype(int)
    counts = np.stack([(x == sequences.FIRST_CLASS_TOKEN + k).sum(1) for k in range(3)], 1)
    top = np.sort(counts, 1)
    assert np.all(top[:, -1] > top[:, -2])  # a strict majority
    np.testing.assert_array_equal(np.argmax(counts, 1), y)
    assert ((x != 0).sum(1) >= 6).all() and ((x != 0).sum(1) <= 20).all()
    tight = sequences.SequenceSpec(rule="majority", num_classes=3, min_len=6, max_len=20,
                                   tight=True)
    xt, yt = sequences.make_sequences(tight, 400, seed=1)
    ct = np.sort(np.stack([(xt.astype(int) == sequences.FIRST_CLASS_TOKEN + k).sum(1)
                           for k in range(3)], 1), 1)
    winners = ct[:, -1] > 1
    np.testing.assert_array_equal(ct[winners, -1] - ct[winners, -2], 1)  # one short


def test_sequence_spec_and_dataset_checks():
    with pytest.raises(ValueError, match="sequences.vocab_size"):
        sequences.SequenceSpec(rule="retrieval", vocab_size=8, max_pairs=6)
    with pytest.raises(ValueError, match="sequences.rule"):
        sequences.SequenceSpec(rule="copy")
    ds = sequences.load_sequences(sequences.SequenceSpec(), 50, 20, 30, seed=0)
    assert (len(ds.train_y), len(ds.val_y), len(ds.test_y)) == (50, 20, 30)
    assert ds.num_classes == 4 and not np.array_equal(ds.train_x[:20], ds.val_x)


@pytest.mark.parametrize("placement,norm", [("pre", "layer"), ("post", "batch"), ("pre", "rms")])
def test_nnx_transformer_equals_linen(placement, norm):
    fields = {**SMALL, "placement": placement, "norm": norm, "attn_drop_rate": 0.0,
              "resid_drop_rate": 0.0, "embed_drop_rate": 0.0}
    x, _ = _tokens()
    lin = models.build_model("transformer", fields)
    v = lin.init(jax.random.key(0), x, train=False)
    net = mpx.build_model("transformer", fields, (12,), rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, mpx.linen_variables(net)) == jax.tree.map(jnp.shape, v)
    mpx.load_variables(net, v)
    net.eval()
    np.testing.assert_allclose(net(x), lin.apply(v, x, train=False), rtol=1e-5, atol=1e-5)
    net.train()
    loss = lambda y: jnp.sum(jnp.sin(y))
    (l_l, st), g_l = jax.value_and_grad(
        lambda p: (lambda out: (loss(out[0]), out[1]))(
            lin.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])),
        has_aux=True)(v["params"])
    l_n, g_n = nnx.value_and_grad(lambda m: loss(m(x)))(net)
    np.testing.assert_allclose(l_n, l_l, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(g_n)), jax.tree.leaves(g_l)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if norm == "batch":
        for a, b in zip(jax.tree.leaves(mpx.linen_variables(net)["batch_stats"]),
                        jax.tree.leaves(st["batch_stats"])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
