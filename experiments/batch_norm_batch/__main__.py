"""python -m experiments.batch_norm_batch --config=experiments/configs/batch_norm_batch.py --workdir=..."""

from experiments import cli
from experiments.batch_norm_batch.main import main

cli.run(main)
