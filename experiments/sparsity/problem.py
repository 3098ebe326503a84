"""Sparse linear models trained with the library's L1 (subgradient or proximal), L2 and elastic net.

The chapter's coding question C3: on a synthetic problem where only a few of many features matter,
L1 drives the irrelevant weights to exactly zero and L2 only shrinks them (12.2.3, 12.2.4). The
linear model here is trained with `ml_practical.optim.make_optimizer`, i.e. with the same transforms
a deep network uses (coupled L2 `g += l2 * w`, L1 subgradient `g += l1 * sign(w)`, proximal L1
soft-thresholding after the step), so the experiment tests the library's regularizers, not a
separate solver.

Objective (regression), with the weight leaf named "kernel" so that the default mask penalizes it
and leaves the bias alone:

    J(w, b) = 1/2 mean_i (y_i - x_i.w - b)^2 + l1 * ||w||_1 + (l2 / 2) * ||w||^2

This is scikit-learn's convention up to a renaming: `Lasso(alpha)` minimizes
1/(2n) ||y - Xw - b||^2 + alpha ||w||_1, so alpha = l1; `ElasticNet(alpha, l1_ratio)` adds
alpha (1 - l1_ratio) / 2 ||w||^2, so l1 = alpha * l1_ratio and l2 = alpha * (1 - l1_ratio). Both fit
an unpenalized intercept, as we do. Full-batch SGD followed by the proximal step is ISTA (Daubechies
et al. 2004; Beck & Teboulle 2009), which converges to the same minimizer for lr <= 1 / L, L the
largest eigenvalue of the Hessian [X 1]^T [X 1] / n of the data term (`lipschitz_constant`).
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical.config import OptimConfig

PENALTIES = ("elastic_net", "l1_proximal", "l1_subgradient", "l2", "none")
TASKS = ("classification", "regression")


class SparseProblem(NamedTuple):
    """A synthetic design with a known support.

    Attributes:
      x: [n_samples, n_features] float32 standard-normal features.
      y: [n_samples] float32 targets (regression) or 0/1 labels (classification).
      support: sorted int indices of the informative features.
      coef: [n_features] float32 true coefficients (zero off the support).
    """

    x: np.ndarray
    y: np.ndarray
    support: np.ndarray
    coef: np.ndarray


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 5))
def _sample_problem(key, n_samples, n_features, n_informative, noise, task):
    x_key, support_key, sign_key, size_key, noise_key = jax.random.split(key, 5)
    x = jax.random.normal(x_key, (n_samples, n_features), jnp.float32)
    support = jnp.sort(jax.random.permutation(support_key, n_features)[:n_informative])
    signs = jnp.where(jax.random.bernoulli(sign_key, 0.5, (n_informative,)), 1.0, -1.0)
    sizes = jax.random.uniform(size_key, (n_informative,), jnp.float32, 1.0, 2.0)
    coef = jnp.zeros((n_features,), jnp.float32).at[support].set(signs * sizes)
    signal = x @ coef + noise * jax.random.normal(noise_key, (n_samples,), jnp.float32)
    y = signal if task == "regression" else (signal > 0).astype(jnp.float32)
    return x, y, support, coef


def make_sparse_regression(key: jax.Array | int, n_samples: int = 200, n_features: int = 100,
                           n_informative: int = 10, noise: float = 1.0,
                           task: str = "regression") -> SparseProblem:
    """A linear problem where only `n_informative` of `n_features` features carry signal.

    x_ij ~ N(0, 1) independently; w_j = s_j * u_j on a random support with s_j = +-1 and
    u_j ~ U[1, 2] (so every true coefficient is well away from 0), w_j = 0 elsewhere; then
    regression: y = x.w + noise * eps, classification: y = 1[x.w + noise * eps > 0], eps ~ N(0, 1).

    Args:
      key: a jax PRNG key, or an int seed (turned into `jax.random.PRNGKey(seed)`).
      n_samples, n_features, n_informative: sizes; 1 <= n_informative <= n_features.
      noise: standard deviation of the additive Gaussian noise, >= 0.
      task: "regression" | "classification".

    Returns:
      A `SparseProblem` (x, y, support, coef) of numpy arrays.
    """
    if task not in TASKS:
        raise ValueError(f"task: unknown {task!r}; expected one of {list(TASKS)}")
    if not 1 <= n_informative <= n_features:
        raise ValueError(f"n_informative: {n_informative}; expected 1 <= n_informative <= n_features "
                         f"({n_features})")
    if n_samples < 1:
        raise ValueError(f"n_samples: {n_samples}; expected >= 1")
    if noise < 0:
        raise ValueError(f"noise: {noise}; expected >= 0")
    if isinstance(key, numbers.Integral):
        key = jax.random.PRNGKey(key)
    x, y, support, coef = _sample_problem(key, n_samples, n_features, n_informative, noise, task)
    return SparseProblem(*(np.asarray(a) for a in (x, y, support, coef)))


def penalty_optim_config(penalty: str, *, l1: float = 0.0, l2: float = 0.0, lr: float = 0.1,
                         optimizer: str = "sgd") -> OptimConfig:
    """The optim section that realizes `penalty` with `ml_practical.optim.make_optimizer`.

    "l2": coupled L2 (g += l2 * w); "l1_subgradient": g += l1 * sign(w); "l1_proximal":
    soft-threshold by lr * l1 after the step (ISTA); "elastic_net": coupled L2 plus proximal L1,
    i.e. proximal gradient on the smooth part data + (l2/2)||w||^2 (Zou & Hastie 2005); "none".

    Args:
      penalty: one of `PENALTIES`.
      l1, l2: coefficients; each must be > 0 exactly when the penalty uses it and 0 otherwise, so a
        coefficient is never silently ignored.
      lr: constant learning rate.
      optimizer: cfg.optim.name ("sgd" gives ISTA for the proximal penalties).

    Returns:
      The optim section (`config.OptimConfig`) that `optim.make_optimizer` turns into the chain.
    """
    if penalty not in PENALTIES:
        raise ValueError(f"penalty: unknown {penalty!r}; expected one of {list(PENALTIES)}")
    uses_l1 = penalty in ("elastic_net", "l1_proximal", "l1_subgradient")
    uses_l2 = penalty in ("elastic_net", "l2")
    for name, value, used in (("l1", l1, uses_l1), ("l2", l2, uses_l2)):
        if used and not value > 0:
            raise ValueError(f"{name}: {value!r}; penalty {penalty!r} needs {name} > 0")
        if not used and value != 0:
            raise ValueError(f"{name}: {value!r}; penalty {penalty!r} does not use {name}, expected 0")
    return OptimConfig(name=optimizer, learning_rate=lr, l1=float(l1),
                       l1_mode="subgradient" if penalty == "l1_subgradient" else "proximal",
                       l2=float(l2), weight_decay=0.0, decay_mask="kernels")


def lipschitz_constant(x: np.ndarray) -> float:
    """L = largest eigenvalue of [X 1]^T [X 1] / n, the gradient's Lipschitz constant for the
    squared loss 1/2 mean (y - Xw - b)^2; ISTA converges for lr <= 1 / L (Beck & Teboulle 2009).

    Args:
      x: [n, d] design.

    Returns:
      L as a Python float (computed in float64 with numpy).
    """
    x = np.asarray(x, np.float64)
    xa = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    return float(np.linalg.eigvalsh(xa.T @ xa / x.shape[0])[-1])


def penalized_objective(x: np.ndarray, y: np.ndarray, kernel: np.ndarray, bias: float, *,
                        l1: float = 0.0, l2: float = 0.0) -> float:
    """J(w, b) = 1/2 mean (y - x.w - b)^2 + l1 ||w||_1 + (l2/2) ||w||^2 in float64 (regression),
    to compare solutions (ours, sklearn's) on the objective they all minimize.

    Args:
      x: [n, d]; y: [n]; kernel: [d]; bias: scalar; l1, l2: coefficients.

    Returns:
      J as a Python float.
    """
    x, y, w = (np.asarray(a, np.float64) for a in (x, y, kernel))
    r = y - x @ w - float(bias)
    return float(0.5 * np.mean(r**2) + l1 * np.sum(np.abs(w)) + 0.5 * l2 * np.sum(w**2))


def expected_test_mse(kernel: np.ndarray, bias: float, coef: np.ndarray, noise: float) -> float:
    """The squared error of z = x.w + b on a new draw of `make_sparse_regression`'s regression
    data, in closed form: with x ~ N(0, I_d) and y = x.w* + noise * eps independent of x,

        E[(y - x.w - b)^2] = ||w - w*||^2 + b^2 + noise^2

    (the cross terms vanish: x and eps have mean 0 and identity / unit covariance). The held-out
    error of the fit, without sampling a test set.

    Args:
      kernel: [d] fitted weights w; bias: fitted b; coef: [d] true w*; noise: the noise std.

    Returns:
      The expected test MSE as a Python float (float64).
    """
    w, w_true = np.asarray(kernel, np.float64), np.asarray(coef, np.float64)
    if w.shape != w_true.shape:
        raise ValueError(f"kernel: shape {w.shape}; expected the coefficients' {w_true.shape}")
    return float(np.sum((w - w_true) ** 2) + float(bias) ** 2 + float(noise) ** 2)


def sklearn_fit(x: np.ndarray, y: np.ndarray, *, penalty: str, l1: float = 0.0, l2: float = 0.0,
                tol: float = 1e-10, max_iter: int = 100_000) -> tuple[np.ndarray, float]:
    """The same regression problem solved by scikit-learn's coordinate descent, for reference.

    Mapping (see the module docstring): "l1_*" -> Lasso(alpha=l1); "elastic_net" ->
    ElasticNet(alpha=l1 + l2, l1_ratio=l1 / (l1 + l2)); "l2" -> Ridge(alpha=n * l2), since Ridge
    minimizes ||y - Xw||^2 + alpha ||w||^2 without the 1/(2n); "none" -> LinearRegression.
    All fit an unpenalized intercept. Computed in float64.

    Args:
      x: [n, d]; y: [n] real targets.
      penalty, l1, l2: as in `main.fit_penalty`.
      tol, max_iter: coordinate-descent tolerance and iteration cap (Lasso / ElasticNet).

    Returns:
      (coef [d], intercept).
    """
    from sklearn import linear_model  # sklearn import is slow; only this function needs it.

    penalty_optim_config(penalty, l1=l1, l2=l2)  # validates the penalty and its coefficients
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if penalty in ("l1_proximal", "l1_subgradient"):
        model = linear_model.Lasso(alpha=l1, tol=tol, max_iter=max_iter)
    elif penalty == "elastic_net":
        model = linear_model.ElasticNet(alpha=l1 + l2, l1_ratio=l1 / (l1 + l2), tol=tol,
                                        max_iter=max_iter)
    elif penalty == "l2":
        model = linear_model.Ridge(alpha=x.shape[0] * l2)
    else:
        model = linear_model.LinearRegression()
    model.fit(x, y)
    return np.asarray(model.coef_), float(model.intercept_)
