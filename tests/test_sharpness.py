"""ml_practical.analysis.sharpness against closed forms and the dense Hessian."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ml_practical import loop
from ml_practical.analysis import sharpness
from ml_practical.models.mlp import MLP
from tests.conftest import make_tiny_dataset, tiny


def _quadratic(eigenvalues, seed=0):
    """L(w) = 1/2 (w - c)^T A (w - c) with A = Q diag(eigenvalues) Q^T; params {"w": (n,)}."""
    n = len(eigenvalues)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.asarray(eigenvalues)) @ q.T
    c = rng.normal(size=n)
    a_j, c_j = jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32)
    return (lambda p: 0.5 * (p["w"] - c_j) @ a_j @ (p["w"] - c_j)), a, c


def test_hvp_is_the_matrix_product_on_a_quadratic():
    loss, a, _ = _quadratic([3.0, 1.0, -0.5, 0.2])
    v = np.random.default_rng(1).normal(size=4).astype(np.float32)
    out = sharpness.hvp(loss, {"w": jnp.zeros(4)}, {"w": jnp.asarray(v)})
    np.testing.assert_allclose(out["w"], a @ v, rtol=1e-5, atol=1e-6)


def test_power_iteration_and_lanczos_find_the_known_spectrum():
    eig = [5.0, 2.0, 1.0, 0.5, -1.0, 0.1]
    loss, _, _ = _quadratic(eig)
    params = {"w": jnp.ones(6)}
    power = sharpness.power_iteration(loss, params, jax.random.key(0), num_iters=300, tol=1e-7)
    assert power["eigenvalue"] == pytest.approx(5.0, rel=1e-4)  # largest |lambda|
    full = sharpness.lanczos(loss, params, jax.random.key(1), num_steps=6)
    np.testing.assert_allclose(full["ritz_values"], sorted(eig), atol=1e-4)
    few = sharpness.lanczos(loss, params, jax.random.key(1), num_steps=4)
    assert few["max"] <= 5.0 + 1e-5 and few["min"] >= -1.0 - 1e-5  # Ritz values interlace


def _mlp_loss():
    model = MLP(widths=(6,), num_classes=3, norm="batch")
    x = jax.random.normal(jax.random.key(0), (32, 5))
    y = jnp.arange(32) % 3
    variables = model.init(jax.random.key(1), x, train=False)
    # Move the running statistics off (0, 1) so evaluation mode is visibly not training mode.
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])}
    return model, variables, x, y


def test_eval_loss_uses_the_running_statistics_and_lanczos_matches_the_dense_hessian():
    model, variables, x, y = _mlp_loss()
    loss = sharpness.eval_loss_fn(model, variables, x, y)
    logits = model.apply(variables, x, train=False)
    ref = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(32), y])
    assert float(loss(variables["params"])) == pytest.approx(float(ref), rel=1e-6)
    flat, unravel = ravel_pytree(variables["params"])
    dense = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat),
                                          np.float64))
    lz = sharpness.lanczos(loss, variables["params"], jax.random.key(2), num_steps=40)
    assert lz["max"] == pytest.approx(dense[-1], rel=2e-3)
    assert lz["min"] == pytest.approx(dense[0], rel=2e-2, abs=1e-3)
    power = sharpness.power_iteration(loss, variables["params"], jax.random.key(3),
                                      num_iters=500, tol=1e-7)
    top = dense[np.argmax(np.abs(dense))]
    assert power["eigenvalue"] == pytest.approx(top, rel=5e-3)


def test_epsilon_sharpness_in_the_ball_equals_the_boundary_maximum():
    # A convex quadratic rises fastest to the boundary of the ball; the maximum over the circle
    # by brute force over 100,000 angles is the reference.
    loss, a, c = _quadratic([4.0, 1.0])
    w = np.array([0.3, -0.2]) + c
    rho = 0.1
    out = sharpness.epsilon_sharpness(loss, {"w": jnp.asarray(w, jnp.float32)}, rho, steps=50)
    theta = np.linspace(0, 2 * np.pi, 100_000, endpoint=False)
    d = w[None] - c + rho * np.stack([np.cos(theta), np.sin(theta)], 1)
    best = 0.5 * np.max(np.einsum("ni,ij,nj->n", d, a, d))
    l0 = 0.5 * (w - c) @ a @ (w - c)
    assert out["loss"] == pytest.approx(l0, rel=1e-5)
    assert out["max_loss"] == pytest.approx(best, rel=1e-4)
    assert out["keskar"] == pytest.approx(100 * (best - l0) / (1 + l0), rel=1e-3)
    one = sharpness.epsilon_sharpness(loss, {"w": jnp.asarray(w, jnp.float32)}, rho, steps=1)
    g = a @ (w - c)
    first = w - c + rho * g / np.linalg.norm(g)  # SAM's step
    assert one["max_loss"] == pytest.approx(0.5 * first @ a @ first, rel=1e-5)


def test_keskar_box_reaches_the_best_vertex():
    loss, a, c = _quadratic([3.0, 1.0, 0.5], seed=4)
    w = c + np.array([0.5, -0.1, 0.2])
    rho = 0.05
    out = sharpness.epsilon_sharpness(loss, {"w": jnp.asarray(w, jnp.float32)}, rho, steps=20,
                                      region="keskar")
    half = rho * (np.abs(w) + 1.0)
    vertices = [w - c + np.array(s) * half for s in itertools.product((-1, 1), repeat=3)]
    best = max(0.5 * d @ a @ d for d in vertices)  # a convex function peaks at a vertex
    assert out["max_loss"] == pytest.approx(best, rel=1e-4)


def test_bad_arguments_name_the_argument():
    loss, _, _ = _quadratic([1.0, 2.0])
    p = {"w": jnp.zeros(2)}
    with pytest.raises(ValueError, match="epsilon_sharpness.region"):
        sharpness.epsilon_sharpness(loss, p, 0.1, region="linf")
    with pytest.raises(ValueError, match="rho"):
        sharpness.epsilon_sharpness(loss, p, 0.0)
    with pytest.raises(ValueError, match="lanczos.num_steps"):
        sharpness.lanczos(loss, p, jax.random.key(0), num_steps=0)


def test_from_checkpoint_restores_the_tested_state(tmp_path):
    cfg = tiny(**{"train.num_epochs": 2, "early_stopping.enabled": False,
                  "model.norm": "batch"})
    data = make_tiny_dataset()
    result = loop.fit(cfg, tmp_path, dataset=data)
    out = sharpness.from_checkpoint(tmp_path, split="test", num_examples=0, lanczos_steps=15,
                                    dataset=data)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert out["epoch"] == summary["tested_epoch"] == 2
    # The restored weights on the whole test split give the run's own test loss.
    assert out["loss"] == pytest.approx(summary["test/loss"], rel=1e-5)
    assert out["power"]["eigenvalue"] == pytest.approx(out["lanczos"]["max"], rel=5e-2)
    assert out["epsilon"]["sharpness"] >= 0.0
    assert result.summary["test/loss"] == summary["test/loss"]
    with pytest.raises(ValueError, match="no config.json"):
        sharpness.from_checkpoint(tmp_path / "missing")
