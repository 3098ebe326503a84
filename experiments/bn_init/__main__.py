"""python -m experiments.bn_init --config=experiments/configs/bn_init.py --workdir=..."""

from experiments import cli
from experiments.bn_init.main import main

cli.run(main)
