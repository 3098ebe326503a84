"""The sparsity study (experiments/sparsity, coding question C3): exact zeros from the proximal step
only, support recovery and sklearn agreement, with every fit through `loop.fit`."""

import numpy as np
import pytest

from experiments.sparsity import main as study
from experiments.sparsity import problem as sparsity
from ml_practical.analysis import support

L1 = 0.3
L2 = 0.1
STEPS = 3000


@pytest.fixture(scope="module")
def problem():
    # Seed 0: 200 samples, 100 features, 10 informative with |w| in [1, 2], noise 1.
    return sparsity.make_sparse_regression(0, n_samples=200, n_features=100, n_informative=10,
                                           noise=1.0)


@pytest.fixture(scope="module")
def lr(problem):
    return 1.0 / sparsity.lipschitz_constant(problem.x)   # ISTA's step-size bound


@pytest.fixture(scope="module")
def fits(problem, lr, tmp_path_factory):
    kw = {"l2": dict(l2=L2), "l1_subgradient": dict(l1=L1), "l1_proximal": dict(l1=L1),
          "elastic_net": dict(l1=L1, l2=L2)}
    root = tmp_path_factory.mktemp("fits")
    return {p: study.fit_penalty(problem.x, problem.y, root / p, penalty=p, steps=STEPS, lr=lr,
                                 **k)
            for p, k in kw.items()}


def test_problem_has_the_requested_support(problem):
    assert problem.x.shape == (200, 100) and problem.y.shape == (200,)
    assert len(problem.support) == 10
    np.testing.assert_array_equal(np.flatnonzero(problem.coef), problem.support)
    assert np.all(np.abs(problem.coef[problem.support]) >= 1.0)
    # y = x.w + N(0, 1): the residual's std is the noise level.
    assert abs(np.std(problem.y - problem.x @ problem.coef) - 1.0) < 0.15


def test_proximal_l1_recovers_the_support(problem, fits):
    m = support.support_metrics(fits["l1_proximal"].kernel, problem.support)
    assert m["recall"] == 1.0
    assert m["precision"] >= 0.9
    assert m["exact_zeros"] >= 80


def test_only_the_proximal_step_gives_exact_zeros(fits):
    assert np.sum(fits["l1_proximal"].kernel == 0) > 0
    assert np.sum(fits["elastic_net"].kernel == 0) > 0
    assert np.sum(fits["l1_subgradient"].kernel == 0) == 0
    assert np.sum(fits["l2"].kernel == 0) == 0


def test_proximal_l1_matches_sklearn_lasso(problem, fits):
    coef, intercept = sparsity.sklearn_fit(problem.x, problem.y, penalty="l1_proximal", l1=L1)
    agree = support.coefficient_agreement(fits["l1_proximal"].kernel, coef)
    assert agree["max_abs_diff"] < 1e-4
    assert agree["same_support"]
    assert abs(fits["l1_proximal"].bias - intercept) < 1e-4


def test_elastic_net_matches_sklearn_elastic_net(problem, fits):
    # l1 = alpha * l1_ratio, l2 = alpha * (1 - l1_ratio)
    coef, _ = sparsity.sklearn_fit(problem.x, problem.y, penalty="elastic_net", l1=L1, l2=L2)
    assert support.coefficient_agreement(fits["elastic_net"].kernel, coef)["max_abs_diff"] < 1e-4


def test_l2_matches_ridge_closed_form(problem, fits):
    # argmin 1/2 mean (y - Xw - b)^2 + l2/2 |w|^2: centre X and y, then w = (Xc'Xc/n + l2 I)^-1 Xc'yc/n.
    x = problem.x.astype(np.float64)
    xc, yc = x - x.mean(0), problem.y - problem.y.mean()
    n, d = x.shape
    w = np.linalg.solve(xc.T @ xc / n + L2 * np.eye(d), xc.T @ yc / n)
    np.testing.assert_allclose(fits["l2"].kernel, w, atol=1e-4)


def test_subgradient_does_not_reach_the_lasso_solution(problem, fits):
    # Constant-step subgradient oscillates around 0 with amplitude ~ lr * l1 and stays above the
    # optimum of the same objective that ISTA reaches.
    assert fits["l1_subgradient"].objective[-1] > fits["l1_proximal"].objective[-1] + 0.1
    m = support.support_metrics(fits["l1_subgradient"].kernel, problem.support)
    assert m["n_selected"] == 100 and m["precision"] == pytest.approx(0.1)


def test_ista_objective_never_increases(fits):
    # Proximal gradient with lr <= 1/L is a descent method (Beck & Teboulle 2009, Lemma 2.3).
    obj = fits["l1_proximal"].objective
    assert np.all(np.diff(obj) <= 1e-6 * np.abs(obj[:-1]))


def test_bias_is_not_penalized(problem, lr, tmp_path):
    # l1 larger than every |x_j' (y - mean y)| / n zeroes all weights; the free bias is mean(y).
    fit = study.fit_penalty(problem.x, problem.y, tmp_path, penalty="l1_proximal", l1=100.0,
                            steps=300, lr=lr)
    assert np.all(fit.kernel == 0)
    assert fit.bias == pytest.approx(float(np.mean(problem.y)), abs=1e-4)


def test_classification_proximal_l1_finds_the_support(tmp_path):
    prob = sparsity.make_sparse_regression(1, n_samples=400, noise=0.5, task="classification")
    assert set(np.unique(prob.y)) == {0.0, 1.0}
    fit = study.fit_penalty(prob.x, prob.y, tmp_path, penalty="l1_proximal", l1=0.02, steps=2000,
                            lr=1.0, task="classification")
    m = support.support_metrics(fit.kernel, prob.support)
    assert m["recall"] == 1.0 and m["exact_zeros"] >= 60


def test_bad_arguments_name_the_field(problem, tmp_path):
    with pytest.raises(ValueError, match=r"penalty: unknown 'l3'; expected one of"):
        study.fit_penalty(problem.x, problem.y, tmp_path, penalty="l3")
    with pytest.raises(ValueError, match=r"l1: 0.1; penalty 'l2' does not use l1"):
        study.fit_penalty(problem.x, problem.y, tmp_path, penalty="l2", l1=0.1, l2=0.1)
    with pytest.raises(ValueError, match=r"l2: 0.0; penalty 'elastic_net' needs l2 > 0"):
        study.fit_penalty(problem.x, problem.y, tmp_path, penalty="elastic_net", l1=0.1)
    with pytest.raises(ValueError, match=r"task: unknown 'ranking'"):
        sparsity.make_sparse_regression(0, task="ranking")


def test_the_penalized_objective_is_the_one_numpy_computes(problem, fits):
    # The hook's per-step J at the final weights equals numpy's J once more steps change nothing:
    # compare J(w_T) in float64 with the last recorded value (taken before the last step).
    f = fits["l1_proximal"]
    j = sparsity.penalized_objective(problem.x, problem.y, f.kernel, f.bias, l1=L1)
    assert f.objective.shape == (STEPS,) and f.objective.dtype == np.float32
    assert f.objective[-1] == pytest.approx(j, rel=1e-5)


def test_expected_test_mse_is_the_error_on_new_data(problem, fits):
    # The closed form ||w - w*||^2 + b^2 + noise^2 against the mean squared error on 200,000 new
    # draws of the same problem (x ~ N(0, I), y = x.w* + N(0, 1)); its Monte Carlo sd is about
    # sqrt(2 / 200000) * MSE, so 1 % is > 20 sd.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, problem.coef.size))
    y = x @ problem.coef + rng.standard_normal(200_000)
    for name in ("l2", "l1_proximal"):
        f = fits[name]
        closed = sparsity.expected_test_mse(f.kernel, f.bias, problem.coef, noise=1.0)
        assert closed == pytest.approx(np.mean((y - x @ f.kernel - f.bias) ** 2), rel=0.01)
    assert sparsity.expected_test_mse(problem.coef, 0.0, problem.coef, noise=1.0) == 1.0
    with pytest.raises(ValueError, match=r"kernel: shape \(3,\); expected"):
        sparsity.expected_test_mse(np.zeros(3), 0.0, problem.coef, noise=1.0)
