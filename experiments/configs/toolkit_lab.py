"""The regularization / optimization toolkit measured: each piece as one change to the lab's row 7.

Run:
  python -m experiments.lab_cnn --config=experiments/configs/toolkit_lab.py \
      --workdir=checkpoints/toolkit_lab --config.data.data_dir=../shared/data/mnist
  One family: --config.families=cnn     Some rows: --config.only=label_smoothing,mixup,ema

The lab on a CNN (`lab_cnn.py`: the same data, networks, optimizer, epochs, batch, stopping rule
and 5 paired seeds), run on the toolkit's rows instead of the chapter's (`experiments.ablation.
rows.TOOLKIT`): row 7 (He + BN + dropout 0.2 + L2 1e-4 + label smoothing 0.1, Adam 1e-3,
constant rate) and, each against it, mixup, CutMix, TrivialAugment, RandAugment, an EMA of the
weights, SWA, SAM, a one-cycle and a step schedule, and L2 on every parameter. The values are
rows.py's; they were not tuned (no pilot), and the budget is the lab's CPU one: 5,000 training
images, 3 epochs (468 steps at batch 32), the best epoch by val/accuracy tested. Techniques that
pay off over long schedules (mixup, CutMix, the policies, SWA) are measured at a budget where
they are known to help least; the README says so next to the numbers.

The report's "steps" are each row minus row 7, seed by seed, with Holm over the family's steps.

Measured (2026-12-02, 2-core CPU): 13 min 8 s for the 110 runs. On the CNN, EMA (+1.02 pp
[+0.05, +1.98]) and SWA (+0.91 [+0.02, +1.81]) point up, nothing is decided after Holm; the
augmentations and mixing point down on both networks. README: "The toolkit measured".
"""

from experiments.ablation.rows import TOOLKIT
from experiments.configs import lab_cnn


def get_config():
    cfg = lab_cnn.get_config()
    cfg.only = ",".join(TOOLKIT)
    return cfg
