"""python -m experiments.ablation --config=experiments/configs/ablation.py --workdir=..."""

from experiments import cli
from experiments.ablation.main import main

cli.run(main)
