"""What every study script starts and ends with: the flags, the config parsed once, result files.

    def main(argv):
        run = cli.start(argv, "experiments.zero_init", study=ZeroInitStudy)   # parsed, checked
        ...                                                                    # the study
        cli.finish(run, wall, results, report_lines, figures)                  # results.json/.md

    if __name__ == "__main__":
        cli.run(main)

`start` parses and checks the whole config (file + command-line overrides) before anything touches
the workdir, so a refused config leaves nothing behind; then it locks the workdir
(`ml_practical.workdir_lock`: a second process on it is refused at once, naming the holder).
`run` reports what a user causes as one line naming the field, file or value, and a hint, with exit
status 2: a bad config, bad or missing data, a workdir of another run or in use, a damaged run
file, a full disk (naming the workdir and its free space), a read-only or forbidden directory.
`--debug`, or the environment variable ML_PRACTICAL_DEBUG=1, shows the traceback instead, and
orbax's background-thread logging, which a failed checkpoint write repeats for every array.

Exit status: 0 when the job finished; 2 for the errors above; 128 + the signal number (143 for
SIGTERM, 130 for SIGINT) when a signal stopped a run: the epoch in flight was finished and saved,
the best checkpoint restored and tested and the summary written as for a finished run (its
`stop_reason` is "interrupted"), and rerunning the command resumes it. A scheduler can so tell a
pre-empted run from a finished one.

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
import errno
import json
import logging as py_logging
import os
import pathlib
import shlex
import sys
from typing import Any, Mapping, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from ml_practical import config as config_lib
from ml_practical import run_files
from ml_practical.workdir_lock import WorkdirBusyError, WorkdirLock

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created; rerun to resume).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of one line "
                           "(also: environment variable ML_PRACTICAL_DEBUG=1).")
DEBUG_ENV = "ML_PRACTICAL_DEBUG"
_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Directory of JAX's persistent compilation cache (default: $XDG_CACHE_HOME/ml_practical/jax; "
    "empty: no cache).")
# Programs that compile faster than this are not worth a file in the cache.
CACHE_MIN_COMPILE_SECS = 0.2
flags.mark_flags_as_required(["config", "workdir"])

# What the one-line report covers: bad input (config, data files, a workdir of another run or in
# use, a damaged run file) and the filesystem refusing the workdir (full, read-only, forbidden).
USER_ERRORS = (ValueError, OSError, ImportError, WorkdirBusyError)
# What the process's scripts locked and created (`start`), released and tidied by `run`.
_STARTED: list["Start"] = []


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
    lock: WorkdirLock | None = None
    created: bool = False



def select_rows(only: str, rows: Sequence[str]) -> list[str]:
    """The comma-separated names of a study's `only` field, in `rows`' order ("" = every row).

    Raises:
      ValueError: an unknown row name (the study's Section check turns it into its field's line).
    """
    chosen = [s.strip() for s in only.split(",") if s.strip()]
    for name in chosen:
        if name not in rows:
            raise ValueError(f"only: unknown row {name!r}; expected some of {list(rows)}")
    return [n for n in rows if n in chosen] if chosen else list(rows)

def start(argv: Sequence[str], module: str, *, study: type | None = None,
          training: bool = True, lock: bool = True) -> Start:
    """Refuses stray arguments, quiets absl (orbax logs every save at INFO), parses the config.

    Args:
      argv: absl's remaining arguments.
      module: the script's module ("experiments.ablation"), for the reproducing command.
      study: the dataclass of the study's own top-level fields (None: a plain training config).
      training: whether the config has the training sections; False parses it as the study's
        fields alone (`config.parse_study`).
      lock: lock the workdir for this process (a study). False for a script whose `loop.fit`
        locks it (experiments.train: in a multi-process run process 0 holds the lock, and which
        process is 0 is known only after `distributed.initialize`).

    Returns:
      A `Start`.

    Raises:
      config.ConfigError: the config is refused (nothing was written).
      WorkdirBusyError: another live process holds the workdir.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    use_compilation_cache(_CACHE.value)
    raw = _CONFIG.value
    cfg = (config_lib.parse(raw, study=study) if training
           else config_lib.parse_study(raw, study))
    command = f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    workdir = pathlib.Path(_WORKDIR.value)
    created = not workdir.exists()
    started = Start(cfg=cfg, workdir=workdir, command=command, created=created)
    _STARTED.append(started)
    if lock:
        started = dataclasses.replace(started, lock=WorkdirLock(workdir).acquire())
        _STARTED[-1] = started
    return started


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


def debugging() -> bool:
    """--debug, or ML_PRACTICAL_DEBUG set to anything but "", "0" or "false"."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(_DEBUG.value) or env not in ("", "0", "false", "no")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def free_space(path: os.PathLike) -> int | None:
    """Bytes free on the filesystem of `path` (its nearest existing parent); None if unknown."""
    import shutil

    path = pathlib.Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _os_errno(error: BaseException) -> int | None:
    """The errno of the first OSError in the chain of `error`, or one named in a message (orbax and
    tensorstore report a failed write as a ValueError carrying "[os_error_code='28']")."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        text = str(error)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            if f"os_error_code='{code}'" in text or os.strerror(code) in text:
                return code
        error = error.__cause__ or error.__context__
    return None


def explain(error: BaseException, workdir: os.PathLike | None) -> str:
    """The one line (and hint) that `run` prints for a user's error (see the module docstring)."""
    code = _os_errno(error)
    where = workdir if workdir is not None else "the working directory"
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_space(workdir if workdir is not None else ".")
        left = "unknown" if free is None else _size(free)
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
        detail = f"{left} free"
        if isinstance(error, OSError) and error.strerror not in (None, os.strerror(code)):
            detail = error.strerror  # what a checkpoint needs, and the free space (`checkpointing`)
        return (f"{what} of the workdir {where} ({detail}); free some space (or use a "
                "--workdir on another disk) and rerun the same command: the run resumes from its "
                "last complete checkpoint")
    if code == errno.EROFS:
        return (f"the workdir {where} is on a read-only filesystem; use a --workdir where this "
                "user can write")
    if code in (errno.EACCES, errno.EPERM) and isinstance(error, OSError):
        name = error.filename or where
        return f"permission denied: {name}; use a --workdir where this user can write"
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _quiet_background_errors() -> None:
    """Hides what orbax's and tensorstore's threads print when a checkpoint write fails (the
    same error once per array, then "Event loop is closed" per pending callback): the error
    itself reaches the loop as an exception and is reported once. `--debug` keeps it all."""
    py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)

    class _NotOrbax(py_logging.Filter):
        def filter(self, record):
            return not ("/orbax/" in record.pathname and record.levelno >= py_logging.ERROR)

    py_logging.getLogger("absl").addFilter(_NotOrbax())
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(kind, value, tb)

    sys.excepthook = excepthook


def _tidy(started: Start, failed: bool) -> None:
    """Releases the workdir lock; a workdir this run created and left empty is removed."""
    if started.lock is not None:
        started.lock.release()
    if failed and started.created and started.workdir.is_dir():
        left = [p.name for p in started.workdir.iterdir()]
        if left in ([], [".lock"]):
            for name in left:
                (started.workdir / name).unlink()
            started.workdir.rmdir()


def run(main) -> None:
    """`absl.app.run(main)`, with a user's error reported as one line and the exit status of a
    signalled run set to 128 + the signal (see the module docstring)."""
    def guarded(argv):
        from ml_practical.hooks import interrupted_by, signal_name

        debug = debugging()
        if not debug:
            _quiet_background_errors()
        failed = True
        try:
            out = main(argv)
            failed = False
        except USER_ERRORS as e:
            if debug:
                raise
            workdir = _STARTED[-1].workdir if _STARTED else None
            print(f"error: {explain(e, workdir)}", file=sys.stderr)
            print(f"(--debug or {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
            sys.exit(2)
        finally:
            while _STARTED:
                _tidy(_STARTED.pop(), failed)
        signum = interrupted_by()
        if signum is not None:
            print(f"stopped by {signal_name(signum)}: the best checkpoint was tested and the "
                  f"summary written; rerun the same command to resume (exit status "
                  f"{128 + signum})", file=sys.stderr)
            sys.exit(128 + signum)
        return out
    app.run(guarded)


class StudyInterrupted(Exception):
    """A signal stopped one of a study's runs (its state is saved: rerunning resumes it)."""


def execute_study(run: Start, run_study, report, dataset=None, *, log=None,
                  quiet: bool = False) -> dict[str, Any] | None:
    """A study whose `run_study(cfg, workdir, dataset, log=...)` returns its results and whose
    `report` module has write_figures / format_analysis / format_results: runs it, then writes
    the figures, analysis.md and (`finish`) results.json / results.md. None, and no report,
    when a signal stopped a run (`StudyInterrupted`)."""
    import time

    t0 = time.time()
    try:
        results = run_study(run.cfg, run.workdir, dataset, log=log)
    except StudyInterrupted as e:
        print(f"Interrupted during {e}: the finished runs are kept; rerun the same command to "
              "resume.", flush=True)
        return None
    wall = time.time() - t0
    results["wall_time_s"] = wall
    figures = report.write_figures(results, run.workdir)
    run_files.atomic_write_text(run.workdir / "analysis.md",
                                report.format_analysis(results, run.cfg))
    finish(run, wall, results, report.format_results(results, run.cfg, run.command),
           figures, quiet=quiet)
    return results
