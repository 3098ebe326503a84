"""Input placement: the training set on the device, or streamed from host memory in chunks.

Two ways to get an epoch's batches to the devices, chosen by `cfg.data.placement`:

* ``"device"``: the whole training set is put on every device once (replicated) and an epoch is one
  jitted `lax.scan` that gathers each batch from it (`train.make_train_epoch`). Fastest; costs the
  training set's bytes on every device.
* ``"host"``: the training set stays a numpy array in host memory and is never `device_put`. An
  epoch's batches (the same rows, `data.batch_indices(seed, epoch, ...)`) are gathered on the host
  in chunks of `cfg.data.chunk_steps` steps, stacked as (K, batch, ...), and each chunk is one
  jitted `lax.scan` running the same scan body and `train_step` as the device epoch
  (`make_train_epoch(..., gather=False)`). A background thread (`prefetch`, queue depth 2) gathers
  and transfers chunk k+1 while chunk k computes. Device memory holds a few chunks, not the set.
* ``"auto"`` (the default): "device" when the training set (images + labels, in bytes) fits
  `cfg.data.device_budget_mb` MiB, else "host". The budget is per device, because the device mode
  replicates the set on each one.

Decisions:

* The host epoch (`make_streamed_epoch`) has the device epoch's signature, (state, images, labels,
  batch_idx) -> (state, per-step metrics), so `train.replay_if_nonfinite` serves both: the non-finite guard
  keeps its semantics, an unguarded pass and, if any step flagged "nonfinite", a guarded replay of
  the whole epoch (re-streamed from the host) from the kept start state. Replaying the epoch, not
  the chunk, keeps the result equal to the device mode's bit for bit (a guarded step and an
  unguarded one are separate compilations and need not round alike).
* The last chunk holds num_batches % chunk_steps steps when that is not zero: the chunk function
  compiles for at most two shapes. Padding the chunk instead would run extra optimizer steps.
* The consumer waits for chunk k-1 before dispatching chunk k+1, so besides the `depth` prefetched
  chunks at most two are on the device: memory is a few chunks (32 x 128 MNIST images: 12.8 MB
  each).

Same results either way: both modes feed `train_step` the same rows in the same order and the same
state, so on CPU the parameters, optimizer state and per-step metrics are bit-identical, not just
within float32 tolerance (tests/test_input_pipeline.py checks `fit` end to end and a replayed
non-finite epoch; on MNIST, 3 epochs of mnist_mlp also end bit-identical). Accelerators are not
tested here; there XLA could fuse the device mode's gather into the first layer and round
differently, so expect float32 tolerance at worst. Only the validation and test splits (small) are
always device-resident: evaluation is the same in both modes.

Multi-process readiness: each chunk is a global array built with
`jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, "data")), local_rows)`, where
each process gathers only the rows of every global batch that its own devices hold (process p of P
takes rows [p*B/P, (p+1)*B/P) of a batch B on the usual process-major mesh; `local_batch_slice`
reads the range off the sharding). With one process that is the whole batch.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ml_practical.config import DataConfig

PREFETCH_DEPTH = 2


@dataclasses.dataclass(frozen=True)
class InputPlacement:
    """Where the training set lives, and why.

    Attributes:
      requested: cfg.data.placement ("auto" | "device" | "host").
      placement: the resolved mode, "device" or "host".
      train_bytes: bytes of the training images plus labels.
      budget_bytes: cfg.data.device_budget_mb in bytes (MiB = 2**20 bytes).
      chunk_steps: steps per host chunk (used in "host" mode only).
    """

    requested: str
    placement: str
    train_bytes: int
    budget_bytes: int
    chunk_steps: int

    def info(self) -> dict[str, Any]:
        """A JSON-serializable summary for summary.json."""
        return dataclasses.asdict(self)


def resolve_placement(cfg_data: DataConfig, train_bytes: int) -> InputPlacement:
    """Resolves `data.placement` "auto" against the training set's size.

    Args:
      cfg_data: the data section (its placement fields are checked by `config.DataConfig`).
      train_bytes: the training set's size in bytes (`train_x.nbytes + train_y.nbytes`).

    Returns:
      An `InputPlacement`; "auto" is "device" iff train_bytes <= device_budget_mb * 2**20.
    """
    budget_bytes = int(cfg_data.device_budget_mb * 2**20)
    placement = cfg_data.placement
    if placement == "auto":
        placement = "device" if train_bytes <= budget_bytes else "host"
    return InputPlacement(requested=cfg_data.placement, placement=placement,
                          train_bytes=int(train_bytes), budget_bytes=budget_bytes,
                          chunk_steps=int(cfg_data.chunk_steps))


# ------------------------------------------------------------------------------------------------
# Prefetching.


_ITEM, _DONE, _ERROR = "item", "done", "error"


def prefetch(items: Iterable[Any], depth: int = PREFETCH_DEPTH) -> Iterator[Any]:
    """Iterates `items` in a background thread, at most `depth` items ahead of the consumer.

    The work of producing an item (here: gathering a chunk on the host and transferring it) runs
    while the consumer computes on the previous one. An exception raised by the producer is
    re-raised in the consumer at the position it occurred (items before it are delivered first).
    When the consumer stops early (break, exception, or `close()` on the returned generator), the
    producer thread is told to stop and joined, so no thread outlives the iteration.

    Args:
      items: any iterable; it is iterated in the background thread only.
      depth: queue size (>= 1).

    Returns:
      A generator yielding the items of `items` in order.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"prefetch: depth={depth!r}; expected an integer >= 1")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message) -> bool:
        # A bounded wait, so a producer blocked on a full queue notices that the consumer left.
        while not stop.is_set():
            try:
                q.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((_ITEM, item)):
                    return
            put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put((_ERROR, e))

    thread = threading.Thread(target=produce, name="ml_practical-prefetch", daemon=True)

    def consume():
        thread.start()
        try:
            while True:
                kind, value = q.get()
                if kind == _DONE:
                    return
                if kind == _ERROR:
                    raise value
                yield value
        finally:
            stop.set()
            thread.join()

    return consume()


# ------------------------------------------------------------------------------------------------
# Host-resident batches.


def chunk_sharding(mesh: Mesh) -> NamedSharding:
    """(K, batch, ...) chunks: steps unsharded, each batch split over the mesh axis "data"."""
    return NamedSharding(mesh, P(None, "data"))


def local_batch_slice(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> slice:
    """The rows of axis 1 (the batch) that this process's devices hold under `sharding`.

    With P processes on a process-major mesh this is [p*B/P, (p+1)*B/P); with one process, [0, B).

    Raises:
      ValueError: the process's rows are not one contiguous range (a mesh this module does not
        support: reorder the devices so each process's are adjacent on "data").
    """
    size = global_shape[1]
    ranges = sorted({idx[1].indices(size)[:2]
                     for idx in sharding.addressable_devices_indices_map(global_shape).values()})
    start, stop = ranges[0][0], ranges[0][1]
    for lo, hi in ranges[1:]:
        if lo != stop:
            raise ValueError(f"input_pipeline: this process holds batch rows {ranges}, not one "
                             f"contiguous range; order the mesh's devices by process")
        stop = hi
    return slice(start, stop)


def host_chunks(images: np.ndarray, labels: np.ndarray, batch_idx: np.ndarray, chunk_steps: int,
                sharding: jax.sharding.Sharding) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Yields an epoch's batches as global (K, batch, ...) arrays, K = chunk_steps (last: fewer).

    Args:
      images, labels: the host-resident training set (numpy, N rows).
      batch_idx: (num_batches, batch) int rows of the epoch (`data.batch_indices`).
      chunk_steps: steps per chunk; the last chunk holds num_batches % chunk_steps steps when that
        is not zero (one extra compilation of the chunk function, for that shape).
      sharding: the chunk sharding (`chunk_sharding(mesh)`).

    Returns:
      A generator of (images, labels) jax arrays of shapes (k, batch, *image_shape) and (k, batch).
    """
    batch_idx = np.asarray(batch_idx)
    num_batches, batch = batch_idx.shape
    cols = local_batch_slice(sharding, (chunk_steps, batch))
    for k0 in range(0, num_batches, chunk_steps):
        rows = batch_idx[k0:k0 + chunk_steps, cols]
        k = rows.shape[0]
        # np.take with a 2-D index returns the (k, local batch, ...) stack in one gather.
        local_x = np.take(images, rows, axis=0)
        local_y = np.take(labels, rows, axis=0)
        yield (jax.make_array_from_process_local_data(sharding, local_x,
                                                      (k, batch, *images.shape[1:])),
               jax.make_array_from_process_local_data(sharding, local_y, (k, batch)))


def make_streamed_epoch(train_chunk: Callable, mesh: Mesh, chunk_steps: int,
                        depth: int = PREFETCH_DEPTH) -> Callable:
    """Returns `epoch(state, images, labels, batch_idx) -> (state, metrics)` for host-resident data.

    Same signature and result as `train.make_train_epoch`'s epoch, so `train.replay_if_nonfinite` (the
    unguarded pass and guarded replay) and `Experiment` use either unchanged; the difference is that
    `images`/`labels` are numpy arrays on the host and the epoch runs as a sequence of chunks.

    Args:
      train_chunk: `make_train_epoch(..., gather=False)`: (state, images (K, B, ...), labels (K, B))
        -> (state, per-step metrics of length K).
      mesh: the device mesh (axis "data").
      chunk_steps: steps per chunk.
      depth: prefetch queue depth.

    Returns:
      The epoch function. Its metrics are numpy arrays of length num_batches (the chunks'
      concatenated), fetched once at the end of the epoch.
    """
    sharding = chunk_sharding(mesh)

    def epoch(state, images, labels, batch_idx):
        if len(batch_idx) == 0:
            raise ValueError("input_pipeline: an epoch needs at least one batch")
        chunks = prefetch(host_chunks(images, labels, np.asarray(batch_idx), chunk_steps,
                                      sharding), depth)
        outs = []
        try:
            for chunk_x, chunk_y in chunks:
                state, metrics = train_chunk(state, chunk_x, chunk_y)  # asynchronous dispatch
                outs.append(metrics)
                # Wait for chunk k-1 before taking chunk k+1: at most two chunks queued on the
                # device besides the prefetched ones, so device memory stays a few chunks.
                if len(outs) >= 2:
                    jax.block_until_ready(outs[-2])
        finally:
            chunks.close()
        host = jax.device_get(outs)
        return state, {name: np.concatenate([m[name] for m in host]) for name in host[0]}

    return epoch

