"""python -m experiments.transformer_norm --config=experiments/configs/transformer_norm.py --workdir=..."""

from experiments import cli
from experiments.transformer_norm.main import main

cli.run(main)
