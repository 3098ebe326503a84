"""L1, L2 and elastic net on a sparse linear problem (the chapter's coding question C3, 12.2.3-12.2.4).

Run:
  python -m experiments.sparsity --config=experiments/configs/sparsity.py --workdir=checkpoints/sparsity

Synthetic data, no files needed; one problem per seed (`seed` .. `seed + seeds - 1`), the four
penalties paired on it; 39 s for 3 seeds on the shared 2-core CPU (load ~10). Writes results.json,
results.md, and for the first seed weights.png, weights_off_support.png, coefficients.png and
objective_gap.png into the workdir.

Measured (3 seeds): only the proximal step (L1 and elastic net) gives exact zeros (90 and 89.3 of
100; L2 and the constant-step subgradient 0 of 300) and recovers the 10 features (F1 1.00 and
0.97); ISTA matches scikit-learn's Lasso / ElasticNet to 3e-7. Expected test MSE: L1 -0.21
[-0.54, +0.11] against L2, undecided with 3 seeds (the design detects 0.43).

Penalty convention (`ml_practical.sparsity`): J = 1/2 mean (y - Xw - b)^2 + l1 |w|_1 + l2/2 |w|^2,
so sklearn's Lasso(alpha=l1) and ElasticNet(alpha=l1 + l2, l1_ratio=l1 / (l1 + l2)).
"""

from experiments.sparsity.main import SparsityStudy
from ml_practical import config

def get_config():
    cfg = config.study_defaults(SparsityStudy)
    cfg.seed = 0                     # first problem seed (design, support, coefficients, noise)
    cfg.seeds = 3                    # problems `seed` .. `seed + seeds - 1`; penalties paired
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
