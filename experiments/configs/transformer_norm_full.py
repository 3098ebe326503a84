"""The Transformer-normalization study at accelerator scale: deeper, wider, longer, 10 seeds.

Run:
  python -m experiments.transformer_norm --config=experiments/configs/transformer_norm_full.py \
      --workdir=checkpoints/transformer_norm_full

Not run here (no accelerator on this machine; sized for one GPU). What it changes from the
default config (experiments/configs/transformer_norm.py, whose recipe it keeps: AdamW, warmup
10 % + cosine, clip tau = 1.0, label smoothing 0.1, dropout 0.1):
- data: 20,000 / 2,000 / 10,000 sequences of 16-64 tokens (padded to 64), 8 classes, vocab 64;
- model: d_model 128, 8 heads, MLP x4;
- placement x warmup: 8 blocks, batch 128, 20 epochs (3,120 steps), peak lr 1e-3 (Adam's usual
  Transformer rate, at which Xiong et al. report post-LN failing without warmup at depth; if it
  trains, rerun with --config.placement_lr=3e-3);
- BN vs LN vs RMS: 4 pre-norm blocks, lr 1e-3, batches 8 and 128, 3 epochs each (the same
  60,000 examples seen);
- 10 paired seeds per row.
"""

from experiments.configs import transformer_norm
from ml_practical import config


def get_config():
    cfg = transformer_norm.study_config(config.defaults("transformer"))
    cfg.seeds = 10
    cfg.num_train, cfg.num_val, cfg.num_test = 20_000, 2000, 10_000
    cfg.vocab_size = 64
    cfg.min_len, cfg.max_len = 16, 64
    cfg.model.d_model = 128
    cfg.model.num_heads = 8
    cfg.placement_layers, cfg.placement_lr, cfg.placement_batch = 8, 1e-3, 128
    cfg.norm_layers, cfg.norm_lr, cfg.norm_epochs = 4, 1e-3, 3
    cfg.small_batch, cfg.large_batch = 8, 128
    cfg.train.num_epochs = 20
    cfg.train.eval_batch_size = 1000
    return cfg
