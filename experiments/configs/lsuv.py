"""Xavier vs He vs LSUV on a deep plain MLP on MNIST (chapter 12.1.6; Mishkin & Matas 2016).

A 784-(256 x 20)-10 ReLU MLP without normalization or dropout, trained with SGD + momentum for a
few epochs from each initialization. Per-layer output variance at init (table + figure) and the
training loss after 1 and `train.num_epochs` epochs (table).

Run:
  python -m experiments.lsuv --config=experiments/configs/lsuv.py \
      --workdir=checkpoints/lsuv --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)

Expected: see the README's LSUV section (measured, with its command and wall time).

Study-level fields: `inits` (comma-separated; "lsuv" or any `initializers.names()` entry for the
hidden layers), `seeds` (runs seeds 0 .. seeds-1) and `lsuv` (its batch and tolerances). Every
other field is the base training config shared by all rows. Rows named after an initializer use it
for the hidden layers and Xavier for the output layer (the chapter's recipe); the "lsuv" row
re-draws every kernel, head included, orthogonally and rescales it (the paper's algorithm).
"""

from experiments.configs import mnist_mlp
from experiments.lsuv.main import LSUVStudy
from ml_practical import config

def get_config():
    cfg = config.with_study(mnist_mlp.get_config(), LSUVStudy)
    cfg.inits = "xavier_normal,he_normal,lsuv"
    cfg.seeds = 1                    # seeds 0 .. seeds-1; the tables give the mean (and std if > 1)
    cfg.measure_batch_size = 1000    # validation images on which the per-layer variances are taken
    cfg.lsuv.batch_size = 512        # training images LSUV fits on (a seeded draw)
    cfg.lsuv.target_var = 1.0
    cfg.lsuv.tol = 0.1               # the paper's Tol_var
    cfg.lsuv.max_iter = 10           # the paper's T_max

    cfg.model.widths = (256,) * 20
    cfg.model.norm = "none"
    cfg.model.drop_rate = 0.0
    cfg.model.hidden_init = "he_normal"   # replaced per row

    # Plain SGD + momentum: no per-parameter step normalization (as Adam has) to hide a badly
    # scaled initialization.
    cfg.optim.name = "momentum"
    cfg.optim.learning_rate = 0.01
    cfg.optim.clip = "none"
    cfg.optim.l2 = 0.0

    # Every row trains its whole budget: no early stopping, no stop on skipped steps.
    cfg.early_stopping.enabled = False
    cfg.train.max_consecutive_skips = 0
    cfg.train.num_epochs = 5
    cfg.train.label_smoothing = 0.0
    return cfg
