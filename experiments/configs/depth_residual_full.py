"""Depth and residual connections at paper scale: CIFAR-10, full-width CIFAR ResNets (★R1).

Run (an accelerator; not run here, this machine has no CIFAR-10 and no GPU):
  python -m experiments.depth_residual --config=experiments/configs/depth_residual_full.py \
      --workdir=checkpoints/depth_residual_full \
      --config.data.data_dir=/path/to/cifar-10-batches-bin

Every row of experiments/depth_residual/rows.py (ResNet He + BN, zero-γ, Fixup, SkipInit, He
without a norm; the plain CNN with and without BN) at depths 20, 56 and 110, 3 paired seeds, with
cifar10_resnet20.py's recipe: width x1 (16-32-64), SGD + momentum 0.9, lr 0.1 with a cosine decay
over 200 epochs and no warmup (He et al. warm ResNet-110 up at lr 0.01 for ~400 steps; Fixup's
paper does not: add --config.optim.warmup_steps=400 to test that), coupled L2 5e-4 on the
kernels, batch 128, flips and 4-pixel crops, per-channel normalization, 45000 / 5000 / 10000
images. The last state is tested (early stopping off); runs checkpoint every 5 epochs and resume.

Cost: 63 runs of 200 epochs (7 rows x 3 depths x 3 seeds). Not measured; at an assumed
5 / 13 / 25 s an epoch for depth 20 / 56 / 110 on one modern GPU that is about 50 GPU-hours
(--config.train.num_epochs=30 for a first look, about 8). The ImageNet bottleneck ResNet-50 of the
chapter's R1 is `model.variant="imagenet"`, `model.depth=50` in the library, but its 7x7/2 stem
and max pool are for 224 x 224 images and its depth is not 6n+2, so the study's grid does not
include it; ResNet-56 is the CIFAR network of that depth.
"""

from experiments.configs import cifar10_resnet20, depth_residual


def get_config():
    cfg = depth_residual.get_config()
    recipe = cifar10_resnet20.get_config()
    with cfg.unlocked():
        cfg.data = recipe.data
        cfg.optim = recipe.optim
    cfg.data.placement = "auto"
    cfg.data.chunk_steps = 32        # the default (train.unroll is off)
    cfg.train.unroll = False         # an accelerator runs the epoch's scan as it is
    cfg.model.width_multiplier = 1.0
    cfg.model.conv_backward = "xla"
    cfg.model.bn_backward = "autodiff"

    cfg.train.num_epochs = recipe.train.num_epochs
    cfg.train.batch_size = recipe.train.batch_size
    cfg.train.eval_batch_size = 1000
    cfg.train.augment = recipe.train.augment
    cfg.checkpoint.every = 5

    cfg.rows = ""                    # every row
    cfg.depths = "20,56,110"
    cfg.deep_rows = ""
    cfg.deep_depths = ""
    cfg.seeds = 3
    cfg.downsample = 1               # 32 x 32
    cfg.test_size = 0                # the whole test split
    return cfg
