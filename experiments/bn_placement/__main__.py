"""python -m experiments.bn_placement --config=experiments/configs/bn_placement.py --workdir=..."""

from experiments import cli
from experiments.bn_placement.main import main

cli.run(main)
