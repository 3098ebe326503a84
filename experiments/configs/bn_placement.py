"""BatchNorm before or after the ReLU, and the bias before BN, on MNIST (chapter 12.4.5).

Run:
  python -m experiments.bn_placement --config=experiments/configs/bn_placement.py \
      --workdir=checkpoints/bn_placement --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)
  One arm: --config.cnn_seeds=0     Two rows: --config.only=bn_before,bn_before_bias

Measured (2-core CPU, 2026-12-02): 50 runs in 31 min 54 s of wall time from an empty
compilation cache, while other jobs kept the load average at 12 (6-16): the process got 41 % of
a core, 797 s of CPU time. On an idle machine that is about 8-10 minutes: an idle pilot of the
same CNN compiled a row in 21 s and trained an epoch in 1.8 s. A second run into a fresh workdir
reproduced every accuracy bit for bit. Rerunning on a finished workdir only reads the runs back
and rewrites the reports (15-40 s). Test accuracy, mean [95 % CI] over 5 seeds:
  CNN: A 96.22 [96.02, 96.42] %, A + bias 96.27, B 97.39 [97.14, 97.64], B without bias 97.39,
       no norm 94.43 [93.35, 95.52].
  MLP: A 96.74 [96.63, 96.85] %, A + bias 96.72, B 96.60 [96.49, 96.71], B without bias 96.55,
       no norm 96.55.
Paired differences:
  BN-13, A + bias - A: CNN +0.05 [-0.02, +0.11] pp and MLP -0.02 [-0.13, +0.08] pp. Both are
    inconclusive at the 0.1 pt margin (about 6 and 8 seeds would settle them).
  BN-14, B - A: MLP -0.14 [-0.23, -0.05] pp, confirmed at 0.3 pt. CNN +1.17 [+0.87, +1.46] pp,
    refuted at 0.3 pt (Holm p = 0.004).

Choices, stated because the differences are differences at this budget:
- data: 2,000 validation images carved from the 60,000 MNIST training images (logged only: no
  early stopping), then a seeded 10,000-image subset of the rest for training
  (`data.limit_train`), and the full 10,000-image test set; no augmentation, label smoothing,
  L2 or dropout (only the placement varies);
- CNN arm: `models.CNN` of three stages of one 3x3 conv each (16, 32, 64 channels; 28 -> 14 -> 7,
  max pools between), global average pool, Dense; He init, Xavier head;
- MLP arm: the chapter's 784-512-256-10 ReLU MLP on the same images, optimizer and budget;
- Adam lr 3e-3 with 50 warmup steps then a cosine decay to 0 over 6 epochs (468 steps) at batch
  128: the cosine's end lowers the seed-to-seed spread of the final accuracy, which the paired
  differences inherit; every run trains its whole budget and the last state is tested;
- 5 paired seeds per row and arm (seed s: the same init key, hence the same kernels in
  bn_before and bn_before_bias, and the same batch order in every row);
- CPU speed: the CNN streams chunks of 8 steps from the host and compiles each unrolled
  (XLA:CPU runs convolutions in a while loop ~25x slower), with batch-chunked conv kernel
  gradients and BatchNorm's hand-written backward (experiments/configs/mnist_cnn.py).
"""

from experiments.bn_placement.main import BNPlacementStudy
from experiments.configs import mnist_cnn
from ml_practical import config


def get_config():
    cfg = study_config(mnist_cnn.get_config())
    cfg.data.limit_train = 10_000
    cfg.data.val_size = 2000
    cfg.model.widths = (16, 32, 64)
    cfg.model.convs_per_stage = 1
    cfg.optim.learning_rate = 3e-3
    cfg.optim.warmup_steps = 50
    cfg.train.num_epochs = 6
    cfg.cnn_seeds = 5
    cfg.mlp_seeds = 5
    cfg.mlp_widths = (512, 256)
    return cfg


def study_config(base):
    """The study's fields and its fixed-budget protocol over a CNN training config `base`."""
    cfg = config.with_study(base, BNPlacementStudy)
    cfg.only = ""                    # every row of experiments/bn_placement/rows.py
    cfg.seed_mode = "auto"           # vmap on GPU/TPU, sequential on CPU
    cfg.train.augment = "none"
    cfg.train.label_smoothing = 0.0
    cfg.model.drop_rate = 0.0
    cfg.optim.l2 = 0.0
    cfg.optim.clip = "none"
    cfg.optim.schedule = "warmup_cosine"
    # A fixed budget: the last state is tested, so paired runs differ only in their row.
    cfg.early_stopping.enabled = False
    cfg.checkpoint.every = 0         # only the last (= best) epoch is checkpointed
    return cfg
