"""Test helper for tests/test_checkpointing.py: one short training run in its own process.

    python tests/_fault_run.py train   WORKDIR [field=value ...]
    python tests/_fault_run.py restore WORKDIR OUT.npz [field=value ...]

`train` runs `ml_practical.loop.fit` on the tiny digits config of `make_config` (overridden by the
`field=value` pairs, values as Python literals) and, when it returns, writes the state it restored
at the end (`FitResult.state`, the best checkpoint) to WORKDIR/final.npz and the newest
checkpoint's state to WORKDIR/latest.npz. Rerunning the same command resumes.

`restore` restores the newest checkpoint of WORKDIR onto this process's devices (as many as the
config's train.num_devices asks for) and writes its state to OUT.npz.

Fault injection, for the tests only: FAULT_KILL="<point>:<n>" makes the process SIGKILL itself
  epoch:n        in the middle of epoch n (the jitted epoch dispatched, its result not yet read);
  before_save:n  when the save of epoch n starts (its metrics line already written);
  save:n         during the save of epoch n (its files written to orbax's temporary directory,
                 before orbax renames it into place);
  after_save:n   right after the checkpoint of epoch n is on disk.
The patches live here, never in the library.
"""

from __future__ import annotations

import ast
import os
import pathlib
import signal
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def raw_config(**overrides):
    """The digits production recipe made tiny: 32 hidden units, 6 epochs, batch 64.

    The raw `ml_collections.ConfigDict`, as a config file returns it; `make_config` parses it.
    """
    from experiments.configs import digits_mlp

    cfg = digits_mlp.get_config()
    cfg.model.widths = (32,)
    cfg.train.num_epochs = 6
    cfg.train.batch_size = 64
    cfg.train.eval_batch_size = 500
    cfg.train.progress = "never"
    for dotted, value in overrides.items():
        *path, leaf = dotted.split(".")
        node = cfg
        for name in path:
            node = node[name]
        node[leaf] = value
    return cfg


def make_config(**overrides):
    """`raw_config(**overrides)`, parsed and checked (`config.parse`): what `loop.fit` takes."""
    from ml_practical import config

    return config.parse(raw_config(**overrides))


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def state_arrays(state) -> dict[str, np.ndarray]:
    """Every leaf of a TrainState as a host array, keyed by its tree path."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_fault(spec: str) -> None:
    import orbax.checkpoint as ocp

    from ml_practical import checkpointing
    from ml_practical import train as train_lib

    point, _, n = spec.partition(":")
    n = int(n)
    if point == "epoch":
        make = train_lib.make_train_epoch

        def make_killing(*args, **kwargs):
            epoch_fn = make(*args, **kwargs)
            calls = [0]

            def killing_epoch(*a):
                calls[0] += 1
                out = epoch_fn(*a)  # dispatched asynchronously: the epoch is still computing
                if calls[0] == n:
                    _die()
                return out
            return killing_epoch
        train_lib.make_train_epoch = make_killing
    elif point in ("before_save", "save", "after_save"):
        save = checkpointing.RunCheckpointer.save
        finalize = ocp.CompositeCheckpointHandler.finalize
        current = [None]

        def killing_save(self, epoch, *args, **kwargs):
            current[0] = epoch
            if point == "before_save" and epoch == n:
                _die()
            save(self, epoch, *args, **kwargs)
            if point == "after_save" and epoch == n:
                _die()

        def killing_finalize(self, directory):
            # Called with the temporary directory, after every item is written.
            if point == "save" and current[0] == n:
                _die()
            return finalize(self, directory)
        checkpointing.RunCheckpointer.save = killing_save
        ocp.CompositeCheckpointHandler.finalize = killing_finalize
    else:
        raise ValueError(f"FAULT_KILL: unknown point {point!r}; expected one of "
                         "['after_save', 'before_save', 'epoch', 'save']")


def main(argv: list[str]) -> None:
    mode, workdir, *rest = argv
    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from ml_practical import checkpointing, experiment, loop

    if mode == "train":
        cfg = make_config(**parse_overrides(rest))
        if os.environ.get("FAULT_KILL"):
            install_fault(os.environ["FAULT_KILL"])
        result = loop.fit(cfg, workdir)
        np.savez(pathlib.Path(workdir) / "final.npz", **state_arrays(result.state))
        exp = experiment.build_experiment(cfg)
        ckpt = checkpointing.RunCheckpointer(pathlib.Path(workdir) / "checkpoints", cfg)
        latest = ckpt.restore_latest(exp.init_state())
        ckpt.close()
        np.savez(pathlib.Path(workdir) / "latest.npz", **state_arrays(latest.state))
    elif mode == "restore":
        out, *rest = rest
        cfg = make_config(**parse_overrides(rest))
        exp = experiment.build_experiment(cfg)
        ckpt = checkpointing.RunCheckpointer(pathlib.Path(workdir) / "checkpoints", cfg)
        restored = ckpt.restore_latest(exp.init_state())
        ckpt.close()
        n_dev = {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(restored.state.params)}
        np.savez(out, __epoch__=np.asarray(restored.epoch),
                 __devices__=np.asarray(sorted(n_dev)), **state_arrays(restored.state))
    else:
        raise ValueError(f"mode: unknown {mode!r}; expected train or restore")


if __name__ == "__main__":
    main(sys.argv[1:])
