"""BatchNorm and the learning rate at the ledger's scale, for an accelerator (not run here).

Run (a GPU/TPU: the seeds of each (arch, norm, rate) train as one vmapped program):
  python -m experiments.bn_lr --config=experiments/configs/bn_lr_full.py \
      --workdir=checkpoints/bn_lr_full --config.data.data_dir=/path/to/mnist-idx
  CIFAR-10 instead (binary version): --config.data.source=cifar10 \
      --config.data.data_dir=/path/to/cifar-10-batches-bin --config.data.normalize=per_channel \
      --config.threshold=0.6 --config.train.num_epochs=30

The ledger's protocol for BN-10 (experiments/audit/claims.md: "SGD, lr grid in x sqrt(10) steps
from 1e-3 to 10, 3 epochs. Pass if the largest lr reaching >= 95 % test with BN is >= 10x the
largest without") on the whole MNIST training set (55,000 images after 5,000 for validation) at
batch 128 for 3 epochs (1,290 steps), with its 95 % threshold, on networks of the usual width: the
plain CNN of experiments/configs/bn_lr.py at 32-64-128-256 channels and two convs per stage
(8 convs), and the CIFAR ResNet-20 at width 1 (16-32-64). 5 paired seeds; 9 rates x 2 norms x 2
architectures = 36 vmapped groups. Not measured: this machine has no accelerator. On the 2-core
CPU one group of the ResNet-20 would take about an hour.
"""

from experiments.configs import bn_lr, mnist_cnn


def get_config():
    cfg = bn_lr.study_config(mnist_cnn.get_config())
    cfg.data.limit_train = 0
    cfg.data.val_size = 5000
    cfg.data.placement = "device"
    cfg.train.unroll = False
    cfg.model.widths = (32, 64, 128, 256)
    cfg.model.convs_per_stage = 2
    cfg.model.conv_backward = "xla"
    cfg.model.bn_backward = "autodiff"
    cfg.train.batch_size = 128
    cfg.train.num_epochs = 3
    cfg.train.eval_batch_size = 1000
    cfg.seeds = 5
    cfg.seed_mode = "auto"
    cfg.archs = "cnn,resnet"
    cfg.resnet_depth = 20
    cfg.resnet_width_multiplier = 1.0
    cfg.threshold = 0.95
    return cfg
