"""Per-table gradient-norm monitoring for embedding models (the chapter's section 17, Meta DLRM).

"Per-table gradient norm monitoring: if any table exceeds 10x its average, alert the on-call
engineer." A viral item concentrates a whole batch's gradient on one embedding row, so its
table's gradient norm jumps while the global norm, summed over every layer, may barely move.

Pieces:
  * `table_grad_norms(grads, pattern)`: the L2 norm of the gradient of each table (each top-level
    entry of the gradient tree whose name matches `pattern`, "embed_0", "embed_1", ... of
    `models.dlrm.DLRM`); jittable, for any training step that has the gradients.
  * `update_alerts(state, norms)`: one step of the alert rule, pure and jittable: a step alerts on
    a table when its norm exceeds `factor` x the table's running average *before* that step.
  * `epoch_summary(state, norms_seq)`: the rule over an epoch's steps (one `lax.scan`) with the
    per-table mean norm, max norm and number of alerts.
  * `TableGradMonitor`, a `hooks.Hook` for `loop.fit`.

The running average is an exponential moving average with bias correction (Adam's: m_t =
decay m_{t-1} + (1 - decay) x_t, average m_t / (1 - decay^t), t the steps averaged so far), not
a cumulative mean: a production run's gradient scale drifts (learning-rate schedule, the model
converging, the traffic changing) and "its average" should be the recent one; decay 0.99 is a
memory of ~100 steps. The first `warmup` steps of a table never alert (an average of a few steps
is noise). Every finite norm enters the average, a spike too (so a long burst stops alerting as
the average catches up, after ~log(factor)/(1 - decay) steps); a non-finite norm always alerts
and does not enter it; a step marked invalid (skipped by the non-finite guard) is ignored.

How the hook gets the gradients. `Hook.step_metrics(old_state, new_state, metrics)` runs inside
the compiled step but is not given the gradients (`train.train_step`). Under `loop.fit(...,
record_clip=True)` the optimizer state holds the step's `clip_recorder.ClipRecord`, whose
`raw_layer_norms` are the raw (pre-clipping) gradient norms per top-level module: for DLRM, one
per embedding table. `TableGradMonitor.step_metrics` reads those; without record_clip it raises.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical.analysis.activations import module_norms, natural_key
from ml_practical.hooks import EpochEnd, Hook

TABLE_PATTERN = r"embed_\d+"


class TableGradAlert(UserWarning):
    """A table's gradient norm exceeded `factor` x its running average."""


def _matching(names: Sequence[str], pattern: str, what: str) -> list[str]:
    tables = sorted((n for n in names if re.fullmatch(pattern, n)), key=natural_key)
    if not tables:
        raise ValueError(f"{what}: no top-level entry matches the table pattern {pattern!r}; "
                         f"the entries are {sorted(names)}")
    return tables


def table_grad_norms(grads: Mapping[str, Any],
                     pattern: str = TABLE_PATTERN) -> dict[str, jax.Array]:
    """{table: ||grad of the table||_2} for each top-level entry of `grads` matching `pattern`.

    Args:
      grads: a gradient tree keyed by top-level module ("embed_0", "bottom_0", ...), i.e. the
        gradient of `variables["params"]`.
      pattern: a regex the whole table name must match (`re.fullmatch`).

    Returns:
      Scalar float32 norms (jittable: the selection depends only on the tree's keys).

    Raises:
      ValueError: no entry matches.
    """
    tables = _matching(list(grads), pattern, "grads")
    return module_norms({name: grads[name] for name in tables})


class AlertState(NamedTuple):
    """The running averages of the alert rule, per table.

    Attributes:
      moment: {table: m_t}, the uncorrected EMA of the norms.
      count: {table: t}, finite norms averaged so far (float32).
    """

    moment: dict[str, jax.Array]
    count: dict[str, jax.Array]


def init_alerts(tables: Sequence[str]) -> AlertState:
    """The state before any step, for these table names."""
    return AlertState({t: jnp.zeros((), jnp.float32) for t in tables},
                      {t: jnp.zeros((), jnp.float32) for t in tables})


def running_average(state: AlertState, decay: float) -> dict[str, jax.Array]:
    """{table: bias-corrected EMA}; NaN for a table with no step averaged yet."""
    return {t: jnp.where(c > 0, state.moment[t] / (1.0 - decay ** jnp.maximum(c, 1.0)), jnp.nan)
            for t, c in state.count.items()}


def check_rule(factor: float, decay: float, warmup: int) -> None:
    """ValueError naming the first bad argument of the alert rule."""
    if not factor > 0:
        raise ValueError(f"factor: {factor!r}; expected a number > 0")
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay: {decay!r}; expected a number in (0, 1)")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 1:
        raise ValueError(f"warmup: {warmup!r}; expected an integer >= 1")


def update_alerts(state: AlertState, norms: Mapping[str, jax.Array], *, factor: float = 10.0,
                  decay: float = 0.99, warmup: int = 10,
                  valid: jax.Array | bool = True) -> tuple[AlertState, dict[str, jax.Array]]:
    """One step of the rule: alert where norm > factor x (the table's average before this step).

    Args:
      state: the averages so far (`init_alerts`).
      norms: {table: this step's gradient norm} (the tables of `state`).
      factor: the alert threshold (the chapter's 10).
      decay: the EMA's decay in (0, 1).
      warmup: steps averaged before a table may alert (>= 1).
      valid: False for a step to ignore (a skipped step: no alert, averages unchanged).

    Returns:
      (new state, {table: bool alert}); pure and jittable.
    """
    check_rule(factor, decay, warmup)
    if set(norms) != set(state.count):
        raise ValueError(f"norms: tables {sorted(norms)}; the state tracks {sorted(state.count)}")
    average = running_average(state, decay)
    valid = jnp.asarray(valid, bool)
    moment, count, alerts = {}, {}, {}
    for t, x in norms.items():
        x = jnp.asarray(x, jnp.float32)
        finite = jnp.isfinite(x)
        spike = (state.count[t] >= warmup) & (x > factor * average[t])
        alerts[t] = valid & (spike | ~finite)
        take = valid & finite
        moment[t] = jnp.where(take, decay * state.moment[t] + (1.0 - decay) * x, state.moment[t])
        count[t] = state.count[t] + take.astype(jnp.float32)
    return AlertState(moment, count), alerts


@functools.partial(jax.jit, static_argnames=("factor", "decay", "warmup"))
def _scan(state, norms_seq, valid_seq, *, factor, decay, warmup):
    def body(s, inputs):
        norms, valid = inputs
        before = running_average(s, decay)
        s, alerts = update_alerts(s, norms, factor=factor, decay=decay, warmup=warmup,
                                  valid=valid)
        return s, (alerts, before)
    return jax.lax.scan(body, state, (norms_seq, valid_seq))


def epoch_summary(state: AlertState, norms_seq: Mapping[str, Any], valid: Any = None, *,
                  factor: float = 10.0, decay: float = 0.99,
                  warmup: int = 10) -> tuple[AlertState, dict[str, Any]]:
    """The alert rule over an epoch's steps, and what to log about each table.

    Args:
      state: the averages before the epoch (`init_alerts` for the first).
      norms_seq: {table: (T,) norms of the epoch's steps, in order}.
      valid: (T,) bool, the steps to count (default all).
      factor, decay, warmup: as in `update_alerts`.

    Returns:
      (state after the epoch, summary) with summary = {table: {"mean", "max" (over the valid
      finite steps; NaN if none), "alerts" (count), "alert_steps" (indices into the epoch),
      "alert_norms", "alert_averages" (the average each alert was compared with)}}.
    """
    norms_seq = {t: np.asarray(v, np.float32).reshape(-1) for t, v in norms_seq.items()}
    steps = {v.shape[0] for v in norms_seq.values()}
    if len(steps) != 1:
        raise ValueError(f"norms_seq: the tables have different step counts {sorted(steps)}")
    (n,) = steps
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    if valid.shape[0] != n:
        raise ValueError(f"valid: {valid.shape[0]} flags for {n} steps")
    state, (alerts, before) = _scan(state, norms_seq, valid, factor=float(factor),
                                    decay=float(decay), warmup=int(warmup))
    alerts, before = jax.device_get((alerts, before))
    summary = {}
    for t in sorted(norms_seq, key=natural_key):
        x = norms_seq[t]
        ok = valid & np.isfinite(x)
        hit = np.flatnonzero(alerts[t])
        summary[t] = {"mean": float(x[ok].mean()) if ok.any() else float("nan"),
                      "max": float(x[ok].max()) if ok.any() else float("nan"),
                      "alerts": int(hit.size), "alert_steps": hit.tolist(),
                      "alert_norms": x[hit].tolist(), "alert_averages": before[t][hit].tolist()}
    return state, summary


class TableGradMonitor(Hook):
    """Records each table's gradient norm every step and alerts on spikes (module docstring).

    Needs `loop.fit(..., record_clip=True)` (the per-layer raw norms come from the clip record;
    `fit_seeds` does not record them). Each epoch adds to the run's record, per table t:
    "table_alerts/<t>" (steps over factor x the running average), "table_grad_norm_mean/<t>" and
    "table_grad_norm_max/<t>"; each alert is kept in `alerts` (epoch, step within the epoch,
    table, norm, average) and, with `warn`, reported as a `TableGradAlert` warning. The averages
    carry over epochs in this object; a run resumed from a checkpoint starts them afresh (and
    warms up again).

    Args:
      factor, decay, warmup: the rule (`update_alerts`).
      pattern: the regex of the table names.
      warn: emit a warning per table and epoch with alerts.
    """

    metric_prefixes = ("table_alerts/", "table_grad_norm_mean/", "table_grad_norm_max/")

    def __init__(self, factor: float = 10.0, *, decay: float = 0.99, warmup: int = 10,
                 pattern: str = TABLE_PATTERN, warn: bool = True):
        check_rule(factor, decay, warmup)
        self.factor, self.decay, self.warmup = float(factor), float(decay), int(warmup)
        self.pattern, self.warn = pattern, warn
        self.alerts: list[dict[str, Any]] = []
        self._states: dict[int, AlertState] = {}

    def step_metrics(self, old_state, new_state, metrics) -> dict[str, Any]:
        """{"table_grad_norm": {table: raw gradient norm}} of the step, inside the compiled step."""
        del old_state, metrics
        from ml_practical.clip_recorder import find_record

        try:
            record = find_record(new_state.opt_state)
        except ValueError:
            raise ValueError("TableGradMonitor: the optimizer state records no per-layer gradient "
                             "norms; train with loop.fit(..., record_clip=True)") from None
        norms = record.raw_layer_norms
        return {"table_grad_norm": {t: norms[t] for t in
                                    _matching(list(norms), self.pattern, "TableGradMonitor")}}

    def metrics(self, event: EpochEnd) -> None:
        for i, (steps, record) in enumerate(zip(event.step_metrics, event.records)):
            if steps is None or record is None:
                continue
            norms = steps["table_grad_norm"]
            valid = None
            if "skipped" in steps:  # a skipped step's record repeats the last applied step's
                valid = np.asarray(steps["skipped"]).reshape(-1) == 0
            state = self._states.get(i) or init_alerts(list(norms))
            self._states[i], summary = epoch_summary(
                state, norms, valid, factor=self.factor, decay=self.decay, warmup=self.warmup)
            for t, s in summary.items():
                record[f"table_alerts/{t}"] = s["alerts"]
                record[f"table_grad_norm_mean/{t}"] = s["mean"]
                record[f"table_grad_norm_max/{t}"] = s["max"]
                for step, norm, avg in zip(s["alert_steps"], s["alert_norms"],
                                           s["alert_averages"]):
                    self.alerts.append({"run": i, "epoch": event.epoch, "step": step, "table": t,
                                        "norm": norm, "average": avg})
                if self.warn and s["alerts"]:
                    warnings.warn(f"epoch {event.epoch}: table {t}'s gradient norm exceeded "
                                  f"{self.factor:g}x its running average at {s['alerts']} "
                                  f"step(s) (max {s['max']:.4g}, epoch mean {s['mean']:.4g})",
                                  TableGradAlert, stacklevel=2)
