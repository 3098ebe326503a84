"""python -m experiments.signal_propagation --config=experiments/configs/signal_propagation.py --workdir=..."""

from experiments import cli
from experiments.signal_propagation.main import main

cli.run(main)
