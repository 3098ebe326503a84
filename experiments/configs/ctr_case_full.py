"""The CTR case study at a larger scale, for an accelerator.

Run:
  python -m experiments.ctr_case --config=experiments/configs/ctr_case_full.py \
      --workdir=checkpoints/ctr_case_full

Not run here (no accelerator). The recipe of experiments/configs/ctr_case.py on a 1,000,000-example
log with 6 tables (20,000 / 5,000 / 2,000 / 1,000 / 500 / 100 rows), 8 dense features, embedding
dim 16, bottom 8-64-16, top 64-32-1, 30 epochs at most (patience 5 on val AUC), 10 seeds: the
batch-32 rows are then 21,875 steps an epoch, which is what needs the accelerator.
"""

from experiments.configs import ctr_case


def get_config():
    cfg = ctr_case.get_config()
    cfg.seeds = 10
    c = cfg.clicks
    c.num_dense = 8
    c.table_sizes = (20_000, 5_000, 2_000, 1_000, 500, 100)
    c.num_examples = 1_000_000
    c.num_viral = 10
    cfg.model.num_dense = c.num_dense
    cfg.model.table_sizes = c.table_sizes
    cfg.model.embed_dim = 16
    cfg.model.bottom_widths = (64, 16)
    cfg.model.top_widths = (64, 32)
    cfg.train.num_epochs = 30
    cfg.train.eval_batch_size = 10_000
    return cfg
