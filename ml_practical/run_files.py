"""The files of a run directory: config.json, metrics.jsonl, summary.json, tb/ and the progress bar.

    <workdir>/config.json     the resolved config (a rerun with a different config is refused)
    <workdir>/metrics.jsonl   one JSON object per epoch; on resume, epochs after the restored
                              checkpoint are dropped first, so each epoch appears exactly once
    <workdir>/summary.json    test metrics of the best checkpoint, best_epoch, stop_reason, ...
    <workdir>/steps/          per-step metrics a study asked for, one epoch_<e>.npz per epoch
                              (`loop.StepLog`); truncated with metrics.jsonl on resume
    <workdir>/tb/             TensorBoard events (tensorboardX; no TensorFlow needed)
    <workdir>/checkpoints/    orbax checkpoints (see `checkpointing`)

Every whole-file write goes to a temporary file that is renamed over the old one (atomic on POSIX),
so a crash leaves either the old or the new file, never half of one.

In a run of several processes only the primary one (`primary=True`, process 0) writes these files
and shows the progress bar; the others read them (the config check, the metrics history) and write
nothing, so each line appears once. The caller puts a barrier after `check_or_write_config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import warnings
from typing import Any, Iterable, Mapping

import ml_collections
import numpy as np

from ml_practical.config import PROGRESS_MODES, Config, section_dict, to_dict

# Fields that may change between a run and its resumption without changing the run: how it is
# shown, and when and how its checkpoints are written and kept (never what they hold).
RESUME_NEUTRAL_FIELDS = ("train.restart", "train.progress", "checkpoint.keep_latest",
                         "checkpoint.keep_best", "checkpoint.every", "checkpoint.asynchronous")

# Fields a checkpoint may be restored across (`checkpointing.RunCheckpointer.restore`): where and
# in what pieces the run is computed. orbax reshards the arrays onto the new devices; the run's
# own resume check (config.json) still refuses a change of them, since the sums then run in
# another order and the resumed run is no longer bit-identical to one never interrupted.
RESTORE_NEUTRAL_FIELDS = RESUME_NEUTRAL_FIELDS + (
    "train.num_devices", "train.eval_batch_size", "data.placement", "data.device_budget_mb",
    "data.chunk_steps")


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file and `os.replace`, with fsync."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; run files are for sharing, so give them the usual 0644.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(value: Any) -> Any:
    """Config / metric values as strict JSON: tuples -> lists, non-finite floats -> strings.

    A parsed `config.Config` becomes its resolved dict (`config.to_dict`).
    """
    if isinstance(value, Config):
        value = to_dict(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = section_dict(value)  # a config section or a model family
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": JSON has no literal for them.
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (dotted config fields; `sep="/"` for metric names)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + sep, sep))
        else:
            out[key] = v
    return out


def added_field_defaults(new: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of `new`'s sections at its default, flattened and as JSON values.

    The model section's are those of `new`'s family ("model.name"). `config_diff` uses these
    for fields that a saved config predates.
    """
    from ml_practical import config as config_lib, models

    family = (new.get("model") or {}).get("name", "mlp")
    if family not in models.FAMILIES:
        return {}
    return flatten(to_jsonable(config_lib.defaults(family).to_dict()))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                ignore: Iterable[str] = RESUME_NEUTRAL_FIELDS) -> list[str]:
    """Lines `field: saved -> new` for every field that differs between two config dicts.

    A field that is absent from the saved config `old` (it was added to the library after the run
    was written) and that has its default value in `new` is not a difference. This relies on
    the library's rule for new fields: a new field's default is the behaviour from before the
    field existed (`optim.sam_rho=0` is no SAM, `train.grad_accum_steps=1` is no accumulation),
    so that run trained under it. A new field at any other value is a difference, and shows as
    `'<absent>' -> value`.
    """
    a, b = flatten(old), flatten(new)
    defaults = None
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        if key not in a and key in b:
            defaults = added_field_defaults(new) if defaults is None else defaults
            if key in defaults and defaults[key] == b[key]:
                continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"  {key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines


class ConfigMismatchError(ValueError):
    """The workdir holds a run of another config."""


class RunFilesError(ValueError):
    """A run file cannot be read (named in the message, with the way out)."""


class RunFilesWarning(UserWarning):
    """A run file had to be repaired (a damaged line skipped, records recovered or lost)."""


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


class RunFiles:
    """Owns a run directory's files.

    Args:
      workdir: the run directory (created).
      tensorboard: also write TensorBoard events.
      primary: this process writes the files; False (processes 1.. of a multi-process run): every
        write is skipped, reads still work.
    """

    def __init__(self, workdir: os.PathLike, tensorboard: bool = True, primary: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.primary = primary
        if primary:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.json"
        self.metrics_path = self.workdir / "metrics.jsonl"
        self.summary_path = self.workdir / "summary.json"
        self.checkpoint_dir = self.workdir / "checkpoints"
        self.steps_dir = self.workdir / "steps"
        self.tb_dir = self.workdir / "tb"
        self._tensorboard = tensorboard and primary
        self._tb = None

    # config.json ---------------------------------------------------------------------------------
    def check_or_write_config(self, cfg: Config, restart: bool = False,
                              recorded: Mapping[str, Any] | None = None) -> None:
        """Writes config.json; refuses a workdir whose run has another config (unless `restart`).

        The run's config is config.json's, or, when config.json is missing, `recorded`: the
        config the newest checkpoint stored (`checkpointing.stored_config`), so deleting
        config.json never lets another config continue the old weights. A config.json that is not
        valid JSON is refused naming the file (delete it to have the checkpoints' config used).

        `restart=True` (`--config.train.restart=True`) deletes the old run's checkpoints,
        metrics, summary and events and starts over, but only when the saved config differs from
        this one. The flag stays in the command line that is rerun after a crash, and a rerun must
        resume, not wipe the run it made the first time; so with an unchanged config it resumes
        (and says so). To redo a run of the same config from scratch, use a new workdir or
        delete the old one. (The caller holds the workdir's lock, so a restart never touches a
        run that is still alive: `workdir_lock`.)
        """
        new = to_jsonable(cfg)
        saved, source = None, "config.json"
        if self.config_path.exists():
            try:
                saved = json.loads(self.config_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RunFilesError(
                    f"{self.config_path}: not valid JSON ({e}); the checkpoints keep the run's "
                    "config: delete this file to resume with theirs, or use another "
                    "--workdir") from None
        elif recorded is not None:
            saved, source = recorded, "the newest checkpoint's stored config"
        diff = config_diff(saved, new) if saved is not None else []
        if restart and not diff:
            restart = False  # same config: resume (see the docstring)
            if self.primary and saved is not None:
                print(f"train.restart=True but {self.workdir} holds a run of this same config: "
                      "resuming it (delete the workdir to start over)", file=sys.stderr)
        # Every process checks (each must refuse), only the primary one deletes and writes.
        if diff and not restart:
            raise ConfigMismatchError(
                f"{self.workdir} holds a run with a different config ({source}):\n"
                + "\n".join(diff) + "\nUse another --workdir, or pass "
                "--config.train.restart=True to delete that run and start over.")
        if not self.primary:
            return
        if restart:
            for path in (self.metrics_path, self.summary_path):
                path.unlink(missing_ok=True)
            for path in (self.checkpoint_dir, self.tb_dir, self.steps_dir):
                shutil.rmtree(path, ignore_errors=True)
        atomic_write_text(self.config_path, json.dumps(new, indent=2, sort_keys=True) + "\n")

    # metrics.jsonl -------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records, in epoch order.

        A line that is not a JSON record with an integer "epoch" (a torn write, a damaged disk
        block) is skipped with a warning; the lines after it are kept. Of two records of one
        epoch the later wins.
        """
        if not self.metrics_path.exists():
            return []
        by_epoch: dict[int, dict[str, Any]] = {}
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                epoch = record["epoch"]
                if isinstance(epoch, bool) or not isinstance(epoch, int):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                if number < len(lines) or line.strip():
                    warnings.warn(f"{self.metrics_path}: line {number} is not a metrics record; "
                                  "skipped (the other lines are kept)", RunFilesWarning,
                                  stacklevel=2)
                continue
            by_epoch[epoch] = record
        return [by_epoch[e] for e in sorted(by_epoch)]

    def truncate_metrics(self, after_epoch: int,
                         recovered: Mapping[int, Mapping[str, Any]] | None = None) -> None:
        """Keeps only epochs <= `after_epoch` (those of the checkpoint being resumed).

        Epochs up to `after_epoch` that metrics.jsonl lacks (the file deleted, a line damaged)
        are taken from `recovered`, the records the checkpoints keep
        (`checkpointing.stored_records`); those neither has are reported in a warning. The file
        is rewritten (a damaged line is gone from it).

        The kept epochs are also logged to TensorBoard again, in a new event file whose purge step
        hides every older event: tensorboardX writes from a background queue that its `flush`
        does not drain, so a killed run can lose its last epochs there while metrics.jsonl, the
        record of truth, has them.
        """
        if not self.primary:
            return
        for epoch, path in self._step_files().items():
            if epoch > after_epoch:
                path.unlink()
        by_epoch = {r["epoch"]: r for r in self.read_metrics() if r["epoch"] <= after_epoch}
        for epoch, record in (recovered or {}).items():
            if epoch <= after_epoch and epoch not in by_epoch:
                by_epoch[epoch] = dict(record)
        missing = [e for e in range(1, after_epoch + 1) if e not in by_epoch]
        if missing:
            warnings.warn(f"{self.metrics_path}: the records of epochs {_ranges(missing)} are "
                          "lost (neither metrics.jsonl nor a kept checkpoint has them)",
                          RunFilesWarning, stacklevel=2)
        kept = [by_epoch[e] for e in sorted(by_epoch)]
        text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in kept)
        if kept or self.metrics_path.exists():
            atomic_write_text(self.metrics_path, text)
        if kept:
            self.close()
            for record in kept:
                self._log_tensorboard(record, purge_step=int(kept[0]["epoch"]))

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        if not self.primary:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._log_tensorboard(record)

    # steps/ -------------------------------------------------------------------------------------
    def _step_files(self) -> dict[int, pathlib.Path]:
        if not self.steps_dir.is_dir():
            return {}
        return {int(p.stem.split("_")[1]): p for p in self.steps_dir.glob("epoch_*.npz")}

    def write_steps(self, epoch: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Saves one epoch's per-step arrays (dtypes kept) as steps/epoch_<epoch>.npz, atomically."""
        if not self.primary:
            return
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        path = self.steps_dir / f"epoch_{epoch:05d}.npz"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def read_steps(self) -> dict[int, dict[str, np.ndarray]]:
        """{epoch: {name: per-step array}} of the epochs `write_steps` saved (no pickle)."""
        out = {}
        for epoch, path in sorted(self._step_files().items()):
            with np.load(path, allow_pickle=False) as f:
                out[epoch] = {k: f[k] for k in f.files}
        return out

    # other files ---------------------------------------------------------------------------------
    def write_json(self, name: str, value: Any) -> None:
        """Writes <workdir>/<name> (a study's own record of the run, e.g. its state at init)."""
        if self.primary:
            atomic_write_text(self.workdir / name, json.dumps(to_jsonable(value), indent=1) + "\n")

    def read_json(self, name: str) -> Any:
        """Reads back a file `write_json` wrote, or None if there is none."""
        path = self.workdir / name
        return json.loads(path.read_text()) if path.exists() else None

    def previous_wall_time(self, epoch: int) -> float:
        """Wall time already spent up to `epoch` (so a resumed run reports cumulative time)."""
        for r in reversed(self.read_metrics()):
            if r["epoch"] <= epoch:
                return float(r.get("wall_time_s", 0.0))
        return 0.0

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if not self.primary:
            return
        atomic_write_text(self.summary_path,
                          json.dumps(to_jsonable(summary), indent=2, sort_keys=True) + "\n")

    # TensorBoard ---------------------------------------------------------------------------------
    def _log_tensorboard(self, record: Mapping[str, Any], purge_step: int | None = None) -> None:
        if not self._tensorboard:
            return
        if self._tb is None:
            SummaryWriter = _import_summary_writer()
            # purge_step drops events a killed run wrote past the epoch we resumed from.
            purge = int(record["epoch"]) if purge_step is None else purge_step
            self._tb = SummaryWriter(str(self.tb_dir), purge_step=purge)
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, int(record["epoch"]))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _import_summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch.

    `tensorboardX.writer` imports torch whenever it is installed (the `bench` extra installs it),
    only to accept torch tensors as values; that costs time and resident memory in every run
    (measured in benchmarks/README.md), for nothing here (we log Python floats). Unless the caller has already imported
    torch, the import of tensorboardX is made to see torch as absent; the block is lifted at once.
    """
    if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class Progress:
    """A tqdm bar over epochs (epoch, loss, accuracy, time left) when stderr is a terminal."""

    def __init__(self, total: int, initial: int = 0, mode: str = "auto"):
        if mode not in PROGRESS_MODES:
            raise ValueError(f"train.progress: unknown {mode!r}; expected one of "
                             f"{sorted(PROGRESS_MODES)}")
        enabled = sys.stderr.isatty() if mode == "auto" else mode == "always"
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="epoch", dynamic_ncols=True)

    def update(self, record: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        shown = (("loss", "train/loss"), ("acc", "train/accuracy"), ("val_loss", "val/loss"),
                 ("val_acc", "val/accuracy"))
        self._bar.set_postfix_str(f"epoch {record['epoch']} " + " ".join(
            f"{label} {record[key]:.4f}" for label, key in shown if key in record), refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
