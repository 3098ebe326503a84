"""Cost of keeping an EMA / SWA of the weights in the optimizer state, against the plain step.

Run:  python -m benchmarks.averaging [--batch_size=128] [--steps=4] [--rounds=3]

The MNIST CNN (benchmarks/_cnn_steps.py), Adam 1e-3; variants: plain, `optim.ema_decay=0.999`,
`optim.swa_start_frac` reached at once (averaging every step, the costliest setting), interleaved. Prints
samples/s and the ratio to plain per variant; the last line is JSON.
"""

from benchmarks import _cnn_steps
from ml_practical import config, optim


def _tx(**fields):
    cfg = config.build(config.OptimConfig, {"name": "adam", "learning_rate": 1e-3, **fields})
    return optim.make_optimizer(cfg, total_steps=1000)


def main():
    args = _cnn_steps.arguments(__doc__.splitlines()[0])
    variants = {"plain": ({}, {"tx": _tx()}), "ema": ({}, {"tx": _tx(ema_decay=0.999)}),
                "swa": ({}, {"tx": _tx(swa_start_frac=0.001, swa_every_steps=1)})}
    _cnn_steps.report(_cnn_steps.time_variants(variants, args), args)


if __name__ == "__main__":
    main()
