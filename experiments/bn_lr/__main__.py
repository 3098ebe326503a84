"""python -m experiments.bn_lr --config=experiments/configs/bn_lr.py --workdir=..."""

from experiments import cli
from experiments.bn_lr.main import main

cli.run(main)
