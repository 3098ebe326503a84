"""mixup / CutMix inside the train step (train.mix): the step against a hand computation, label
smoothing applied once, the per-batch switch, per-example lambda, and the config's refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from ml_practical import augment, config, losses, tasks, train
from ml_practical.config import ConfigError
from ml_practical.models.mlp import MLP
from tests.conftest import tiny

K = 4


def _setup(drop_rate=0.0):
    model = MLP(widths=(8,), num_classes=K, norm="none", drop_rate=drop_rate)
    tx = optax.sgd(0.5)
    state = train.create_train_state(model, tx, jax.random.key(0), (3, 3, 1))
    x = jax.random.normal(jax.random.key(1), (16, 3, 3, 1))
    y = jnp.arange(16) % K
    return model, tx, state, {"image": x, "label": y}


def test_a_mixup_step_equals_the_hand_computation_with_smoothing_once():
    model, tx, state, batch = _setup()
    a, alpha = 0.1, 0.4
    task = tasks.Classification(label_smoothing=a)
    mixer = augment.label_mixer("mixup", K, mixup_alpha=alpha)
    new, metrics = train.train_step(state, batch, model=model, tx=tx, task=task, mix_fn=mixer)
    # By hand: the step's mixing key, the library's mixup, targets smoothed once, SGD.
    step_key = jax.random.fold_in(state.key, state.step)
    images, mixed = augment.mixup(jax.random.fold_in(step_key, train.MIX_KEY_TAG),
                                  batch["image"], jax.nn.one_hot(batch["label"], K), alpha=alpha)
    target = (1 - a) * mixed + a / K

    def loss(params):
        logits = model.apply({"params": params}, images, train=True)
        return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))

    g = jax.grad(loss)(state.params)
    want = jax.tree.map(lambda w, gg: w - 0.5 * gg, state.params, g)
    for x, y in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    logits = model.apply({"params": state.params}, images, train=True)
    assert float(metrics["loss"]) == pytest.approx(
        float(losses.soft_cross_entropy(logits, mixed)), rel=1e-5)  # unsmoothed, mixed targets
    assert float(metrics["objective"]) == pytest.approx(float(loss(state.params)), rel=1e-5)


def test_smoothing_the_mix_equals_mixing_the_smoothed_targets_not_smoothing_twice():
    logits = jax.random.normal(jax.random.key(3), (6, K))
    ya, yb, lam, a = jnp.arange(6) % K, (jnp.arange(6) + 1) % K, 0.3, 0.2
    mixed = lam * jax.nn.one_hot(ya, K) + (1 - lam) * jax.nn.one_hot(yb, K)
    task = tasks.Classification(label_smoothing=a)
    smooth = lambda y: losses.smooth_labels(y, K, a)
    once = losses.soft_cross_entropy(logits, lam * smooth(ya) + (1 - lam) * smooth(yb))
    twice = losses.soft_cross_entropy(logits, (1 - a) * ((1 - a) * mixed + a / K) + a / K)
    assert float(task.soft_objective(logits, mixed)) == pytest.approx(float(once), rel=1e-6)
    assert abs(float(once) - float(twice)) > 1e-3


def test_an_identity_mixer_leaves_the_step_as_it_was():
    # With one-hot targets unchanged (and no smoothing) the soft objective is the integer one,
    # and the step's dropout key is not moved by the mixing key: the same step to rounding.
    model, tx, state, batch = _setup(drop_rate=0.3)
    identity = lambda key, images, labels: (images, jax.nn.one_hot(labels, K))
    a, _ = train.train_step(state, batch, model=model, tx=tx)
    b, _ = train.train_step(state, batch, model=model, tx=tx, mix_fn=identity)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_a_mixed_step_with_accumulation_equals_the_step_without(kind):
    # No BatchNorm and no dropout: nothing couples the rows, so mixing the gradient batch once
    # and averaging the k micro-batches' gradients is the k = 1 step, to float32 summation order.
    model, tx, state, batch = _setup()
    task = tasks.Classification(label_smoothing=0.1)
    mixer = augment.label_mixer(kind, K, mixup_alpha=0.4, cutmix_alpha=1.0)
    one, m1 = train.train_step(state, batch, model=model, tx=tx, task=task, mix_fn=mixer)
    four, m4 = train.train_step(state, batch, model=model, tx=tx, task=task, mix_fn=mixer,
                                grad_accum_steps=4)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree.leaves(one.params), jax.tree.leaves(state.params)))
    assert moved > 1e-3  # the step did something
    for x, y in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for name in ("loss", "objective", "accuracy", "grad_norm"):
        assert float(m4[name]) == pytest.approx(float(m1[name]), rel=1e-5), name


def test_accumulation_cuts_the_mixed_targets_with_their_images():
    # Each micro-batch must carry its own rows' soft targets. A mixer whose targets are a
    # permutation of the images' one-hots makes a mismatched cut visible: the step with k = 2
    # equals the k = 1 step only if targets and images are cut the same way.
    model, tx, state, batch = _setup()
    perm = jnp.roll(jnp.arange(16), 3)
    mixer = lambda key, images, labels: (images, jax.nn.one_hot(labels[perm], K))
    one, _ = train.train_step(state, batch, model=model, tx=tx, mix_fn=mixer)
    two, _ = train.train_step(state, batch, model=model, tx=tx, mix_fn=mixer,
                              grad_accum_steps=2)
    relabelled = {"image": batch["image"], "label": batch["label"][perm]}
    plain, _ = train.train_step(state, relabelled, model=model, tx=tx, grad_accum_steps=2)
    for x, y, z in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params),
                       jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x, z, rtol=1e-5, atol=1e-6)


def test_mixup_cutmix_switches_per_batch_with_the_given_probability():
    # Image i is the constant i + 1: CutMix leaves only exact originals, mixup blends them.
    n, p, draws = 8, 0.3, 400
    images = jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32)[:, None, None, None],
                              (n, 6, 6, 1))
    mixer = augment.label_mixer("mixup_cutmix", n, switch_prob=p, mixup_alpha=1.0)
    out, _ = jax.vmap(lambda k: mixer(k, images, jnp.arange(n)))(
        jax.random.split(jax.random.key(0), draws))
    out = np.asarray(out)
    exact = np.all(np.isclose(out, np.round(out)), axis=(1, 2, 3, 4))  # CutMix (or lam = 1)
    share = exact.mean()
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / draws), share


def test_per_sample_mixup_draws_one_lambda_per_example():
    n, alpha = 64, 0.5
    x = jax.random.normal(jax.random.key(2), (n, 2, 2, 1))
    mixed_x, mixed_y = augment.mixup_per_sample(jax.random.key(5), x, jnp.eye(n), alpha=alpha)
    mixed_y = np.asarray(mixed_y)
    lam = np.diag(mixed_y)
    partner = np.array([np.argmax(np.where(np.arange(n) == i, -1, r)) for i, r in
                        enumerate(mixed_y)])
    moved = lam < 1  # rows whose partner is another example
    np.testing.assert_allclose(np.asarray(mixed_x)[moved],
                               (lam[:, None, None, None] * np.asarray(x)
                                + (1 - lam[:, None, None, None]) * np.asarray(x)[partner])[moved],
                               atol=1e-5)
    keys = jax.random.split(jax.random.key(9), 40)
    lams = np.concatenate([np.diag(np.asarray(augment.mixup_per_sample(
        k, x, jnp.eye(n), alpha=alpha)[1])) for k in keys])
    lams = lams[lams < 1]
    assert np.ptp(lam[moved]) > 0.1  # not one lambda for the batch
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize("overrides, fragment", [
    ({"train.mix": "blend"}, "train.mix: unknown 'blend'"),
    ({"train.mix": "mixup", "train.task": "regression", "train.label_smoothing": 0.0},
     "train.mix: 'mixup' mixes class labels"),
    ({"train.mix": "cutmix", "train.mix_per_sample": True}, "train.mix_per_sample"),
    ({"train.mix": "mixup", "train.mixup_alpha": 0.0}, "train.mixup_alpha"),
])
def test_bad_mix_settings_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        tiny(**overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_the_config_builds_the_mixer_it_names():
    cfg = tiny(**{"train.mix": "mixup", "train.mixup_alpha": 0.4, "train.mix_per_sample": True})
    mixer = augment.mixer_from_config(cfg)
    x = jnp.zeros((4, 2, 2, 1))
    _, y = mixer(jax.random.key(0), x, jnp.arange(4) % 3)
    assert y.shape == (4, cfg.model.num_classes)
    np.testing.assert_allclose(np.asarray(y).sum(axis=1), 1.0, atol=1e-6)
    assert augment.mixer_from_config(tiny()) is None
    assert isinstance(config.parse(config.to_dict(cfg)).train.mix, str)
