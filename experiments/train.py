"""Train one config: python -m experiments.train --config=experiments/configs/mnist_mlp.py --workdir=...

Any field can be overridden: --config.optim.learning_rate=3e-4 --config.model.norm=layer.
The whole config is checked before anything is written: a misspelt field (on the command line or
in the file) or a bad value is refused in one line naming the field and what it allows.

Several processes (hosts), data parallel over all their devices: run the same command on every
host, adding where process 0 listens and which process this is,

  python -m experiments.train --config=... --workdir=/shared/run \
      --coordinator_address=host0:1234 --num_processes=2 --process_id=0   # on host0
  python -m experiments.train --config=... --workdir=/shared/run \
      --coordinator_address=host0:1234 --num_processes=2 --process_id=1   # on host1

or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID instead of the flags. Under
SLURM (srun), Open MPI (mpirun) or on a Cloud TPU pod, pass --distributed=auto and JAX finds all
three itself. The workdir must be on a filesystem every host sees (orbax writes one checkpoint
together); process 0 alone writes config.json, metrics.jsonl, summary.json and the TensorBoard
events. With none of this given, the run is one process on this host's devices.
"""

import json
import os

from absl import flags

from experiments import cli
from ml_practical import distributed

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 in a multi-process run (default: $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0 = primary (default: $JAX_PROCESS_ID).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "flags", ["flags", "auto"],
    "flags: join a cluster only if the three flags / variables above are given (else one "
    "process). auto: let jax.distributed detect the cluster (SLURM, Open MPI, Cloud TPU).")


def _from_env(value, name, kind=str):
    if value is not None:
        return value
    text = os.environ.get(name)
    return kind(text) if text not in (None, "") else None


def main(argv):
    run = cli.start(argv, "experiments.train", lock=False)  # loop.fit locks it (process 0)
    # Before anything touches a device: the device list is fixed when the backend starts.
    distributed.initialize(
        _from_env(_COORDINATOR.value, "JAX_COORDINATOR_ADDRESS"),
        _from_env(_NUM_PROCESSES.value, "JAX_NUM_PROCESSES", int),
        _from_env(_PROCESS_ID.value, "JAX_PROCESS_ID", int),
        auto_detect=_DISTRIBUTED.value == "auto")
    from ml_practical import loop  # after initialize; importing it starts no backend, but be safe

    result = loop.fit(run.cfg, run.workdir)
    if distributed.is_primary():
        keys = ("test/accuracy", "test/loss", "best_epoch", "epochs_run", "stop_reason",
                "wall_time_s")
        print(json.dumps({k: result.summary[k] for k in keys if k in result.summary}))


if __name__ == "__main__":
    cli.run(main)
