"""ResNet-20 on CIFAR-10, the standard recipe (He et al. 2016, section 4.2): SGD with momentum
0.9, learning rate 0.1, batch 128, weight decay 5e-4 on the kernels (coupled, torch's
`weight_decay`), random crop with 4-pixel zero padding and horizontal flips, per-channel
normalization, 200 epochs with a cosine decay. The paper reports 8.75 % test error (91.25 %).

Run (an accelerator: a flax ResNet-20 step was measured at ~80 images/s on a 2-core CPU,
about 10 minutes an epoch):
    python -m experiments.train --config=experiments/configs/cifar10_resnet20.py \
        --workdir=checkpoints/cifar10_resnet20 --config.data.data_dir=/path/to/cifar-10-batches-bin

data_dir holds the *binary* version's files (data_batch_1..5.bin, test_batch.bin), or is the
official cifar-10-binary.tar.gz itself; TFDS users: --config.data.source=tfds
--config.data.tfds_name=cifar10 where it is prepared. Not measured here: this machine has no copy
of CIFAR-10 and no GPU.
"""

from ml_practical import config


def get_config():
    cfg = config.defaults("resnet")
    cfg.data.source = "cifar10"
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
    cfg.data.val_size = 5000
    cfg.data.normalize = "per_channel"

    cfg.model.variant = "cifar"
    cfg.model.depth = 20
    cfg.model.shortcut = "A"
    cfg.model.norm = "batch"
    cfg.model.hidden_init = "he_normal"

    cfg.optim.name = "momentum"
    cfg.optim.momentum = 0.9
    cfg.optim.learning_rate = 0.1
    cfg.optim.l2 = 5e-4              # on kernels only (optim.decay_mask = "kernels")
    cfg.optim.schedule = "warmup_cosine"
    cfg.optim.warmup_steps = 0

    cfg.train.num_epochs = 200
    cfg.train.batch_size = 128
    cfg.train.eval_batch_size = 1000
    cfg.train.augment = "flip_crop"  # RandomHorizontalFlip + RandomCrop(32, padding=4), zero pad

    cfg.early_stopping.enabled = False  # the recipe trains its 200 epochs; the last is tested
    cfg.early_stopping.monitor = "val/accuracy"
    cfg.early_stopping.mode = "max"
    cfg.checkpoint.every = 5
    return cfg
