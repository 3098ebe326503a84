"""The Transformer family (`ml_practical.models.transformer.Transformer`) as an nnx module, with the
same fields, the same submodule names ("token_embed", "pos_embed", "block_{i}" with "attn"
("query", "key", "value", "out", "attn_dropout"), "norm_0", "norm_1", "mlp_in", "mlp_out", the
residual dropouts; "final_norm", "head") and so the same parameter structure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ml_practical import initializers
from ml_practical.models import transformer as linen_tf
from ml_practical.nnx.capture import sow
from ml_practical.nnx.layers import Dropout, make_norm


def _maybe_dropout(rate: float, sampler: str, rngs: nnx.Rngs):
    return Dropout(rate, sampler=sampler, rngs=rngs) if rate > 0.0 else None


def _apply(layer, x):
    return x if layer is None else layer(x)


class _Attention(nnx.Module):
    def __init__(self, cfg: linen_tf.Transformer, kernel_init, rngs: nnx.Rngs):
        d = cfg.d_model
        for name in ("query", "key", "value", "out"):
            setattr(self, name, nnx.Linear(d, d, kernel_init=kernel_init, rngs=rngs))
        self.attn_dropout = _maybe_dropout(cfg.attn_drop_rate, cfg.dropout_sampler, rngs)
        self.num_heads = cfg.num_heads

    def __call__(self, x, key_mask):
        n, length, d = x.shape
        h = self.num_heads
        head = d // h
        q, k, v = (getattr(self, name)(x).reshape(n, length, h, head)
                   for name in ("query", "key", "value"))
        out = linen_tf.attention(q, k, v, key_mask, lambda w: _apply(self.attn_dropout, w))
        return self.out(out)


class _Block(nnx.Module):
    def __init__(self, cfg: linen_tf.Transformer, kernel_init, rngs: nnx.Rngs):
        d = cfg.d_model
        self.placement = cfg.placement
        self.attn = _Attention(cfg, kernel_init, rngs)
        for j in range(2):
            norm = make_norm(cfg.norm, d, rngs=rngs, momentum=cfg.bn_momentum,
                             epsilon=cfg.norm_epsilon)
            setattr(self, f"norm_{j}", norm)
        self.mlp_in = nnx.Linear(d, cfg.mlp_ratio * d, kernel_init=kernel_init, rngs=rngs)
        self.mlp_out = nnx.Linear(cfg.mlp_ratio * d, d, kernel_init=kernel_init, rngs=rngs)
        self.attn_resid_dropout = _maybe_dropout(cfg.resid_drop_rate, cfg.dropout_sampler, rngs)
        self.mlp_resid_dropout = _maybe_dropout(cfg.resid_drop_rate, cfg.dropout_sampler, rngs)

    def _mlp(self, h):
        y = self.mlp_in(h)
        sow(self.mlp_in, "preact", y)
        y = jax.nn.gelu(y)
        sow(self.mlp_in, "act", y)
        return self.mlp_out(y)

    def __call__(self, h, mask):
        if self.placement == "pre":
            h = h + _apply(self.attn_resid_dropout, self.attn(_apply(self.norm_0, h), mask))
            return h + _apply(self.mlp_resid_dropout, self._mlp(_apply(self.norm_1, h)))
        h = _apply(self.norm_0, h + _apply(self.attn_resid_dropout, self.attn(h, mask)))
        return _apply(self.norm_1, h + _apply(self.mlp_resid_dropout, self._mlp(h)))


class Transformer(nnx.Module):
    """The Transformer encoder classifier as an nnx model.

    Args:
      input_shape: (L,), the padded sequence length (at most the config's max_len).
      rngs: `nnx.Rngs` with "params" and, with dropout, "dropout" streams.
      config: a `models.Transformer`; or the fields as keywords.

    Calling: `model(x)` on (N, L) float token ids; the mode is the layers' (`train()`,
    `eval()`, `ml_practical.nnx.mc_dropout`).
    """

    def __init__(self, input_shape: tuple[int, ...], *, rngs: nnx.Rngs,
                 config: linen_tf.Transformer | None = None, **fields):
        cfg = config if config is not None else linen_tf.Transformer(**fields)
        if len(input_shape) != 1 or input_shape[0] > cfg.max_len:
            raise ValueError(f"Transformer: input_shape {tuple(input_shape)}; expected (L,) with "
                             f"L <= model.max_len {cfg.max_len}")
        self.config = cfg
        embed_init = initializers.get(cfg.embed_init)
        hidden_init = initializers.get(cfg.hidden_init)
        self.token_embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=embed_init,
                                     rngs=rngs)
        self.pos_embed = nnx.Param(embed_init(rngs.params(), (cfg.max_len, cfg.d_model)))
        self.embed_dropout = _maybe_dropout(cfg.embed_drop_rate, cfg.dropout_sampler, rngs)
        for i in range(cfg.num_layers):
            setattr(self, f"block_{i}", _Block(cfg, hidden_init, rngs))
        self.final_norm = (make_norm(cfg.norm, cfg.d_model, rngs=rngs, momentum=cfg.bn_momentum,
                                     epsilon=cfg.norm_epsilon)
                           if cfg.placement == "pre" else None)
        self.head = nnx.Linear(cfg.d_model, cfg.num_classes,
                               kernel_init=initializers.get(cfg.output_init), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if x.ndim != 2:
            raise ValueError(f"Transformer: expected token ids (N, L), got shape {x.shape}")
        tokens = x.astype(jnp.int32)
        mask = tokens != cfg.pad_id
        h = self.token_embed(tokens) + self.pos_embed[...][None, : x.shape[1]]
        h = _apply(self.embed_dropout, h)
        for i in range(cfg.num_layers):
            h = getattr(self, f"block_{i}")(h, mask)
        h = _apply(self.final_norm, h)
        return self.head(linen_tf.pool(h, mask, cfg.pooling))
