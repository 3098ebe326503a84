"""The ablation's rows on a CNN, on the embedded 8x8 digits (scikit-learn; offline).

Run:
  python -m experiments.ablation --config=experiments/configs/ablation_cnn_digits.py \
      --workdir=checkpoints/ablation_cnn_digits

The same rows (experiments/ablation/rows.py) and the same study settings as
ablation_digits.py, on `models.CNN`: two stages of two 3x3 convs (16 and 32 channels; 8 -> 4
pixels, a max pool between), global average pool, Dense. The rows' fields mean the same on a
CNN: hidden_init is the convs' initializer, norm / norm_position the norm after each conv
(BatchNorm over N, H, W), drop_rate the dropout before the head, and row 8's shifts are those
of an 8-pixel image. The convs' kernel gradients are batch-chunked and BatchNorm uses its
hand-written backward (`model.conv_backward`, `model.bn_backward`: the faster lowerings on
XLA:CPU), and the training scans are unrolled in chunks of 8 steps.

This is the runner on a CNN on this CPU; the chapter's lab on a CNN on MNIST (and CIFAR-10) is
a study of its own. Measured (rows 1-8 x 3 seeds, 2-core CPU, 2026-12-02, early stopping on val/accuracy as in
ablation_digits.py): 232 s wall while the test suite shared the CPU (187 s alone with the earlier
val/loss criterion). Test accuracy (mean +- std over seeds 0-2): 1 small_init 71.11 +- 9.82 %,
2 xavier 95.56 +- 0.48, 3 he 97.13 +- 0.98, 4 he_bn 98.89 +- 0.73, 5 dropout 98.80 +- 0.70,
6 l2 98.80 +- 0.70, 7 label_smoothing 98.80 +- 0.89, 8 augment 97.96 +- 0.32 (360 test images:
0.28 pp each).
"""

from experiments.configs import ablation, ablation_digits, digits_mlp
from ml_practical import config


def get_config():
    base = digits_mlp.get_config()
    with base.unlocked():  # the CNN family's model section, every field at its default
        base.model = config.defaults("cnn").model
    cfg = ablation_digits.on_digits(ablation.study_config(base))
    cfg.model.widths = (16, 32)
    cfg.model.convs_per_stage = 2
    cfg.model.pool = "max"
    cfg.model.conv_backward = "chunked"
    cfg.model.bn_backward = "manual"
    cfg.train.unroll = True
    cfg.data.chunk_steps = 8
    return cfg
