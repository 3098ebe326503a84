"""python -m experiments.sparsity --config=experiments/configs/sparsity.py --workdir=..."""

from experiments import cli
from experiments.sparsity.main import main

cli.run(main)
