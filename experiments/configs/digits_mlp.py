"""The production recipe on the embedded 8x8 digits (scikit-learn; no download, runs offline).

Run:
  python -m experiments.train --config=experiments/configs/digits_mlp.py --workdir=checkpoints/digits_mlp
"""

from experiments.configs import mnist_mlp

def get_config():
    cfg = mnist_mlp.get_config()
    cfg.data.source = "digits"
    cfg.data.val_size = 287          # 1437 training images -> 1150 train / 287 val
    cfg.train.num_epochs = 30
    cfg.train.batch_size = 64
    cfg.train.eval_batch_size = 500
    return cfg
