"""The BN-placement study at paper scale, for an accelerator: CIFAR-10, a 6-conv CNN, 10 seeds.

Run:
  python -m experiments.bn_placement --config=experiments/configs/bn_placement_full.py \
      --workdir=checkpoints/bn_placement_full --config.data.data_dir=/path/to/cifar-10-batches-bin

Not run here (no accelerator and no CIFAR-10 on this machine). What it runs: the study's five rows
(experiments/bn_placement/rows.py) on

- CNN arm: `models.CNN` of three stages of two 3x3 convs (64, 128, 256 channels; 32 -> 16 -> 8,
  max pools between), global average pool, Dense; He init, Xavier head;
- MLP arm: a 3072-512-256-10 ReLU MLP on the same images (CIFAR-10 is hard for an MLP; the
  ledger's BN-14 is stated on MNIST, which the default config's MLP arm measures);
- the full CIFAR-10 training set less a 5,000-image validation split, per-channel normalization,
  random crops and flips; SGD with momentum 0.9, lr 0.05, cosine decay, 30 epochs, batch 128,
  coupled L2 5e-4 on the kernels (option A's bias, which L2 does not reach, moves only under
  the optimizer);
- 10 paired seeds per row and arm, trained as one vmapped program per row on a GPU
  (seed_mode "auto"; the training set on the device): 100 runs.
"""

from experiments.configs import bn_placement
from ml_practical import config


def get_config():
    cfg = bn_placement.study_config(config.defaults("cnn"))
    cfg.data.source = "cifar10"
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
    cfg.data.val_size = 5000
    cfg.data.normalize = "per_channel"
    cfg.data.placement = "device"
    cfg.model.widths = (64, 128, 256)
    cfg.model.convs_per_stage = 2
    cfg.model.pool = "max"
    cfg.model.hidden_init = "he_normal"
    cfg.optim.name = "momentum"
    cfg.optim.momentum = 0.9
    cfg.optim.learning_rate = 0.05
    cfg.optim.l2 = 5e-4
    cfg.optim.warmup_steps = 200
    cfg.train.num_epochs = 30
    cfg.train.batch_size = 128
    cfg.train.eval_batch_size = 1000
    cfg.train.augment = "flip_crop"
    cfg.early_stopping.monitor = "val/accuracy"
    cfg.early_stopping.mode = "max"
    cfg.early_stopping.patience = 30
    cfg.cnn_seeds = 10
    cfg.mlp_seeds = 10
    cfg.mlp_widths = (512, 256)
    return cfg
