"""python -m experiments.ctr_case --config=experiments/configs/ctr_case.py --workdir=..."""

from experiments import cli
from experiments.ctr_case.main import main

cli.run(main)
