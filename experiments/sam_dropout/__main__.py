"""python -m experiments.sam_dropout --config=experiments/configs/sam_dropout.py --workdir=..."""

from experiments import cli
from experiments.sam_dropout.main import main

cli.run(main)
