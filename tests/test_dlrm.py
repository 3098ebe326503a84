"""DLRM (models.dlrm), its embedding initializers and the per-table gradient monitor."""

from __future__ import annotations

import math
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import config, initializers, models, optim
from ml_practical.analysis.activations import sown_by_layer
from ml_practical.clip_recorder import recording_clip
from ml_practical.config import ConfigError
from ml_practical.hooks import EpochEnd, Run
from ml_practical.models import kernel_layers, kernel_shapes
from ml_practical.models.dlrm import DLRM, check_sparse_ids, interact
from ml_practical.table_monitor import (
    TableGradAlert,
    TableGradMonitor,
    epoch_summary,
    init_alerts,
    running_average,
    table_grad_norms,
    update_alerts,
)

TABLES = (11, 7, 5)


def tiny(**kw) -> DLRM:
    fields = {"num_dense": 3, "table_sizes": TABLES, "embed_dim": 4, "bottom_widths": (6, 4),
              "top_widths": (8, 5)}
    fields.update(kw)
    return DLRM(**fields)


def inputs(n: int, seed: int = 0, num_dense: int = 3, tables=TABLES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, num_dense))
    ids = np.stack([rng.integers(0, t, n) for t in tables], axis=1)
    return np.concatenate([dense, ids], axis=1).astype(np.float32)


# Eager on purpose: eager ops are compiled once per shape and shared by every test, while a
# jitted init or apply compiles a whole program per model (~1.5 s of CPU each on 2 cores).
def init(model: DLRM, x: np.ndarray, seed: int = 0):
    return model.init(jax.random.PRNGKey(seed), x[:2], train=False)


def apply(model: DLRM, variables, x, **kw):
    return model.apply(variables, x, **kw)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("interaction", ["dot", "cat"])
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_output_is_one_logit_per_example(interaction, norm):
    model = tiny(interaction=interaction, norm=norm)
    x = inputs(9)
    variables = init(model, x)
    out = apply(model, variables, x, train=False)
    assert out.shape == (9,) and out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))
    out, _ = apply(model, variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                   mutable=["batch_stats"])
    assert out.shape == (9,)


def test_dot_interaction_matches_a_numpy_loop():
    rng = np.random.default_rng(3)
    n, k, d = 5, 4, 3
    z = rng.standard_normal((n, d)).astype(np.float32)
    e = rng.standard_normal((n, k, d)).astype(np.float32)
    out = np.asarray(interact(jnp.asarray(z), jnp.asarray(e), "dot"))
    # The reference's order (dlrm_s_pytorch.py interact_features): for i in 0..k, j in 0..i-1,
    # the dot product of vectors i and j of (z, e_1, ..., e_k).
    for row in range(n):
        vectors = [z[row]] + [e[row, j] for j in range(k)]
        pairs = [float(np.dot(vectors[i], vectors[j])) for i in range(k + 1) for j in range(i)]
        expected = np.concatenate([z[row], pairs])
        np.testing.assert_allclose(out[row], expected, rtol=1e-5, atol=1e-6)
    assert out.shape[1] == d + (k + 1) * k // 2
    cat = np.asarray(interact(jnp.asarray(z), jnp.asarray(e), "cat"))
    np.testing.assert_array_equal(cat, np.concatenate([z, e.reshape(n, -1)], axis=1))


def test_forward_pass_equals_the_equations():
    # The whole model by hand from its params (norm none, no dropout): bottom ReLU MLP,
    # lookups, dot interaction, top ReLU MLP, linear head.
    model = tiny(norm="none", drop_rate=0.0)
    x = inputs(6, seed=4)
    params = init(model, x)["params"]
    p = jax.tree.map(np.asarray, params)
    h = x[:, :3]
    for i in range(2):
        h = np.maximum(0, h @ p[f"bottom_{i}"]["kernel"] + p[f"bottom_{i}"]["bias"])
    ids = x[:, 3:].astype(int)
    vectors = [h] + [p[f"embed_{j}"]["embedding"][ids[:, j]] for j in range(len(TABLES))]
    pairs = [np.sum(vectors[a] * vectors[b], axis=1) for a in range(4) for b in range(a)]
    r = np.concatenate([h, np.stack(pairs, axis=1)], axis=1)
    for i in range(2):
        r = np.maximum(0, r @ p[f"top_{i}"]["kernel"] + p[f"top_{i}"]["bias"])
    logit = (r @ p["head"]["kernel"] + p["head"]["bias"])[:, 0]
    np.testing.assert_allclose(np.asarray(apply(model, {"params": params}, x, train=False)),
                               logit, rtol=1e-4, atol=1e-5)


def test_parameter_names_and_shapes():
    model = tiny()
    x = inputs(4)
    params = init(model, x)["params"]
    shapes = jax.tree.map(lambda a: tuple(a.shape), params)
    d, k = 4, len(TABLES)
    for j, rows in enumerate(TABLES):
        assert shapes[f"embed_{j}"] == {"embedding": (rows, d)}
    assert shapes["bottom_0"]["kernel"] == (3, 6) and shapes["bottom_1"]["kernel"] == (6, 4)
    assert shapes["top_0"]["kernel"] == (model.interaction_width, 8)
    assert model.interaction_width == d + (k + 1) * k // 2
    assert shapes["top_norm_0"] == {"scale": (8,), "bias": (8,)}
    assert shapes["head"] == {"kernel": (5, 1), "bias": (1,)}
    assert set(params) == {"embed_0", "embed_1", "embed_2", "bottom_0", "bottom_1", "top_0",
                           "top_1", "top_norm_0", "top_norm_1", "head"}
    # The contract's helpers find the dense layers in forward order.
    order = kernel_layers(lambda v, b, **kw: model.apply(v, b, train=False, **kw),
                          {"params": params}, x)
    assert order == [("bottom_0",), ("bottom_1",), ("top_0",), ("top_1",), ("head",)]
    assert kernel_shapes(model, {"params": params}, x)[-1] == (5, 1)
    # BatchNorm after a Dense makes its bias redundant: dropped, as in the MLP.
    bn = init(tiny(norm="batch"), x)
    assert "bias" not in bn["params"]["top_0"] and "batch_stats" in bn


def test_sows_preact_and_act_for_every_hidden_dense():
    model = tiny()
    x = inputs(5)
    variables = init(model, x)
    _, state = apply(model, variables, x, train=False, mutable=["intermediates"])
    sown = sown_by_layer(state["intermediates"])
    assert list(sown) == ["bottom_0", "bottom_1", "top_0", "top_1"]
    assert sown["bottom_1"]["act"].shape == (5, 4) and sown["top_0"]["preact"].shape == (5, 8)
    # ReLU on the bottom's last layer too (the reference), so the dense vector is >= 0.
    assert float(jnp.min(sown["bottom_1"]["act"])) >= 0.0


def test_dropout_train_eval_and_mc_dropout():
    model = tiny(drop_rate=0.5, embed_drop_rate=0.5)
    x = inputs(16)
    variables = init(model, x)
    def run(v, b, key, mc):
        return model.apply(v, b, train=False, mc_dropout=mc, rngs={"dropout": key})

    a = run(variables, x, jax.random.PRNGKey(0), False)
    np.testing.assert_array_equal(np.asarray(a),
                                  np.asarray(run(variables, x, jax.random.PRNGKey(9), False)))
    mc = [run(variables, x, jax.random.PRNGKey(i), True) for i in (1, 2)]
    assert not np.allclose(np.asarray(mc[0]), np.asarray(mc[1]))
    assert not np.allclose(np.asarray(mc[0]), np.asarray(a))


def test_invalid_ids_give_nan_logits_and_fail_the_host_check():
    model = tiny()
    x = inputs(4)
    variables = init(model, x)
    bad = x.copy()
    bad[0, 3] = TABLES[0]     # one past the last row
    bad[1, 4] = -1.0          # jnp.take would wrap this to the last row
    bad[2, 5] = 1.5           # not an integer
    out = np.asarray(apply(model, variables, bad, train=False))
    assert np.all(np.isnan(out[:3])) and np.isfinite(out[3])
    check_sparse_ids(model, x)
    with pytest.raises(ValueError, match=r"x\[0, 3\]"):
        check_sparse_ids(model, bad)
    with pytest.raises(ValueError, match="num_dense"):
        model.apply(variables, x[:, :5], train=False)


def test_describe_names_the_parts():
    text = tiny().describe((6,))
    assert "3 dense" in text and "11/7/5 rows" in text and "dot interaction" in text
    assert f"top {tiny().interaction_width}-8-5-1" in text


@pytest.mark.parametrize("fields, match", [
    ({"bottom_widths": (6, 3)}, "model.bottom_widths"),
    ({"bottom_widths": ()}, "model.bottom_widths"),
    ({"norm": "instance"}, "model.norm"),
    ({"bottom_norm": "instance"}, "model.bottom_norm"),
    ({"norm": "group", "num_groups": 3}, "model.num_groups"),
    ({"interaction": "sum"}, "model.interaction"),
    ({"num_classes": 2}, "model.num_classes"),
    ({"table_sizes": ()}, "model.table_sizes"),
    ({"table_sizes": (2 ** 24 + 1,)}, r"model.table_sizes\[0\]"),
    ({"embed_init": "no_such_init"}, "model.embed_init"),
    ({"drop_rate": 1.0}, "model.drop_rate"),
])
def test_bad_fields_raise_config_error(fields, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**fields)


# --------------------------------------------------------------------------- embedding init


def test_chapter_embedding_init_bounds_and_variance():
    # U(-1/sqrt(d), 1/sqrt(d)): |w| <= 1/sqrt(d), Var = 1/(3d), every row's E||e||^2 = 1/3.
    d, rows = 16, 20000
    model = DLRM(num_dense=2, table_sizes=(rows,), embed_dim=d, bottom_widths=(d,),
                 top_widths=(4,))
    x = inputs(2, num_dense=2, tables=(rows,))
    table = np.asarray(init(model, x)["params"]["embed_0"]["embedding"], np.float64)
    bound = 1.0 / math.sqrt(d)
    assert np.abs(table).max() <= bound
    assert np.abs(table).max() > 0.999 * bound  # the whole interval is used
    n = table.size
    # Sample variance of n uniforms: sd of the estimate = sqrt(Var(w^2)/n), Var(w^2) = 4 b^4 / 45.
    se = math.sqrt(4 * bound ** 4 / 45 / n)
    assert abs(table.var() - 1.0 / (3 * d)) < 5 * se
    assert abs(np.mean(np.sum(table ** 2, axis=1)) - 1.0 / 3.0) < 5 * se * d


def test_reference_rows_init_bounds():
    # dlrm_s_pytorch.py: U(-sqrt(1/n), sqrt(1/n)), n = rows, whatever d is.
    init_fn = initializers.get("embedding_rows_uniform")
    for rows, d in ((400, 8), (10000, 4)):
        table = np.asarray(init_fn(jax.random.PRNGKey(rows), (rows, d)), np.float64)
        bound = math.sqrt(1.0 / rows)
        assert np.abs(table).max() <= bound and np.abs(table).max() > 0.99 * bound
        se = math.sqrt(4 * bound ** 4 / 45 / table.size)
        assert abs(table.var() - 1.0 / (3 * rows)) < 5 * se
        assert initializers.expected_std("embedding_rows_uniform", (rows, d)) == \
            pytest.approx(bound / math.sqrt(3))
    model = tiny(embed_init="embedding_rows_uniform")
    params = init(model, inputs(2))["params"]
    for j, rows in enumerate(TABLES):
        assert np.abs(np.asarray(params[f"embed_{j}"]["embedding"])).max() <= math.sqrt(1 / rows)


def test_chapter_recipe_keeps_decay_off_the_embeddings():
    model = tiny()
    params = init(model, inputs(2))["params"]
    for decay_mask in ("kernels", "all"):
        cfg = config.OptimConfig(name="adam", learning_rate=1e-3, l2=1e-5,
                                 wd_mults=("embed_.*=0",), clip="global_norm", clip_value=1.0,
                                 decay_mask=decay_mask)
        groups = optim.param_groups_of(cfg)
        groups.check(params)
        mults = groups.decay_mults(params)
        for j in range(len(TABLES)):
            assert mults[f"embed_{j}"]["embedding"] == 0.0
        for name in ("bottom_0", "bottom_1", "top_0", "top_1", "head"):
            assert mults[name]["kernel"] == 1.0
        # Without the rule, "all" would decay the tables: the rule is what keeps them out.
        bare = optim.param_groups_of(config.OptimConfig(name="adam", learning_rate=1e-3,
                                                        l2=1e-5, decay_mask=decay_mask))
        assert bare.decay_default(params)["embed_0"]["embedding"] == (decay_mask == "all")
    # And the optimizer built from it runs: one step leaves an embedding row that got no
    # gradient exactly where it was (no decay on it), while kernels move.
    tx = optim.make_optimizer(cfg)
    grads = jax.tree.map(jnp.zeros_like, params)
    # Jitted: eager, the chain would compile each small op per leaf shape (~200 compiles).
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    assert float(jnp.abs(updates["embed_0"]["embedding"]).max()) == 0.0
    assert float(jnp.abs(updates["top_0"]["kernel"]).max()) > 0.0


# --------------------------------------------------------------------------- table monitor


def _grads_like(params, rng, scale0=1.0):
    g = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), params)
    g["embed_0"] = jax.tree.map(lambda a: a * scale0, g["embed_0"])
    return g


def test_table_grad_norms_are_l2_norms_of_the_tables():
    params = init(tiny(), inputs(2))["params"]
    g = _grads_like(params, np.random.default_rng(0))
    norms = jax.jit(table_grad_norms)(g)
    assert sorted(norms) == ["embed_0", "embed_1", "embed_2"]
    for t, v in norms.items():
        assert float(v) == pytest.approx(float(np.linalg.norm(np.asarray(g[t]["embedding"]))),
                                         rel=1e-5)
    with pytest.raises(ValueError, match="table pattern"):
        table_grad_norms(g, pattern="emb")


def test_monitor_flags_the_20x_step_only():
    params = init(tiny(), inputs(2))["params"]
    rng = np.random.default_rng(1)
    spike = 37
    norms_fn = jax.jit(table_grad_norms)
    seq = [norms_fn(_grads_like(params, rng, 20.0 if s == spike else 1.0)) for s in range(60)]
    state = init_alerts(list(seq[0]))
    step = jax.jit(update_alerts)
    flagged = {t: [] for t in seq[0]}
    for s, norms in enumerate(seq):
        average = running_average(state, 0.99)
        state, alerts = step(state, norms)
        for t, a in alerts.items():
            if bool(a):
                flagged[t].append(s)
                assert float(norms[t]) > 10 * float(average[t])
    assert flagged == {"embed_0": [spike], "embed_1": [], "embed_2": []}
    # The same through the epoch scan, which also reports the averages compared with.
    _, summary = epoch_summary(init_alerts(list(seq[0])),
                               {t: np.array([float(n[t]) for n in seq]) for t in seq[0]})
    assert summary["embed_0"]["alert_steps"] == [spike] and summary["embed_1"]["alerts"] == 0
    assert summary["embed_0"]["alert_norms"][0] > 10 * summary["embed_0"]["alert_averages"][0]


def test_running_average_is_the_bias_corrected_ema():
    x = np.array([2.0, 4.0, 1.0, 8.0], np.float32)
    decay = 0.9
    state = init_alerts(["t"])
    for v in x:
        state, _ = update_alerts(state, {"t": v}, decay=decay)
    weights = decay ** np.arange(len(x))[::-1]
    expected = np.sum(weights * x) / np.sum(weights)  # = (1-decay) sum / (1 - decay^t)
    assert float(running_average(state, decay)["t"]) == pytest.approx(expected, rel=1e-6)
    # Invalid (skipped) steps change nothing; non-finite norms alert and are not averaged.
    same, alerts = update_alerts(state, {"t": 1e9}, decay=decay, valid=False)
    assert not bool(alerts["t"]) and float(same.count["t"]) == len(x)
    after, alerts = update_alerts(state, {"t": np.nan}, decay=decay)
    assert bool(alerts["t"]) and float(after.count["t"]) == len(x)
    with pytest.raises(ValueError, match="decay"):
        update_alerts(state, {"t": 1.0}, decay=1.0)


def test_monitor_hook_reads_the_clip_record_and_logs_per_epoch():
    model = tiny()
    x = inputs(32, seed=2)
    y = jnp.asarray(np.random.default_rng(2).integers(0, 2, 32), jnp.float32)
    params = init(model, x)["params"]
    tx = optax.chain(recording_clip("global_norm", 1.0), optax.adam(1e-3))

    def loss(p):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(
            model.apply({"params": p}, x, train=False), y))

    @jax.jit
    def step(p):
        grads = jax.grad(loss)(p)
        return grads, tx.update(grads, tx.init(p), p)[1]

    grads, opt_state = step(params)
    monitor = TableGradMonitor(factor=10.0, warmup=3)
    got = jax.jit(lambda o: monitor.step_metrics(None, types.SimpleNamespace(opt_state=o), {}))(
        opt_state)["table_grad_norm"]
    want = table_grad_norms(grads)
    assert sorted(got) == sorted(want)
    for t in want:  # raw, pre-clipping norms
        assert float(got[t]) == pytest.approx(float(want[t]), rel=1e-5)
    with pytest.raises(ValueError, match="record_clip=True"):
        monitor.step_metrics(None, types.SimpleNamespace(opt_state=optax.sgd(1e-3).init(params)),
                             {})

    # An epoch of per-step norms as the loop hands them over: step 12 of embed_1 spikes 20x;
    # step 20 spikes too but was skipped by the non-finite guard (its record is stale).
    rng = np.random.default_rng(5)
    norms = {t: rng.uniform(0.8, 1.2, 30).astype(np.float32) for t in want}
    norms["embed_1"][12] *= 20
    norms["embed_2"][20] *= 20
    skipped = np.zeros(30, np.float32)
    skipped[20] = 1
    record = {"epoch": 1}
    event = EpochEnd(epoch=1, state=None, runs=[Run(seed=0)], active=np.array([True]),
                     step_metrics=[{"table_grad_norm": norms, "skipped": skipped}],
                     records=[record], improved=np.zeros(1, bool))
    with pytest.warns(TableGradAlert, match="embed_1"):
        monitor.metrics(event)
    assert record["table_alerts/embed_1"] == 1
    assert record["table_alerts/embed_0"] == 0 and record["table_alerts/embed_2"] == 0
    assert record["table_grad_norm_max/embed_1"] == pytest.approx(float(norms["embed_1"].max()))
    kept = skipped == 0  # the means and maxima are over the steps that were applied
    assert record["table_grad_norm_mean/embed_0"] == pytest.approx(
        float(norms["embed_0"][kept].mean()))
    assert [(a["table"], a["step"]) for a in monitor.alerts] == [("embed_1", 12)]
    assert all(any(k.startswith(p) for p in monitor.metric_prefixes)
               for k in record if k != "epoch")


def test_flax_embed_gradient_is_per_row():
    # What makes a burst spike a table's norm: the gradient of a lookup is a scatter-add into
    # the looked-up rows, so B examples of one id add up in one row (norm ~ B) while B distinct
    # ids spread over B rows (norm ~ sqrt(B)).
    embed = nn.Embed(50, 4)
    table = embed.init(jax.random.PRNGKey(0), jnp.zeros((1,), jnp.int32))

    def norm(ids):
        g = jax.grad(lambda v: jnp.sum(embed.apply(v, ids)))(table)
        return float(jnp.linalg.norm(g["params"]["embedding"]))

    b = 16
    assert norm(jnp.full((b,), 3)) == pytest.approx(b * 2.0)        # 4 entries of b each
    assert norm(jnp.arange(b)) == pytest.approx(math.sqrt(b) * 2.0)


@pytest.mark.parametrize("fields", [
    dict(norm="layer", drop_rate=0.0),
    dict(norm="batch", bottom_norm="batch", drop_rate=0.0, interaction="cat"),
])
def test_nnx_dlrm_equals_linen(fields):
    from flax import nnx

    from ml_practical import nnx as mpx

    fields = {"num_dense": 3, "table_sizes": (7, 5), "embed_dim": 4, "bottom_widths": (8, 4),
              "top_widths": (8,), **fields}
    lin = models.build_model("dlrm", fields)
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.concatenate([rng.normal(size=(16, 3)),
                                    rng.integers(0, 5, (16, 2))], axis=1), jnp.float32)
    v = lin.init(jax.random.key(0), x, train=False)
    net = mpx.build_model("dlrm", fields, (5,), rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, mpx.linen_variables(net)) == jax.tree.map(jnp.shape, v)
    mpx.load_variables(net, v)
    net.eval()
    np.testing.assert_allclose(net(x), lin.apply(v, x, train=False), rtol=1e-5, atol=1e-6)
    net.train()
    loss = lambda y: jnp.sum(jnp.sin(y))
    g_l = jax.grad(lambda p: loss(lin.apply({**v, "params": p}, x, train=True,
                                            mutable=["batch_stats"])[0]))(v["params"])
    g_n = nnx.grad(lambda m: loss(m(x)))(net)
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(g_n)), jax.tree.leaves(g_l)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
