"""The chapter's production recipe on MNIST: 784-512-256-10, He init, BatchNorm, dropout 0.2,
L2 1e-4, label smoothing 0.1, Adam 1e-3, global-norm clipping 1.0, batch 128 (section 15.4).

Run:
  python -m experiments.train --config=experiments/configs/mnist_mlp.py \
      --workdir=checkpoints/mnist_mlp --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)

Expected: see the README's results line (measured, with its command).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0

  cfg.data = ml_collections.ConfigDict()
  cfg.data.source = "idx"          # "idx" | "digits" (embedded, offline) | "tfds"
  cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
  cfg.data.tfds_name = "mnist"
  cfg.data.download = False        # TFDS only: never touch the network unless asked
  cfg.data.val_size = 5000         # carved from train, deterministically (split_seed)
  cfg.data.split_seed = 0
  cfg.data.normalize = "global"    # "global" | "per_pixel" | "none"; stats from train only
  cfg.data.limit_train = 0         # 0 = all
  # Where the training set lives (ml_practical/input_pipeline.py); same results either way.
  cfg.data.placement = "auto"      # "auto" | "device" (one scan per epoch) | "host" (streamed)
  cfg.data.device_budget_mb = 1024.0  # "auto": device iff train images + labels fit (MiB/device)
  cfg.data.chunk_steps = 32        # "host": steps gathered + transferred per prefetched chunk

  cfg.model = ml_collections.ConfigDict()
  cfg.model.name = "mlp"
  cfg.model.widths = (512, 256)
  cfg.model.num_classes = 10
  cfg.model.activation = "relu"
  cfg.model.norm = "batch"         # "none" | "batch" | "layer" | "group"
  cfg.model.norm_position = "before"  # chapter option A; "after" is option B
  cfg.model.drop_rate = 0.2        # drop probability (keep prob 0.8)
  cfg.model.hidden_init = "he_normal"
  cfg.model.output_init = "xavier_normal"
  cfg.model.bn_momentum = 0.9      # chapter/flax convention (torch's 0.1)
  cfg.model.bn_backward = "autodiff"
  cfg.model.dropout_sampler = "bernoulli"  # "threefry16": 4x fewer hashes, keep prob rounded to
                                           # a multiple of 2^-16 (layers.Dropout; benchmarks/README)

  cfg.optim = ml_collections.ConfigDict()
  cfg.optim.name = "adam"          # "sgd" | "momentum" | "adam" | "adamw"
  cfg.optim.learning_rate = 1e-3
  cfg.optim.momentum = 0.9
  cfg.optim.b1 = 0.9
  cfg.optim.b2 = 0.999
  cfg.optim.eps = 1e-8
  cfg.optim.schedule = "constant"  # "constant" | "warmup_cosine"
  cfg.optim.warmup_steps = 0
  cfg.optim.end_lr_factor = 0.0
  cfg.optim.clip = "global_norm"   # "none" | "value" | "global_norm"
  cfg.optim.clip_value = 1.0
  cfg.optim.l2 = 1e-4              # coupled L2, added to the gradient (torch's weight_decay)
  cfg.optim.weight_decay = 0.0     # decoupled (AdamW)
  cfg.optim.l1 = 0.0
  cfg.optim.l1_mode = "proximal"   # "proximal" (exact zeros) | "subgradient"

  cfg.train = ml_collections.ConfigDict()
  cfg.train.num_epochs = 20
  cfg.train.batch_size = 128
  cfg.train.eval_batch_size = 1000
  cfg.train.label_smoothing = 0.1
  cfg.train.augment = "none"
  cfg.train.skip_nonfinite = True
  cfg.train.max_consecutive_skips = 20
  cfg.train.num_devices = 0        # 0 = every local device
  cfg.train.progress = "auto"      # "auto" (bar when stderr is a terminal) | "always" | "never"
  cfg.train.restart = False        # True: if the saved config differs, delete that run and start over
  cfg.train.stats_every = 0        # K > 0: per-layer activation/gradient stats every K epochs
                                   # into metrics.jsonl ("stats/dense_0/act_var", ...)

  cfg.early_stopping = ml_collections.ConfigDict()
  cfg.early_stopping.monitor = "val/loss"
  cfg.early_stopping.mode = "min"
  cfg.early_stopping.patience = 10
  cfg.early_stopping.min_delta = 0.0
  cfg.early_stopping.baseline = ml_collections.config_dict.placeholder(float)
  cfg.early_stopping.start_from_epoch = 0
  cfg.early_stopping.divergence_threshold = ml_collections.config_dict.placeholder(float)

  cfg.checkpoint = ml_collections.ConfigDict()
  cfg.checkpoint.keep_latest = 2
  cfg.checkpoint.keep_best = 1
  return cfg
