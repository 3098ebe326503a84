"""python -m experiments.lsuv --config=experiments/configs/lsuv.py --workdir=..."""

from experiments import cli
from experiments.lsuv.main import main

cli.run(main)
