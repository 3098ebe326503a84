"""★R2 where dropout is needed: SAM against SGD + L2, with and without dropout, on an MLP.

Run:
  python -m experiments.sam_dropout --config=experiments/configs/sam_dropout_mlp.py \
      --workdir=checkpoints/sam_dropout_mlp --config.data.data_dir=../shared/data/mnist

Why a second setup: on the CNN of `sam_dropout.py` (dropout only on the pooled features before
the head) dropout *hurts* under SGD, so "does SAM reduce the need for dropout?" has no need to
reduce there (EXP-07b's rule says inconclusive). This config is the classic setting in which
dropout does help (Srivastava et al. 2014): a wide fully connected net, no normalization,
dropout 0.5 after every hidden layer, a training set small enough to memorize.

Choices:
- data: the same seeded 1,000-image MNIST subset, 2,000-image validation split (logged only),
  the full 10,000-image test set, no augmentation;
- model: `models.MLP` 784-1024-1024-10, ReLU, He normal hidden / Xavier output, no norm,
  dropout 0.5 after each hidden layer in the dropout rows;
- optimizer: SGD with momentum 0.9, lr 0.02 with a cosine decay to 0, coupled L2 5e-4, batch
  64, 60 epochs (900 steps), the last state tested;
- SAM rho 0.05 (the CNN study's; no pilot over rho);
- sharpness on the first 512 training images; 5 paired seeds (an MLP run takes seconds).

Measured (2026-12-02, 2-core CPU): 4 min 2 s. Dropout helps under SGD (+0.98 pp [+0.42, +1.54])
and as much under SAM (interaction +0.18 [-0.27, +0.64]); SAM is flatter without dropout and
sharper with it. The README's R2 section has the tables and verdicts.
"""

from experiments.configs import mnist_mlp, sam_dropout


def get_config():
    cfg = sam_dropout.study_config(mnist_mlp.get_config())
    cfg.data.limit_train = 1000
    cfg.data.val_size = 2000
    cfg.data.placement = "device"
    cfg.model.widths = (1024, 1024)
    cfg.model.norm = "none"
    cfg.model.hidden_init = "he_normal"
    cfg.model.output_init = "xavier_normal"
    cfg.optim.learning_rate = 0.02
    cfg.train.num_epochs = 60
    cfg.train.batch_size = 64
    cfg.seeds = 5
    cfg.sharpness_examples = 512
    return cfg
