"""L1, L2 and elastic net on a sparse linear problem (the chapter's coding question C3, 12.2.3-12.2.4).

Run:
  python -m experiments.sparsity --config=experiments/configs/sparsity.py --workdir=checkpoints/sparsity

Synthetic data, no files needed; seconds on a 2-core CPU. Writes results.json, results.md,
weights.png, weights_off_support.png, coefficients.png and objective_gap.png into the workdir.

Expected: see the README's sparsity section (measured, with its command). In short: only the
proximal step (L1 and elastic net) gives exact zeros and recovers the 10 features; the constant-step
L1 subgradient leaves all 100 weights non-zero; ISTA matches scikit-learn's Lasso / ElasticNet.

Penalty convention (`ml_practical.sparsity`): J = 1/2 mean (y - Xw - b)^2 + l1 |w|_1 + l2/2 |w|^2,
so sklearn's Lasso(alpha=l1) and ElasticNet(alpha=l1 + l2, l1_ratio=l1 / (l1 + l2)).
"""

from experiments.sparsity.main import SparsityStudy
from ml_practical import config

def get_config():
    cfg = config.study_defaults(SparsityStudy)
    cfg.seed = 0                     # problem seed (design, support, coefficients, noise)
    cfg.problem.n_samples = 200
    cfg.problem.n_features = 100
    cfg.problem.n_informative = 10   # true |w_j| ~ U[1, 2] on a random support
    cfg.problem.noise = 1.0          # std of the Gaussian noise on y
    # l1 ~ noise * sqrt(2 log d / n) = 0.21 is the classic Lasso scale; 0.3 errs on the side of
    # fewer false positives.
    cfg.penalty.l1 = 0.3             # used by l1_subgradient, l1_proximal, elastic_net
    cfg.penalty.l2 = 0.1             # used by l2, elastic_net (coupled: gradient l2 * w)
    cfg.fit.optimizer = "sgd"        # full batch: SGD + prox = ISTA
    cfg.fit.learning_rate = 0.0      # 0 = 1 / L, L the largest eigenvalue of [X 1]'[X 1] / n
    cfg.fit.steps = 3000
    cfg.report.histogram_bins = 41
    cfg.report.off_support_range = 0.3    # x-range of the zoomed histogram of irrelevant weights
    cfg.report.gap_steps = 200            # steps shown in objective_gap.png (ISTA converges in ~50)
    return cfg
