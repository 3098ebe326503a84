"""What every study script's `main` starts and ends with: checks, quiet logging, result files.

A study writes `results.json` (the command, the config, wall time, devices and its own results)
and `results.md` (the report it also prints) into its workdir; rerunning the printed command
reproduces them.
"""

import json
import pathlib
import shlex
import sys
from typing import Any, Mapping, Sequence

import jax
import ml_collections
from absl import app, logging

from ml_practical import run_files


def start(argv: Sequence[str], module: str, workdir: str) -> tuple[pathlib.Path, str]:
  """Refuses stray arguments, quiets absl (orbax logs every save at INFO), creates the workdir.

  Returns:
    The workdir and the command line that reproduces this run.
  """
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  return path, f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def finish(workdir: pathlib.Path, command: str, cfg: ml_collections.ConfigDict, wall: float,
           results: Mapping[str, Any], report: Sequence[str], figures: Sequence[str]) -> None:
  """Writes results.json and results.md atomically, then prints the report and what was written."""
  out = {"command": command, "config": cfg.to_dict(), "wall_time_s": wall,
         "devices": [str(d) for d in jax.devices()], **results, "figures": list(figures)}
  run_files.atomic_write_text(workdir / "results.json",
                              json.dumps(run_files.to_jsonable(out), indent=1) + "\n")
  run_files.atomic_write_text(workdir / "results.md", "\n".join(report))
  print()
  print("\n".join(report))
  print(f"Wrote results.json, results.md and {len(figures)} figures to {workdir} ({wall:.1f} s).")
