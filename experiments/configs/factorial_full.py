"""The factorial study at the chapter's scale: full MNIST, 784-512-256-10, up to 50 epochs (GPU).

Run:
  python -m experiments.factorial --config=experiments/configs/factorial_full.py \
      --workdir=checkpoints/factorial_full --config.data.data_dir=../shared/data/mnist
  With the ablation's contributions (same scale):
      --config.ablation_results=checkpoints/ablation/results.json

For an accelerator: 32 cells x 3 seeds = 96 runs of the ablation's own setup (55,000 train / 5,000
val / 10,000 test images, the chapter's MLP, early stopping with patience 10 on val/accuracy,
a checkpoint every 5 epochs); seed_mode "auto" trains a cell's seeds as one vmapped program on a
GPU. On the 2-core CPU the ablation's 24 such runs took about 17 minutes, so this design would take
over an hour there: use experiments/configs/factorial.py.
"""

from experiments.configs import factorial, mnist_mlp


def get_config():
    cfg = factorial.study_config(mnist_mlp.get_config())
    cfg.data.limit_train = 0         # every training image not in the validation split
    cfg.data.val_size = 5000
    cfg.model.widths = (512, 256)
    cfg.train.num_epochs = 50
    cfg.early_stopping.patience = 10
    cfg.checkpoint.every = 5
    return cfg
