"""python -m experiments.depth_residual --config=experiments/configs/depth_residual.py --workdir=..."""

from experiments import cli
from experiments.depth_residual.main import main

cli.run(main)
