"""Xavier vs He vs LSUV on a deep plain MLP on MNIST (chapter 12.1.6; Mishkin & Matas 2016).

A 784-(256 x 20)-10 MLP without normalization or dropout, with ReLU and with tanh, trained with
SGD + momentum for `train.num_epochs` epochs from each initialization, 3 seeds (paired: the same
batch order and init key in every row). Per-layer output variance at init (table + figure), the
training loss after 1 and `train.num_epochs` epochs, and per activation LSUV against Xavier and He
on test accuracy and on the distance from unit variance at init: paired differences with 95 % CIs
(paired t, bootstrap), Holm-adjusted p-values and the smallest detectable effect.

Budget: 2 epochs (the chapter's proxy in the claims ledger is 5) so that 2 activations x 3 inits
x 3 seeds = 18 runs stay near 5 minutes on a 2-core CPU; --config.train.num_epochs=5 for the longer
run (about 2.5x the time).

Run:
  python -m experiments.lsuv --config=experiments/configs/lsuv.py \
      --workdir=checkpoints/lsuv --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)

Expected: the README's LSUV section. Wall time of this default (18 runs): 541 s measured on the
shared 2-core CPU at load average ~10 (other jobs running); a 6-run slice on the quiet machine
took 40 s, i.e. about 4 minutes alone.

Study-level fields: `inits` (comma-separated; "lsuv" or any `initializers.names()` entry for the
hidden layers), `activations` (comma-separated `models.ACTIVATIONS` names), `seeds` (runs seeds
0 .. seeds-1) and `lsuv` (its batch and tolerances). Every
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
    cfg.activations = "relu,tanh"    # every row runs with each hidden activation
    cfg.seeds = 3                    # seeds 0 .. seeds-1, paired across rows (batch order, init key)
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
    cfg.train.num_epochs = 2         # see the budget in the docstring
    cfg.train.label_smoothing = 0.0
    return cfg
