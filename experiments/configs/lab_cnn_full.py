"""The lab on a CNN at the chapter's scale: all of MNIST, up to 50 epochs, for an accelerator.

Run:
  python -m experiments.lab_cnn --config=experiments/configs/lab_cnn_full.py \
      --workdir=checkpoints/lab_cnn_full --config.data.data_dir=/path/to/mnist-idx

The networks of experiments/configs/lab_cnn.py (the CNN of three stages of two 3x3 convs, 16-32-64
channels, and the 784-512-256-10 MLP) and the ablation's rows 1-8, with the ablation study's
budget instead of the CPU's: all 55,000 training images (5,000 validation), batch 128, Adam 1e-3,
up to 50 epochs with early stopping on val/accuracy (patience 10, best weights tested), 5 seeds
(vmapped on a GPU: seed_mode "auto"). Its MLP table is then the ablation study's own setup
(README "The ablation study on MNIST") with two more seeds. XLA's own convolution and BatchNorm
gradients (the CPU lowerings of lab_cnn.py are not needed off XLA:CPU).

Not measured: no accelerator on this machine (the CNN's epoch is ~44 s here, mnist_cnn.py: 8 rows x
5 seeds x up to 50 epochs would take days).
"""

from experiments.configs import lab_cnn, mnist_mlp
from ml_practical import config


def get_config():
    base = mnist_mlp.get_config()
    with base.unlocked():
        base.model = config.defaults("cnn").model
    cfg = lab_cnn.study_config(base)
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
    cfg.model.widths = (16, 32, 64)
    cfg.model.convs_per_stage = 2
    cfg.model.pool = "max"
    cfg.train.num_epochs = 50
    cfg.train.batch_size = 128
    cfg.seeds = 5
    return cfg
