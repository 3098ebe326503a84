"""The chapter's production recipe on MNIST: 784-512-256-10, He init, BatchNorm, dropout 0.2,
L2 1e-4, label smoothing 0.1, Adam 1e-3, global-norm clipping 1.0, batch 128 (section 15.4).

Run:
    python -m experiments.train --config=experiments/configs/mnist_mlp.py \
        --workdir=checkpoints/mnist_mlp --config.data.data_dir=../shared/data/mnist
    (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)

Expected: see the README's results line (measured, with its command).

Only what the recipe sets is written here; every other field keeps the default of its section
(`ml_practical/config.py` documents every field, its default and what it allows; the model's are
`ml_practical/models/mlp.py`'s). Any field can be overridden on the command line.
"""

from ml_practical import config


def get_config():
    cfg = config.defaults("mlp")
    cfg.data.source = "idx"          # MNIST-format files; "digits" is the embedded, offline set
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR

    cfg.model.widths = (512, 256)
    cfg.model.norm = "batch"         # before the activation (chapter option A)
    cfg.model.drop_rate = 0.2        # drop probability (keep prob 0.8)
    cfg.model.hidden_init = "he_normal"
    cfg.model.output_init = "xavier_normal"

    cfg.optim.name = "adam"
    cfg.optim.learning_rate = 1e-3
    cfg.optim.clip = "global_norm"   # tau = clip_value = 1.0
    cfg.optim.l2 = 1e-4              # coupled L2, added to the gradient (torch's weight_decay)
    cfg.optim.l1_mode = "proximal"   # if l1 > 0: exact zeros (ISTA), not the subgradient

    cfg.train.num_epochs = 20
    cfg.train.batch_size = 128
    cfg.train.label_smoothing = 0.1

    cfg.early_stopping.monitor = "val/loss"
    cfg.early_stopping.mode = "min"
    cfg.early_stopping.patience = 10
    return cfg
