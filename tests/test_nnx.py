"""The nnx layers and the nnx MLP against their linen twins (same weights), flax's nnx layers, and
the library's tools (initializers, LSUV, activation statistics, optimizer) on nnx models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ml_practical import config, dropout, initializers, layers, losses, lsuv, models, optim
from ml_practical import nnx as mpx
from ml_practical.analysis import activations

X2 = jax.random.normal(jax.random.key(0), (32, 12)) * 3.0 + 5.0
X4 = jax.random.normal(jax.random.key(1), (16, 6, 6, 8)) + 2.0


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _pure(state):
    return nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state


# --------------------------------------------------------------------------------- the layers

LAYER_CASES = [
    ("bn", lambda: layers.BatchNorm(), lambda: mpx.BatchNorm(12, rngs=nnx.Rngs(0)), X2),
    ("bn_manual_torch", lambda: layers.BatchNorm(backward="manual", torch_compat=True,
                                                 momentum=0.8),
     lambda: mpx.BatchNorm(8, backward="manual", torch_compat=True, momentum=0.8,
                           rngs=nnx.Rngs(0)), X4),
    ("bn_ghost", lambda: layers.BatchNorm(ghost_batch_size=8),
     lambda: mpx.BatchNorm(12, ghost_batch_size=8, rngs=nnx.Rngs(0)), X2),
    ("bn_ghost_manual", lambda: layers.BatchNorm(ghost_batch_size=4, backward="manual"),
     lambda: mpx.BatchNorm(8, ghost_batch_size=4, backward="manual", rngs=nnx.Rngs(0)), X4),
    ("ln", lambda: layers.LayerNorm(), lambda: mpx.LayerNorm(12, rngs=nnx.Rngs(0)), X2),
    ("ln_all", lambda: layers.LayerNorm(axes="all"),
     lambda: mpx.LayerNorm(8, axes="all", rngs=nnx.Rngs(0)), X4),
    ("gn", lambda: layers.GroupNorm(num_groups=4),
     lambda: mpx.GroupNorm(8, num_groups=4, rngs=nnx.Rngs(0)), X4),
    ("in", lambda: layers.InstanceNorm(epsilon=1e-3),
     lambda: mpx.InstanceNorm(8, epsilon=1e-3, rngs=nnx.Rngs(0)), X4),
]


def _random_affine(variables, key):
    """gamma, beta away from 1, 0 (and running statistics away from 0, 1), so they matter."""
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape) + 0.1
                                     for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("name,make_linen,make_nnx,x", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_nnx_layer_equals_linen_layer(name, make_linen, make_nnx, x):
    lin, mod = make_linen(), make_nnx()
    v = lin.init(jax.random.key(0), x, train=False)
    v = {k: _random_affine(c, jax.random.key(i)) for i, (k, c) in enumerate(v.items())}
    v = {k: {kk: (jnp.abs(vv) if kk == "var" else vv) for kk, vv in c.items()} for k, c in v.items()}
    assert jax.tree.structure(mpx.linen_variables(mod)) == jax.tree.structure(v)
    for train in (False, True):
        mpx.load_variables(mod, v)
        mod.train() if train else mod.eval()

        def linen_loss(params, x):
            y, st = lin.apply({**v, "params": params}, x, train=train, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1])), (y, st)

        (_, (y_l, st_l)), (g_l, gx_l) = jax.value_and_grad(
            linen_loss, argnums=(0, 1), has_aux=True)(v["params"], x)

        def nnx_loss(m, x):
            y = m(x)
            return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1])), y

        (_, y_n), (g_n, gx_n) = nnx.value_and_grad(nnx_loss, argnums=(0, 1), has_aux=True)(mod, x)
        np.testing.assert_allclose(y_n, y_l, rtol=1e-6, atol=1e-6)
        _assert_trees_close(_pure(g_n), g_l, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gx_n, gx_l, rtol=1e-5, atol=1e-5)
        if "batch_stats" in v:
            expect = st_l["batch_stats"] if train else v["batch_stats"]
            _assert_trees_close(mpx.linen_variables(mod)["batch_stats"], expect, rtol=1e-6)


def test_nnx_batchnorm_matches_flax_nnx_batchnorm():
    """The reference: flax's own nnx.BatchNorm (momentum and two-pass variance matched)."""
    ours = mpx.BatchNorm(12, momentum=0.9, rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(12, momentum=0.9, use_fast_variance=False, rngs=nnx.Rngs(0))
    for _ in range(3):
        np.testing.assert_allclose(ours(X2), ref(X2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean[...], ref.mean[...], rtol=1e-6)
    np.testing.assert_allclose(ours.var[...], ref.var[...], rtol=1e-6)
    ours.eval(), ref.eval()
    np.testing.assert_allclose(ours(X2 * 2), ref(X2 * 2), rtol=1e-5, atol=1e-5)


def test_nnx_batchnorm_modes_and_view():
    bn = mpx.BatchNorm(12, rngs=nnx.Rngs(0))
    assert bn.use_running_average is False  # built in training mode, as flax's nnx layers
    bn(X2)
    m1 = np.asarray(bn.mean[...])
    np.testing.assert_allclose(m1, 0.1 * np.asarray(X2).mean(0), rtol=1e-5)  # one EMA step
    bn.eval()
    y = bn(X2)
    np.testing.assert_array_equal(bn.mean[...], m1)  # eval: statistics stay
    ref = (X2 - m1) / np.sqrt(np.asarray(bn.var[...]) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    view = nnx.view(bn, use_running_average=False)
    assert view.use_running_average is False and bn.use_running_average is True
    bn(X2, use_running_average=False)  # a call-time override trains once more
    assert not np.allclose(bn.mean[...], m1)
    with pytest.raises(ValueError, match="built for 12 features"):
        bn(X4)


def test_nnx_dropout_masks_match_flax_nnx_dropout_and_the_pure_function():
    x = jnp.ones((64, 33))
    ours = mpx.Dropout(0.3, rngs=nnx.Rngs(dropout=7))
    ref = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=7))
    for _ in range(2):  # the stream advances identically
        np.testing.assert_array_equal(ours(x), ref(x))
    key = jax.random.key(3)
    np.testing.assert_array_equal(ours(x, rngs=key), dropout.dropout(key, x, 0.3))
    np.testing.assert_array_equal(ours(x, rngs=key), ref(x, rngs=key))
    t16 = mpx.Dropout(0.3, sampler="threefry16")
    np.testing.assert_array_equal(t16(x, rngs=key), dropout.dropout(key, x, 0.3, "threefry16"))
    ours.eval()
    assert ours(x) is x
    with pytest.raises(ValueError, match="no key"):
        mpx.Dropout(0.5)(x)
    with pytest.raises(ValueError, match="Dropout.rate"):
        mpx.Dropout(1.0)


@pytest.mark.parametrize("bad,match", [
    (lambda: mpx.BatchNorm(4, momentum=1.5, rngs=nnx.Rngs(0)), "BatchNorm.momentum"),
    (lambda: mpx.BatchNorm(4, backward="x", rngs=nnx.Rngs(0)), "BatchNorm.backward"),
    (lambda: mpx.LayerNorm(4, axes="rows", rngs=nnx.Rngs(0)), "LayerNorm.axes"),
    (lambda: mpx.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0)), r"expected one of \[1, 2, 3, 6\]"),
    (lambda: mpx.InstanceNorm(4, epsilon=-1.0, rngs=nnx.Rngs(0)), "InstanceNorm.epsilon"),
])
def test_nnx_layers_check_their_fields(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


# ------------------------------------------------------------------------------------- the MLP

MLP_CASES = {
    "bn_before": dict(widths=(16, 8), norm="batch"),
    "bn_after_manual": dict(widths=(16, 8), norm="batch", norm_position="after",
                            bn_backward="manual", activation="tanh"),
    "ln": dict(widths=(16,), norm="layer", bias_before_bn=True),
    "gn_ghost": dict(widths=(16, 8), norm="group", num_groups=4),
    "bn_ghost": dict(widths=(8,), norm="batch", ghost_batch_size=8, activation="gelu"),
    "plain": dict(widths=(16, 16, 8), hidden_init="normal(stddev=0.05)", output_init="zeros"),
}


def _twins(fields, x=X2):
    lin = models.build_model("mlp", fields)
    v = lin.init(jax.random.key(0), x, train=False)
    net = mpx.build_model("mlp", fields, x.shape[1:], rngs=nnx.Rngs(params=0, dropout=1))
    return lin, v, net


@pytest.mark.parametrize("case", sorted(MLP_CASES))
def test_nnx_mlp_equals_linen_mlp(case):
    lin, v, net = _twins(MLP_CASES[case])
    # The same structure: linen params <-> nnx.Param, batch_stats <-> nnx.BatchStat.
    assert jax.tree.map(jnp.shape, mpx.linen_variables(net)) == jax.tree.map(jnp.shape, v)
    mpx.load_variables(net, v)
    net.eval()
    np.testing.assert_allclose(net(X2), lin.apply(v, X2, train=False), rtol=1e-5, atol=1e-5)
    net.train()
    loss = lambda y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        y, jnp.arange(y.shape[0]) % 10))

    def linen_loss(params):
        y, st = lin.apply({**v, "params": params}, X2, train=True, mutable=["batch_stats"])
        return loss(y), (y, st)

    (_, (y_l, st_l)), g_l = jax.value_and_grad(linen_loss, has_aux=True)(v["params"])
    (_, y_n), g_n = nnx.value_and_grad(lambda m: (loss(y := m(X2)), y), has_aux=True)(net)
    np.testing.assert_allclose(y_n, y_l, rtol=1e-5, atol=1e-5)
    _assert_trees_close(_pure(g_n), g_l, rtol=1e-4, atol=1e-6)
    if "batch_stats" in v:
        _assert_trees_close(mpx.linen_variables(net)["batch_stats"], st_l["batch_stats"])
    # The sown statistics: the same layers, the same values.
    mpx.load_variables(net, v)
    net.eval()
    _, sown_n = mpx.capture.intermediates(lambda m, x: m(x), net, X2)
    _, st = lin.apply(v, X2, train=False, mutable=["intermediates"])
    a, b = activations.sown_by_layer(sown_n), activations.sown_by_layer(st["intermediates"])
    assert list(a) == list(b) == [f"dense_{i}" for i in range(len(MLP_CASES[case]["widths"]))]
    _assert_trees_close(a, b, rtol=1e-5, atol=1e-5)
    # Outside a capture nothing is stored on the model.
    net(X2)
    assert not nnx.state(net, nnx.Intermediate)


def test_nnx_mlp_mc_dropout():
    fields = dict(widths=(32, 16), norm="batch", drop_rate=0.3)
    lin, v, net = _twins(fields)
    mpx.load_variables(net, v)
    net.eval()
    mc = mpx.mc_dropout(net)
    before = mpx.linen_variables(net)["batch_stats"]
    draws = [mc(X2) for _ in range(2)]
    assert not np.allclose(draws[0], draws[1])  # dropout on, a new mask each call
    _assert_trees_close(mpx.linen_variables(net)["batch_stats"], before, rtol=0, atol=0)
    assert net.dropout_0.deterministic is True and net.norm_0.use_running_average is True
    np.testing.assert_allclose(net(X2), lin.apply(v, X2, train=False), rtol=1e-5, atol=1e-5)
    # With the masks switched off, the MC view is linen's eval function (BN on running stats).
    np.testing.assert_allclose(nnx.view(mc, deterministic=True)(X2),
                               lin.apply(v, X2, train=False, mc_dropout=False), rtol=1e-5,
                               atol=1e-5)


def test_nnx_build_model_checks_fields_like_linen():
    with pytest.raises(config.ConfigError, match="model.norm"):
        mpx.build_model("mlp", {"norm": "instance"}, (4,), rngs=nnx.Rngs(0))
    with pytest.raises(config.ConfigError, match="model.widht"):
        mpx.build_model("mlp", {"widht": (4,)}, (4,), rngs=nnx.Rngs(0))
    net = mpx.build_model("mlp", {"widths": (4,)}, (4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="variables\\['params'\\]"):
        mpx.load_variables(net, {"params": {"dense_0": {"kernel": jnp.zeros((4, 4))}}})
    v = models.build_model("mlp", {"widths": (5,)}).init(jax.random.key(0), jnp.ones((1, 4)),
                                                          train=False)
    with pytest.raises(ValueError, match="shape"):
        mpx.load_variables(net, v)


# ------------------------------------------------------------------- the library's tools on nnx

@pytest.mark.parametrize("name", ["he_normal", "xavier_uniform", "orthogonal", "he_uniform",
                                  "embedding_uniform", "constant(0.01)"])
def test_initializers_drop_into_nnx_linear(name):
    init = initializers.get(name)
    layer = nnx.Linear(300, 200, kernel_init=init, rngs=nnx.Rngs(params=4))
    key = nnx.Rngs(params=4).params()  # the key nnx.Linear draws the kernel with
    np.testing.assert_array_equal(layer.kernel[...], init(key, (300, 200), jnp.float32))
    if name == "he_normal":  # and it is He: std sqrt(2 / fan_in)
        np.testing.assert_allclose(np.std(layer.kernel[...]), np.sqrt(2 / 300), rtol=0.03)
    if name == "orthogonal":
        k = np.asarray(layer.kernel[...])
        np.testing.assert_allclose(k.T @ k, np.eye(200), atol=1e-5)


def test_lsuv_nnx_matches_linen_lsuv_and_changes_only_kernels():
    fields = dict(widths=(32, 16), norm="batch", drop_rate=0.2)
    x = jax.random.normal(jax.random.key(2), (128, 12)) * 2.0
    lin, v, net = _twins(fields, x)
    mpx.load_variables(net, v)
    net.eval()
    np.testing.assert_allclose(
        list(lsuv.layer_output_variances_nnx(net, x).values()),
        list(lsuv.layer_output_variances(functools.partial(lin.apply, train=False), v, x).values()),
        rtol=1e-5)
    report = lsuv.lsuv_nnx(net, x, key=jax.random.key(5))
    v2, report_l = lsuv.lsuv(functools.partial(lin.apply, train=False), v, x,
                             key=jax.random.key(5))
    assert [r["layer"] for r in report] == ["dense_0", "dense_1", "head"]
    assert all(r["converged"] for r in report)
    for a, b in zip(report, report_l):
        assert a["iterations"] == b["iterations"]
        np.testing.assert_allclose(a["var_after"], b["var_after"], rtol=1e-4)
    _assert_trees_close(mpx.linen_variables(net), v2, rtol=1e-4, atol=1e-6)
    # In training mode too, LSUV runs on copies: the running statistics and the dropout
    # streams of the model do not move.
    _, v3, net3 = _twins(fields, x)
    mpx.load_variables(net3, v3)
    net3.train()
    counts = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(net3, nnx.RngCount)))
    lsuv.lsuv_nnx(net3, x, key=jax.random.key(5))
    _assert_trees_close(nnx.to_pure_dict(nnx.state(net3, nnx.RngCount)), counts, rtol=0, atol=0)
    _assert_trees_close(mpx.linen_variables(net3)["batch_stats"], v3["batch_stats"], rtol=0,
                        atol=0)
    net3(x)  # while a forward pass of the model itself moves both
    assert not np.array_equal(mpx.linen_variables(net3)["batch_stats"]["norm_0"]["mean"],
                              v3["batch_stats"]["norm_0"]["mean"])
    out = lsuv.layer_output_variances_nnx(net, x, layer_filter=lambda n: n != "head")
    assert list(out) == ["dense_0", "dense_1"]
    assert all(abs(val - 1.0) < 0.1 for val in out.values())
    with pytest.raises(ValueError, match="key: required"):
        lsuv.lsuv_nnx(net, x)


def test_activation_stats_nnx_match_linen():
    fields = dict(widths=(16, 8), norm="batch")
    lin, v, net = _twins(fields)
    mpx.load_variables(net, v)
    for train in (False, True):
        net.train() if train else net.eval()
        a = activations.activation_stats_nnx(net, X2, bins=8)
        b = activations.activation_stats(lin, v, X2, train=train, bins=8)
        assert list(a) == list(b) == ["dense_0", "dense_1"]
        for layer in a:
            for kind in ("preact", "act"):
                for stat in ("mean", "var"):
                    np.testing.assert_allclose(a[layer][kind][stat], b[layer][kind][stat],
                                               rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(a[layer][kind]["hist"][0], b[layer][kind]["hist"][0])
    # The model is not changed by it (BatchNorm was in training mode).
    _assert_trees_close(mpx.linen_variables(net)["batch_stats"], v["batch_stats"], rtol=0, atol=0)


def test_default_mask_and_param_groups_read_nnx_state_like_linen_params():
    lin, v, net = _twins(dict(widths=(8,), norm="batch"))
    state = nnx.state(net, nnx.Param)
    assert jax.tree.leaves(losses.default_mask(state)) == jax.tree.leaves(
        losses.default_mask(v["params"]))
    assert sum(jax.tree.leaves(losses.default_mask(state))) == 2  # dense_0, head kernels
    groups = optim.param_groups_of(config.OptimConfig(
        name="sgd", learning_rate=0.1, wd_mults=("norm_.*=0", "head/.*=2")))
    assert jax.tree.leaves(groups.decay_mults(state)) == jax.tree.leaves(
        groups.decay_mults(v["params"]))


OPTIM_CASES = {
    "momentum_l2_clip": dict(name="momentum", learning_rate=0.05, momentum=0.9, l2=1e-3,
                             clip="global_norm", clip_value=0.5),
    "adamw_groups": dict(name="adamw", learning_rate=3e-3, weight_decay=0.05,
                         wd_mults=("norm_.*=0", "head/kernel=2"), schedule="warmup_cosine",
                         warmup_steps=2),
    "sgd_l1_proximal": dict(name="sgd", learning_rate=0.1, l1=1e-3, l1_mode="proximal"),
}


@pytest.mark.parametrize("case", sorted(OPTIM_CASES))
def test_nnx_optimizer_with_make_optimizer_trains_like_the_linen_path(case):
    """An nnx MLP trained with nnx.Optimizer and the library's chain = the linen MLP trained with
    the same chain through optax, step for step (same weights, same batches)."""
    fields = dict(widths=(16, 8), norm="batch")
    lin, v, net = _twins(fields)
    mpx.load_variables(net, v)
    steps = 6
    tx_cfg = config.OptimConfig(**OPTIM_CASES[case])
    labels = jnp.arange(X2.shape[0]) % 10
    batches = [X2 + 0.1 * i for i in range(steps)]
    loss_of = lambda y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(y, labels))

    tx = optim.make_optimizer(tx_cfg, total_steps=steps)
    params, stats, opt_state = v["params"], v["batch_stats"], tx.init(v["params"])

    @jax.jit
    def linen_step(params, stats, opt_state, x):
        def f(p):
            y, st = lin.apply({"params": p, "batch_stats": stats}, x, train=True,
                              mutable=["batch_stats"])
            return loss_of(y), st["batch_stats"]
        (loss, stats), g = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    opt = nnx.Optimizer(net, optim.make_optimizer(tx_cfg, total_steps=steps), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, opt, x):
        loss, g = nnx.value_and_grad(lambda m: loss_of(m(x)))(model)
        opt.update(model, g)
        return loss

    net.train()
    for x in batches:
        params, stats, opt_state, loss_l = linen_step(params, stats, opt_state, x)
        loss_n = nnx_step(net, opt, x)
        np.testing.assert_allclose(loss_n, loss_l, rtol=1e-5)
    _assert_trees_close(mpx.linen_variables(net), {"params": params, "batch_stats": stats},
                        rtol=1e-4, atol=1e-6)
    assert int(opt.step[...]) == steps


def test_readme_nnx_example_runs_and_learns(capsys):
    """The README's nnx example, executed as written: it trains (loss falls, the rule is learnt)."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- nnx-example -->\n```python\n(.*?)```", readme, re.S)
    assert block, "README.md: the nnx example block (<!-- nnx-example -->) is missing"
    scope: dict = {}
    exec(compile(block.group(1), "README.md:nnx-example", "exec"), scope)
    assert scope["losses"][-1] < 0.5 * scope["losses"][0]
    assert scope["accuracy"] > 0.8
    assert "train accuracy" in capsys.readouterr().out
    # The BatchNorm layer moved its running statistics during training.
    assert not np.allclose(scope["model"].norm.mean[...], 0.0)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_nnx_linear_family_equals_linen(num_classes):
    fields = dict(num_classes=num_classes, kernel_init="normal(stddev=0.1)", bias_init="constant(0.5)")
    lin = models.build_model("linear", fields)
    v = lin.init(jax.random.key(0), X2, train=False)
    net = mpx.build_model("linear", fields, (12,), rngs=nnx.Rngs(0))
    mpx.load_variables(net, v)
    np.testing.assert_allclose(net(X2), lin.apply(v, X2, train=True), rtol=1e-6)
    g_l = jax.grad(lambda p: jnp.sum(lin.apply({"params": p}, X2, train=True) ** 2))(v["params"])
    g_n = nnx.grad(lambda m: jnp.sum(m(X2) ** 2))(net)
    _assert_trees_close(_pure(g_n), g_l, rtol=1e-5)


def test_ghost_batchnorm_evaluates_any_batch_size():
    """Ghost batches cut training batches only: evaluation takes any batch (linen and nnx)."""
    x = X2[:12]  # not a multiple of 8
    lin = layers.BatchNorm(ghost_batch_size=8)
    v = lin.init(jax.random.key(0), x, train=False)
    bn = mpx.BatchNorm(12, ghost_batch_size=8, use_running_average=True, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(bn(x), lin.apply(v, x, train=False), rtol=1e-6)
    with pytest.raises(ValueError, match="does not divide the batch of 12"):
        bn(x, use_running_average=False)


def test_every_linen_family_has_an_nnx_twin_built_by_name():
    assert set(mpx.FAMILIES) == set(models.FAMILIES)
    net = mpx.build_model("resnet", {"depth": 8, "width_multiplier": 0.25}, (8, 8, 3),
                          rngs=nnx.Rngs(0))
    lin = models.build_model("resnet", {"depth": 8, "width_multiplier": 0.25})
    v = lin.init(jax.random.key(0), jnp.ones((2, 8, 8, 3)), train=False)
    assert jax.tree.map(jnp.shape, mpx.linen_variables(net)) == jax.tree.map(jnp.shape, v)
    assert type(mpx.from_linen(lin, (8, 8, 3), rngs=nnx.Rngs(0))) is mpx.ResNet


def test_lsuv_and_activation_stats_on_an_nnx_resnet_match_linen():
    """Nested blocks, shortcut convs and a stem: the forward order and outputs LSUV reads."""
    fields = {"depth": 8, "width_multiplier": 0.5, "shortcut": "B"}
    x = jax.random.normal(jax.random.key(3), (16, 8, 8, 3))
    lin = models.build_model("resnet", fields)
    v = lin.init(jax.random.key(0), x, train=False)
    net = mpx.build_model("resnet", fields, (8, 8, 3), rngs=nnx.Rngs(0))
    mpx.load_variables(net, v)
    net.eval()
    report = lsuv.lsuv_nnx(net, x, key=jax.random.key(1))
    v2, report_l = lsuv.lsuv(functools.partial(lin.apply, train=False), v, x,
                             key=jax.random.key(1))
    assert [r["layer"] for r in report] == [r["layer"] for r in report_l]
    assert "stage_1/block_0/shortcut_conv" in [r["layer"] for r in report]
    _assert_trees_close(mpx.linen_variables(net)["params"], v2["params"], rtol=1e-4, atol=1e-6)
    a = activations.activation_stats_nnx(net, x, bins=0)
    b = activations.activation_stats(lin, v2, x, bins=0)
    assert list(a) == list(b)
    for layer in a:
        np.testing.assert_allclose(a[layer]["act"]["var"], b[layer]["act"]["var"], rtol=1e-4)


def test_nnx_batchnorm_axis_name_gives_the_global_batch_statistics():
    """BatchNorm(axis_name=...) under a mapped axis (here jax.vmap over 4 shards, as under
    shard_map / pmap): each shard normalizes with the statistics of the whole batch."""
    bn = mpx.BatchNorm(12, axis_name="shards", rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(bn)

    def shard(xs, state):
        layer = nnx.merge(graphdef, state)
        return layer(xs), nnx.state(layer, nnx.BatchStat)

    y, stats = jax.vmap(shard, in_axes=(0, None), axis_name="shards")(X2.reshape(4, 8, 12), state)
    whole = mpx.BatchNorm(12, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(y.reshape(32, 12), whole(X2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nnx.to_pure_dict(stats)["mean"][0], whole.mean[...], rtol=1e-6)
