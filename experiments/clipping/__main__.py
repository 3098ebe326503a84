"""python -m experiments.clipping --config=experiments/configs/clipping.py --workdir=..."""

from experiments import cli
from experiments.clipping.main import main

cli.run(main)
