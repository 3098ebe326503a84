"""Several processes (hosts) as one data-parallel run: joining the cluster, global arrays, barriers.

JAX's multi-controller model: every process runs the same program, sees every device of the job in
`jax.devices()` but owns only `jax.local_devices()`, and every array a jitted function receives is
a *global* `jax.Array` whose shards live on the devices of all processes. `loop.fit` needs four
things from this module:

* `initialize` joins the cluster (`jax.distributed.initialize`) before any JAX computation;
* `put_global` builds a global array from a numpy array that every process holds in full (the
  device-resident training set, the eval splits, a replicated index array), each process writing
  only the shards on its own devices;
* `is_primary` decides who writes the run files (process 0), and `sync` is the barrier that keeps
  the others from reading or opening a directory before process 0 has written or deleted it;
* `all_agree` turns a per-process verdict (is this checkpoint step intact?) into one that every
  process shares, so no process falls back to another step than the rest.

With one process every function here is a no-op or its single-process equivalent. The library
reads no flags or environment variables: experiments/train.py turns its flags (or the usual
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables) into `initialize`'s
arguments.
"""

from __future__ import annotations

import jax
import numpy as np


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto_detect: bool = False,
               initialization_timeout: int = 300) -> bool:
    """Joins a `jax.distributed` cluster; with nothing given, stays a single process.

    Must run before any other JAX call (the device list is fixed when the backend starts). On CPU
    the cross-process collectives need an implementation: gloo (it ships with jaxlib) unless one
    is chosen already. The setting only concerns the CPU backend, so it is harmless on GPU / TPU.

    Args:
      coordinator_address: "host:port" of process 0, where it starts the coordination service
        (any free port; every process passes the same value).
      num_processes: how many processes the job has.
      process_id: this process's index, 0 .. num_processes - 1 (0 is the primary).
      auto_detect: with the three above None, let `jax.distributed.initialize` detect the cluster
        (SLURM `srun`, Open MPI `mpirun`, Cloud TPU pods; see its documentation).
      initialization_timeout: seconds to wait for every process to connect.

    Returns:
      True if this process joined a cluster, False if it runs alone (nothing was done).

    Raises:
      ValueError: only some of the three arguments are given, or they are inconsistent.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    missing = sorted(k for k, v in given.items() if v is None)
    if len(missing) == 3 and not auto_detect:
        return False
    if missing and not auto_detect:
        raise ValueError(f"distributed: {missing} missing; give all of coordinator_address, "
                         f"num_processes and process_id, none of them (single process), or use "
                         f"auto-detection (SLURM, Open MPI, TPU)")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"distributed.num_processes: {num_processes}; expected >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"distributed.process_id: {process_id}; expected 0 <= process_id < "
                         f"num_processes = {num_processes}")
    # gloo is jax 0.10's default already; older versions default to none (no cross-process CPU
    # collectives). A choice made by the caller (e.g. "mpi") is kept.
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout)
    return True


def is_primary() -> bool:
    """True on process 0, the one that writes the run files (always True with one process)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across all processes (no-op with one). `name` must be unique per barrier."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def all_agree(flag: bool) -> bool:
    """True iff `flag` is True on every process (a logical AND over processes)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
    return bool(np.all(np.asarray(flags)))


def put_global(x: np.ndarray, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """A global `jax.Array` with `sharding` from a numpy array that every process holds in full.

    Each process fills only the shards of its own devices (`jax.make_array_from_callback`), so this
    works for a sharding that spans several processes, replicated or split. With `sharding=None` it
    is `jax.device_put(x)` (the default device).
    """
    if sharding is None:
        return jax.device_put(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
