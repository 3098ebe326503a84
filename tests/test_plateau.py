"""Reduce-on-plateau (optim.plateau_*): the rule against torch's ReduceLROnPlateau on a made-up
sequence, the loop's use of it, exact resumption, and the monitor check."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import config, loop, optim
from tests.conftest import make_tiny_dataset, tiny


def _cfg(**overrides):
    fields = dict(name="sgd", learning_rate=0.1, plateau_factor=0.5)
    fields.update(overrides)
    return config.build(config.OptimConfig, fields)


def _torch_reference(values, factor, patience, min_delta, min_scale, mode):
    """torch.optim.lr_scheduler.ReduceLROnPlateau (threshold_mode='abs', cooldown 0), written
    out: the multiplier after each value."""
    best, bad, scale, out = None, 0, 1.0, []
    for v in values:
        v = v if mode == "min" else -v
        if best is None or v < best - min_delta:
            best, bad = v, 0
        else:
            bad += 1
        if bad > patience:
            scale, bad = max(scale * factor, min_scale), 0
        out.append(scale)
    return out


@pytest.mark.parametrize("mode, patience, min_delta", [("min", 1, 0.0), ("max", 0, 0.05),
                                                       ("min", 2, 0.01)])
def test_the_rule_is_torchs(mode, patience, min_delta):
    values = [1.0, 0.9, 0.95, 0.91, 0.89, 0.88, 0.87, 0.9, 0.95, 0.6, 0.61, 0.62, 0.6]
    cfg = _cfg(plateau_patience=patience, plateau_mode=mode, plateau_min_delta=min_delta,
               plateau_min_scale=0.1)
    tx = optim.make_optimizer(cfg)
    state = tx.init({"w": jnp.zeros(3)})
    got = []
    for v in values:
        state = optim.plateau_step(state, v, cfg)
        got.append(float(optim.plateau_scale(state)))
    np.testing.assert_allclose(got, _torch_reference(values, 0.5, patience, min_delta, 0.1,
                                                     mode), rtol=1e-7)
    # The step multiplies the update by the multiplier.
    u, _ = tx.update({"w": jnp.ones(3)}, state, {"w": jnp.zeros(3)})
    np.testing.assert_allclose(u["w"], -0.1 * got[-1], rtol=1e-6)


def test_the_loop_logs_the_reduced_rate_and_a_resume_is_exact(tmp_path):
    data = make_tiny_dataset()
    cfg = tiny(**{"optim.plateau_factor": 0.5, "optim.plateau_patience": 0,
                  "optim.plateau_monitor": "val/loss", "early_stopping.enabled": False,
                  "optim.learning_rate": 0.05, "train.num_epochs": 5})
    a = loop.fit(cfg, tmp_path / "a", dataset=data)
    scales = [h["lr_scale"] for h in a.history]
    assert scales[0] == 1.0 and min(scales) < 1.0  # it reduced at least once
    want = _torch_reference([h["val/loss"] for h in a.history], 0.5, 0, 0.0, 0.0, "min")
    assert scales[1:] == want[:-1]  # epoch e trains with the multiplier after epoch e - 1
    for h in a.history:
        assert h["lr"] == pytest.approx(0.05 * h["lr_scale"])
    loop.fit(cfg, tmp_path / "b", dataset=data)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "5")  # as if killed during epoch 5
    (tmp_path / "b" / "summary.json").unlink()
    b = loop.fit(cfg, tmp_path / "b", dataset=data)
    assert [h["lr_scale"] for h in b.history] == scales  # epoch 5 retrained from epoch 4's
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        np.testing.assert_array_equal(x, y)


def test_bad_plateau_settings_are_one_line(tmp_path):
    with pytest.raises(config.ConfigError, match="optim.plateau_monitor: 'val/acc'"):
        loop.fit(tiny(**{"optim.plateau_factor": 0.5, "optim.plateau_monitor": "val/acc"}),
                 tmp_path, dataset=make_tiny_dataset())
    with pytest.raises(config.ConfigError, match="optim.plateau_factor"):
        _cfg(l1=1e-3, l1_mode="proximal")
    with pytest.raises(config.ConfigError, match="optim.plateau_factor"):
        _cfg(plateau_factor=1.0)
