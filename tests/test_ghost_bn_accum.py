"""Ghost (virtual) BatchNorm, gradient accumulation inside the step, and the redundant bias."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import config, experiment, layers, models, train
from ml_practical.config import ConfigError


def _bn_reference(x, gamma, beta, eps):
    """Ioffe & Szegedy's training-mode BN over every axis but the last, float64 numpy."""
    axes = tuple(range(x.ndim - 1))
    mu = x.mean(axis=axes)
    var = ((x - mu) ** 2).mean(axis=axes)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta, mu, var


@pytest.mark.parametrize("backward", ["autodiff", "manual"])
@pytest.mark.parametrize("shape", [(12, 5), (8, 3, 3, 4)])
def test_ghost_batchnorm_normalizes_each_contiguous_ghost_batch(backward, shape):
    ghost, momentum, eps = shape[0] // 4, 0.8, 1e-3
    x = np.asarray(jax.random.normal(jax.random.key(0), shape)) * 3.0 + 1.5
    bn = layers.BatchNorm(momentum=momentum, epsilon=eps, ghost_batch_size=ghost,
                          backward=backward)
    variables = bn.init(jax.random.key(1), jnp.asarray(x), train=False)
    c = shape[-1]
    gamma = np.linspace(0.5, 2.0, c)
    beta = np.linspace(-1.0, 1.0, c)
    variables = {"params": {"scale": jnp.asarray(gamma, jnp.float32),
                            "bias": jnp.asarray(beta, jnp.float32)},
                 "batch_stats": {"mean": jnp.full((c,), 0.3), "var": jnp.full((c,), 2.0)}}
    y, new = bn.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    x64 = x.astype(np.float64)
    refs = [_bn_reference(x64[i:i + ghost], gamma, beta, eps) for i in range(0, shape[0], ghost)]
    np.testing.assert_allclose(np.asarray(y), np.concatenate([r[0] for r in refs]),
                               rtol=1e-5, atol=1e-5)
    # One move per call, towards the mean of the ghosts' statistics.
    mean = np.mean([r[1] for r in refs], axis=0)
    var = np.mean([r[2] for r in refs], axis=0)
    np.testing.assert_allclose(np.asarray(new["batch_stats"]["mean"]),
                               momentum * 0.3 + (1 - momentum) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new["batch_stats"]["var"]),
                               momentum * 2.0 + (1 - momentum) * var, rtol=1e-5, atol=1e-6)
    # Evaluation does not depend on the ghost size.
    plain = layers.BatchNorm(momentum=momentum, epsilon=eps)
    np.testing.assert_array_equal(np.asarray(bn.apply(variables, jnp.asarray(x), train=False)),
                                  np.asarray(plain.apply(variables, jnp.asarray(x), train=False)))


def test_ghost_batchnorm_gradients_agree_between_autodiff_and_manual():
    x = jax.random.normal(jax.random.key(2), (16, 2, 2, 3))
    cot = jax.random.normal(jax.random.key(3), x.shape)

    def grads(backward):
        bn = layers.BatchNorm(ghost_batch_size=4, backward=backward)
        v = bn.init(jax.random.key(0), x, train=False)

        def f(params, x):
            y, _ = bn.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])
            return jnp.sum(y * cot)
        return jax.grad(f, argnums=(0, 1))(v["params"], x)

    (pa, xa), (pm, xm) = grads("autodiff"), grads("manual")
    np.testing.assert_allclose(xa, xm, rtol=1e-4, atol=1e-5)
    for k in ("scale", "bias"):
        np.testing.assert_allclose(pa[k], pm[k], rtol=1e-4, atol=1e-5)
    # A ghost's input gradient depends on that ghost only (the statistics are local).
    bn = layers.BatchNorm(ghost_batch_size=4)
    v = bn.init(jax.random.key(0), x, train=False)
    jac = jax.jacrev(lambda x: bn.apply(v, x, train=True, mutable=["batch_stats"])[0][5, 0, 0, 0])(x)
    nonzero = np.nonzero(np.abs(np.asarray(jac)).reshape(16, -1).sum(axis=1))[0]
    np.testing.assert_array_equal(nonzero, [4, 5, 6, 7])


def test_ghost_batchnorm_small_batches_are_one_ghost_and_bad_sizes_fail():
    x = jax.random.normal(jax.random.key(4), (6, 3))
    ghost = layers.BatchNorm(ghost_batch_size=8)
    plain = layers.BatchNorm()
    v = plain.init(jax.random.key(0), x, train=False)
    a, sa = ghost.apply(v, x, train=True, mutable=["batch_stats"])
    b, sb = plain.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa["batch_stats"]["var"], sb["batch_stats"]["var"])
    with pytest.raises(ValueError, match="ghost_batch_size: 4 does not divide the batch of 6"):
        layers.BatchNorm(ghost_batch_size=4).apply(v, x, train=True, mutable=["batch_stats"])
    with pytest.raises(ValueError, match="ghost_batch_size"):
        layers.BatchNorm(ghost_batch_size=2, axis_name="batch")
    with pytest.raises(ValueError, match="integer >= 0"):
        layers.BatchNorm(ghost_batch_size=-1)


def test_ghost_batchnorm_torch_compat_uses_the_ghost_count():
    x = jax.random.normal(jax.random.key(5), (8, 3))
    bn = layers.BatchNorm(ghost_batch_size=4, torch_compat=True, momentum=0.0)
    v = bn.init(jax.random.key(0), x, train=False)
    _, s = bn.apply(v, x, train=True, mutable=["batch_stats"])
    x64 = np.asarray(x, np.float64)
    unbiased = np.mean([x64[:4].var(axis=0, ddof=1), x64[4:].var(axis=0, ddof=1)], axis=0)
    np.testing.assert_allclose(s["batch_stats"]["var"], unbiased, rtol=1e-5)


@pytest.mark.parametrize("name,fields", [
    ("cnn", {"widths": (4, 8), "norm": "batch"}),
    ("resnet", {"depth": 8, "width_multiplier": 0.25, "norm": "batch"}),
    ("mlp", {"widths": (6, 6), "norm": "batch"})])
def test_a_ghost_model_is_the_plain_model_run_on_each_ghost_batch(name, fields):
    """Every BatchNorm of the family gets the ghost size: in training, the model on 8 rows with
    ghost batches of 2 is the plain model run on each pair of rows separately."""
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
    plain = models.build_model(name, fields)
    ghost = models.build_model(name, {**fields, "ghost_batch_size": 2})
    v = plain.init(jax.random.key(1), x, train=False)
    y, _ = ghost.apply(v, x, train=True, mutable=["batch_stats"])
    pieces = [plain.apply(v, x[i:i + 2], train=True, mutable=["batch_stats"])[0]
              for i in range(0, 8, 2)]
    np.testing.assert_allclose(y, np.concatenate(pieces), rtol=1e-4, atol=1e-5)
    whole, _ = plain.apply(v, x, train=True, mutable=["batch_stats"])
    assert np.abs(np.asarray(whole) - np.asarray(y)).max() > 1e-3


# ------------------------------------------------------------------------------ accumulation

def _setup(norm: str, drop_rate: float = 0.0, n: int = 16):
    model = models.build_model("mlp", {"widths": (8, 8), "norm": norm, "drop_rate": drop_rate,
                                       "num_classes": 3})
    tx = optax.sgd(0.1)
    state = train.create_train_state(model, tx, jax.random.key(0), (5,))
    x = jax.random.normal(jax.random.key(1), (n, 5))
    y = jax.random.randint(jax.random.key(2), (n,), 0, 3)
    return model, tx, state, {"image": x, "label": y}


def test_accumulation_without_coupling_equals_the_full_batch_step():
    model, tx, state, batch = _setup("none")
    full, m1 = train.train_step(state, batch, model=model, tx=tx)
    acc, m4 = train.train_step(state, batch, model=model, tx=tx, grad_accum_steps=4)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(acc.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for key in ("loss", "objective", "accuracy", "grad_norm"):
        np.testing.assert_allclose(m1[key], m4[key], rtol=1e-5, atol=1e-7)
    assert not np.array_equal(jax.tree.leaves(full.params)[0], jax.tree.leaves(state.params)[0])


def test_accumulation_with_batchnorm_equals_the_micro_batch_loop():
    """Reference: PyTorch-style accumulation written out, micro-batch i = rows i::k, the running
    statistics carried from one micro-batch to the next, the mean of the gradients."""
    k = 4
    model, tx, state, batch = _setup("batch")
    new, metrics = train.train_step(state, batch, model=model, tx=tx, grad_accum_steps=k,
                                    skip_nonfinite=False)
    stats, grads, losses = state.batch_stats, [], []
    for i in range(k):
        xi, yi = batch["image"][i::k], batch["label"][i::k]

        def loss_fn(p, stats=stats, xi=xi, yi=yi):
            logits, nv = model.apply({"params": p, "batch_stats": stats}, xi, train=True,
                                     mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yi).mean(), nv
        (loss, nv), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        stats = nv["batch_stats"]
        grads.append(g)
        losses.append(loss)
    mean_grad = jax.tree.map(lambda *g: sum(g) / k, *grads)
    expected = optax.apply_updates(state.params, tx.update(mean_grad, state.opt_state)[0])
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(new.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(new.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["objective"], np.mean(losses), rtol=1e-5)


def test_accumulated_batchnorm_gradient_equals_ghost_batchnorm_on_the_regrouped_batch():
    """Two implementations of 'BN over 4-row groups, one gradient over 16 rows' agree: k = 4
    strided micro-batches, and ghost batches of 4 on the batch reordered so that each
    micro-batch is contiguous (rows 0, 4, 8, 12, then 1, 5, 9, 13, ...)."""
    k, n = 4, 16
    model, tx, state, batch = _setup("batch", n=n)
    acc, _ = train.train_step(state, batch, model=model, tx=tx, grad_accum_steps=k,
                              skip_nonfinite=False)
    ghost_model = model.clone(ghost_batch_size=n // k)
    order = np.concatenate([np.arange(i, n, k) for i in range(k)])
    regrouped = {key: v[order] for key, v in batch.items()}
    gh, _ = train.train_step(state, regrouped, model=ghost_model, tx=tx, skip_nonfinite=False)
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(gh.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_draws_a_dropout_key_per_micro_batch():
    model, tx, state, batch = _setup("none", drop_rate=0.5)
    _, m2 = train.train_step(state, batch, model=model, tx=tx, grad_accum_steps=2)
    _, m1 = train.train_step(state, batch, model=model, tx=tx)
    # Different masks than the full batch's (keys fold_in(dropout_key, i)) ...
    assert not np.isclose(m1["objective"], m2["objective"])
    # ... and equal to the reference that folds the micro-batch index into the step's key.
    dropout_key, _ = jax.random.split(jax.random.fold_in(state.key, state.step))
    objs = []
    for i in range(2):
        logits = model.apply({"params": state.params}, batch["image"][i::2], train=True,
                             rngs={"dropout": jax.random.fold_in(dropout_key, i)})
        objs.append(optax.softmax_cross_entropy_with_integer_labels(
            logits, batch["label"][i::2]).mean())
    np.testing.assert_allclose(m2["objective"], np.mean(objs), rtol=1e-6)


def test_grad_accum_steps_config_errors_name_the_field():
    raw = config.defaults("mlp")
    raw.optim.name, raw.optim.learning_rate = "sgd", 0.1
    raw.train.batch_size = 10
    raw.train.grad_accum_steps = 4
    with pytest.raises(ConfigError, match="train.grad_accum_steps: 4 does not divide "
                                          "train.batch_size 10"):
        config.parse(raw)
    raw.train.grad_accum_steps = 0
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        config.parse(raw)


def test_accumulation_runs_through_the_experiment(tiny_dataset):
    from tests.conftest import tiny
    cfg = tiny(**{"train.batch_size": 16, "train.grad_accum_steps": 2, "train.num_epochs": 1})
    exp = experiment.build_experiment(cfg, dataset=tiny_dataset)
    state, metrics = exp.run_epoch(exp.init_state(), 0)
    assert int(state.step) == len(tiny_dataset.train_y) // 16
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))


# ------------------------------------------------------------------------- the redundant bias

@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_bias_before_bn_adds_a_bias_that_batchnorm_cancels_in_training(family):
    fields = {"widths": (4, 8), "norm": "batch"}
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))
    plain = models.build_model(family, fields)
    biased = models.build_model(family, {**fields, "bias_before_bn": True})
    vb = biased.init(jax.random.key(1), x, train=False)
    vp = plain.init(jax.random.key(1), x, train=False)
    layer = "conv_0" if family == "cnn" else "dense_0"
    assert "bias" in vb["params"][layer] and "bias" not in vp["params"][layer]
    # Give the biases large values: BN(z + b) = BN(z) in training mode.
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 3.0 if "bias" in str(p[-1]) and str(p[0].key).startswith(layer[:-1])
        else v, vb["params"])
    yb, _ = biased.apply({**vb, "params": params}, x, train=True, mutable=["batch_stats"])
    stripped = jax.tree.map(lambda v: v, vp["params"])
    for name in stripped:
        for leaf in stripped[name]:
            stripped[name][leaf] = params[name][leaf]
    yp, _ = plain.apply({**vp, "params": stripped}, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(yb, yp, rtol=1e-4, atol=1e-4)
