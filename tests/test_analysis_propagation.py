"""Tests for ml_practical.analysis.propagation: measured signal propagation against mean field."""

import math

import jax
import numpy as np
import pytest

from experiments.signal_propagation.main import chapter_inputs
from ml_practical.analysis import propagation


def test_propagation_variance_factor_per_layer_matches_theory():
    x = jax.random.normal(jax.random.PRNGKey(0), (512, 256))
    he = propagation.propagate(jax.random.PRNGKey(1), x, depth=5, width=256, init="he_normal")
    xavier = propagation.propagate(jax.random.PRNGKey(1), x, depth=5, width=256,
                                   init="xavier_normal")
    # He: n Var(W) = 2 and E[relu(z)^2] = q / 2, so the pre-activation variance is kept.
    np.testing.assert_allclose(propagation.variance_ratios(he), 1.0, rtol=0.1)
    # Xavier on a square layer: n Var(W) = 1, so ReLU halves it per layer.
    np.testing.assert_allclose(propagation.variance_ratios(xavier), 0.5, rtol=0.1)
    # Layer 1's activation variance is q (1/2 - 1/(2 pi)) with q = 2 for He.
    assert he[0]["var"] == pytest.approx(2 * (0.5 - 1 / (2 * math.pi)), rel=0.05)
    theory = propagation.mean_field([propagation.weight_gain("he_normal", 256, 256)] * 5)
    assert [r["var"] for r in theory] == pytest.approx([2 * (0.5 - 1 / (2 * math.pi))] * 5)
    assert theory[0]["mean"] == pytest.approx(math.sqrt(2 / (2 * math.pi)))


def test_mean_field_tanh_matches_monte_carlo():
    gains = [propagation.weight_gain("xavier_normal", 100, 100)] * 3
    theory = propagation.mean_field(gains, "tanh")
    rng = np.random.default_rng(0)
    m2 = 1.0
    for row, g in zip(theory, gains):  # the recursion by sampling z ~ N(0, g E[a^2])
        a = np.tanh(math.sqrt(g * m2) * rng.standard_normal(2_000_000))
        m2 = float(np.mean(a * a))
        assert row["var"] == pytest.approx(a.var(), rel=5e-3)
    assert propagation.weight_gain("normal", 512, 512) == pytest.approx(512 * 1e-4)


def test_chapter_inputs_are_numpys_seeded_randn():
    x = chapter_inputs(42, 3, 4)
    np.random.seed(42)
    np.testing.assert_array_equal(x, np.random.randn(3, 4).astype(np.float32))
