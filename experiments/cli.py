"""What every study script starts and ends with: the flags, the config parsed once, result files.

    def main(argv):
        run = cli.start(argv, "experiments.zero_init", study=ZeroInitStudy)   # parsed, checked
        ...                                                                    # the study
        cli.finish(run, wall, results, report_lines, figures)                  # results.json/.md

    if __name__ == "__main__":
        cli.run(main)

`start` parses and checks the whole config (file + command-line overrides) before anything touches
the workdir, so a refused config leaves nothing behind. `run` prints a bad config, missing data or a
workdir conflict as one line naming the field, file or value (exit status 2); `--debug` shows the
traceback instead.

Compilation cache: `start` points JAX's persistent compilation cache (`jax_compilation_cache_dir`)
at `--compilation_cache` (default `$XDG_CACHE_HOME/ml_practical/jax`, i.e. ~/.cache/ml_practical/jax;
"" turns it off). A program compiled once, by any script or run on this machine, is then loaded
instead of compiled again: a study's rows that compile to the same program (e.g. rows that differ
only in the initializer) and every rerun of a command skip XLA's backend compilation. The loaded
executable is the one XLA would compile, so results do not change. The cache is per machine (XLA
compiles for the host's CPU): do not share the directory between machines of different kinds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import sys
from typing import Any, Mapping, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from ml_practical import config as config_lib
from ml_practical import run_files

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created; rerun to resume).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of one line.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Directory of JAX's persistent compilation cache (default: $XDG_CACHE_HOME/ml_practical/jax; "
    "empty: no cache).")
# Programs that compile faster than this are not worth a file in the cache.
CACHE_MIN_COMPILE_SECS = 0.2
flags.mark_flags_as_required(["config", "workdir"])

# What the one-line report covers: bad input (config, data files, a workdir of another run).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ImportError)


@dataclasses.dataclass(frozen=True)
class Start:
    """A script's parsed inputs.

    Attributes:
      cfg: the typed config (`config.Config`, or the study's dataclass for a study without
        training sections).
      workdir: the output directory (not created yet).
      command: the command line that reproduces this run.
    """

    cfg: Any
    workdir: pathlib.Path
    command: str


def start(argv: Sequence[str], module: str, *, study: type | None = None,
          training: bool = True) -> Start:
    """Refuses stray arguments, quiets absl (orbax logs every save at INFO), parses the config.

    Args:
      argv: absl's remaining arguments.
      module: the script's module ("experiments.ablation"), for the reproducing command.
      study: the dataclass of the study's own top-level fields (None: a plain training config).
      training: whether the config has the training sections; False parses it as the study's
        fields alone (`config.parse_study`).

    Returns:
      A `Start`.

    Raises:
      config.ConfigError: the config is refused (nothing was written).
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    use_compilation_cache(_CACHE.value)
    raw = _CONFIG.value
    cfg = (config_lib.parse(raw, study=study) if training
           else config_lib.parse_study(raw, study))
    command = f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return Start(cfg=cfg, workdir=pathlib.Path(_WORKDIR.value), command=command)


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "ml_practical" / "jax"


def use_compilation_cache(directory: str | None) -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache in `directory` (None: the default; "": off)."""
    import jax

    path = default_cache_dir() if directory is None else (
        pathlib.Path(directory).expanduser() if directory else None)
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def finish(start_: Start, wall: float, results: Mapping[str, Any], report: Sequence[str],
           figures: Sequence[str], *, quiet: bool = False) -> None:
    """Writes results.json and results.md atomically, then prints the report and what was written.

    results.json holds the command, the resolved config, the wall time, the devices and
    `results`; results.md the report lines.
    """
    import jax  # after the study has started the backend

    start_.workdir.mkdir(parents=True, exist_ok=True)
    out = {"command": start_.command, "config": start_.cfg, "wall_time_s": wall,
           "devices": [str(d) for d in jax.devices()], **results, "figures": list(figures)}
    run_files.atomic_write_text(start_.workdir / "results.json",
                                json.dumps(run_files.to_jsonable(out), indent=1) + "\n")
    run_files.atomic_write_text(start_.workdir / "results.md", "\n".join(report))
    if not quiet:
        print()
        print("\n".join(report))
    print(f"Wrote results.json, results.md and {len(figures)} figures to {start_.workdir} "
          f"({wall:.1f} s).")


def run(main) -> None:
    """`absl.app.run(main)`, with bad input reported as one line (see the module docstring)."""
    def guarded(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if _DEBUG.value:
                raise
            print(f"error: {e}", file=sys.stderr)
            print("(--debug shows the traceback)", file=sys.stderr)
            sys.exit(2)
    app.run(guarded)
