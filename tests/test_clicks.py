"""The synthetic click log (clicks), the CTR metrics (analysis.ctr) and a short DLRM training."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from ml_practical import clicks
from ml_practical.analysis import ctr
from ml_practical.analysis.calibration import auroc
from ml_practical.config import ConfigError
from ml_practical.models.dlrm import DLRM
from ml_practical.table_monitor import epoch_summary, init_alerts, table_grad_norms
from ml_practical.tasks import Binary

SMALL = clicks.ClickSpec(num_dense=4, table_sizes=(200, 50, 20), num_examples=20_000, seed=1)


@pytest.fixture(scope="module")
def small():
    return clicks.click_splits(SMALL)


# --------------------------------------------------------------------------- the generator


def test_reproducible_per_seed_and_model_independent_of_the_log_length():
    x1, y1, info1 = clicks.make_clicks(SMALL)
    x2, y2, _ = clicks.make_clicks(SMALL)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _, info3 = clicks.make_clicks(clicks.ClickSpec(**{**vars(SMALL), "seed": 2}))
    assert not np.array_equal(x1, x3)
    assert not np.allclose(info1["dense_weights"], info3["dense_weights"])
    # The parameters have their own random stream: a longer log of the same seed has the same
    # model (weights, id effects, rank order), only more examples.
    _, _, longer = clicks.make_clicks(clicks.ClickSpec(**{**vars(SMALL), "num_examples": 30_000}))
    np.testing.assert_array_equal(info1["dense_weights"], longer["dense_weights"])
    for a, b in zip(info1["id_effects"] + info1["rank_ids"], longer["id_effects"]
                    + longer["rank_ids"]):
        np.testing.assert_array_equal(a, b)


def test_inputs_ids_and_labels_are_well_formed(small):
    x, y, _ = clicks.make_clicks(SMALL)
    assert x.dtype == np.float32 and x.shape == (SMALL.num_examples, 4 + 3)
    assert y.dtype == np.float32 and set(np.unique(y)) == {0.0, 1.0}
    for j, n in enumerate(SMALL.table_sizes):
        ids = x[:, 4 + j]
        assert np.all(ids == np.floor(ids)) and ids.min() >= 0 and ids.max() < n
        # The id of every row of the small tables shows up: the model sees the whole table.
        if n <= 50:
            assert len(np.unique(ids)) == n
    ds = small.dataset
    assert ds.num_classes == 0 and ds.train_x.dtype == np.float32
    assert ds.train_x.shape[0] + ds.val_x.shape[0] + ds.test_x.shape[0] == SMALL.num_examples


def test_logit_is_the_documented_model():
    x, _, info = clicks.make_clicks(SMALL)
    ids = x[:, 4:].astype(int)
    a, g = info["interaction_factors"]
    logit = (info["intercept"] + x[:, :4].astype(np.float64) @ info["dense_weights"]
             + sum(info["id_effects"][j][ids[:, j]] for j in range(3))
             + SMALL.interaction_std * np.sum(a[ids[:, 0]] * g[ids[:, 1]], axis=1)
             + SMALL.viral_effect * np.isin(ids[:, 0], info["viral_ids"]))
    # x holds the dense features rounded to float32; the model used them in float64.
    np.testing.assert_allclose(info["logit"], logit, atol=1e-5)
    np.testing.assert_allclose(info["prob"], 1 / (1 + np.exp(-info["logit"])), rtol=1e-12)
    # The terms have the documented scales (std over the log, loose: they are random draws).
    inter = np.sum(a[ids[:, 0]] * g[ids[:, 1]], axis=1)
    assert 0.5 < np.std(inter) < 1.5


def test_id_frequency_follows_the_power_law():
    spec = clicks.ClickSpec(num_dense=2, table_sizes=(2000, 300), num_examples=60_000,
                            zipf_exponent=1.1, seed=3)
    x, _, info = clicks.make_clicks(spec)
    outside = ~info["burst"]  # the bursts repeat one rare id on purpose
    for j, n in enumerate(spec.table_sizes):
        counts = np.bincount(x[outside, 2 + j].astype(int), minlength=n)
        by_rank = counts[info["rank_ids"][j]]
        expected = outside.sum() * clicks.zipf_probs(n, spec.zipf_exponent)
        keep = expected >= 50  # Poisson noise of log(count) below ~0.15
        rank = np.arange(1, n + 1)[keep]
        slope = np.polyfit(np.log(rank), np.log(by_rank[keep]), 1)[0]
        assert slope == pytest.approx(-spec.zipf_exponent, abs=0.05), (j, slope)
        np.testing.assert_allclose(info["id_probs"][j][info["rank_ids"][j]],
                                   clicks.zipf_probs(n, spec.zipf_exponent))


def test_base_ctr_is_met_through_the_intercept():
    for base in (0.05, 0.25):
        spec = clicks.ClickSpec(**{**vars(SMALL), "base_ctr": base})
        _, y, info = clicks.make_clicks(spec)
        assert np.mean(info["prob"]) == pytest.approx(base, abs=1e-9)
        se = math.sqrt(base * (1 - base) / len(y))
        assert abs(y.mean() - base) < 4 * se


def test_viral_bursts_are_where_documented(small):
    x, _, info = clicks.make_clicks(SMALL)
    length = SMALL.burst_length
    windows = info["burst_windows"]
    assert len(windows) == SMALL.num_viral
    assert length == round(SMALL.viral_share * SMALL.num_examples / SMALL.num_viral)
    # The viral ids are table 0's rarest ones.
    np.testing.assert_array_equal(np.sort(info["viral_ids"]),
                                  np.sort(info["rank_ids"][0][-SMALL.num_viral:]))
    mask = np.zeros(SMALL.num_examples, bool)
    segment = int(SMALL.burst_region * SMALL.num_examples) // SMALL.num_viral
    for k, (start, stop, vid) in enumerate(windows):
        assert stop - start == length and vid == info["viral_ids"][k]
        assert k * segment <= start and stop <= (k + 1) * segment  # in its own segment
        assert np.all(x[start:stop, 4] == vid)
        mask[start:stop] = True
    np.testing.assert_array_equal(info["burst"], mask)
    # A viral id is clicked far more in its burst than the rest of the log.
    assert info["prob"][mask].mean() > 3 * info["prob"][~mask].mean()
    # The splits: every burst in train, in log order; none in val or test.
    n_train = len(small.dataset.train_y)
    np.testing.assert_array_equal(small.train_burst, mask[:n_train])
    assert small.train_burst.sum() == mask.sum()
    np.testing.assert_array_equal(small.dataset.train_x, x[:n_train])
    np.testing.assert_array_equal(small.dataset.test_x, x[-len(small.dataset.test_y):])


def test_no_bursts_when_disabled():
    spec = clicks.ClickSpec(**{**vars(SMALL), "num_viral": 0})
    _, _, info = clicks.make_clicks(spec)
    assert not info["burst"].any() and info["burst_windows"] == []


def test_bayes_predictor_beats_the_constant_one(small):
    ds = small.dataset
    bayes = small.bayes["test"]
    y = ds.test_y
    # The true probabilities against the best constant (the test CTR itself: NE = 1) and the
    # train CTR (what a model without features would learn).
    for constant in (y.mean(), ds.train_y.mean()):
        assert bayes["log_loss"] < ctr.log_loss(np.full(len(y), constant), y)
    assert bayes["ne"] < 1.0 and bayes["auc"] > 0.5
    assert bayes["log_loss"] == pytest.approx(
        ctr.log_loss(1 / (1 + np.exp(-small.true_logits["test"])), y), rel=1e-9)


@pytest.mark.parametrize("change, match", [
    ({"base_ctr": 1.5}, "clicks.base_ctr"),
    ({"table_sizes": (100,)}, "clicks.table_sizes"),
    ({"num_viral": 200}, "clicks.num_viral"),
    ({"viral_share": 0.9}, "clicks.viral_share"),
    ({"zipf_exponent": 0.0}, "clicks.zipf_exponent"),
])
def test_bad_spec_fields_raise(change, match):
    with pytest.raises(ConfigError, match=match):
        clicks.ClickSpec(**{**vars(SMALL), **change})


def test_splits_must_keep_the_bursts_in_train():
    with pytest.raises(ValueError, match="burst_region"):
        clicks.click_splits(SMALL, val_fraction=0.3, test_fraction=0.3)
    with pytest.raises(ValueError, match="val_fraction"):
        clicks.load_clicks(SMALL, val_fraction=-0.1)


# --------------------------------------------------------------------------- CTR metrics


def test_ctr_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.2).astype(np.float32)
    logits = rng.normal(0, 1, 3000) + 1.5 * y
    probs = 1 / (1 + np.exp(-logits))
    m = ctr.ctr_metrics(logits, y)
    assert m["auc"] == pytest.approx(roc_auc_score(y, logits), abs=1e-12)
    assert m["log_loss"] == pytest.approx(sk_log_loss(y, probs), rel=1e-9)
    assert ctr.log_loss(probs, y) == pytest.approx(sk_log_loss(y, probs), rel=1e-9)
    p = y.astype(np.float64).mean()
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert m["ne"] == pytest.approx(m["log_loss"] / entropy, rel=1e-12)
    assert m["calibration"] == pytest.approx(probs.mean() / p, rel=1e-9)
    # Ties: rounded scores tie often; sklearn counts a tied pair 1/2, and so does auroc.
    tied = np.round(logits, 1)
    assert ctr.auc(tied, y) == pytest.approx(roc_auc_score(y, tied), abs=1e-12)
    assert ctr.auc(tied, y) == pytest.approx(float(auroc(tied, y > 0)), abs=1e-6)


def test_ctr_metrics_hand_values():
    # sklearn's documented example: AUC 0.75.
    assert ctr.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # All scores equal: every pair a tie, AUC 1/2.
    assert ctr.auc([0.3] * 4, [0, 1, 0, 1]) == 0.5
    # The constant predictor at the base rate has NE exactly 1 (its log loss is the entropy).
    labels = np.array([1, 0, 0, 0])
    assert ctr.normalized_entropy(np.full(4, 0.25), labels) == pytest.approx(1.0, rel=1e-12)
    # Hand log loss: -(log 0.8 + log 0.6) / 2.
    assert ctr.log_loss([0.8, 0.4], [1, 0]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # He et al. take the background CTR from training data: NE with base_rate p.
    assert ctr.normalized_entropy([0.8, 0.4], [1, 0], base_rate=0.1) == pytest.approx(
        ctr.log_loss([0.8, 0.4], [1, 0]) / ctr.binary_entropy(0.1))
    assert ctr.binary_entropy(0.5) == pytest.approx(math.log(2))


def test_ctr_metrics_reject_bad_input():
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        ctr.log_loss([0.5, 0.5], [1, 2])
    with pytest.raises(ValueError, match="positives"):
        ctr.auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="base_rate"):
        ctr.normalized_entropy([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="labels"):
        ctr.ctr_metrics([0.1, 0.2, 0.3], [0, 1])


# --------------------------------------------------------------------------- DLRM trains on it


def _trainer(model, tx):
    task = Binary()

    def loss_fn(p, x, y, key):
        return task.objective(model.apply({"params": p}, x, train=True, rngs={"dropout": key}), y)

    @jax.jit
    def step(p, o, x, y, key):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y, key)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss, table_grad_norms(g)
    return step


def test_short_training_approaches_the_bayes_auc(small):
    ds = small.dataset
    model = DLRM(num_dense=4, table_sizes=SMALL.table_sizes, embed_dim=8, bottom_widths=(16, 8),
                 top_widths=(32, 16))
    params = model.init(jax.random.PRNGKey(0), ds.train_x[:2], train=False)["params"]
    tx = optax.adam(1e-2)
    step = _trainer(model, tx)
    opt = tx.init(params)
    rng = np.random.default_rng(0)
    for i in range(200):
        idx = rng.integers(0, len(ds.train_y), 256)
        params, opt, _, _ = step(params, opt, ds.train_x[idx], ds.train_y[idx],
                                 jax.random.PRNGKey(i))
    logits = model.apply({"params": params}, ds.test_x, train=False)
    got = ctr.ctr_metrics(logits, ds.test_y)
    bayes = small.bayes["test"]
    # At least half of the way from chance to the Bayes AUC, and not above it (up to the test
    # sample's noise, se ~ 0.01 at 10k examples with 9% clicks).
    assert got["auc"] > 0.5 + 0.5 * (bayes["auc"] - 0.5), (got, bayes)
    assert got["auc"] < bayes["auc"] + 0.02
    assert got["ne"] < 1.0  # better than the constant predictor at the test CTR


def test_bursts_spike_table_0_gradient_in_an_ordered_pass(small):
    # An online pass over train in log order. Inside a burst window every example is clicked far
    # more than predicted, which raises every table's gradient (same-sign residuals), and table 0
    # more: the whole batch's table-0 gradient lands on one row (the viral id), so its norm adds
    # up linearly instead of as a root sum of squares over rows. The monitor's alerts on table 0
    # fall on burst batches only.
    ds = small.dataset
    model = DLRM(num_dense=4, table_sizes=SMALL.table_sizes, embed_dim=8, bottom_widths=(16, 8),
                 top_widths=(32, 16))
    params = model.init(jax.random.PRNGKey(0), ds.train_x[:2], train=False)["params"]
    tx = optax.adam(1e-2)
    step = _trainer(model, tx)
    opt = tx.init(params)
    b = 128
    steps = len(ds.train_y) // b
    tables = [f"embed_{j}" for j in range(len(SMALL.table_sizes))]
    norms = {t: np.zeros(steps) for t in tables}
    for i in range(steps):
        sl = slice(i * b, (i + 1) * b)
        params, opt, _, n = step(params, opt, ds.train_x[sl], ds.train_y[sl],
                                 jax.random.PRNGKey(i))
        for t in tables:
            norms[t][i] = float(n[t])
    in_burst = small.train_burst[:steps * b].reshape(steps, b).mean(axis=1)
    burst_steps, quiet = in_burst > 0.5, in_burst == 0
    ratio = {t: np.median(norms[t][burst_steps]) / np.median(norms[t][quiet]) for t in tables}
    assert ratio["embed_0"] > 3.0, ratio
    assert ratio["embed_0"] > max(ratio[t] for t in tables[1:]), ratio
    _, summary = epoch_summary(init_alerts(["embed_0"]), {"embed_0": norms["embed_0"]})
    alerts = summary["embed_0"]["alert_steps"]
    assert alerts and all(in_burst[s] > 0 for s in alerts), (alerts, np.flatnonzero(burst_steps))
