"""Run the ablation study: python -m experiments.ablation --config=experiments/configs/ablation.py --workdir=...

Examples:
  --config.only=he,he_bn                 two rows (finished runs in the workdir are reused)
  --config.only=label_smoothing,adamw    a variant with the row it is compared with
  --config.seeds=5                       seeds 0..4
  --config.seed_mode=vmap                a row's seeds as one vmapped program (default "auto":
                                         vmap on GPU/TPU, sequential on CPU); same results per
                                         seed to float32 rounding, but no checkpoints: an
                                         interrupted row restarts (ml_practical/multiseed.py)
Rerunning the same command skips finished runs and resumes an interrupted one. Writes results.json,
results.md, curves.png, contributions.png and analysis.md into the workdir (see
ml_practical/ablation.py) and prints the results table.
"""

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ml_practical import ablation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory (created; rerun to resume).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # orbax logs every save at INFO through absl; keep the terminal for the progress lines.
  logging.set_verbosity(logging.WARNING)
  command = "python -m experiments.ablation " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  results = ablation.run_study(_CONFIG.value, _WORKDIR.value, log=lambda s: print(s, flush=True),
                               command=command)
  print()
  print(ablation.format_table(results))
  if results["contributions"]:
    print(ablation.format_contributions(results))
  print(f"Wrote results.json, results.md, curves.png, contributions.png, analysis.md to "
        f"{_WORKDIR.value} ({results['study']['wall_time_s']:.0f} s).")


if __name__ == "__main__":
  app.run(main)
