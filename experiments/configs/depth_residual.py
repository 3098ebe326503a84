"""Depth and residual connections on MNIST (the chapter's ★R1: Fixup against He + BN), CPU size.

Run:
  python -m experiments.depth_residual --config=experiments/configs/depth_residual.py \
      --workdir=checkpoints/depth_residual --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)
  Some rows: --config.rows=he_bn,fixup    Every row at 110 too: --config.depths=8,20,56,110

The rows (experiments/depth_residual/rows.py): CIFAR ResNets (depth 6n+2) with He + BN, zero-γ,
Fixup, SkipInit and He without a norm, and the plain CNN of the same convs without shortcuts,
with and without BN. What the CPU allows, chosen from measured step times:
  * every row at depths 8, 20 and 56; He + BN, Fixup and He without a norm also at 110
    (`deep_rows`, `deep_depths`): 24 cells x 3 seeds = 72 runs;
  * width x0.5 (stage widths 8-16-32, shortcut A), MNIST average-pooled to 14 x 14
    (`downsample`), 4096 training images (a seeded subset), 2500 validation, a seeded 5000 of
    the 10000 test images;
  * 2 epochs of SGD + momentum 0.9, lr 0.05, cosine decay without warmup, coupled L2 5e-4 on the
    kernels, batch 32 (256 steps), 3 paired seeds; no augmentation; the last state tested;
  * XLA's own conv gradients, each compiled chunk 4 unrolled steps (data.chunk_steps): on these
    narrow layers the batch-chunked kernel gradient buys nothing and compiles 16 convs per
    kernel, which made a ResNet-110 step take minutes to compile.
What this does not cover: ResNet-50 itself (a bottleneck ImageNet network; 56 and 110 are the
CIFAR depths of that size), full width, CIFAR-10, and convergence (2 epochs). He et al. (2016,
section 4.2) warm ResNet-110 up at lr 0.01 because 0.1 failed to start; no warmup here, on
purpose: it is the stress the chapter's claim is about. The paper-scale command is
experiments/configs/depth_residual_full.py.

Measured: README.md ("Depth and residuals, ★R1") gives the wall time and the tables.
"""

from experiments.depth_residual.main import DepthResidualStudy
from ml_practical import config


def get_config():
    cfg = config.defaults("resnet", study=DepthResidualStudy)
    cfg.data.source = "idx"
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
    cfg.data.limit_train = 4096        # 128 steps an epoch: 32 whole chunks of 4
    cfg.data.val_size = 2500          # one evaluation batch
    # XLA:CPU runs a convolution inside a while loop ~25x slower: the training set on the
    # device, each compiled call 4 unrolled steps (a chunk of 1 step is a 1-trip loop, as slow).
    cfg.data.placement = "device"
    cfg.data.chunk_steps = 4
    cfg.train.unroll = True

    cfg.model.variant = "cifar"
    cfg.model.depth = 20             # each cell sets its own
    cfg.model.width_multiplier = 0.5   # stage widths 8-16-32
    cfg.model.shortcut = "A"
    cfg.model.hidden_init = "he_normal"
    cfg.model.conv_backward = "xla"
    cfg.model.bn_backward = "manual"

    # The CIFAR ResNet recipe (cifar10_resnet20.py) without its augmentation (flips are wrong
    # for digits), over a short budget.
    cfg.optim.name = "momentum"
    cfg.optim.momentum = 0.9
    cfg.optim.learning_rate = 0.05   # at batch 32; see the docstring
    cfg.optim.l2 = 5e-4              # coupled, on the kernels
    cfg.optim.schedule = "warmup_cosine"
    cfg.optim.warmup_steps = 0

    cfg.train.num_epochs = 2
    cfg.train.batch_size = 32        # more steps for the same images (see the docstring)
    cfg.train.eval_batch_size = 2500  # val: 1 batch, test: 2 (each an unrolled forward)
    # Every run trains its budget and the last state is tested; non-finite steps (the no-norm
    # rows) are skipped inline and counted, 20 in a row stop the run ("non_finite").
    cfg.early_stopping.enabled = False
    cfg.early_stopping.monitor = "val/accuracy"
    cfg.early_stopping.mode = "max"
    cfg.early_stopping.patience = 1
    cfg.train.guard = "inline"
    cfg.train.max_consecutive_skips = 20
    cfg.checkpoint.every = 0         # only the last epoch: a save costs more than a short epoch

    cfg.rows = ""                    # every row of rows.ROWS at `depths`
    cfg.depths = "8,20,56"
    cfg.deep_rows = "he_bn,fixup,he_nonorm"
    cfg.deep_depths = "110"
    cfg.seeds = 3                    # seeds `seed` .. `seed + seeds - 1`, paired across cells
    cfg.grad_batch = 256             # the gradient probe's fixed batch: the first training images
    cfg.downsample = 2               # 28 x 28 -> 14 x 14 (average pool), standardized again
    cfg.test_size = 5000             # a seeded subset of the test split (0 = all 10000)
    return cfg
