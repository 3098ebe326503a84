"""The recipe "no weight decay on BatchNorm's gamma / beta or on biases" (chapter 12.2, the usual
ImageNet practice of Goyal et al. 2017 and timm's `no_weight_decay`), as parameter-group rules.

Run:
    python -m experiments.train --config=experiments/configs/recipe_no_decay_norm_bias.py \
        --workdir=checkpoints/recipe_no_decay_norm_bias --config.data.data_dir=../shared/data/mnist

The MNIST CNN of mnist_cnn.py with decoupled weight decay 5e-4 on every leaf (decay_mask="all")
except those the rules exclude: `norm_*` (BatchNorm's scale and bias) and every `*/bias`. The run
writes param_groups.json (per leaf: decay multiplier, lr multiplier, frozen, clipped) and a
summary line. This is the library's default mask ("kernels") written out: the two train the
same, bit for bit (tests/test_param_groups.py).
"""

from experiments.configs import mnist_cnn


def get_config():
    cfg = mnist_cnn.get_config()
    cfg.optim.weight_decay = 5e-4
    cfg.optim.decay_mask = "all"
    cfg.optim.wd_mults = ("norm_.*=0", ".*/bias=0")
    return cfg
