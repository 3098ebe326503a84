"""Layer-sequential unit-variance initialization (LSUV; Mishkin & Matas 2016; chapter 12.1.6).

Data-dependent: it needs the model and a batch, so it takes `(apply_fn, variables, batch)` and
returns new variables instead of being a `(key, shape)` initializer. `layer_output_variances` is the
statistic it drives, usable on its own to measure any model's per-layer output variance.
`lsuv_nnx` / `layer_output_variances_nnx` are the same algorithm (one loop, `_lsuv_loop`) for Flax
NNX models, which they change in place.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ml_practical.initializers import _check_positive, _work_dtype, orthogonal
from ml_practical.models import kernel_layers

Array = jax.Array



def _check_layer_filter(layer_filter: Callable[[str], bool] | None) -> None:
    if layer_filter is not None and not callable(layer_filter):
        raise ValueError(f"layer_filter: {layer_filter!r} is not callable; expected None or a "
                         "function (layer name like 'dense_0' or 'block/conv') -> bool")


def _layer_name(path: Sequence[str]) -> str:
    return "/".join(path) if path else "(root)"  # the model itself is a Dense/Conv


def _get_path(tree: Any, path: Sequence[str]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _set_kernel(params: Any, path: Sequence[str], kernel: Array) -> Any:
    """A copy of the nested params dict with params[path]["kernel"] replaced (others shared)."""
    if not path:
        return {**params, "kernel": kernel}
    head, *rest = path
    return {**params, head: _set_kernel(params[head], rest, kernel)}


def _make_variance_fn(apply_fn: Callable, paths: Sequence[tuple[str, ...]]) -> Callable:
    """Jitted `variables, batch -> (len(paths),) float32` output variance of each layer."""
    wanted = set(paths)

    def capture(module, method_name):
        return method_name == "__call__" and tuple(module.path) in wanted

    @jax.jit
    def variances(variables, batch):
        # mutable=True: every collection may be written (BatchNorm in train mode updates its
        # running statistics, MLP sows); the updates are dropped, only intermediates are read.
        _, state = apply_fn(variables, batch, capture_intermediates=capture, mutable=True)
        out = []
        for path in paths:
            y = _get_path(state["intermediates"], path)["__call__"][0]  # first call's output
            if not isinstance(y, jax.Array):
                raise ValueError(f"lsuv: layer {_layer_name(path)!r} returned {type(y).__name__}, "
                                 "not an array; LSUV needs the layer's output tensor")
            out.append(jnp.var(y.astype(jnp.float32)))
        return jnp.stack(out)

    return variances


def _check_lsuv_args(target_var, tol, max_iter, key, orthogonal_start, layer_filter) -> None:
    _check_positive("target_var", target_var)
    _check_positive("tol", tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer >= 1, got {max_iter!r}")
    if orthogonal_start and key is None:
        raise ValueError("key: required when orthogonal_start=True (the orthogonal kernels are "
                         "drawn from it); pass a jax.random key or orthogonal_start=False")
    _check_layer_filter(layer_filter)


def _lsuv_loop(paths: Sequence[tuple[str, ...]], params: Any,
               measure: Callable[[Any, int], float], *, target_var: float, tol: float,
               max_iter: int, key: Array | None,
               orthogonal_start: bool) -> tuple[Any, list[dict[str, Any]]]:
    """The paper's Algorithm 1 on a nested params dict, whatever the module API (`lsuv`).

    `measure(params, i)` is the output variance of layer `paths[i]` with those params.
    Returns (new params, report).
    """
    if orthogonal_start:
        draw = orthogonal()
        for i, path in enumerate(paths):
            kernel = _get_path(params, path)["kernel"]
            params = _set_kernel(params, path,
                                 draw(jax.random.fold_in(key, i), kernel.shape, kernel.dtype))

    report = []
    for i, path in enumerate(paths):
        var = var_before = measure(params, i)
        total_scale, iterations = 1.0, 0
        # Stop on a zero or non-finite variance: no rescaling can fix it.
        while (abs(var - target_var) >= tol and iterations < max_iter
               and math.isfinite(var) and var > 0):
            factor = math.sqrt(target_var / var)
            kernel = _get_path(params, path)["kernel"]
            params = _set_kernel(params, path,
                                 (kernel.astype(_work_dtype(kernel.dtype)) * factor)
                                 .astype(kernel.dtype))
            total_scale *= factor
            iterations += 1
            var = measure(params, i)
        report.append({"layer": _layer_name(path), "var_before": var_before, "var_after": var,
                       "iterations": iterations, "scale": total_scale,
                       "converged": bool(abs(var - target_var) < tol)})
    return params, report


def layer_output_variances(apply_fn: Callable, variables: Any, batch: Any, *,
                           layer_filter: Callable[[str], bool] | None = None) -> dict[str, float]:
    """Variance of each kernel layer's output (Dense/Conv output, before any norm or activation).

    The statistic LSUV drives to its target: the variance of all entries of the layer's output
    tensor on `batch` (over samples, positions and units together, as Mishkin & Matas 2016 measure
    a layer's output blob). Layers are the modules owning a param named "kernel" (nn.Dense,
    nn.Conv, nn.DenseGeneral, ...), in forward order.

    Args:
      apply_fn: `model.apply` or a partial of it (e.g. `functools.partial(model.apply,
        train=False)`); it is called as `apply_fn(variables, batch, capture_intermediates=...,
        mutable=True)`.
      variables: the model's variables, with a "params" collection.
      batch: the model's input, passed as apply_fn's second positional argument.
      layer_filter: optional `name -> bool` keeping a subset of layers; a layer's name is its
        module path joined by "/" (e.g. "dense_3", "head", "layers_0").

    Returns:
      {layer name: variance} in forward order.
    """
    _check_layer_filter(layer_filter)
    paths = [p for p in kernel_layers(apply_fn, variables, batch)
             if layer_filter is None or layer_filter(_layer_name(p))]
    if not paths:
        return {}
    values = jax.device_get(_make_variance_fn(apply_fn, paths)(variables, batch))
    return {_layer_name(p): float(v) for p, v in zip(paths, values)}


def lsuv(apply_fn: Callable, variables: Any, batch: Any, target_var: float = 1.0,
         tol: float = 0.1, max_iter: int = 10, *, key: Array | None = None,
         orthogonal_start: bool = True,
         layer_filter: Callable[[str], bool] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016; chapter 12.1.6).

    The paper's Algorithm 1, for any flax model:

      1. Re-draw every kernel as a random orthogonal matrix (Saxe et al. 2014; `orthogonal()`,
         conv kernels flattened to (prod(shape[:-1]), out)).
      2. For each layer in forward order, with the layers before it already fixed: measure the
         variance v of its output on `batch`; while |v - target_var| >= tol and fewer than
         `max_iter` rescalings were made, multiply its kernel by sqrt(target_var / v) and measure
         again.

    The measured output is the kernel layer's own output (a Dense's x W + b, before any norm or
    activation), captured with flax's `capture_intermediates`, so no model code has to `sow`
    anything; its variance is taken over all entries of the output tensor, as in the paper.
    Biases are left alone. Without a bias (or with a zero bias, the usual init) the output is
    linear in the kernel, so one rescaling is exact and later layers are measured after it;
    a non-zero bias is why the loop exists. `tol` is absolute, |v - target_var| < tol, the
    paper's Tol_var (0.1) and T_max (10) being the defaults.

    Two departures from the chapter's pseudo-code (`lsuv_init`, "Extension: LSUV
    Implementation"): it divides the weights by sqrt(v), which aims at variance 1 whatever
    `target_var` says, so with target_var != 1 it can never stop early; here the factor is
    sqrt(target_var / v). And a layer whose output variance is 0 or not finite (e.g. a dead
    input) is left as it is and reported as not converged instead of being divided by zero.

    BatchNorm. `apply_fn` decides the mode. The recommended `partial(model.apply, train=False)`
    normalizes with the running statistics, which right after init are mean 0 and variance 1,
    i.e. BN is (nearly) the identity: every Dense is measured before its BN, and the next layer
    sees the variance LSUV has just set, exactly as in the network without BN. With
    `train=True` BN uses batch statistics, so each layer's input is re-normalized and every
    layer converges in one step independently of the others. Either way the running statistics
    (and every collection other than the kernels) come back exactly as given: LSUV applies the
    model with `mutable=True` and discards the updates.

    Args:
      apply_fn: `model.apply` or a partial of it (bind `train=False` for library models); it is
        called as `apply_fn(variables, batch, capture_intermediates=..., mutable=True)`.
      variables: the model's variables (at least "params"), e.g. from `model.init`.
      batch: a representative input batch (the paper uses one mini-batch; a few hundred
        samples give a variance accurate to a few %), apply_fn's second positional argument.
      target_var: the output variance to reach, > 0.
      tol: absolute tolerance on the variance, > 0.
      max_iter: most rescalings per layer, an integer >= 1.
      key: PRNG key for the orthogonal start (layer i uses `fold_in(key, i)`); required when
        `orthogonal_start` is True.
      orthogonal_start: re-draw the kernels orthogonally first (the paper's step 1); False keeps
        the given kernels and only rescales them.
      layer_filter: optional `name -> bool` selecting the layers LSUV touches (names as in
        `layer_output_variances`, e.g. `lambda n: n != "head"`); the others keep their kernels.

    Returns:
      (new_variables, report). `new_variables` has the structure of `variables` with the selected
      kernels replaced. `report` has one dict per selected layer, in forward order: "layer"
      (name), "var_before" (its output variance when LSUV reached it: after the orthogonal start
      and with the previous layers fixed), "var_after", "iterations" (rescalings made), "scale"
      (the product of the factors applied after the orthogonal start) and "converged"
      (|var_after - target_var| < tol).

    Raises:
      ValueError: target_var or tol <= 0, max_iter not an integer >= 1, key missing with
        orthogonal_start, a layer_filter that is not callable, no "params" in variables, or no
        layer with a "kernel" param called by apply_fn (or left by layer_filter).
    """
    _check_lsuv_args(target_var, tol, max_iter, key, orthogonal_start, layer_filter)
    if "params" not in variables:
        raise ValueError(f"variables: no 'params' collection; got collections {list(variables)}")

    paths = [p for p in kernel_layers(apply_fn, variables, batch)
             if layer_filter is None or layer_filter(_layer_name(p))]
    if not paths:
        raise ValueError("variables: apply_fn called no layer with a 'kernel' parameter"
                         + ("" if layer_filter is None else " that layer_filter kept"))

    variances = _make_variance_fn(apply_fn, paths)
    rest = {name: value for name, value in variables.items() if name != "params"}
    params, report = _lsuv_loop(
        paths, variables["params"], lambda p, i: float(variances({**rest, "params": p}, batch)[i]),
        target_var=target_var, tol=tol, max_iter=max_iter, key=key,
        orthogonal_start=orthogonal_start)
    new_variables = dict(variables)
    new_variables["params"] = params
    return new_variables, report


# ---------------------------------------------------------------------------------------------
# Flax NNX models
# ---------------------------------------------------------------------------------------------


def _nnx_variance_fn(model, batch):
    """(kernel layer paths in forward order, jitted `params dict -> (L,) output variances`) for
    an nnx model in its current mode. The model itself is never run: each evaluation merges a
    copy, so its running statistics and RNG counters stay as they are."""
    from ml_practical.nnx.capture import kernel_calls

    graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)

    def outputs(pure_params, rest):
        state = jax.tree.map(lambda v: v, params_state)  # a fresh State to fill
        nnx.replace_by_pure_dict(state, pure_params)
        # Fresh Variables of this trace (BatchNorm in training mode writes its statistics).
        copy = nnx.merge(graphdef, state, jax.tree.map(lambda v: v, rest))
        with kernel_calls(copy) as calls:
            copy(batch)
        found.append([c.path for c in calls])  # static, read once the trace is done
        return [c.output for c in calls]

    found: list[list[tuple[str, ...]]] = []
    jax.eval_shape(outputs, nnx.to_pure_dict(params_state), rest)
    paths = found[0]

    @jax.jit
    def variances_of(pure_params, rest):
        return jnp.stack([jnp.var(y.astype(jnp.float32)) for y in outputs(pure_params, rest)])

    variances = lambda pure_params: variances_of(pure_params, rest)

    return paths, variances, params_state


def layer_output_variances_nnx(model, batch: Any, *,
                               layer_filter: Callable[[str], bool] | None = None
                               ) -> dict[str, float]:
    """`layer_output_variances` for a Flax NNX model, in the mode it is in (`model.eval()` for the
    running statistics, as `train=False` for linen). The model is not changed."""
    _check_layer_filter(layer_filter)
    paths, variances, params_state = _nnx_variance_fn(model, batch)
    values = jax.device_get(variances(nnx.to_pure_dict(params_state)))
    return {_layer_name(p): float(v) for p, v in zip(paths, values)
            if layer_filter is None or layer_filter(_layer_name(p))}


def lsuv_nnx(model, batch: Any, target_var: float = 1.0, tol: float = 0.1, max_iter: int = 10, *,
             key: Array | None = None, orthogonal_start: bool = True,
             layer_filter: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """LSUV (`lsuv`: Mishkin & Matas 2016, Algorithm 1) on a Flax NNX model, in place.

    The same algorithm and arithmetic as `lsuv`: the kernel layers (modules owning an
    `nnx.Param` "kernel": nnx.Linear, nnx.Conv, ...) in the order a forward pass on `batch` calls
    them, each layer's output variance measured on `batch` and its kernel rescaled by
    sqrt(target_var / v). The layers' outputs are recorded by `ml_practical.nnx.capture.
    kernel_calls`, so the model needs to sow nothing. The model is measured in the mode it is in:
    call `model.eval()` first for the recommended running-statistics mode (linen's
    `partial(model.apply, train=False)`). Only the kernels change; running statistics, RNG
    counters and every other variable stay as they were (each measurement runs on a copy).
    For the same weights, mode and batch it gives `lsuv`'s kernels on the twin linen model.

    Args:
      model: an `nnx.Module` called `model(batch)`.
      batch, target_var, tol, max_iter, key, orthogonal_start, layer_filter: as in `lsuv`.

    Returns:
      The report of `lsuv`, one dict per selected layer in forward order.

    Raises:
      ValueError: as `lsuv` (bad arguments, no kernel layer called).
    """
    _check_lsuv_args(target_var, tol, max_iter, key, orthogonal_start, layer_filter)
    all_paths, variances, params_state = _nnx_variance_fn(model, batch)
    index = {p: i for i, p in enumerate(all_paths)}
    paths = [p for p in all_paths if layer_filter is None or layer_filter(_layer_name(p))]
    if not paths:
        raise ValueError("model: its forward pass called no layer with a 'kernel' parameter"
                         + ("" if layer_filter is None else " that layer_filter kept"))
    params, report = _lsuv_loop(
        paths, nnx.to_pure_dict(params_state),
        lambda p, i: float(variances(p)[index[paths[i]]]),
        target_var=target_var, tol=tol, max_iter=max_iter, key=key,
        orthogonal_start=orthogonal_start)
    nnx.replace_by_pure_dict(params_state, params)
    nnx.update(model, params_state)
    return report
