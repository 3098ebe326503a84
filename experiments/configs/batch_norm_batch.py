"""Batch size and normalization on MNIST (chapter 12.5.1, the 12.5.3 table, §18 myth 6, the
interview focus "GN for small-batch CV"; ledger BN-16, BN-11).

Run:
  python -m experiments.batch_norm_batch --config=experiments/configs/batch_norm_batch.py \
      --workdir=checkpoints/batch_norm_batch --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)
  One part: --config.parts=grid      Some norms: --config.norms=batch,layer

What runs (experiments/batch_norm_batch/grid.py): BN, GN (G = 2 and 4), LN over (C, H, W), IN and
no norm at gradient batch 2, 4, ..., 256 (48 cells); BatchNorm with ghost batches of 2 ... 32 at
gradient batch 128 (the BN batch alone), with ghost batches of 8 at gradient batch 16 ... 256 (the
gradient batch alone), and gradient batch 128 as 16 accumulated micro-batches of 8 (the device
batch alone): 58 cells x 5 paired seeds = 290 runs.

Choices, and why:
  * Data: a seeded 4,096-image subset of the MNIST training split (the 1,000 validation images
    carved first), the full 10,000-image test set. 4,096 = 2^12, so every batch 2 ... 256 divides
    it (no partial batch, every epoch the same steps) and so does the 4-step compiled chunk.
  * Model: the CNN family, 3 stages of one 3x3 conv (8, 16, 32 channels; 28 -> 14 -> 7 pixels,
    max pools), the norm before the ReLU, global average pool, Dense(10); He init; no conv bias
    before BatchNorm. Narrow so that 174 runs fit the CPU; a norm's statistics still cover H, W
    (BN: N x H x W values per channel, 2 x 28 x 28 = 1,568 at batch 2 in the first layer).
  * Optimizer: Adam, lr 1e-2 at gradient batch 128 scaled by sqrt(batch / 128) (the ledger's
    rule; the square-root rule for Adam of Malladi et al. 2022): 1.25e-3 at batch 2, 1.41e-2 at
    256. 1e-2 was the better of {3e-3, 1e-2} at batch 128 for BN, LN and no norm in a 3-epoch
    pilot (3 seeds each). Constant schedule; no augmentation, dropout, L2 or label smoothing;
    the BatchNorm momentum 0.9 (flax convention: the weight on the old statistics).
  * Budget: 3 epochs at every batch (the same examples seen): 6,144 steps at batch 2, 48 at
    batch 256. So the large batches are trained less far; the LayerNorm control and the ghost
    cells at a fixed gradient batch separate that from the BN batch.
  * Speed on XLA:CPU: each compiled call is 4 unrolled steps (train.unroll, data.chunk_steps=4;
    convolutions inside a while loop run ~25x slower), the data streamed from the host,
    XLA's own convolution gradients (their compilation is cheaper than model.conv_backward's
    "chunked", at the same speed for these widths), BatchNorm's hand-written backward.

Measured (2026-12-02): seeds 0-2 took 31 min of training (summed over the runs' summaries) while other jobs held
the 2-core CPU at load 14-20; seeds 3-4 took 335 s (360 s user CPU, 70 s system) beside niced test runs, so the 5-seed
study is an estimated 14 min on an idle machine (not measured in one piece). README.md ("Batch
size and normalization") has the tables and the verdicts.
"""

from experiments.batch_norm_batch.main import BatchNormBatchStudy
from experiments.configs import mnist_cnn
from ml_practical import config


def study_config(cfg):
    """The study's fields and its training setup on top of a CNN config (shared with _full)."""
    cfg = config.with_study(cfg, BatchNormBatchStudy)
    cfg.seeds = 5
    cfg.parts = "grid,ghost,accum"
    cfg.norms = ""                   # every norm of grid.NORMS
    cfg.batches = (2, 4, 8, 16, 32, 64, 128, 256)
    cfg.lr_rule = "sqrt"
    cfg.lr_reference_batch = 128
    cfg.ghost_grad_batch = 128
    cfg.ghost_sizes = (2, 4, 8, 16, 32)
    cfg.fixed_bn_batch = 8
    cfg.accum_batches = (128,)
    cfg.measure_rows = 2048          # training images for each BN layer's input statistics
    cfg.seed_mode = "auto"           # sequential on CPU (vmapped convs are slower there)

    cfg.model.norm = "batch"         # each cell sets its own
    cfg.model.layer_norm_axes = "all"
    cfg.model.ghost_batch_size = 0
    cfg.optim.name = "adam"
    cfg.optim.learning_rate = 1e-2   # at lr_reference_batch; each cell scales it
    cfg.optim.schedule = "constant"
    cfg.optim.warmup_steps = 0
    cfg.optim.clip = "none"
    cfg.optim.l2 = 0.0
    cfg.train.augment = "none"
    cfg.train.label_smoothing = 0.0
    # Every cell trains its whole budget and its last state is measured.
    cfg.early_stopping.enabled = False
    cfg.early_stopping.monitor = "val/accuracy"   # required fields; not used while disabled
    cfg.early_stopping.mode = "max"
    cfg.early_stopping.patience = 1
    cfg.train.max_consecutive_skips = 0
    cfg.checkpoint.every = 0         # one checkpoint, at the end (resume, reuse)
    cfg.train.progress = "never"
    return cfg


def get_config():
    cfg = study_config(mnist_cnn.get_config())
    cfg.data.limit_train = 4096
    cfg.data.val_size = 1000
    cfg.data.placement = "host"
    cfg.data.chunk_steps = 4
    cfg.train.unroll = True
    cfg.train.eval_batch_size = 2000
    cfg.model.widths = (8, 16, 32)
    cfg.model.convs_per_stage = 1
    cfg.model.pool = "max"
    cfg.model.conv_backward = "xla"
    cfg.model.bn_backward = "manual"
    cfg.train.num_epochs = 3
    return cfg
