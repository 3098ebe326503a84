"""A CPU-size CNN on MNIST: conv 32 -> conv 32 -> pool -> conv 64 -> conv 64 -> global average
pool -> Dense, 3x3 convs with BatchNorm before the ReLU (no conv bias), He init, Adam 1e-3 with a
cosine decay, batch 128, 2-pixel random shifts.

Run:
    python -m experiments.train --config=experiments/configs/mnist_cnn.py \
        --workdir=checkpoints/mnist_cnn --config.data.data_dir=../shared/data/mnist

Measured: see the README's model-families section (test accuracy and wall time on the 2-core CPU,
with this command).
"""

from ml_practical import config


def get_config():
    cfg = config.defaults("cnn")
    cfg.data.source = "idx"
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR

    cfg.model.widths = (32, 64)
    cfg.model.convs_per_stage = 2
    cfg.model.pool = "max"
    cfg.model.norm = "batch"         # before the activation; the conv before it has no bias
    cfg.model.hidden_init = "he_normal"

    cfg.optim.name = "adam"
    cfg.optim.learning_rate = 1e-3
    cfg.optim.schedule = "warmup_cosine"
    cfg.optim.warmup_steps = 200

    cfg.train.num_epochs = 6
    cfg.train.batch_size = 128
    cfg.train.augment = "shift"      # 2-pixel shifts, filled with the background

    cfg.early_stopping.monitor = "val/accuracy"
    cfg.early_stopping.mode = "max"
    cfg.early_stopping.patience = 3
    return cfg
