"""python -m experiments.mc_dropout --config=experiments/configs/mc_dropout.py --workdir=..."""

from experiments import cli
from experiments.mc_dropout.main import main

cli.run(main)
