"""python -m experiments.factorial --config=experiments/configs/factorial.py --workdir=..."""

from experiments import cli
from experiments.factorial.main import main

cli.run(main)
