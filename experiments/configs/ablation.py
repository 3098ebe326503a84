"""The chapter's ablation study on MNIST ("What actually helps on MNIST?"), rows 1-8 over 3 seeds.

Run:
  python -m experiments.ablation --config=experiments/configs/ablation.py \
      --workdir=checkpoints/ablation --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)
  Select rows or variants by name: --config.only=he,he_bn   --config.only=label_smoothing,adamw,clip
  ("" = rows 1-8, "all" = rows 1-8 and the variants adamw, clip, layernorm, bn_after, cosine; the
  names and their exact overrides are `ml_practical.ablation.EXPERIMENTS`).
  On a GPU the seeds of a row train as one vmapped program (seed_mode "auto"); force either way
  with --config.seed_mode=vmap or --config.seed_mode=sequential.

Expected: see the README's results table (measured, with its command and wall time).

The study-level fields are `seeds`, `only` and `seed_mode`; every other field is the base training config that
each row overrides: the chapter's setup (784-512-256-10 ReLU MLP, Adam lr 1e-3, batch 128, up to
50 epochs, early stopping with patience 10 on val/loss, best weights restored), with every
technique the rows switch on switched off here. Each run's resolved config is written to
<workdir>/runs/<experiment>/seed_<s>/config.json.
"""

import ml_collections

from experiments.configs import mnist_mlp


def get_config() -> ml_collections.ConfigDict:
  cfg = mnist_mlp.get_config()
  del cfg["seed"]                  # each run's seed comes from `seeds`
  cfg.seeds = 3                    # runs every experiment with seeds 0, 1, ..., seeds - 1
  cfg.only = ""                    # comma-separated experiment names; "" = rows 1-8; "all"
  # How a row's seeds run: "sequential" (one train.fit each: checkpoints, resume), "vmap" (all
  # unfinished seeds as one vmapped program, multiseed.fit_seeds: same per-seed results to float32
  # rounding, no checkpoints, an interrupted row restarts), "auto" = vmap on GPU/TPU, sequential
  # on CPU (4 MNIST seeds vmapped were no faster on the 2-core CPU: benchmarks/seeds.py).
  cfg.seed_mode = "auto"

  # The chapter's lab setup. Rows set init, norm, dropout, L2 and label smoothing themselves;
  # the values here are row 1's, so the base config alone is the plainest run.
  cfg.data.source = "idx"
  cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
  cfg.model.widths = (512, 256)
  cfg.model.activation = "relu"
  cfg.model.hidden_init = "normal"     # N(0, 0.01^2)
  cfg.model.output_init = "normal"
  cfg.model.norm = "none"
  cfg.model.norm_position = "before"
  cfg.model.drop_rate = 0.0
  cfg.optim.name = "adam"
  cfg.optim.learning_rate = 1e-3
  cfg.optim.schedule = "constant"
  cfg.optim.warmup_steps = 0
  cfg.optim.clip = "none"
  cfg.optim.l2 = 0.0
  cfg.optim.weight_decay = 0.0
  cfg.optim.l1 = 0.0
  cfg.train.num_epochs = 50
  cfg.train.batch_size = 128
  cfg.train.label_smoothing = 0.0
  cfg.train.augment = "none"
  cfg.early_stopping.monitor = "val/loss"
  cfg.early_stopping.mode = "min"
  cfg.early_stopping.patience = 10
  cfg.early_stopping.min_delta = 0.0
  return cfg
