"""Normalization inside a Transformer (chapter 12.5): pre-/post-LN x warmup, BN vs LN vs RMS.

Run:
  python -m experiments.transformer_norm --config=experiments/configs/transformer_norm.py \
      --workdir=checkpoints/transformer_norm
  One family: --config.only=pre_warmup,pre_nowarmup,post_warmup,post_nowarmup
  Fewer seeds: --config.seeds=2      Any field: --config.placement_lr=3e-3, --config.train.num_epochs=8

Sized for this 2-core CPU (at most ~12 minutes for all 30 runs, from an empty compilation
cache): narrow encoders (d_model 32, 4 heads, MLP x4), 2,048 training sequences of 8-24 tokens
(the "majority" task, 8 classes, right-padded to 24), a few hundred to ~3,000 steps per run.
The bigger setting for an accelerator is transformer_norm_full.py.

Choices, stated because the differences are differences at this budget:
- data: `sequences.load_sequences` with rule "majority" (the label is the class token that
  occurs most often; tight: the runner-up one occurrence fewer), 8 classes, vocab 40, lengths
  8-24, data_seed 0; 2,048 / 512 / 2,000 sequences (train / val / test). Retrieval is not used:
  a small Transformer learns a shortcut there and plateaus near 46 %.
- the Transformer recipe of the chapter: AdamW (weight decay 0.01), linear warmup then a
  cosine decay to 0, gradient clipping by global norm tau = 1.0 (CLIP-05), label smoothing 0.1,
  dropout 0.1 on attention, residual branches and embeddings, mean pooling over real tokens.
- placement x warmup: 4 blocks, batch 64, 12 epochs (384 steps), peak lr 1e-2, warmup 10 % of
  the steps (38) or none. A pilot (3 seeds each) measured at this lr: post-LN without warmup
  stuck at the uniform prediction (test accuracy 12.5-13.5 %, loss ln 8), post-LN with warmup
  and pre-LN without warmup at 99.8-100 %. At lr 3e-3 post-LN without warmup trained fine
  (99 %), so the lr is the one at which the known post-LN instability shows at this depth.
- BN vs LN vs RMS: 2 pre-norm blocks, peak lr 3e-3, warmup 10 %, batch 8 (768 steps) or 64
  (96 steps), 3 epochs each (the same 6,144 examples seen; the learning rate is not scaled with
  the batch). 3 epochs, not 12: at 12 epochs every norm reached 100 % at both batches in a
  pilot, which compares nothing.
- 3 paired seeds per row (seed s: the same init key and batch order in every row of a family).
"""

from experiments.transformer_norm.main import TransformerNormStudy
from ml_practical import config


def get_config():
    cfg = study_config(config.defaults("transformer"))
    cfg.seeds = 3
    cfg.num_train, cfg.num_val, cfg.num_test = 2048, 512, 2000
    cfg.min_len, cfg.max_len = 8, 24
    cfg.placement_layers, cfg.placement_lr, cfg.placement_batch = 4, 1e-2, 64
    cfg.norm_layers, cfg.norm_lr, cfg.norm_epochs = 2, 3e-3, 3
    cfg.small_batch, cfg.large_batch = 8, 64
    cfg.train.num_epochs = 12
    cfg.train.eval_batch_size = 500
    return cfg


def study_config(base):
    """The study's fields and its fixed-budget Transformer recipe over a training config `base`
    (a "transformer" model section)."""
    cfg = config.with_study(base, TransformerNormStudy)
    cfg.only = ""                    # every row of experiments/transformer_norm/rows.py
    cfg.data_seed = 0
    cfg.num_classes, cfg.vocab_size = 8, 40
    cfg.warmup_frac = 0.1
    cfg.early_steps = 50
    cfg.data.source = "arrays"       # the study generates the sequences (main.load_data)
    cfg.model.d_model = 32
    cfg.model.num_heads = 4
    cfg.model.mlp_ratio = 4
    cfg.model.pooling = "mean"
    cfg.model.attn_drop_rate = cfg.model.resid_drop_rate = cfg.model.embed_drop_rate = 0.1
    cfg.optim.name = "adamw"
    cfg.optim.learning_rate = 1e-3   # replaced per family (placement_lr / norm_lr)
    cfg.optim.weight_decay = 0.01
    cfg.optim.schedule = "warmup_cosine"
    cfg.optim.clip = "global_norm"
    cfg.optim.clip_value = 1.0
    cfg.train.label_smoothing = 0.1
    cfg.train.progress = "never"
    # A fixed budget: the last state is tested, so paired runs differ only in their row.
    cfg.early_stopping.enabled = False
    cfg.early_stopping.monitor = "val/accuracy"
    cfg.early_stopping.mode = "max"
    cfg.early_stopping.patience = 1000
    cfg.checkpoint.every = 0         # only the last epoch is checkpointed
    return cfg
