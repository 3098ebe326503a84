"""ml_practical: the engineering that makes deep networks train, as small tested JAX/Flax pieces.

    from ml_practical import initializers, layers, models, losses, optim, data, train
    kernel_init = initializers.he_normal()              # (key, shape, dtype), drops into flax
    tx = optim.make_optimizer(cfg.optim)                # an optax GradientTransformation
"""

from ml_practical import (ablation, augment, checkpointing, clipping, data, diagnostics,
                          distributed, early_stopping, initializers, input_pipeline, layers, losses,
                          models, multiseed, optim, plots, propagation, run_files, sparsity, train,
                          uncertainty)
from ml_practical.checkpointing import RunCheckpointer
from ml_practical.data import Dataset, load_dataset
from ml_practical.diagnostics import diagnose
from ml_practical.early_stopping import EarlyStopping, EarlyStoppingState
from ml_practical.layers import BatchNorm, Dropout, GroupNorm, InstanceNorm, LayerNorm
from ml_practical.losses import (cross_entropy, elastic_net_penalty, l1_penalty, l2_penalty,
                                 masked_leaves)
from ml_practical.models import MLP
from ml_practical.optim import make_optimizer
from ml_practical.train import TrainState, fit

__version__ = "0.1.0"
