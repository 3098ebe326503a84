"""python -m experiments.zero_init --config=experiments/configs/zero_init.py --workdir=..."""

from experiments import cli
from experiments.zero_init.main import main

cli.run(main)
