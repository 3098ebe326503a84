"""Train one config: python -m experiments.train --config=experiments/configs/mnist_mlp.py --workdir=...

Any field can be overridden: --config.optim.learning_rate=3e-4 --config.model.norm=layer.
The config is locked, so a misspelt field fails with a suggestion instead of being ignored.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ml_practical import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; rerun to resume).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # orbax logs every save at INFO through absl; keep the terminal for the progress bar.
  logging.set_verbosity(logging.WARNING)
  summary = train.fit(_CONFIG.value, _WORKDIR.value)
  summary.pop("final_state", None)
  keys = ("test/accuracy", "test/loss", "best_epoch", "epochs_run", "stop_reason", "wall_time_s")
  print(json.dumps({k: summary[k] for k in keys}))


if __name__ == "__main__":
  app.run(main)
