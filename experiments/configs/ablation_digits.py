"""The ablation study on the embedded 8x8 digits (scikit-learn; offline): same rows, same outputs.

Run:
  python -m experiments.ablation --config=experiments/configs/ablation_digits.py \
      --workdir=checkpoints/ablation_digits

Expected: WALL_TIME on 2 CPU cores for rows 1-8 x 3 seeds; accuracies of 96-98% (360 test images,
so one image is 0.28 pp and the rows mostly differ by less than their seed spread). The chapter's
expectations are for MNIST and are shown for reference only.
"""

import ml_collections

from experiments.configs import ablation


def get_config() -> ml_collections.ConfigDict:
  cfg = ablation.get_config()
  cfg.data.source = "digits"
  cfg.data.val_size = 287          # 1437 training images -> 1150 train / 287 val
  cfg.train.num_epochs = 15
  cfg.train.eval_batch_size = 500
  cfg.early_stopping.patience = 5
  return cfg
