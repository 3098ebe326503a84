"""The convolutional families (`models.cnn`, `models.resnet`) against the papers and PyTorch:
parameter counts, a ResNet-20 equal to its PyTorch twin on copied weights (train and eval mode),
BN / GroupNorm on NHWC equal to torch's, Fixup's initial scale, the residual forms that start as
the identity, adaptive gradient clipping, and the families under `loop.fit` and LSUV."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_tiny_dataset
from flax import traverse_util

from ml_practical import config, layers, loop, lsuv, models, optim
from ml_practical.models import resnet

try:  # the PyTorch references (the `bench` extra); the other tests need no torch
    import torch

    from benchmarks import torch_twins
    F = torch.nn.functional
except ImportError:  # pragma: no cover - CI installs only the `test` extra
    torch = F = torch_twins = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (pip install -e '.[bench]') is "
                                                      "the reference of this test")


def _count(model, shape) -> int:
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


# ------------------------------------------------------------------------------------------------
# Parameter counts: the papers' (and the reference implementations' exact) figures.


@pytest.mark.parametrize("fields,shape,expected", [
    # He et al. 2016, Table 6 (0.27M / 0.46M / 0.66M / 0.85M / 1.7M); the exact counts of the
    # standard PyTorch CIFAR ResNets (option A, BN affine, no conv bias).
    ({"depth": 20}, (1, 32, 32, 3), 269_722),
    ({"depth": 32}, (1, 32, 32, 3), 464_154),
    ({"depth": 44}, (1, 32, 32, 3), 658_586),
    ({"depth": 56}, (1, 32, 32, 3), 853_018),
    ({"depth": 110}, (1, 32, 32, 3), 1_727_962),
    # Zagoruyko & Komodakis 2016, Table 1: WRN-28-10 has 36.5M.
    ({"variant": "wide", "depth": 28, "width_multiplier": 10}, (1, 32, 32, 3), 36_479_194),
    # torchvision's resnet18 / resnet34 / resnet50 (11.7M / 21.8M / 25.6M in He et al.).
    ({"variant": "imagenet", "depth": 18, "num_classes": 1000}, (1, 224, 224, 3), 11_689_512),
    ({"variant": "imagenet", "depth": 34, "num_classes": 1000}, (1, 224, 224, 3), 21_797_672),
    ({"variant": "imagenet", "depth": 50, "num_classes": 1000}, (1, 224, 224, 3), 25_557_032),
], ids=["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "wrn28_10", "resnet18",
        "resnet34", "resnet50"])
def test_parameter_counts_equal_the_papers(fields, shape, expected):
    assert _count(resnet.ResNet(**fields), shape) == expected


def test_preact_resnet_110_has_the_papers_1_7m():
    # He et al. 2016b, Table 3: pre-activation ResNet-110, 1.7M (the final BN adds 2 x 64).
    assert _count(resnet.ResNet(variant="preact", depth=110), (1, 32, 32, 3)) == 1_727_962 + 2560


def test_width_multiplier_and_shortcut_b_change_the_count_as_they_should():
    base = _count(resnet.ResNet(depth=20), (1, 32, 32, 3))
    # Option B adds two 1x1 projections (16->32, 32->64) and their BN (gamma, beta).
    b = _count(resnet.ResNet(depth=20, shortcut="B"), (1, 32, 32, 3))
    assert b - base == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    # Doubling every width about quadruples the convolutions.
    wide = _count(resnet.ResNet(depth=20, width_multiplier=2), (1, 32, 32, 3))
    assert 3.9 < wide / base < 4.0


@pytest.mark.parametrize("fields,needle", [
    ({"depth": 21}, r"model.depth: 21 does not fit variant 'cifar'; expected 6n\+2"),
    ({"variant": "wide", "depth": 20}, r"expected 6n\+4"),
    ({"variant": "imagenet", "depth": 20}, r"not an ImageNet ResNet depth"),
    ({"residual": "fixup"}, r"'fixup' trains without normalization; set model.norm='none'"),
    ({"residual": "fixup", "norm": "none", "variant": "preact"}, r"post-activation"),
    ({"residual": "zero_gamma", "norm": "none"}, r"needs a model.norm other than 'none'"),
    ({"residual": "zero_gamma", "variant": "preact"}, r"ends in a norm"),
    ({"norm": "group", "num_groups": 5}, r"model.num_groups: 5 does not divide"),
    ({"shortcut": "C"}, r"model.shortcut: unknown 'C'"),
])
def test_bad_fields_are_refused_naming_the_field(fields, needle):
    with pytest.raises(config.ConfigError, match=needle):
        resnet.ResNet(**fields)


def test_cnn_refuses_even_kernels_and_non_image_input():
    with pytest.raises(config.ConfigError, match="model.kernel_size: 4 is even"):
        models.CNN(kernel_size=4)
    m = models.CNN()
    with pytest.raises(ValueError, match=r"expected images \(N, H, W, C\)"):
        m.init(jax.random.key(0), jnp.zeros((2, 8)), train=False)


# ------------------------------------------------------------------------------------------------
# ResNet-20 equals its PyTorch twin on copied weights.


def _randomized(variables, key):
    """Non-trivial BN params and running statistics, so eval mode tests them too."""
    flat = traverse_util.flatten_dict(variables)
    keys = jax.random.split(key, len(flat))
    out = {}
    for k, (path, leaf) in zip(keys, flat.items()):
        if path[-1] in ("scale", "var"):
            leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
        elif path[-1] in ("bias", "mean"):
            leaf = 0.2 * jax.random.normal(k, leaf.shape)
        out[path] = leaf
    return traverse_util.unflatten_dict(out)


@needs_torch
def test_resnet20_equals_pytorch_with_copied_weights_in_train_and_eval_mode():
    model = resnet.ResNet(depth=20)
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    variables = _randomized(model.init(jax.random.key(0), x, train=False), jax.random.key(1))
    net = torch_twins.ResNet20()
    torch_twins.copy_resnet20(variables, net)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy())

    net.eval()
    with torch.no_grad():
        want_eval = net(xt).numpy()
    got_eval = np.asarray(model.apply(variables, x, train=False))
    np.testing.assert_allclose(got_eval, want_eval, rtol=1e-4, atol=1e-4)

    net.train()
    with torch.no_grad():
        want_train = net(xt).numpy()
    got_train, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(got_train), want_train, rtol=1e-4, atol=1e-4)
    # The running means move the same way (flax momentum 0.9 = torch momentum 0.1).
    np.testing.assert_allclose(np.asarray(updated["batch_stats"]["stem"]["norm"]["mean"]),
                               net.bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(got_train - got_eval).max() > 1e-2  # the two modes do differ here


@needs_torch
def test_cnn_equals_pytorch_with_copied_weights_in_train_and_eval_mode():
    """`benchmarks.conv_speed`'s torch twin of the MNIST CNN computes our function."""
    model = models.build_model("cnn", dict(widths=(8, 16, 32), convs_per_stage=2, norm="batch"))
    x = np.random.default_rng(3).normal(size=(6, 28, 28, 1)).astype(np.float32)
    variables = _randomized(model.init(jax.random.key(0), x, train=False), jax.random.key(2))
    net = torch_twins.CNN(1, (8, 16, 32), 2)
    torch_twins.copy_cnn(variables, net)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    for train in (False, True):
        net.train(train)
        with torch.no_grad():
            want = net(xt).numpy()
        got = model.apply(variables, x, train=train, mutable=["batch_stats"])[0]
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@needs_torch
def test_batchnorm_and_groupnorm_on_nhwc_equal_torch():
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(6, 5, 7, 8)).astype(np.float32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    bn = layers.BatchNorm()
    v = bn.init(jax.random.key(0), x, train=False)
    y, _ = bn.apply(v, x, train=True, mutable=["batch_stats"])
    ref = torch.nn.BatchNorm2d(8, eps=1e-5).train()(xt).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    gn = layers.GroupNorm(num_groups=4)
    v = gn.init(jax.random.key(0), x, train=False)
    ref = torch.nn.GroupNorm(4, 8, eps=1e-5)(xt).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(gn.apply(v, x, train=True)), ref, rtol=1e-4, atol=1e-5)


def test_stride_two_convolutions_pad_like_torch():
    """flax's "SAME" would pad a stride-2 3x3 conv (0, 1); torch pads (1, 1): `cnn.conv2d`.
    Reference: the convolution written out in numpy with torch's padding (1 on every side)."""
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    conv = models.cnn.conv2d(4, 3, 2, name="c", use_bias=False,
                             kernel_init=jax.nn.initializers.normal(), bias_init=None)
    v = conv.init(jax.random.key(0), x)
    w = np.asarray(v["params"]["kernel"], np.float64)  # (3, 3, 3, 4) HWIO
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            ref[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, w)
    np.testing.assert_allclose(np.asarray(conv.apply(v, x)), ref, rtol=1e-5, atol=1e-5)
    if torch is not None:  # and torch agrees
        got = F.conv2d(torch.tensor(x.transpose(0, 3, 1, 2).copy()),
                       torch.tensor(np.asarray(v["params"]["kernel"]).transpose(3, 2, 0, 1).copy()),
                       stride=2, padding=1).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Training deep residual networks without (or before) normalization.


def test_fixup_scale_is_the_papers_formula():
    # L^(-1/(2m-2)): basic blocks (m = 2) give L^(-1/2), bottlenecks (m = 3) L^(-1/4).
    assert resnet.fixup_scale(54, 2) == pytest.approx(54 ** -0.5)
    assert resnet.fixup_scale(16, 3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        resnet.fixup_scale(4, 1)


def test_fixup_initialization():
    model = resnet.ResNet(depth=110, residual="fixup", norm="none")  # L = 54 basic blocks
    x = jnp.ones((2, 32, 32, 3))
    p = model.init(jax.random.key(0), x, train=False)["params"]
    he_std = np.sqrt(2.0 / (3 * 3 * 32))
    conv0 = np.asarray(p["stage_1"]["block_4"]["conv_0"]["kernel"])
    assert conv0.std() == pytest.approx(he_std * 54 ** -0.5, rel=0.03)
    for s in range(3):
        for b in range(18):
            block = p[f"stage_{s}"][f"block_{b}"]
            assert not np.asarray(block["conv_1"]["kernel"]).any()  # the branch's last layer: 0
            assert float(block["scale"]) == 1.0 and float(block["bias_0a"]) == 0.0
            assert "norm_0" not in block and "bias" not in block["conv_0"]
    assert not np.asarray(p["head"]["kernel"]).any() and not np.asarray(p["head"]["bias"]).any()
    # At initialization every logit is 0: the classifier is zero.
    assert not np.asarray(model.apply({"params": p}, x, train=False)).any()


@pytest.mark.parametrize("fields", [
    {"residual": "zero_gamma"},
    {"residual": "skipinit", "norm": "none"},
    {"residual": "rezero", "norm": "none"},
    {"residual": "skipinit", "norm": "batch", "variant": "preact", "shortcut": "B"},
], ids=["zero_gamma", "skipinit", "rezero", "skipinit_preact"])
def test_residual_forms_start_as_their_shortcuts(fields):
    """At initialization a zero-gamma / SkipInit / ReZero block computes its shortcut only: the
    network's output does not depend on the branches' convolutions."""
    model = resnet.ResNet(depth=14, **fields)
    x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
    v = model.init(jax.random.key(0), x, train=False)
    flat = traverse_util.flatten_dict(v["params"])
    changed = {k: (w * 3.0 + 1.0 if ("conv_0" in k or "conv_1" in k) and "block" in "".join(k)
                   else w) for k, w in flat.items()}
    w = {**v, "params": traverse_util.unflatten_dict(changed)}
    for train in (False, True):
        a, _ = model.apply(v, x, train=train, mutable=["batch_stats"])
        b, _ = model.apply(w, x, train=train, mutable=["batch_stats"])
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    if fields["residual"] == "zero_gamma":
        # The branch's last norm starts at gamma 0, the others at 1; with that gamma set to 1
        # the same perturbation does change the output (so the check above could fail).
        gammas = {k: w for k, w in flat.items() if k[-1] == "scale" and "block" in "".join(k)}
        assert all(not np.asarray(w).any() for k, w in gammas.items() if "norm_1" in k)
        assert all((np.asarray(w) == 1).all() for k, w in gammas.items() if "norm_0" in k)
        ones = lambda t: traverse_util.unflatten_dict(
            {k: jnp.ones_like(w) if k[-1] == "scale" else w
             for k, w in traverse_util.flatten_dict(t).items()})
        a = model.apply({**v, "params": ones(v["params"])}, x, train=False)
        b = model.apply({**w, "params": ones(w["params"])}, x, train=False)
        assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_rezero_keeps_the_identity_path_clean():
    """ReZero: y = x + alpha F(x), nothing after the sum; SkipInit keeps the post-sum ReLU.
    With the gates opened (alpha = 1) a ReZero block's output has negative entries, a SkipInit
    block's does not."""
    x = jax.random.normal(jax.random.key(7), (2, 8, 8, 3))
    for residual, relu_after in (("rezero", False), ("skipinit", True)):
        model = resnet.ResNet(depth=8, residual=residual, norm="none")
        v = model.init(jax.random.key(0), x, train=False)
        flat = traverse_util.flatten_dict(v["params"])
        assert [float(w) for k, w in flat.items() if k[-1] == "skip_gain"] == [0.0] * 3
        opened = traverse_util.unflatten_dict(
            {k: jnp.ones_like(w) if k[-1] == "skip_gain" else w for k, w in flat.items()})
        _, state = model.apply({"params": opened}, x, train=False, mutable=["intermediates"])
        out = state["intermediates"]["stage_0"]["block_0"]["conv_1"]["act"][0]
        assert bool((out >= 0).all()) == relu_after, residual


def test_adaptive_gradient_clipping_is_the_papers_rule():
    """AGC (Brock et al. 2021, eq. 3): per output unit i, G_i <- lambda max(|W_i|, eps) / |G_i| G_i
    when |G_i| / max(|W_i|, eps) > lambda; numpy against `optim.clip_transform("adaptive", .)`."""
    rng = np.random.default_rng(4)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 4, 5)).astype(np.float32)},
              "dense": {"kernel": rng.normal(size=(6, 3)).astype(np.float32),
                        "bias": np.zeros(3, np.float32)}}
    grads = jax.tree.map(lambda w: (rng.normal(size=w.shape) * 2).astype(np.float32), params)
    lam = 0.1
    tx = optim.clip_transform("adaptive", lam)
    got, _ = tx.update(grads, tx.init(params), params)

    def agc(g, w, axes):
        wn = np.maximum(np.sqrt((w.astype(np.float64) ** 2).sum(axes, keepdims=True)),
                        optim.AGC_EPS)
        gn = np.sqrt((g.astype(np.float64) ** 2).sum(axes, keepdims=True))
        return np.where(gn / wn > lam, g * lam * wn / np.maximum(gn, 1e-6), g)

    np.testing.assert_allclose(got["conv"]["kernel"], agc(grads["conv"]["kernel"],
                                                          params["conv"]["kernel"], (0, 1, 2)),
                               rtol=1e-5)
    np.testing.assert_allclose(got["dense"]["kernel"], agc(grads["dense"]["kernel"],
                                                           params["dense"]["kernel"], (0,)),
                               rtol=1e-5)
    np.testing.assert_allclose(got["dense"]["bias"], agc(grads["dense"]["bias"],
                                                         params["dense"]["bias"], None),
                               rtol=1e-5)
    ref, _ = optax.adaptive_grad_clip(lam, eps=optim.AGC_EPS).update(grads, None, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cfg = config.build(config.OptimConfig, {"name": "sgd", "learning_rate": 0.1,
                                            "clip": "adaptive", "clip_value": lam})
    chain = optim.make_optimizer(cfg)
    step, _ = chain.update(grads, chain.init(params), params)
    np.testing.assert_allclose(step["conv"]["kernel"], -0.1 * np.asarray(got["conv"]["kernel"]),
                               rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# What works on the MLP works on these.


def _image_dataset():
    return make_tiny_dataset(n_train=128, n_val=32, n_test=32, shape=(8, 8, 1))


@pytest.mark.parametrize("model", [
    {"name": "cnn", "widths": (8, 16), "norm": "batch", "drop_rate": 0.1},
    {"name": "resnet", "depth": 8, "width_multiplier": 0.5, "norm": "batch"},
    {"name": "resnet", "depth": 8, "width_multiplier": 0.5, "residual": "fixup", "norm": "none"},
], ids=["cnn", "resnet", "fixup"])
def test_conv_families_train_under_fit_with_stats_and_resume(tmp_path, model):
    from conftest import tiny_config
    raw = tiny_config(**{"train.num_epochs": 2, "train.stats_every": 1,
                         "optim.clip": "adaptive", "optim.clip_value": 0.16,
                         "data.source": "arrays"})
    raw.model = {"num_classes": 3, **model}
    cfg = config.parse(raw)
    ds = _image_dataset()
    first = loop.fit(cfg, tmp_path, dataset=ds)
    assert np.isfinite(first.summary["test/loss"]) and first.summary["epochs_run"] == 2
    records = first.history
    # Per-layer statistics keyed by module path, e.g. "stats/stage_0/block_0/conv_1/...".
    keys = [k for k in records[-1] if k.startswith("stats/")]
    deep = "stage_0/block_0/conv_1" if model["name"] == "resnet" else "conv_1"
    assert any(deep in k for k in keys), keys[:10]
    again = loop.fit(cfg, tmp_path, dataset=ds)  # a finished run: restored, nothing trained
    assert again.summary["test/loss"] == first.summary["test/loss"]
    assert len(again.history) == 2


def test_lsuv_brings_every_conv_of_a_resnet_to_unit_variance():
    """The issue's case: every conv of a ResNet-56 (no norm; half width and 8x8 images to keep
    the test short: LSUV's rule does not depend on either)."""
    model = resnet.ResNet(depth=56, norm="none", width_multiplier=0.5)
    x = jax.random.normal(jax.random.key(5), (32, 8, 8, 3))
    v = model.init(jax.random.key(0), x, train=False)
    apply = lambda variables, batch, **kw: model.apply(variables, batch, train=False, **kw)
    out = lsuv.lsuv(apply, v, x, tol=0.05, max_iter=20, key=jax.random.key(6))
    new = out[0] if isinstance(out, tuple) else out
    variances = lsuv.layer_output_variances(apply, new, x)
    convs = {k: float(val) for k, val in variances.items() if "conv" in k}
    assert len(convs) == 1 + 27 * 2  # stem + 27 blocks x 2 convs (option A: no projections)
    for name, var in convs.items():
        assert abs(var - 1.0) < 0.1, (name, var)


def test_unrolled_chunks_compute_the_same_steps_without_a_while_loop(tmp_path):
    """train.unroll (XLA:CPU runs convolutions in while loops ~25x slower, jax-ml/jax#12868):
    the compiled chunk has no while loop, and the run equals the scanned one to rounding."""
    from conftest import tiny_config
    from ml_practical import experiment, train

    def cfg_for(unroll, placement="host"):
        raw = tiny_config(**{"train.num_epochs": 2, "data.source": "arrays",
                             "data.placement": placement, "data.chunk_steps": 2,
                             "train.unroll": unroll})
        raw.model = {"name": "cnn", "widths": (4, 8), "num_classes": 3, "norm": "batch"}
        return config.parse(raw)

    ds = _image_dataset()
    model = models.CNN(widths=(4, 8), num_classes=3, norm="batch")
    exp = experiment.build_experiment(cfg_for(False), dataset=ds)
    state = exp.init_state()
    images = jnp.zeros((2, 32, 8, 8, 1))
    labels = jnp.zeros((2, 32), jnp.int32)
    for unroll, has_while in ((True, False), (False, True)):
        chunk = train.make_train_epoch(model, exp.tx, gather=False, donate=False, unroll=unroll)
        hlo = chunk.lower(state, images, labels).as_text()
        assert ("while" in hlo) == has_while, unroll
    scanned = loop.fit(cfg_for(False), tmp_path / "scan", dataset=ds)
    unrolled = loop.fit(cfg_for(True), tmp_path / "unroll", dataset=ds)
    # On the device: the epoch's batches cut into unrolled chunks of 2 (`train.in_chunks`; 96
    # training rows / batch 32 = 3 steps, so a chunk of 2 and one of 1).
    on_device = loop.fit(cfg_for(True, placement="device"), tmp_path / "device", dataset=ds)
    for a, b, c in zip(scanned.history, unrolled.history, on_device.history):
        for key in ("train/loss", "val/loss", "val/accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
            assert a[key] == pytest.approx(c[key], rel=1e-4, abs=1e-6), key
    assert len(on_device.history) == len(scanned.history) == 2


def test_vmapped_seeds_of_a_cnn_with_unroll_equal_sequential_runs(tmp_path):
    """`fit_seeds` (one vmapped program) with train.unroll: chunks of unrolled steps of every seed;
    each seed's history equals its own `fit` to float32 rounding, and no while loop is compiled."""
    from conftest import tiny_config
    from ml_practical import multiseed, train

    raw = tiny_config(**{"train.num_epochs": 2, "data.source": "arrays", "data.chunk_steps": 2,
                         "train.unroll": True})
    raw.model = {"name": "cnn", "widths": (4, 8), "num_classes": 3, "norm": "batch",
                 "conv_backward": "chunked"}
    cfg = config.parse(raw)
    ds = _image_dataset()
    # One compiled call is 2 unrolled steps of both seeds: no while loop in it.
    group = multiseed.build_seed_group(cfg, [0, 1], dataset=ds)
    states = group.init_states()
    idx = group.batch_indices(1)[:, :2]
    hlo = jax.jit(jax.vmap(train.make_train_epoch(group.exp.model, group.exp.tx, unroll=True),
                           in_axes=(0, None, None, 0))).lower(
        states, *group.exp.train_arrays, idx).as_text()
    assert "while" not in hlo
    results = loop.fit_seeds(cfg, [0, 1], tmp_path / "vmap", dataset=ds)
    for seed, mine in zip([0, 1], results):
        ref = loop.fit(loop.with_seed(cfg, seed), tmp_path / f"seq_{seed}", dataset=ds)
        assert len(mine.history) == len(ref.history) == 2
        for a, b in zip(mine.history, ref.history):
            for key in ("train/loss", "val/loss", "val/accuracy"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (seed, key)
    assert results[0].history[-1]["train/loss"] != results[1].history[-1]["train/loss"]


def test_in_chunks_runs_the_epochs_steps_in_order():
    """`train.in_chunks` = the whole scan: same final state and per-step metrics, plain and vmapped."""
    from ml_practical import train

    def epoch(state, images, labels, batch_idx):  # a scan whose result depends on step order
        def body(s, idx):
            s = s * 0.5 + jnp.sum(images[idx]) + jnp.sum(labels[idx])
            return s, {"loss": s, "pair": jnp.stack([s, -s])}
        return jax.lax.scan(body, state, batch_idx)

    images = jnp.arange(40.0)
    labels = jnp.arange(40) % 3
    idx = jnp.asarray(np.random.default_rng(0).permutation(40)[:35].reshape(7, 5))
    want = epoch(jnp.float32(1.0), images, labels, idx)
    got = train.in_chunks(jax.jit(epoch), 3)(jnp.float32(1.0), images, labels, idx)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    seeds = jnp.stack([idx, idx[::-1]])  # (S, steps, batch): chunks cut axis 1
    vm = jax.vmap(epoch, in_axes=(0, None, None, 0))
    want = vm(jnp.ones(2), images, labels, seeds)
    got = train.in_chunks(vm, 2)(jnp.ones(2), images, labels, seeds)
    assert got[1]["pair"].shape == (2, 7, 2)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="chunk_steps"):
        train.in_chunks(epoch, 0)


@pytest.mark.parametrize("model", [
    models.CNN(widths=(4, 8), num_classes=3, norm="batch", drop_rate=0.3),
    resnet.ResNet(depth=8, num_classes=3, width_multiplier=0.5, drop_rate=0.3),
    resnet.ResNet(variant="wide", depth=10, num_classes=3, drop_rate=0.3),
], ids=["cnn", "resnet", "wrn"])
def test_mc_dropout_on_the_conv_families(model):
    """Monte Carlo dropout: samples differ from each other, BatchNorm uses its running statistics
    (the running-stat variables decide the output, not the batch), and with drop_rate 0 every
    sample is the deterministic prediction."""
    from ml_practical import uncertainty
    x = jax.random.normal(jax.random.key(8), (6, 8, 8, 1))
    v = _randomized(model.init(jax.random.key(0), x, train=False), jax.random.key(9))
    probs = uncertainty.mc_predict(model, v, x, jax.random.key(1), num_samples=5, batch_size=None)
    assert probs.shape == (5, 6, 3)
    assert float(jnp.abs(probs[0] - probs[1]).max()) > 1e-4  # dropout is on
    det = uncertainty.predict(model.clone(drop_rate=0.0), v, x, batch_size=None)
    none = uncertainty.mc_predict(model.clone(drop_rate=0.0), v, x, jax.random.key(1),
                                  num_samples=3, batch_size=None)
    np.testing.assert_allclose(np.asarray(none), np.broadcast_to(np.asarray(det), none.shape),
                               rtol=1e-5, atol=1e-6)
    # A row's prediction does not depend on the rest of the batch: running statistics (batch
    # statistics of a one-row batch would give another output).
    one = uncertainty.mc_predict(model.clone(drop_rate=0.0), v, x[:1], jax.random.key(1),
                                 num_samples=1, batch_size=None)
    np.testing.assert_allclose(np.asarray(one[0, 0]), np.asarray(det[0]), rtol=1e-5, atol=1e-6)
