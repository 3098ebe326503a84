"""DLRM, the Deep Learning Recommendation Model (Naumov et al. 2019), as a model family.

The chapter's section 17 (Meta DLRM) and Example 4: dense features go through a bottom MLP to a
vector of the embedding dimension d, each categorical (sparse) feature j looks up a row e_j of its
own embedding table, the k + 1 vectors meet in a feature interaction, and a top MLP turns the
result into one click logit (sigmoid: the click-through rate):

    z_0 = bottom_mlp(dense)                           (N, d), ReLU on every bottom layer
    e_j = table_j[id_j],  j = 1..k                    (N, d)
    dot:  r = [z_0, (<v_a, v_b>) for a > b]           v = (z_0, e_1, ..., e_k), k(k+1)/2 pairs
    cat:  r = [z_0, e_1, ..., e_k]
    logit = head(top_mlp(r))                          (N,)

"dot" is the paper's factorization-machine-style interaction (Naumov et al. 2019, section 3,
"Interactions"): the pairwise dot products of the k + 1 vectors, each unordered pair once, then
concatenated with z_0. The order is the reference implementation's (facebookresearch/dlrm
`dlrm_s_pytorch.py`, `interact_features` without `arch_interaction_itself`): the Gram matrix
Z = T T^T of T = [z_0; e_1; ...; e_k] read below the diagonal row by row, Z[1,0], Z[2,0],
Z[2,1], Z[3,0], ... (`np.tril_indices(k + 1, -1)`); Z is symmetric, so these are the entries of
the strict upper triangle. "cat" is plain concatenation (the reference's other option).

The chapter's recipe for it (section 17): embeddings U(-1/sqrt(d), 1/sqrt(d)) ("embedding_uniform";
the reference code draws U(-sqrt(1/n), sqrt(1/n)) with n the table's rows instead:
"embedding_rows_uniform", claims.md CASE-04), He init for the MLPs, LayerNorm (not BatchNorm) in
the top MLP, Dropout(0.1) on the top MLP only, no dropout on the embeddings, L2 on the dense
layers only (`optim.wd_mults=("embed_.*=0",)`; the default `decay_mask="kernels"` already leaves
the "embedding" leaves out), clipping by global norm at tau = 1.
"""

from __future__ import annotations

from typing import Callable, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import initializers, layers
from ml_practical.config import ConfigError, check_fields, field
from ml_practical.models.activations import ACTIVATIONS, get_activation
from ml_practical.models.mlp import check_initializer
from ml_practical.models.norms import NORMS, make_norm

Initializer = Union[str, Callable]
INTERACTIONS = ("cat", "dot")
# float32 represents every integer up to 2^24 exactly: larger ids would not survive the float
# input array, so no table may have more rows.
MAX_FLOAT32_ID = 2 ** 24


class DLRM(nn.Module):
    """Bottom MLP on dense features, one embedding table per sparse feature, interaction, top MLP.

    Input: x of shape (N, num_dense + num_sparse), float32. Columns [0, num_dense) are the dense
    features; column num_dense + j holds the id of sparse feature j, a row of table j, stored as a
    float (the contract's inputs are one float array; float32 holds every integer below 2^24
    exactly, hence the check on `table_sizes`) and cast with `astype(jnp.int32)`.

    Ids out of range. Under jit the values are not known, so a bad id cannot raise. An id that is
    negative, >= its table's rows or not an integer is a data bug (`clicks.make_clicks` only
    produces valid ones; `check_sparse_ids` checks an array on the host). Rather than jnp.take's
    default (ids >= rows give NaN, negative ids silently wrap to the end of the table), the lookup
    clips the id into range and then replaces the row of every invalid id with NaN: the example's
    logit is NaN, its loss is NaN, and the train step flags it as non-finite (and skips it), so
    the bug is loud instead of a wrong row.

    Attributes:
      num_dense: dense input features (>= 1: the bottom MLP's output is the dense vector z_0).
      table_sizes: rows of each embedding table, one per sparse feature (len = num_sparse >= 1).
      embed_dim: d, the width of every embedding row (and of z_0).
      bottom_widths: bottom MLP widths; the last must equal `embed_dim` (z_0 meets the e_j in the
        dot products). Every bottom layer has the activation, the last one too (as the reference).
      top_widths: top MLP hidden widths, before the one-logit head (may be empty).
      interaction: "dot" (pairwise dot products, above) or "cat" (concatenation).
      embed_init: initializer spec of the tables: "embedding_uniform" (the chapter, U(+-1/sqrt d)),
        "embedding_rows_uniform" (the reference code, U(+-sqrt(1/rows))) or any `initializers.get`
        spec or callable.
      hidden_init / output_init / bias_init: initializer specs of the hidden Dense kernels (He, the
        chapter), of the head's kernel (Xavier) and of every bias.
      activation: of every hidden layer (bottom and top); "relu" in the paper.
      norm: the top MLP's normalization, Dense -> norm -> activation -> Dropout (`models.norms`
        kinds; "layer" by default, the chapter's DLRM: model-parallel training leaves a small batch
        per GPU, and LayerNorm needs no batch statistics). "instance" needs spatial axes, which
        (N, features) activations do not have.
      bottom_norm: the same for the bottom MLP ("none" by default).
      num_groups: groups for norm "group" (must divide the widths it normalizes).
      drop_rate: dropout drop probability after each top hidden layer (0.1, the chapter).
      embed_drop_rate: dropout on the looked-up embedding rows (0, the chapter: "no dropout on
        embeddings"; a field so the claim can be measured).
      dropout_sampler: "bernoulli" | "threefry16" (`layers.Dropout`).
      num_classes: always 0: one logit per example (the "binary" task), as the contract's
        real-output families.
      bn_momentum / norm_epsilon: BatchNorm's momentum and every norm's epsilon.

    Calling (the `ml_practical.models` contract): `model.apply(variables, x, train=bool,
    mc_dropout=False)` returns the logits (N,). Parameters: tables `embed_{j}/embedding`, bottom
    Dense `bottom_{i}`, bottom norms `bottom_norm_{i}`, top Dense `top_{i}`, top norms
    `top_norm_{i}`, the head `head`. Each hidden Dense (bottom and top) sows "preact" and "act".
    A Dense followed by BatchNorm has no bias (BN's beta provides the shift; `models.mlp`).
    """

    num_dense: int = field(13, ge=1)
    table_sizes: tuple[int, ...] = field((1000, 1000, 1000), ge=1)
    embed_dim: int = field(16, ge=1)
    bottom_widths: tuple[int, ...] = field((64, 16), ge=1)
    top_widths: tuple[int, ...] = field((64, 32), ge=1)
    interaction: str = field("dot", choices=INTERACTIONS)
    embed_init: Initializer = "embedding_uniform"
    hidden_init: Initializer = "he_normal"
    output_init: Initializer = "xavier_normal"
    bias_init: Initializer = "zeros"
    activation: str = field("relu", choices=tuple(ACTIVATIONS))
    norm: str = field("layer", choices=NORMS)
    bottom_norm: str = field("none", choices=NORMS)
    num_groups: int = field(8, ge=1)
    drop_rate: float = field(0.1, ge=0, lt=1)
    embed_drop_rate: float = field(0.0, ge=0, lt=1)
    dropout_sampler: str = field("bernoulli", choices=layers.DROPOUT_SAMPLERS)
    num_classes: int = 0
    bn_momentum: float = field(0.9, ge=0, le=1)
    norm_epsilon: float = field(1e-5, ge=0)

    def __post_init__(self):
        check_fields(self, "model")
        if self.num_classes != 0:
            raise ConfigError(f"model.num_classes: {self.num_classes}; DLRM outputs one click "
                              "logit per example (the 'binary' task), expected 0")
        if not self.table_sizes:
            raise ConfigError("model.table_sizes: empty; expected the rows of at least one "
                              "embedding table")
        for j, rows in enumerate(self.table_sizes):
            if rows > MAX_FLOAT32_ID:
                raise ConfigError(f"model.table_sizes[{j}]: {rows} rows; ids travel as float32, "
                                  f"exact only up to 2^24 = {MAX_FLOAT32_ID}")
        if not self.bottom_widths or self.bottom_widths[-1] != self.embed_dim:
            raise ConfigError(f"model.bottom_widths: {list(self.bottom_widths)}; the last width "
                              f"must equal model.embed_dim = {self.embed_dim} (the bottom output "
                              "meets the embeddings in the interaction)")
        for name in ("norm", "bottom_norm"):
            kind = getattr(self, name)
            if kind == "instance":
                raise ConfigError(f"model.{name}: 'instance' normalizes over spatial axes, which "
                                  "DLRM's (N, features) activations do not have; expected one of "
                                  f"{sorted(set(NORMS) - {'instance'})}")
            widths = self.top_widths if name == "norm" else self.bottom_widths
            if kind == "group" and any(w % self.num_groups for w in widths):
                raise ConfigError(f"model.num_groups: {self.num_groups} does not divide every "
                                  f"width {list(widths)} normalized by model.{name}")
        for name in ("embed_init", "hidden_init", "output_init", "bias_init"):
            check_initializer(f"model.{name}", getattr(self, name))
        super().__post_init__()

    @property
    def num_sparse(self) -> int:
        return len(self.table_sizes)

    @property
    def interaction_width(self) -> int:
        """Width of the interaction output r, the top MLP's input."""
        vectors = self.num_sparse + 1
        if self.interaction == "dot":
            return self.embed_dim + vectors * (vectors - 1) // 2
        return self.embed_dim * vectors

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mc_dropout: bool = False) -> jax.Array:
        width = self.num_dense + self.num_sparse
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"DLRM: input of shape {x.shape}; expected (N, num_dense + "
                             f"num_sparse) = (N, {self.num_dense} + {self.num_sparse})")
        act = get_activation(self.activation)
        hidden_init = initializers.get(self.hidden_init)
        bias_init = initializers.get(self.bias_init)
        dense_x, id_x = x[:, :self.num_dense], x[:, self.num_dense:]

        z = dense_x
        for i, w in enumerate(self.bottom_widths):
            z = self._hidden(z, w, f"bottom_{i}", self.bottom_norm, f"bottom_norm_{i}",
                             act, hidden_init, bias_init, train)

        embed_init = initializers.get(self.embed_init)
        rows = []
        for j, size in enumerate(self.table_sizes):
            table = nn.Embed(size, self.embed_dim, embedding_init=embed_init, name=f"embed_{j}")
            rows.append(lookup(table, id_x[:, j], size))
        e = jnp.stack(rows, axis=1)                                            # (N, k, d)
        if self.embed_drop_rate > 0.0:
            e = layers.Dropout(self.embed_drop_rate, sampler=self.dropout_sampler,
                               name="embed_dropout")(e, train=train or mc_dropout)

        r = interact(z, e, self.interaction)
        for i, w in enumerate(self.top_widths):
            r = self._hidden(r, w, f"top_{i}", self.norm, f"top_norm_{i}", act, hidden_init,
                             bias_init, train)
            if self.drop_rate > 0.0:
                r = layers.Dropout(self.drop_rate, sampler=self.dropout_sampler,
                                   name=f"top_dropout_{i}")(r, train=train or mc_dropout)
        logit = nn.Dense(1, kernel_init=initializers.get(self.output_init), bias_init=bias_init,
                         name="head")(r)
        return logit[:, 0]

    def _hidden(self, x, width, name, norm, norm_name, act, kernel_init, bias_init, train):
        """Dense -> [norm] -> activation, sowing "preact" and "act" in the Dense's scope."""
        dense = nn.Dense(width, use_bias=norm != "batch", kernel_init=kernel_init,
                         bias_init=bias_init, name=name)
        x = dense(x)
        dense.sow("intermediates", "preact", x)
        layer = make_norm(norm, name=norm_name, momentum=self.bn_momentum,
                          epsilon=self.norm_epsilon, num_groups=self.num_groups)
        if layer is not None:
            x = layer(x, train=train)
        x = act(x)
        dense.sow("intermediates", "act", x)
        return x

    def describe(self, input_shape: tuple[int, ...]) -> str:
        """'DLRM: 13 dense -> bottom 13-64-16; 3 tables (1000/1000/1000 rows) x 16; dot
        interaction (22 features); top 22-64-32-1, layer norm, dropout 0.1'."""
        del input_shape  # fixed by num_dense and table_sizes
        bottom = "-".join(str(v) for v in (self.num_dense, *self.bottom_widths))
        top = "-".join(str(v) for v in (self.interaction_width, *self.top_widths, 1))
        rows = "/".join(str(n) for n in self.table_sizes)
        norm = "no norm" if self.norm == "none" else f"{self.norm} norm"
        return (f"DLRM: {self.num_dense} dense -> bottom {bottom}; {self.num_sparse} tables "
                f"({rows} rows) x {self.embed_dim}; {self.interaction} interaction "
                f"({self.interaction_width} features); top {top}, {norm}, "
                f"dropout {self.drop_rate:g}")


def lookup(table, column: jax.Array, size: int) -> jax.Array:
    """The rows `table(ids)` (an Embed, linen or nnx) for one float id column (N,), NaN rows for
    ids that are not integers in [0, size): `jnp.take` would give NaN only above the range and
    wrap negative ids silently, so the id is clipped into range and its row then set to NaN
    (the DLRM class docstring: a data bug turns the logit non-finite)."""
    ids = column.astype(jnp.int32)
    valid = (ids.astype(column.dtype) == column) & (ids >= 0) & (ids < size)
    return jnp.where(valid[:, None], table(jnp.clip(ids, 0, size - 1)), jnp.nan)


def interact(z: jax.Array, e: jax.Array, kind: str) -> jax.Array:
    """DLRM's feature interaction of the dense vector z (N, d) and the embeddings e (N, k, d).

    "dot": [z, Z[1,0], Z[2,0], Z[2,1], ...], Z = T T^T, T = [z; e_1; ...; e_k] (N, k+1, d), the
    k(k+1)/2 distinct pairwise dot products (below the diagonal, row by row, as the reference);
    "cat": [z, e_1, ..., e_k]. Returns (N, d + k(k+1)/2) or (N, d (k+1)).
    """
    if kind == "cat":
        return jnp.concatenate([z, e.reshape(e.shape[0], -1)], axis=1)
    if kind != "dot":
        raise ValueError(f"model.interaction: unknown {kind!r}; expected one of "
                         f"{list(INTERACTIONS)}")
    t = jnp.concatenate([z[:, None, :], e], axis=1)
    gram = jnp.einsum("nad,nbd->nab", t, t)
    li, lj = np.tril_indices(t.shape[1], -1)  # static: the pairs depend only on k
    return jnp.concatenate([z, gram[:, li, lj]], axis=1)


def check_sparse_ids(model: DLRM, x: np.ndarray) -> None:
    """Host-side check that every id column of `x` holds integers in [0, rows) of its table.

    Raises:
      ValueError: naming the feature, the first bad example and its value.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != model.num_dense + model.num_sparse:
        raise ValueError(f"x: shape {x.shape}; expected (N, {model.num_dense} + "
                         f"{model.num_sparse})")
    for j, size in enumerate(model.table_sizes):
        column = x[:, model.num_dense + j]
        bad = ~((column >= 0) & (column < size) & (np.floor(column) == column))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"x[{i}, {model.num_dense + j}]: id {column[i]!r} of sparse feature "
                             f"{j}; expected an integer in [0, {size})")
