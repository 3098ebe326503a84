"""Batch size and normalization at paper scale: CIFAR-10, ResNet-20, the same cells (accelerator).

Run:
  python -m experiments.batch_norm_batch --config=experiments/configs/batch_norm_batch_full.py \
      --workdir=checkpoints/batch_norm_batch_full --config.data.data_dir=/path/to/cifar-10-batches-bin

Not run here. The same grid as batch_norm_batch.py (experiments/batch_norm_batch/grid.py: six
norms x gradient batch 2 ... 256, BatchNorm's ghost cells at gradient batch 128 and at BN batch
8, accumulation at 128: 58 cells) on `models.ResNet` depth 20 (widths 16-32-64, standard residuals,
the norm in every block), on the 50,000 CIFAR-10 training images (5,000 held out for
validation) with the standard flip-and-crop augmentation, 30 epochs at every batch, SGD with
heavy-ball momentum 0.9, lr 0.1 at batch 128 scaled linearly (Goyal et al. 2017's rule for
SGD) and decayed by a cosine (no warmup: its length in steps would differ per cell), decoupled
weight decay 5e-4 on kernels. Wu & He
(2018, Fig. 1) report BN's ImageNet error rising steeply below a per-device batch of 8-16 while
GN's stays flat: the design tests that on CIFAR-10. 58 cells x 3 seeds; seed_mode "auto" vmaps
a cell's seeds on a GPU. On the 2-core CPU one epoch of ResNet-20 takes minutes: use
batch_norm_batch.py there.
"""

from experiments.configs import batch_norm_batch
from ml_practical import config


def get_config():
    base = config.defaults("resnet")
    base.data.source = "cifar10"
    base.data.data_dir = ""
    cfg = batch_norm_batch.study_config(base)
    cfg.data.val_size = 5000
    cfg.data.normalize = "per_channel"
    cfg.data.placement = "auto"
    cfg.model.depth = 20
    cfg.model.hidden_init = "he_normal"
    cfg.train.augment = "flip_crop"
    cfg.train.num_epochs = 30
    cfg.train.eval_batch_size = 1000
    cfg.optim.name = "momentum"
    cfg.optim.momentum = 0.9
    cfg.optim.learning_rate = 0.1    # at batch 128
    cfg.optim.schedule = "warmup_cosine"
    cfg.optim.weight_decay = 5e-4
    cfg.lr_rule = "linear"
    cfg.checkpoint.every = 5
    return cfg
