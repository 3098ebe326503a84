"""The factorial study on the embedded 8x8 digits (scikit-learn; offline), in a few minutes.

Run:
  python -m experiments.factorial --config=experiments/configs/factorial_digits.py \
      --workdir=checkpoints/factorial_digits

Expected (2-core CPU, 2026-12-02, load average near 9 from other jobs): 96 runs in 300 s of wall
time (2.1 min of CPU). The all-off cell 96.02 +- 0.16 % and the all-on cell 97.78 +- 0.48 % are
the ablation digits study's rows 1 and 8 to the digit (same configs, same seeds). No Shapley value
survives Holm with 3 seeds on 360 test images (one image is 0.28 pp): init +0.91, bn +1.05,
smoothing +0.67, dropout +0.08, l2 -0.00, augment -0.27 pp.

The ablation's digits settings (`ablation_digits.on_digits`: 1150 train / 287 val / 360 test
images, up to 30 epochs, patience 5 on val/accuracy, only the last and best epoch saved) on the
factorial's 2^(6-1) design: 32 cells x 3 seeds = 96 runs of the 64-512-256-10 MLP.
"""

from experiments.configs import ablation_digits, factorial, mnist_mlp


def get_config():
    return ablation_digits.on_digits(factorial.study_config(mnist_mlp.get_config()))
