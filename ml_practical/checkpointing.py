"""Orbax checkpoints that back early stopping: resumable, checksummed, two retention sets.

Each epoch saves one orbax step (step number = epoch) holding two items:

  state  the `TrainState` (params, batch_stats, opt_state, step, key), via `StandardSave`;
  meta   JSON: epoch, the early-stopping state, the run of consecutive skipped steps, the data
         position, the resolved config, seed, library versions and a SHA-256 of the saved state.

Retention is orbax's `AnyPreservationPolicy([LatestN(keep_latest), BestN(keep_best)])`: the latest
N steps for resuming and the best K for restoring at the end. Three orbax traps, each pinned by a
test in tests/test_checkpointing.py:

* `BestN` sorts ascending and keeps the *last* n, i.e. the largest values, unless `reverse=True`;
* the metrics that `BestN` ranks by are only written to disk when `CheckpointManagerOptions.best_fn`
  is set: without it a restarted manager sees no metrics and its BestN keeps everything (or, with
  `keep_checkpoints_without_metrics=False`, nothing);
* `preservation_policy` cannot be combined with `max_to_keep` (orbax raises ValueError).

"Best" is early stopping's notion of best (min_delta, baseline, start_from_epoch included), not the
raw metric: the rank saved with each step is the epoch when early stopping called it an
improvement and -1 otherwise, so BestN keeps exactly the K most recent improvements, and the
checkpoint `EarlyStopping` points at can never be evicted by a step with a lower raw value that
early stopping rejected.

Integrity: orbax restores a data file with flipped bytes without complaint, so every restore
recomputes the SHA-256 of the restored state and compares it with the one in `meta`. A step that
fails (unreadable, truncated, missing files, missing metadata, checksum mismatch) is reported with
a warning naming the step and the damage, moved aside to `damaged/<step>-<reason>` (kept for a
post-mortem, out of orbax's sight), and the previous step is tried. Temporary directories left by a
killed save are removed when the manager opens (`cleanup_tmp_directories=True`).

Several processes: every process calls `save` and `restore` (orbax writes each array's shards from
the processes that hold them and synchronises them; the checkpoint directory must be on a
filesystem they all see). `meta`, checksum included, is written once, by process 0 (orbax's
`JsonSave` writes on the primary host only), and read by all. Every process verifies what it
restored, and a step counts as damaged if it is damaged for any of them, so all fall back to the
same step; process 0 alone moves it aside while the others wait.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import time
import warnings
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from ml_practical import distributed
from ml_practical import run_files
from ml_practical.config import Config

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml_practical")
# Room a step needs beyond its arrays' bytes: orbax's metadata, the OCDBT manifest, our meta.
SPACE_MARGIN_BYTES = 1 << 20


class CheckpointDamageWarning(UserWarning):
    """A checkpoint step was found damaged and skipped."""


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _host_value(leaf: Any) -> Any:
    """The whole value of a leaf on this host, also for an array split over several processes."""
    if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or leaf.is_fully_replicated):
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(leaf, tiled=True)
    return jax.device_get(leaf)


def state_checksum(tree: Any) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes, in tree order (host-side).

    Every process computes the same value (the whole of each array, gathered if need be).
    """
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.tree.map(_host_value, tree))[0]:
        arr = np.asarray(leaf)
        if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
            arr = np.asarray(jax.random.key_data(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class Restored:
    """A verified checkpoint."""

    epoch: int
    state: Any
    early_stopping: dict[str, Any]
    consecutive_skips: int
    meta: dict[str, Any]


class RunCheckpointer:
    """One run's orbax `CheckpointManager`, with verification and fall-back on restore.

    Args:
      directory: where the steps live (`<workdir>/checkpoints`).
      cfg: the parsed config: stored in every step's metadata; `cfg.checkpoint` gives the two
        retention sets and `cfg.early_stopping.monitor` the metric recorded with each step.
    """

    def __init__(self, directory: os.PathLike, cfg: Config):
        self.keep_latest = cfg.checkpoint.keep_latest
        self.keep_best = cfg.checkpoint.keep_best
        self.directory = pathlib.Path(directory).absolute()
        self.cfg_json = run_files.to_jsonable(cfg)
        self.monitor, self.mode = cfg.early_stopping.monitor, cfg.early_stopping.mode
        self.asynchronous = cfg.checkpoint.asynchronous
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        rank = lambda metrics: float(metrics["es_rank"])
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=self.keep_latest),
            # Largest rank = most recent early-stopping improvement: reverse=False keeps largest.
            ocp.checkpoint_managers.BestN(get_metric_fn=rank, reverse=False, n=self.keep_best,
                                          keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            best_fn=rank, best_mode="max",  # needed for the metrics to be written at all
            preservation_policy=policy,
            cleanup_tmp_directories=True,
            # Synchronous by default: when `save` returns, the step is on disk. Asynchronous
            # (`checkpoint.asynchronous`): the device arrays are copied to the host before `save`
            # returns and written in the background while the next epoch trains; every restore
            # and `close` waits for the write in flight first.
            enable_async_checkpointing=self.asynchronous,
        )
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    # Saving ---------------------------------------------------------------------------------------
    def save(self, epoch: int, state: Any, early_stopping: Mapping[str, Any],
             record: Mapping[str, Any], consecutive_skips: int = 0, *,
             improved: bool | None = None,
             history: Sequence[Mapping[str, Any]] = ()) -> None:
        """Saves epoch `epoch` (atomic: orbax writes a temporary dir, then renames it).

        Blocking unless `checkpoint.asynchronous`; then the write finishes in the background
        (`wait` waits for it).

        `improved`: whether this epoch is the run's new best (default: early stopping's
        `best_epoch == epoch`; the loop passes True for every epoch when early stopping is off).
        `history`: the run's earlier metrics records; those of epochs before `epoch` are stored
        with the step (a few hundred bytes an epoch), so a lost or damaged metrics.jsonl is
        rebuilt whole from the newest step (`stored_records`).
        """
        if improved is None:
            improved = early_stopping.get("best_epoch") == epoch
        meta = {
            "epoch": epoch,
            "data_position": {"next_epoch": epoch + 1, "steps_done": int(state.step)},
            "early_stopping": dict(early_stopping),
            "consecutive_skips": int(consecutive_skips),
            "monitor": self.monitor,
            "monitor_value": run_files.to_jsonable(record.get(self.monitor)),
            "record": run_files.to_jsonable(dict(record)),
            "history": [run_files.to_jsonable(dict(r)) for r in history
                        if isinstance(r.get("epoch"), int) and r["epoch"] < epoch],
            "config": self.cfg_json,
            "seed": self.cfg_json.get("seed"),
            "versions": library_versions(),
            "checksum": state_checksum(state),
            "saved_at": time.time(),
        }
        metrics = {"es_rank": float(epoch if improved else -1)}
        self._check_space(state)
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)
        if not self.asynchronous:
            self._manager.wait_until_finished()

    def _check_space(self, state: Any) -> None:
        """Refuses a save the disk cannot hold, before orbax starts writing it.

        A write that runs out of space half way fails in orbax's background threads, which log
        the error once per array; checked here, a full disk is one `OSError(ENOSPC)` naming the
        directory and the free space, and no partial step is left behind. (Free space is
        measured when the save starts; another process filling the disk meanwhile still gets
        orbax's error.) Every process checks, and all refuse if one must.
        """
        need = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state)
                   if hasattr(x, "dtype")) + SPACE_MARGIN_BYTES
        free = shutil.disk_usage(self.directory if self.directory.exists()
                                 else self.directory.parent).free
        if not distributed.all_agree(free >= need):
            state_mib = (need - SPACE_MARGIN_BYTES) / 2**20
            raise OSError(errno.ENOSPC, f"{self.directory}: a checkpoint needs about "
                          f"{max(state_mib, 0.1):.1f} MiB (and a {SPACE_MARGIN_BYTES >> 20} MiB "
                          f"margin) and the disk has {_human_bytes(free)} free",
                          str(self.directory))

    def wait(self) -> None:
        """Returns when every save is on disk (at once for synchronous saves)."""
        self._manager.wait_until_finished()

    # Restoring ------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, epoch: int, like: Any) -> Restored:
        """Restores and verifies one step onto the shardings of `like`.

        Before any array is read, the step's stored metadata must name this epoch and this
        config (`run_files.RESTORE_NEUTRAL_FIELDS` aside: how it is shown, checkpointed and placed
        on devices): a step of another run is refused with the list of differences
        (`run_files.ConfigMismatchError`), never taken for damage, and never restored.

        Raises:
          run_files.ConfigMismatchError: the step was written by another config.
          _Damage: the step is damaged (missing or unreadable files, a checksum mismatch, a
            metadata epoch that is not the step's).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        step_dir = self.directory / str(epoch)
        meta = read_meta(step_dir)
        if meta is None:
            raise _Damage("metadata missing or unreadable")
        if meta.get("epoch") != epoch:
            raise _Damage(f"its metadata says epoch {meta.get('epoch')!r}")
        diff = run_files.config_diff(meta.get("config", {}), self.cfg_json,
                                     ignore=run_files.RESTORE_NEUTRAL_FIELDS)
        if diff:
            raise run_files.ConfigMismatchError(
                f"checkpoint step {epoch} in {self.directory} was written by a different "
                "config:\n" + "\n".join(diff) + "\nUse another --workdir, or pass "
                "--config.train.restart=True to delete that run and start over.")
        try:
            out = self._manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for a broken file.
            # orbax wraps tensorstore's error (e.g. 'OUT_OF_RANGE: Error reading
            # "params.dense_0.kernel/0.0" ...') in a generic one that dumps the store's spec:
            # report the innermost cause, which names the array and what is wrong with it.
            while e.__cause__ is not None:
                e = e.__cause__
            first_line = (str(e).splitlines() or [""])[0][:300]
            raise _Damage(f"unreadable ({type(e).__name__}: {first_line})")
        meta = out["meta"]
        if not isinstance(meta, dict) or "checksum" not in meta:
            raise _Damage("metadata missing or incomplete")
        if state_checksum(out["state"]) != meta["checksum"]:
            raise _Damage("checksum mismatch: the data files were modified or corrupted")
        return Restored(epoch=int(meta["epoch"]), state=out["state"],
                        early_stopping=meta["early_stopping"],
                        consecutive_skips=int(meta.get("consecutive_skips", 0)), meta=meta)

    def _restore_first_good(self, candidates: list[int], like: Any) -> Restored | None:
        for epoch in candidates:
            try:
                restored, damage = self.restore(epoch, like), None
            except _Damage as e:
                restored, damage = None, str(e)
            # All processes must agree, or they would go on from different steps.
            if distributed.all_agree(damage is None):
                return restored
            self._quarantine(epoch, damage or "damaged as seen from another process")
        return None

    def restore_latest(self, like: Any) -> Restored | None:
        """The newest step that verifies, falling back step by step; None if there is none."""
        self.wait()
        return self._restore_first_good(sorted(self.all_steps(), reverse=True), like)

    def restore_best(self, like: Any, best_epoch: int | None) -> Restored | None:
        """The step early stopping called best; if it is damaged, the newest good step before it.

        None when there was no best (no finite, eligible evaluation): the caller then keeps the
        last state and reports `best_epoch: null`.
        """
        if best_epoch is None:
            return None
        self.wait()
        candidates = [s for s in sorted(self.all_steps(), reverse=True) if s <= best_epoch]
        return self._restore_first_good(candidates, like)

    def _quarantine(self, epoch: int, reason: str) -> None:
        warnings.warn(f"checkpoint step {epoch} in {self.directory} is damaged: {reason}; "
                      f"falling back to the previous good step", CheckpointDamageWarning,
                      stacklevel=3)
        if distributed.is_primary():
            damaged = self.directory.parent / "damaged"
            damaged.mkdir(exist_ok=True)
            slug = "".join(c if c.isalnum() else "-" for c in reason.split(":")[0])[:40]
            target = damaged / f"{epoch}-{slug}-{int(time.time())}"
            src = self.directory / str(epoch)
            if src.exists():
                shutil.move(str(src), str(target))
        distributed.sync(f"checkpointing:quarantined:{epoch}")
        # Re-read the directory so orbax forgets the step.
        self._manager.close()
        self._manager = self._open()

    def close(self) -> None:
        self._manager.close()


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class _Damage(Exception):
    pass


def read_meta(step_dir: os.PathLike) -> dict[str, Any] | None:
    """A step's stored metadata (plain JSON in <step>/meta/metadata), or None if unreadable."""
    path = pathlib.Path(step_dir) / "meta" / "metadata"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _committed_steps(directory: os.PathLike) -> list[int]:
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def stored_config(directory: os.PathLike) -> dict[str, Any] | None:
    """The config the newest readable step of a checkpoint directory stored, or None.

    What a run's config is when its config.json is gone (`run_files.check_or_write_config`).
    """
    for step in reversed(_committed_steps(directory)):
        meta = read_meta(pathlib.Path(directory) / str(step))
        if meta is not None and isinstance(meta.get("config"), dict):
            return meta["config"]
    return None


def stored_records(directory: os.PathLike) -> dict[int, dict[str, Any]]:
    """{epoch: metrics record} that the kept steps hold, to rebuild lost metrics.jsonl lines.

    Each step stores its own record and the records of the epochs before it (`save`'s
    `history`); a newer step's copy wins. A step whose metadata is not its own epoch's is ignored.
    """
    out: dict[int, dict[str, Any]] = {}
    for step in _committed_steps(directory):
        meta = read_meta(pathlib.Path(directory) / str(step))
        if meta is None or meta.get("epoch") != step:
            continue
        for record in meta.get("history") or []:
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                out[record["epoch"]] = record
        if isinstance(meta.get("record"), dict):
            out[step] = meta["record"]
    return out
