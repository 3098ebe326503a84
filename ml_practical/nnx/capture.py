"""Reading what an nnx model computes inside: sown statistics and the outputs of its kernel layers.

Two tools the diagnostics need, for nnx models as `flax.linen`'s `mutable=["intermediates"]` and
`capture_intermediates` / `intercept_methods` give them for linen ones:

  `sow` / `intermediates`   the models contract's "preact" / "act" (`ml_practical.models`, item 4),
                            sown in the scope of the layer that computes the pre-activation and
                            read back as a nested dict keyed like linen's "intermediates".
  `kernel_calls`            the layers owning a "kernel" param (nnx.Linear, nnx.Conv, ...) in the
                            order a forward pass calls them, with their outputs (what LSUV
                            measures), without the model sowing anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
from flax import nnx

__all__ = ["KernelCall", "has_kernel", "intermediates", "kernel_calls", "sow"]


def sow(module: nnx.Module, name: str, value: jax.Array) -> None:
    """Sows `value` as `name` into `module`'s scope, only inside `nnx.capture(..., nnx.Intermediate)`.

    Outside a capture flax 0.12 would store it as a new attribute of the module (and warn that
    this is deprecated), changing the model's state on every call; here it is then a no-op.
    """
    if hasattr(module, "__captures__"):
        module.sow(nnx.Intermediate, name, value)


def _pure(tree: Any) -> Any:
    """An nnx State of Intermediates -> nested dicts of tuples (linen's intermediates layout)."""
    if isinstance(tree, nnx.Variable):
        return tree.get_value()
    if hasattr(tree, "items"):
        return {str(k): _pure(v) for k, v in tree.items()}
    return tree


def intermediates(fn: Callable[..., Any], model: nnx.Module, *args: Any,
                  **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Runs `fn(model, *args, **kwargs)` and returns (its output, what the model sowed).

    The sown values come back as {module path parts...: {name: (value, ...)}}, one entry per
    call, the layout of linen's "intermediates" collection, so
    `ml_practical.analysis.activations.sown_by_layer` reads either.
    """
    out, state = nnx.capture(fn, nnx.Intermediate)(model, *args, **kwargs)
    return out, _pure(state)


def has_kernel(module: Any) -> bool:
    """Whether a module owns an `nnx.Param` called "kernel" (a Dense / Conv layer)."""
    return isinstance(getattr(module, "kernel", None), nnx.Param)


class KernelCall:
    """One kernel layer's first call in a forward pass: its path and its output."""

    def __init__(self, path: tuple[str, ...], output: Any):
        self.path = path
        self.output = output


@contextlib.contextmanager
def kernel_calls(model: nnx.Module) -> Iterator[list[KernelCall]]:
    """Records, in call order, the first call of every kernel layer of `model` inside the block.

    The classes of those layers get a recording `__call__` for the duration of the block (their
    instances outside `model` pass through unchanged), the way `nnx.capture(method_outputs=...)`
    instruments classes; the originals are restored on exit, also on an error. Works under
    tracing (jit, eval_shape): the outputs are then tracers of that trace.

    Yields:
      The list the calls are appended to.
    """
    paths = {id(m): tuple(str(p) for p in path) for path, m in nnx.iter_modules(model)
             if has_kernel(m)}
    calls: list[KernelCall] = []
    seen: set[int] = set()
    originals: dict[type, Callable] = {}
    for _, m in nnx.iter_modules(model):
        cls = type(m)
        if id(m) in paths and cls not in originals:
            originals[cls] = cls.__dict__.get("__call__")

    def wrap(cls, inner):
        def recording_call(self, *args, **kwargs):
            out = inner(self, *args, **kwargs)
            if id(self) in paths and id(self) not in seen:
                seen.add(id(self))
                calls.append(KernelCall(paths[id(self)], out))
            return out
        return recording_call

    try:
        for cls, own in originals.items():
            cls.__call__ = wrap(cls, own if own is not None else cls.__call__)
        yield calls
    finally:
        for cls, own in originals.items():
            if own is None:
                del cls.__call__
            else:
                cls.__call__ = own
