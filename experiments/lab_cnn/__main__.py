"""python -m experiments.lab_cnn --config=experiments/configs/lab_cnn.py --workdir=..."""

from experiments import cli
from experiments.lab_cnn.main import main

cli.run(main)
