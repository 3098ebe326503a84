"""The SAM x dropout study (★R2) at paper scale, for an accelerator: CIFAR-10, ResNet-20.

Run:
  python -m experiments.sam_dropout --config=experiments/configs/sam_dropout_full.py \
      --workdir=checkpoints/sam_dropout_full --config.data.data_dir=/path/to/cifar-10-batches-bin

Not run here (no accelerator and no CIFAR-10 on this machine). What it runs: the study's four rows
(experiments/sam_dropout/rows.py: SGD / SAM x no dropout / dropout) on the CIFAR-10 recipe of
experiments/configs/cifar10_resnet20.py (He et al. 2016): ResNet-20 (shortcut A, BatchNorm),
SGD with momentum 0.9, lr 0.1 with a cosine decay, coupled L2 5e-4, batch 128, random crops
and flips, per-channel normalization, 200 epochs, the last state tested; SAM at rho 0.05
(Foret et al. 2021's CIFAR value); dropout 0.3 between the two convs of each block (the
family's `drop_rate`, Zagoruyko & Komodakis's WRN placement and rate); 5 paired seeds, 20 runs;
sharpness on 2,048 training images. A SAM step costs about two plain steps (benchmarks/sam.py),
so the study costs about 30 plain ResNet-20 runs of 200 epochs (estimated, not measured).
"""

from experiments.configs import cifar10_resnet20, sam_dropout


def get_config():
    cfg = sam_dropout.study_config(cifar10_resnet20.get_config())
    cfg.optim.learning_rate = 0.1
    cfg.data.placement = "device"
    cfg.train.augment = "flip_crop"
    cfg.checkpoint.every = 0
    cfg.drop_rate = 0.3
    cfg.seeds = 5
    cfg.sharpness_examples = 2048
    return cfg
