"""SAM against SGD + L2, each with and without dropout, on a 1k MNIST subset (chapter ★R2).

Run:
  python -m experiments.sam_dropout --config=experiments/configs/sam_dropout.py \
      --workdir=checkpoints/sam_dropout --config.data.data_dir=../shared/data/mnist

Measured: see experiments/sam_dropout/README_section.md (wall time and the table).

Choices (Foret et al. 2021 for SAM; the ledger's EXP-07 proxy for the data):
- data: a seeded 1,000-image subset of the MNIST training images (`data.limit_train`), after a
  2,000-image validation split (logged only), and the full 10,000-image test set; no
  augmentation: a training set small enough that regularization matters;
- model: `models.CNN`, three stages of one 3x3 conv (16, 32, 64 channels, max pools), BatchNorm
  before the ReLU, global average pool, [dropout], Dense; the family's only dropout is on the
  pooled features before the head, so "dropout p" means p = 0.5 there;
- optimizer: SGD with momentum 0.9, lr 0.05 with a cosine decay to 0, coupled L2 5e-4
  (`optim.l2`: the gradient gets l2 * w before momentum, Foret et al.'s SGD baselines' form),
  batch 64, 20 epochs (300 steps); every run trains its whole budget and the last state is
  tested;
- SAM: rho 0.05, the paper's CIFAR value (no pilot over rho was run for lack of time);
- sharpness on the first 512 training images, Lanczos 20 steps, power iteration to 1e-4;
- 3 paired seeds (5 did not fit the time this study had).
"""

from experiments.configs import mnist_cnn
from experiments.sam_dropout.main import SamDropoutStudy
from ml_practical import config


def get_config():
    cfg = study_config(mnist_cnn.get_config())
    cfg.data.limit_train = 1000
    cfg.data.val_size = 2000
    cfg.data.placement = "device"    # 1,000 images; each compiled call 4 unrolled steps
    cfg.data.chunk_steps = 4
    cfg.model.widths = (16, 32, 64)
    cfg.model.convs_per_stage = 1
    cfg.optim.learning_rate = 0.05
    cfg.train.num_epochs = 20
    cfg.train.batch_size = 64
    cfg.seeds = 3
    cfg.sharpness_examples = 512
    return cfg


def study_config(base):
    """The study's fields and its fixed-budget SGD protocol over a training config `base`."""
    cfg = config.with_study(base, SamDropoutStudy)
    cfg.sam_rho = 0.05
    cfg.drop_rate = 0.5
    cfg.lanczos_steps = 20
    cfg.optim.name = "momentum"
    cfg.optim.momentum = 0.9
    cfg.optim.l2 = 5e-4
    cfg.optim.weight_decay = 0.0
    cfg.optim.sam_rho = 0.0          # set per row from sam_rho
    cfg.optim.clip = "none"
    cfg.optim.schedule = "warmup_cosine"
    cfg.optim.warmup_steps = 0
    cfg.model.drop_rate = 0.0        # set per row from drop_rate
    cfg.train.augment = "none"
    cfg.train.label_smoothing = 0.0
    cfg.early_stopping.enabled = False
    cfg.checkpoint.every = 0         # only the last (= tested) epoch is checkpointed
    return cfg
