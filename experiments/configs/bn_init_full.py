"""The BatchNorm x initialization study at CIFAR-10 scale, for an accelerator (not run here).

Run:
  python -m experiments.bn_init --config=experiments/configs/bn_init_full.py \
      --workdir=checkpoints/bn_init_full --config.data.data_dir=/path/to/cifar-10-batches-bin

The same grid as bn_init.py (small random / Xavier / He / LSUV x BatchNorm / none x SGD +
momentum / Adam, one lr per optimizer) on CIFAR-10 (45,000 train / 5,000 val / 10,000 test,
per-channel normalization, no augmentation so the training loss is the clean target), with a
deeper and wider plain CNN: 8 3x3 convs (32-64-128-256 channels, two per stage, 2x2 max pools
between: 32 -> 16 -> 8 -> 4 pixels), global average pool, Xavier head; batch 128, 20 epochs
(7,020 steps per run), 5 seeds per cell, vmapped (80 runs). Targets: running-mean training loss
1.0 and the ledger's 97 % training accuracy (a plain CNN without augmentation fits CIFAR-10's
training set within this budget); censored at the budget. XLA's own convolution and BatchNorm
gradients, the scans not unrolled (the CPU workarounds of bn_init.py are not needed on a GPU).
Not measured: this machine has no copy of CIFAR-10 and no accelerator.
"""

from experiments.configs import bn_init


def get_config():
    cfg = bn_init.get_config()
    cfg.data.source = "cifar10"
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
    cfg.data.limit_train = 0
    cfg.data.val_size = 5000
    cfg.data.normalize = "per_channel"
    cfg.data.placement = "device"
    cfg.train.unroll = False
    cfg.model.conv_backward = "xla"
    cfg.model.bn_backward = "autodiff"
    cfg.model.widths = (32, 64, 128, 256)
    cfg.model.convs_per_stage = 2
    cfg.train.batch_size = 128
    cfg.train.num_epochs = 20
    cfg.seeds = 5
    cfg.target_loss = 1.0
    cfg.target_accuracy = 0.97
    return cfg
