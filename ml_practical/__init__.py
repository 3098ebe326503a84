"""ml_practical: the engineering that makes deep networks train, as small tested JAX/Flax pieces.

    from ml_practical import config, initializers, loop
    kernel_init = initializers.he_normal()              # (key, shape, dtype), drops into flax
    cfg = config.parse(get_config())                    # typed, checked once
    result = loop.fit(cfg, "runs/mnist")                # the one training loop

Submodules and the names below are imported on first use (PEP 562), so `import ml_practical` and
`from ml_practical import initializers` load neither orbax nor matplotlib nor flax.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "analysis", "augment", "checkpointing", "clip_recorder", "config", "data", "distributed",
    "dropout", "early_stopping", "experiment", "idx", "initializers", "input_pipeline", "layers",
    "loop", "losses", "lsuv", "metrics", "models", "multiseed", "nnx", "normalization", "optim",
    "plots", "run_files", "tasks", "train", "uncertainty",
)
# Public names re-exported at the top level: name -> the submodule that defines it.
_EXPORTS = {
    "Config": "config", "parse": "config",
    "Dataset": "data", "load_dataset": "data",
    "EarlyStopping": "early_stopping", "EarlyStoppingState": "early_stopping",
    "BatchNorm": "layers", "Dropout": "layers", "GroupNorm": "layers", "InstanceNorm": "layers",
    "LayerNorm": "layers",
    "cross_entropy": "losses", "elastic_net_penalty": "losses", "l1_penalty": "losses",
    "l2_penalty": "losses", "masked_leaves": "losses",
    "MLP": "models", "make_optimizer": "optim",
    "TrainState": "train", "FitResult": "loop", "fit": "loop", "fit_seeds": "loop",
    "RunCheckpointer": "checkpointing",
}

__all__ = [*_SUBMODULES, *_EXPORTS]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"ml_practical.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ml_practical.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ml_practical' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
