"""Test helper for tests/test_sharding.py: the same training steps on a 4-device and a 1-device mesh.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/_dist_run.py OUT_DIR [field=value ...]

Runs in its own process because the number of CPU devices is fixed when JAX starts. On the digits
config of `_fault_run.make_config` (overridden by the `field=value` pairs; a parsed `Config`) it
builds the experiment (`experiment.build_experiment`) on `train.make_mesh(4)` and on
`train.make_mesh(1)` and, from the same initial state, runs one step and then the rest of epoch 1
through the compiled epoch (`Experiment.epoch_fn`). OUT_DIR receives

  mesh4.npz / mesh1.npz  the state after step 1 ("step1/..." keys) and after the epoch ("end/...")
  info.json              shardings of the 4-device state and batch, all-reduce counts of the two
                         compiled epochs, and the error for a batch size that does not divide by 4
                         (raised by `build_experiment`: the config itself is valid)
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import _fault_run  # noqa: E402


def main(argv: list[str]) -> None:
    out_dir, *rest = argv
    out_dir = pathlib.Path(out_dir)
    import jax
    from jax.sharding import NamedSharding

    from ml_practical import data as data_lib
    from ml_practical import experiment, train

    cfg = _fault_run.make_config(**_fault_run.parse_overrides(rest))
    dataset = data_lib.load_dataset(cfg.data)
    info = {"num_devices": jax.device_count()}
    for n in (4, 1):
        mesh = train.make_mesh(n)
        exp = experiment.build_experiment(cfg, dataset=dataset, mesh=mesh)
        state = exp.init_state()
        idx = exp.batch_indices(1)
        first, later = idx[:1], idx[1:]
        state1, _ = exp.epoch_fn(state, *exp.train_arrays, first)
        arrays = {f"step1/{k}": v for k, v in _fault_run.state_arrays(state1).items()}
        hlo = exp.epoch_fn.lower(state1, *exp.train_arrays, later).compile().as_text()
        end, metrics = exp.epoch_fn(state1, *exp.train_arrays, later)
        arrays.update({f"end/{k}": v for k, v in _fault_run.state_arrays(end).items()})
        arrays["end/loss"] = np.asarray(metrics["loss"])
        val = exp.evaluate(end.params, end.batch_stats, exp.val_split)
        arrays["end/val_loss"] = np.asarray(val["loss"])
        np.savez(out_dir / f"mesh{n}.npz", **arrays)
        info[f"mesh{n}"] = {
            "all_reduce": hlo.count("all-reduce("),
            "param_sharding": sorted({repr(leaf.sharding.spec) for leaf in
                                      jax.tree.leaves(end.params)}),
            "param_devices": sorted({len(leaf.sharding.device_set) for leaf in
                                     jax.tree.leaves(end.params)}),
            "param_fully_replicated": all(leaf.sharding.is_fully_replicated
                                          for leaf in jax.tree.leaves(end.params)),
            "named_sharding": all(isinstance(leaf.sharding, NamedSharding)
                                  for leaf in jax.tree.leaves(end)),
        }
    bad = _fault_run.make_config(**{**_fault_run.parse_overrides(rest), "train.batch_size": 30})
    try:
        experiment.build_experiment(bad, dataset=dataset, mesh=train.make_mesh(4))
        info["bad_batch_error"] = None
    except ValueError as e:
        info["bad_batch_error"] = str(e)
    (out_dir / "info.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1:])
