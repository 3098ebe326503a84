"""Parameter groups (optim.wd_mults / lr_mults / freeze): the updates against closed forms and
optax references, the rules' checks, and the run file."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import config, loop, optim, param_groups
from ml_practical.config import ConfigError
from tests.conftest import make_tiny_dataset, tiny


def _cfg(**overrides):
    fields = dict(name="sgd", learning_rate=0.1)
    fields.update(overrides)
    return config.build(config.OptimConfig, fields)


def _params():
    k = jax.random.split(jax.random.key(0), 5)
    return {"dense_0": {"kernel": jax.random.normal(k[0], (3, 4)),
                        "bias": jax.random.normal(k[1], (4,))},
            "norm_0": {"scale": 1.0 + 0.1 * jax.random.normal(k[2], (4,)),
                       "bias": jax.random.normal(k[3], (4,))},
            "head": {"kernel": jax.random.normal(k[4], (4, 2))}}


def _grads(seed):
    leaves, treedef = jax.tree.flatten(_params())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(kk, w.shape)
                                        for kk, w in zip(keys, leaves)])


def _step(tx, params, grads, state=None):
    state = tx.init(params) if state is None else state
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_paths_are_the_keys_joined_by_slashes():
    assert param_groups.paths(_params()) == ["dense_0/bias", "dense_0/kernel", "head/kernel",
                                             "norm_0/bias", "norm_0/scale"]


def test_wd_mults_scale_each_leafs_decay_first_rule_wins():
    # SGD with decoupled decay c: w <- w - lr (g + c m w), m the first matching rule's value, and
    # decay_mask's 0/1 for leaves no rule matches (here "kernels": head/kernel 1, norm_0/scale 0).
    lr, c = 0.1, 0.3
    cfg = _cfg(weight_decay=c, wd_mults=("dense_0/.*=2", "dense_0/kernel=7", "norm_0/bias=0.5"))
    p, g = _params(), _grads(1)
    new, _ = _step(optim.make_optimizer(cfg), p, g)
    mult = {"dense_0": {"kernel": 2.0, "bias": 2.0}, "norm_0": {"scale": 0.0, "bias": 0.5},
            "head": {"kernel": 1.0}}
    want = jax.tree.map(lambda w, gg, m: w - lr * (gg + c * m * w), p, g, mult)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_coupled_l2_multipliers_pass_through_momentum():
    cfg = _cfg(name="momentum", momentum=0.9, l2=0.1, wd_mults=(".*/bias=3",),
               decay_mask="all")
    p = _params()
    mult = jax.tree_util.tree_map_with_path(
        lambda path, _: 3.0 if param_groups.leaf_path(path).endswith("bias") else 1.0, p)
    ref = optax.chain(
        optax.GradientTransformation(
            lambda _: optax.EmptyState(),
            lambda u, s, w: (jax.tree.map(lambda uu, ww, m: uu + 0.1 * m * ww, u, w, mult), s)),
        optax.trace(decay=0.9), optax.scale_by_learning_rate(0.1))
    a, b = p, p
    sa, sb = None, None
    for seed in range(3):
        a, sa = _step(optim.make_optimizer(cfg), a, _grads(seed), sa)
        b, sb = _step(ref, b, _grads(seed), sb)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_lr_mults_scale_adams_update_per_leaf():
    cfg = _cfg(name="adam", learning_rate=1e-2, lr_mults=("head/.*=0.1", "norm_.*=0"))
    p = _params()
    a, sa = p, None
    b, sb = p, None
    for seed in range(3):
        a, sa = _step(optim.make_optimizer(cfg), a, _grads(seed), sa)
        b, sb = _step(optax.adam(1e-2), b, _grads(seed), sb)
    for name in ("dense_0",):
        for leaf in a[name]:
            np.testing.assert_allclose(a[name][leaf], b[name][leaf], rtol=1e-6)
    # Adam's moments do not depend on the lr, so a leaf at multiplier m moves m times as far.
    np.testing.assert_allclose(a["head"]["kernel"] - p["head"]["kernel"],
                               0.1 * (b["head"]["kernel"] - p["head"]["kernel"]), rtol=1e-5,
                               atol=3e-7)  # float32 rounding of w_new - w at |w| ~ 1
    for leaf in ("scale", "bias"):
        np.testing.assert_array_equal(a["norm_0"][leaf], p["norm_0"][leaf])


def test_frozen_leaves_do_not_move_and_are_left_out_of_the_clip_norm():
    # With decay and global-norm clipping on, a frozen leaf stays bit for bit, and the others get
    # the update of the same chain over the trainable leaves alone (torch: a parameter with
    # requires_grad=False has no .grad, so clip_grad_norm_ does not count it).
    cfg = _cfg(clip="global_norm", clip_value=0.5, weight_decay=0.1, freeze=("dense_0/.*",))
    p, g = _params(), _grads(2)
    new, state = _step(optim.make_optimizer(cfg), p, g)
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(new["dense_0"][leaf], p["dense_0"][leaf])
    rest = {k: v for k, v in p.items() if k != "dense_0"}
    ref = optim.make_optimizer(_cfg(clip="global_norm", clip_value=0.5, weight_decay=0.1))
    want, _ = _step(ref, rest, {k: v for k, v in g.items() if k != "dense_0"})
    for k in rest:
        for leaf in rest[k]:
            np.testing.assert_allclose(new[k][leaf], want[k][leaf], rtol=1e-6, atol=1e-7)


def test_no_rules_build_the_same_chain_and_the_bn_bias_recipe_equals_the_kernel_mask():
    # "No decay on BN gamma/beta and biases" written as rules over decay_mask="all" trains as
    # the default kernel mask does, bit for bit.
    p = _params()
    a = optim.make_optimizer(_cfg(name="momentum", weight_decay=0.05))
    b = optim.make_optimizer(_cfg(name="momentum", weight_decay=0.05, decay_mask="all",
                                  wd_mults=("norm_.*=0", ".*/bias=0")))
    pa, pb, sa, sb = p, p, None, None
    for seed in range(3):
        pa, sa = _step(a, pa, _grads(seed), sa)
        pb, sb = _step(b, pb, _grads(seed), sb)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)
    # Without rules the optimizer state is the plain chain's (no multi_transform wrapper).
    plain = jax.tree.structure(a.init(p))
    assert plain == jax.tree.structure(optim.make_optimizer(_cfg(name="momentum",
                                                                 weight_decay=0.05)).init(p))


@pytest.mark.parametrize("field, value, fragment", [
    ("wd_mults", ("bias",), "optim.wd_mults[0]: 'bias'; expected 'REGEX=MULT'"),
    ("wd_mults", ("(bias=1",), "is not a regular expression"),
    ("lr_mults", (".*=fast",), "optim.lr_mults[0]: multiplier 'fast'"),
    ("lr_mults", (".*=-1",), "expected a number >= 0"),
    ("freeze", ("[",), "optim.freeze[0]"),
])
def test_bad_rules_are_one_line_naming_the_field(field, value, fragment):
    with pytest.raises(ConfigError) as err:
        _cfg(**{field: value})
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_rule_that_matches_no_parameter_is_refused_before_the_workdir(tmp_path):
    cfg = tiny(**{"optim.freeze": ("encoder/.*",)})
    with pytest.raises(ConfigError, match=r"optim.freeze\[0\]: 'encoder/\.\*' matches no "
                                          r"parameter; the parameters are dense_0/kernel, head/bias"):
        loop.fit(cfg, tmp_path / "run", dataset=make_tiny_dataset())
    assert not (tmp_path / "run").exists()


def test_proximal_l1_with_lr_mults_is_refused():
    with pytest.raises(ConfigError, match="optim.lr_mults"):
        _cfg(l1=1e-3, l1_mode="proximal", lr_mults=(".*=0.5",))


def test_the_run_writes_its_groups_and_a_log_line(tmp_path, capsys):
    cfg = tiny(**{"train.num_epochs": 1, "model.norm": "batch", "optim.weight_decay": 1e-3,
                  "optim.wd_mults": (".*/bias=0.5",), "optim.lr_mults": ("head/.*=0.1",),
                  "optim.freeze": ("norm_0/scale",)})
    result = loop.fit(cfg, tmp_path, dataset=make_tiny_dataset())
    groups = json.loads((tmp_path / "param_groups.json").read_text())
    leaves = groups["leaves"]
    assert leaves["norm_0/scale"] == {"frozen": True, "decay_mult": 0.0, "lr_mult": 0.0,
                                      "clipped": False}
    assert leaves["head/bias"]["decay_mult"] == 0.5 and leaves["head/bias"]["lr_mult"] == 0.1
    assert leaves["dense_0/kernel"]["decay_mult"] == 1.0  # decay_mask "kernels"
    assert leaves["norm_0/bias"]["decay_mult"] == 0.5
    np.testing.assert_array_equal(result.state.params["norm_0"]["scale"], 1.0)  # its init
    err = capsys.readouterr().err
    assert "parameter groups: 5 leaves; decayed 4, lr-scaled 2, frozen 1" in err


def test_the_recipe_configs_select_the_leaves_they_say():
    import importlib

    from ml_practical import experiment  # noqa: F401  (the models' registry)

    def groups(name):
        cfg = config.parse(importlib.import_module(f"experiments.configs.{name}").get_config())
        shapes = jax.eval_shape(lambda x: cfg.model.init(jax.random.PRNGKey(0), x, train=False),
                                jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))["params"]
        g = optim.param_groups_of(cfg.optim)
        g.check(shapes)
        return {k: v["decay_mult"] for k, v in g.describe(shapes).items()}

    norm_bias = groups("recipe_no_decay_norm_bias")
    assert {k for k, v in norm_bias.items() if v} == {
        k for k in norm_bias if k.endswith("kernel")}  # every conv and the head, nothing else
    dense = groups("recipe_decay_dense_only")
    assert {k for k, v in dense.items() if v} == {"head/kernel"}
