"""A small Transformer encoder for sequence classification, with the placements and norms a study
compares: pre-LN or post-LN, LayerNorm / RMSNorm / BatchNorm / none, dropout where BERT puts it.

    tokens (N, L) -> token embedding + learned position embedding -> [dropout]
    num_layers x block:
      post-LN (Vaswani et al. 2017):   x = norm(x + drop(attn(x)));  x = norm(x + drop(mlp(x)))
      pre-LN  (Xiong et al. 2020):     x = x + drop(attn(norm(x)));  x = x + drop(mlp(norm(x)))
    [final norm (pre-LN)] -> pool over the valid positions -> Dense(num_classes)

attn is multi-head scaled dot-product self-attention, softmax(Q K^T / sqrt(d_head)) V, with the
padding positions masked out as keys (Vaswani et al. 2017, eq. 1); mlp is Dense(mlp_ratio d) ->
GELU -> Dense(d). Dropout (the chapter's "keep 0.9 after attention", BERT's 0.1): on the attention
probabilities (`attn_drop_rate`), on each sublayer's output before the residual addition
(`resid_drop_rate`) and on the embeddings (`embed_drop_rate`).

Inputs: token ids as floats (N, L) (a `data.Dataset` holds floating inputs; ids are exact in
float32 below 2^24), `pad_id` marking padding. Sequences are right-padded or not: the mask comes
from the ids, so any position may be padding. An id outside [0, vocab_size) cannot be refused
under jit: flax's Embed returns NaN for it, so the loss turns non-finite and the training loop's
non-finite guard stops the run (build the data with the model's vocab_size).

Norm "batch" is a BatchNorm over every (sample, position) pair of the (N, L, d) activations, the
drop-in `nn.BatchNorm` a CNN habit would put there: its statistics include the padding positions
and depend on how many there are in the batch. That is the case the chapter's 12.5.1 argues
against, measured by the transformer study; "layer" and "rms" are per position.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_practical import initializers, layers
from ml_practical.config import ConfigError, check_fields, field
from ml_practical.models.mlp import Initializer, check_initializer
from ml_practical.models.norms import make_norm

PLACEMENTS = ("post", "pre")
TRANSFORMER_NORMS = ("batch", "layer", "none", "rms")
POOLINGS = ("first", "last", "mean")


def pool(h: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """(N, L, d) -> (N, d): "mean" over the valid positions, "first", or "last" valid position
    (right padding: the position mask.sum() - 1)."""
    if pooling == "first":
        return h[:, 0]
    if pooling == "last":
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    weights = mask.astype(h.dtype)[..., None]
    return jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
              drop_weights=lambda w: w) -> jax.Array:
    """Scaled dot-product attention, softmax(Q K^T / sqrt(d_head)) V (Vaswani et al. 2017, eq. 1),
    per head, with the keys where `key_mask` is False left out.

    Args:
      q, k, v: (N, L, H, d_head).
      key_mask: (N, L) bool, True for valid positions.
      drop_weights: applied to the attention probabilities (dropout), identity by default.

    Returns:
      (N, L, H * d_head), the heads concatenated.
    """
    n, length, h, head = q.shape
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(head)
    # Padding keys get the most negative finite value before the softmax (-inf would give NaN
    # in a row of only padding; such a row's output is pooled away anyway).
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    weights = drop_weights(jax.nn.softmax(logits, axis=-1))
    return jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, h * head)


class _Attention(nn.Module):
    """Multi-head self-attention: Dense projections "query", "key", "value", "out"."""

    num_heads: int
    kernel_init: object
    attn_drop_rate: float
    dropout_sampler: str

    @nn.compact
    def __call__(self, x, key_mask, *, train: bool):
        n, length, d = x.shape
        h = self.num_heads
        head = d // h
        # Plain (d, d) Dense kernels split into heads afterwards, so the initializers read the
        # fans d -> d (a (d, H, Dh) DenseGeneral kernel would look like a conv to them).
        split = lambda name: nn.Dense(d, kernel_init=self.kernel_init, name=name)(x).reshape(
            n, length, h, head)
        q, k, v = split("query"), split("key"), split("value")  # (N, L, H, Dh)
        drop = lambda w: w
        if self.attn_drop_rate > 0.0:
            drop = lambda w: layers.Dropout(self.attn_drop_rate, sampler=self.dropout_sampler,
                                            name="attn_dropout")(w, train=train)
        out = attention(q, k, v, key_mask, drop)
        return nn.Dense(d, kernel_init=self.kernel_init, name="out")(out)


class Transformer(nn.Module):
    """A Transformer encoder classifier (see the module docstring for the layout).

    Attributes:
      vocab_size: token ids in [0, vocab_size), `pad_id` among them.
      max_len: longest sequence (the learned position table's rows).
      num_classes: output logits.
      d_model, num_heads, num_layers, mlp_ratio: width, heads (must divide d_model), blocks,
        MLP hidden width = mlp_ratio * d_model.
      placement: "post" (the original Transformer: norm after each residual addition) or "pre"
        (norm at the start of each branch, plus a final norm).
      norm: "layer" (LayerNorm over the features), "rms" (RMSNorm), "batch" (BatchNorm over all
        positions, padding included) or "none".
      attn_drop_rate, resid_drop_rate, embed_drop_rate: dropout drop probabilities (0.1 each:
        BERT's, the chapter's keep 0.9).
      dropout_sampler: see `layers.Dropout`.
      pooling: "mean" over the valid positions, "first" (the first position, a [CLS] token) or
        "last" (the last valid position, right padding assumed: where a query ends the input).
      pad_id: the padding token.
      hidden_init: the projections' and MLP's kernels (Xavier uniform, the original
        Transformer's); embed_init: the token and position tables (normal 0.02, BERT's);
        output_init: the classifier's.
      bn_momentum, norm_epsilon: of the norm layers.

    Calling: the `ml_practical.models` contract on (N, L) float token ids; logits (N, K). Block i
    is `block_{i}`; its MLP's first Dense `block_{i}/mlp_in` sows "preact" / "act" (the hidden
    layer of the block); `mc_dropout` keeps every dropout on with BatchNorm on running statistics.
    """

    vocab_size: int = field(32, ge=2)
    max_len: int = field(64, ge=1)
    num_classes: int = field(4, ge=1)
    d_model: int = field(64, ge=1)
    num_heads: int = field(4, ge=1)
    num_layers: int = field(2, ge=1)
    mlp_ratio: int = field(4, ge=1)
    placement: str = field("pre", choices=PLACEMENTS)
    norm: str = field("layer", choices=TRANSFORMER_NORMS)
    attn_drop_rate: float = field(0.1, ge=0, lt=1)
    resid_drop_rate: float = field(0.1, ge=0, lt=1)
    embed_drop_rate: float = field(0.1, ge=0, lt=1)
    dropout_sampler: str = field("bernoulli", choices=layers.DROPOUT_SAMPLERS)
    pooling: str = field("mean", choices=POOLINGS)
    pad_id: int = field(0, ge=0)
    hidden_init: Initializer = "xavier_uniform"
    embed_init: Initializer = "normal(stddev=0.02)"
    output_init: Initializer = "xavier_normal"
    bn_momentum: float = field(0.9, ge=0, le=1)
    norm_epsilon: float = field(1e-5, ge=0)

    def __post_init__(self):
        check_fields(self, "model")
        for name in ("hidden_init", "embed_init", "output_init"):
            check_initializer(f"model.{name}", getattr(self, name))
        if self.d_model % self.num_heads:
            raise ConfigError(f"model.num_heads: {self.num_heads} does not divide d_model "
                              f"{self.d_model}")
        if self.pad_id >= self.vocab_size:
            raise ConfigError(f"model.pad_id: {self.pad_id} is not a token id; expected one in "
                              f"[0, {self.vocab_size})")
        super().__post_init__()

    def _apply_norm(self, x, name: str, train: bool):
        norm = make_norm(self.norm, name=name, momentum=self.bn_momentum,
                         epsilon=self.norm_epsilon)
        return x if norm is None else norm(x, train=train)

    def _drop(self, x, rate: float, name: str, train: bool):
        if rate == 0.0:
            return x
        return layers.Dropout(rate, sampler=self.dropout_sampler, name=name)(x, train=train)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mc_dropout: bool = False) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"Transformer: expected token ids (N, L), got shape {x.shape}")
        if x.shape[1] > self.max_len:
            raise ValueError(f"Transformer: sequences of length {x.shape[1]} exceed "
                             f"model.max_len {self.max_len}")
        drop = train or mc_dropout
        tokens = x.astype(jnp.int32)
        mask = tokens != self.pad_id  # (N, L) valid positions
        embed_init = initializers.get(self.embed_init)
        hidden_init = initializers.get(self.hidden_init)
        h = nn.Embed(self.vocab_size, self.d_model, embedding_init=embed_init,
                     name="token_embed")(tokens)
        pos = self.param("pos_embed", embed_init, (self.max_len, self.d_model))
        h = h + pos[None, : x.shape[1]]
        h = self._drop(h, self.embed_drop_rate, "embed_dropout", drop)
        for i in range(self.num_layers):
            h = _Block(self.d_model, self.num_heads, self.mlp_ratio, self.placement, self.norm,
                       self.bn_momentum, self.norm_epsilon, self.attn_drop_rate,
                       self.resid_drop_rate, self.dropout_sampler, hidden_init,
                       name=f"block_{i}")(h, mask, train=train, drop=drop)
        if self.placement == "pre":
            h = self._apply_norm(h, "final_norm", train)
        return nn.Dense(self.num_classes, kernel_init=initializers.get(self.output_init),
                        name="head")(pool(h, mask, self.pooling))

    def describe(self, input_shape: tuple[int, ...]) -> str:
        return (f"Transformer encoder, {self.num_layers} x {self.placement}-{self.norm} blocks, "
                f"d {self.d_model}, {self.num_heads} heads, MLP x{self.mlp_ratio}, dropout "
                f"attn {self.attn_drop_rate:g} / residual {self.resid_drop_rate:g}, "
                f"sequences of {input_shape[0]}")


class _Block(nn.Module):
    """One encoder block, post-LN or pre-LN (the fields are the network's)."""

    d_model: int
    num_heads: int
    mlp_ratio: int
    placement: str
    norm: str
    bn_momentum: float
    norm_epsilon: float
    attn_drop_rate: float
    resid_drop_rate: float
    dropout_sampler: str
    kernel_init: object

    def _norm(self, x, name: str, train: bool):
        layer = make_norm(self.norm, name=name, momentum=self.bn_momentum,
                          epsilon=self.norm_epsilon)
        return x if layer is None else layer(x, train=train)

    def _resid_drop(self, x, name: str, drop: bool):
        if self.resid_drop_rate == 0.0:
            return x
        return layers.Dropout(self.resid_drop_rate, sampler=self.dropout_sampler,
                              name=name)(x, train=drop)

    def _mlp(self, h):
        dense_in = nn.Dense(self.mlp_ratio * self.d_model, kernel_init=self.kernel_init,
                            name="mlp_in")
        y = dense_in(h)
        dense_in.sow("intermediates", "preact", y)
        y = nn.gelu(y)
        dense_in.sow("intermediates", "act", y)
        return nn.Dense(self.d_model, kernel_init=self.kernel_init, name="mlp_out")(y)

    @nn.compact
    def __call__(self, h, mask, *, train: bool, drop: bool):
        attn = _Attention(self.num_heads, self.kernel_init, self.attn_drop_rate,
                          self.dropout_sampler, name="attn")
        if self.placement == "pre":
            h = h + self._resid_drop(attn(self._norm(h, "norm_0", train), mask, train=drop),
                                     "attn_resid_dropout", drop)
            h = h + self._resid_drop(self._mlp(self._norm(h, "norm_1", train)),
                                     "mlp_resid_dropout", drop)
        else:
            h = self._norm(h + self._resid_drop(attn(h, mask, train=drop), "attn_resid_dropout",
                                                drop), "norm_0", train)
            h = self._norm(h + self._resid_drop(self._mlp(h), "mlp_resid_dropout", drop),
                           "norm_1", train)
        return h
