"""The DLRM family (`ml_practical.models.dlrm.DLRM`) as an nnx module: the same fields, submodule
names ("bottom_{i}", "bottom_norm_{i}", "embed_{j}", "embed_dropout", "top_{i}", "top_norm_{i}",
"top_dropout_{i}", "head") and parameter structure; the interaction is the linen module's
`interact`, and ids are checked the same way (an invalid id gives a NaN logit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ml_practical import initializers
from ml_practical.models import dlrm as linen_dlrm
from ml_practical.models.activations import get_activation
from ml_practical.nnx.capture import sow
from ml_practical.nnx.layers import Dropout, make_norm


class DLRM(nnx.Module):
    """Naumov et al. 2019's DLRM as an nnx model.

    Args:
      input_shape: (num_dense + num_sparse,), the packed input of one example.
      rngs: `nnx.Rngs` with "params" and, with dropout, "dropout" streams.
      config: a `models.DLRM`; or the fields as keywords.

    Calling: `model(x)` on (N, num_dense + num_sparse) floats; (N,) click logits.
    """

    def __init__(self, input_shape: tuple[int, ...], *, rngs: nnx.Rngs,
                 config: linen_dlrm.DLRM | None = None, **fields):
        cfg = config if config is not None else linen_dlrm.DLRM(**fields)
        if tuple(input_shape) != (cfg.num_dense + cfg.num_sparse,):
            raise ValueError(f"DLRM: input_shape {tuple(input_shape)}; expected "
                             f"({cfg.num_dense} + {cfg.num_sparse},)")
        self.config = cfg
        hidden_init = initializers.get(cfg.hidden_init)
        bias_init = initializers.get(cfg.bias_init)

        def hidden(prefix, norm_prefix, kind, widths, n_in):
            for i, w in enumerate(widths):
                setattr(self, f"{prefix}_{i}", nnx.Linear(
                    n_in, w, use_bias=kind != "batch", kernel_init=hidden_init,
                    bias_init=bias_init, rngs=rngs))
                norm = make_norm(kind, w, rngs=rngs, momentum=cfg.bn_momentum,
                                 epsilon=cfg.norm_epsilon, num_groups=cfg.num_groups)
                if norm is not None:
                    setattr(self, f"{norm_prefix}_{i}", norm)
                n_in = w
            return n_in

        hidden("bottom", "bottom_norm", cfg.bottom_norm, cfg.bottom_widths, cfg.num_dense)
        embed_init = initializers.get(cfg.embed_init)
        for j, size in enumerate(cfg.table_sizes):
            setattr(self, f"embed_{j}", nnx.Embed(size, cfg.embed_dim, embedding_init=embed_init,
                                                  rngs=rngs))
        if cfg.embed_drop_rate > 0.0:
            self.embed_dropout = Dropout(cfg.embed_drop_rate, sampler=cfg.dropout_sampler,
                                         rngs=rngs)
        n_in = hidden("top", "top_norm", cfg.norm, cfg.top_widths, cfg.interaction_width)
        if cfg.drop_rate > 0.0:
            for i in range(len(cfg.top_widths)):
                setattr(self, f"top_dropout_{i}", Dropout(cfg.drop_rate,
                                                          sampler=cfg.dropout_sampler, rngs=rngs))
        self.head = nnx.Linear(n_in, 1, kernel_init=initializers.get(cfg.output_init),
                               bias_init=bias_init, rngs=rngs)

    def _hidden(self, x, name, norm_name, act):
        dense = getattr(self, name)
        x = dense(x)
        sow(dense, "preact", x)
        norm = getattr(self, norm_name, None)
        if norm is not None:
            x = norm(x)
        x = act(x)
        sow(dense, "act", x)
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        act = get_activation(cfg.activation)
        dense_x, id_x = x[:, :cfg.num_dense], x[:, cfg.num_dense:]
        z = dense_x
        for i in range(len(cfg.bottom_widths)):
            z = self._hidden(z, f"bottom_{i}", f"bottom_norm_{i}", act)
        rows = []
        for j, size in enumerate(cfg.table_sizes):
            rows.append(linen_dlrm.lookup(getattr(self, f"embed_{j}"), id_x[:, j], size))
        e = jnp.stack(rows, axis=1)
        if cfg.embed_drop_rate > 0.0:
            e = self.embed_dropout(e)
        r = linen_dlrm.interact(z, e, cfg.interaction)
        for i in range(len(cfg.top_widths)):
            r = self._hidden(r, f"top_{i}", f"top_norm_{i}", act)
            if cfg.drop_rate > 0.0:
                r = getattr(self, f"top_dropout_{i}")(r)
        return self.head(r)[:, 0]
