"""The chapter's ablation study on MNIST ("What actually helps on MNIST?"), rows 1-8 over 3 seeds.

Run:
  python -m experiments.ablation --config=experiments/configs/ablation.py \
      --workdir=checkpoints/ablation --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)
  Select rows or variants by name: --config.only=he,he_bn   --config.only=label_smoothing,adamw,clip
  ("" = rows 1-8, "all" = rows 1-8 and every variant: adamw ... cosine, and the toolkit's
  mixup ... decay_all; the names and their exact overrides are `experiments/ablation/rows.py`).
  On a GPU the seeds of a row train as one vmapped program (seed_mode "auto"); force either way
  with --config.seed_mode=vmap or --config.seed_mode=sequential.

Expected: see the README's results table (measured, with its command and wall time).

  Adaptive seeds: --config.max_seeds=10 adds seeds (2 per look, --config.seed_step) only to the
  comparisons still undecided after the first `seeds`, up to 10 per row; --config.margin_pp=0.1
  also stops a comparison whose 95 % CI lies inside +-0.1 pp ("equivalent").

The study-level fields are `seeds`, `only`, `seed_mode`, `max_seeds`, `seed_step` and
`margin_pp`; every other field is the base training config that each row overrides: the chapter's
setup (784-512-256-10 ReLU MLP, Adam lr 1e-3, batch 128, up to 50 epochs, early stopping with
patience 10, best weights restored; on val/accuracy, not the chapter's val/loss: see below), with
every technique the rows switch on switched off here. Each run's resolved config is written to
<workdir>/runs/<experiment>/seed_<s>/config.json.
"""

from experiments.ablation.rows import AblationStudy
from experiments.configs import mnist_mlp
from ml_practical import config

def get_config():
    return study_config(mnist_mlp.get_config())


def study_config(base):
    """The study fields and the chapter's lab setup on top of a training config `base` (any
    model family whose fields the rows override: the MLP here, the CNN in ablation_cnn_digits)."""
    cfg = config.with_study(base, AblationStudy)
    del cfg["seed"]                  # each run's seed comes from `seeds`
    cfg.seeds = 3                    # runs every experiment with seeds 0, 1, ..., seeds - 1
    cfg.only = ""                    # comma-separated experiment names; "" = rows 1-8; "all"
    # How a row's seeds run: "sequential" (one loop.fit each: checkpoints, resume), "vmap" (all
    # unfinished seeds as one vmapped program, loop.fit_seeds: same per-seed results to float32
    # rounding, no checkpoints, an interrupted row restarts), "auto" = vmap on GPU/TPU, sequential
    # on CPU (benchmarks/seeds.py measures the two).
    cfg.seed_mode = "auto"
    cfg.max_seeds = 0                # adaptive seeds off (rows.AblationStudy documents the mode)
    cfg.seed_step = 2
    cfg.margin_pp = 0.0

    # The chapter's lab setup. Rows set init, norm, dropout, L2 and label smoothing themselves;
    # the values here are row 1's, so the base config alone is the plainest run.
    cfg.model.hidden_init = "normal"     # N(0, 0.01^2)
    cfg.model.output_init = "normal"
    cfg.model.norm = "none"
    cfg.model.drop_rate = 0.0
    cfg.optim.clip = "none"
    cfg.optim.l2 = 0.0
    cfg.train.num_epochs = 50
    cfg.train.label_smoothing = 0.0
    # Stop on validation accuracy, not the chapter's val/loss: label smoothing raises the
    # validation NLL by design (its targets are 1 - a + a/K = 0.91, not 1), so a val/loss monitor
    # stops its rows early or late for a reason that is not their accuracy (on the 8x8 digits rows
    # 7 and 8 stopped at epoch 4 in 2 of 3 seeds). Accuracy is the criterion fair to every row;
    # the reports state it. Patience stays the chapter's 10 (MNIST's 5000 validation images move
    # the accuracy in steps of 0.02 pp).
    cfg.early_stopping.monitor = "val/accuracy"
    cfg.early_stopping.mode = "max"
    # Checkpoint every 5 epochs (the best in between waits on the device): a killed run replays at
    # most 4 epochs, bit-identically, and the study saves a fifth of the steps (benchmarks/README).
    cfg.checkpoint.every = 5
    return cfg
