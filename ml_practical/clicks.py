"""A synthetic click log with a known generating model: ad CTR data for DLRM, offline and seeded.

The chapter's CTR case studies (sections 16-17: InMobi, Meta DLRM) train on click logs nobody can
ship with a library. This generator draws one from an explicit model, so that a run can say how
far a model is from the best possible (the Bayes-optimal predictor is the true probability) and
so that the "viral post" of section 17 is a controlled event. Pure numpy, no files, no network.

The generating model, for example i of a log of N (in time order):

  dense features  x_i ~ N(0, I_D), D = num_dense (already standardized: nothing to normalize)
  sparse ids      id_ij ~ Zipf over table j's n_j rows: P(rank r) = r^-s / sum_{q<=n_j} q^-s,
                  s = zipf_exponent; ranks map to ids through a seeded permutation (the frequent
                  ids are not 0, 1, 2, ...)
  true logit      l_i = b + w . x_i + sum_j u_j[id_ij] + c a[id_i0] . g[id_i1] + v 1[id_i0 viral]
                    w ~ N(0, dense_effect_std^2 / D) per weight  (std of w . x ~ dense_effect_std)
                    u_j[id] ~ N(0, id_effect_std^2)              (one effect per id)
                    a[id], g[id] ~ N(0, R^-1/2 I_R), R = interaction_rank, c = interaction_std
                    (a rank-R interaction between tables 0 and 1 of std ~ c: a dot product of two
                    per-id vectors, which DLRM's "dot" interaction can represent when embed_dim
                    >= R and which a model without interactions cannot)
                    v = viral_effect, for the num_viral viral ids of table 0 (its rarest ids)
                    b, the intercept, solved by bisection so that mean_i sigmoid(l_i) = base_ctr
  click           y_i ~ Bernoulli(sigmoid(l_i))

Viral bursts. A viral item is rare until it bursts: the log holds `num_viral` bursts, burst k a
contiguous window of L = round(viral_share N / num_viral) examples in which every example shows
viral id k in table 0 (the other features drawn as usual). The windows lie in the first
`burst_region` of the log, one at a seeded offset in each of num_viral equal segments of it.
A mini-batch taken in order from a window concentrates the whole batch's table-0 gradient on one
row with one sign (the item is clicked far more than predicted): the chapter's "a single viral
post creates a massive gradient for that content's embedding".

Splits (`click_splits`, `load_clicks`): chronological, as CTR models are trained on the past and
tested on the future: train is the first 1 - val_fraction - test_fraction of the log, then val,
then test. Every burst lies in train (the split refuses fractions that would cut into the burst
region), in log order. Note that the library's loop shuffles the train split every epoch
(`data.epoch_permutation`), which spreads a burst over the epoch; to see a burst arrive together,
read train in order (an online pass over the log).

Streams. The model's parameters (w, u, a, g, the rank permutations) come from their own child of
`np.random.SeedSequence(seed)`, the ids, dense features, burst offsets and clicks from others:
the same seed gives the same model whatever `num_examples` is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ml_practical.analysis.ctr import ctr_metrics
from ml_practical.data import Dataset
from ml_practical.fields import ConfigError, Section, field
from ml_practical.models.dlrm import MAX_FLOAT32_ID


@dataclasses.dataclass(frozen=True)
class ClickSpec(Section):
    """The generating model's settings (the module docstring gives the model).

    Attributes:
      num_dense: D, dense features.
      table_sizes: n_j, rows of each sparse feature's table (at least 2: tables 0 and 1 interact).
      num_examples: N, examples in the log.
      zipf_exponent: s, the power law of id frequency (1.1: a heavy head and a long tail).
      base_ctr: mean click probability over the log (the intercept is solved to meet it).
      dense_effect_std, id_effect_std, interaction_std: the scale of each logit term.
      interaction_rank: R of the table-0 x table-1 interaction.
      num_viral: viral ids of table 0 (0: no bursts).
      viral_effect: v, added to the logit of every example showing a viral id.
      viral_share: fraction of the log inside burst windows (0: no bursts).
      burst_region: the bursts lie in the first this fraction of the log.
      seed: the generator's seed.
    """

    section: ClassVar[str] = "clicks"

    num_dense: int = field(4, ge=1)
    table_sizes: tuple[int, ...] = field((1000, 200, 50), ge=2)
    num_examples: int = field(50_000, ge=10)
    zipf_exponent: float = field(1.1, gt=0)
    base_ctr: float = field(0.1, gt=0, lt=1)
    dense_effect_std: float = field(0.5, ge=0)
    id_effect_std: float = field(0.5, ge=0)
    interaction_rank: int = field(4, ge=1)
    interaction_std: float = field(1.0, ge=0)
    num_viral: int = field(3, ge=0)
    viral_effect: float = field(3.0)
    viral_share: float = field(0.02, ge=0, lt=1)
    burst_region: float = field(0.5, gt=0, le=1)
    seed: int = field(0, ge=0)

    def check(self) -> None:
        if len(self.table_sizes) < 2:
            raise ConfigError(f"clicks.table_sizes: {list(self.table_sizes)}; expected at least 2 "
                              "tables (tables 0 and 1 interact)")
        for j, n in enumerate(self.table_sizes):
            if n > MAX_FLOAT32_ID:
                raise ConfigError(f"clicks.table_sizes[{j}]: {n}; ids are stored as float32, "
                                  f"exact up to 2^24 = {MAX_FLOAT32_ID}")
        if self.num_viral >= self.table_sizes[0]:
            raise ConfigError(f"clicks.num_viral: {self.num_viral}; expected fewer than table 0's "
                              f"{self.table_sizes[0]} rows")
        if self.bursts:
            length = self.burst_length
            segment = int(self.burst_region * self.num_examples) // self.num_viral
            if length < 1 or length > segment:
                raise ConfigError(f"clicks.viral_share: {self.viral_share} gives bursts of "
                                  f"{length} examples; expected 1 to {segment} (each burst in its "
                                  f"1/{self.num_viral} of the first clicks.burst_region = "
                                  f"{self.burst_region} of the log)")

    @property
    def bursts(self) -> bool:
        return self.num_viral > 0 and self.viral_share > 0

    @property
    def burst_length(self) -> int:
        """L, the examples of one burst window."""
        if not self.bursts:
            return 0
        return round(self.viral_share * self.num_examples / self.num_viral)


def zipf_probs(n: int, s: float) -> np.ndarray:
    """P(rank r) = r^-s / sum_{q=1..n} q^-s for r = 1..n (index r - 1)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -float(s)
    return weights / weights.sum()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _solve_intercept(rest: np.ndarray, target: float) -> float:
    """b with mean(sigmoid(b + rest)) = target (bisection; the mean is increasing in b)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.mean(_sigmoid(mid + rest)) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def make_clicks(spec: ClickSpec) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draws a click log from `spec`'s model (the module docstring).

    Returns:
      x: (N, num_dense + num_sparse) float32: the dense features, then one id per table as a float
        (the input `models.dlrm.DLRM` takes).
      y: (N,) float32 clicks, 0 or 1.
      info: the model and the log's bookkeeping, numpy arrays:
        "logit", "prob" (N,) float64, the true logit and click probability of each example;
        "intercept" b; "dense_weights" w (D,); "id_effects" [u_j (n_j,)];
        "interaction_factors" (a (n_0, R), g (n_1, R));
        "id_probs" [(n_j,)]: each id's probability outside the bursts;
        "rank_ids" [(n_j,)]: the id of rank 1, 2, ... (most frequent first);
        "viral_ids" (num_viral,); "burst" (N,) bool, inside a burst window;
        "burst_windows" [(start, stop, viral id)] in log order.
    """
    if not isinstance(spec, ClickSpec):
        raise TypeError(f"spec: {type(spec).__name__}; expected a ClickSpec")
    n_ex, sizes = spec.num_examples, spec.table_sizes
    param_ss, id_ss, dense_ss, burst_ss, click_ss = np.random.SeedSequence(spec.seed).spawn(5)
    prng = np.random.default_rng(param_ss)
    rank_ids = [prng.permutation(n) for n in sizes]
    w = prng.normal(0.0, spec.dense_effect_std / np.sqrt(spec.num_dense), spec.num_dense)
    u = [prng.normal(0.0, spec.id_effect_std, n) for n in sizes]
    # Entries of variance R^-1/2 make a . g a sum of R products of variance 1/R: variance 1.
    factor_std = spec.interaction_rank ** -0.25
    a = prng.normal(0.0, factor_std, (sizes[0], spec.interaction_rank))
    g = prng.normal(0.0, factor_std, (sizes[1], spec.interaction_rank))

    id_rng = np.random.default_rng(id_ss)
    id_probs, ids = [], []
    for n, order in zip(sizes, rank_ids):
        p_rank = zipf_probs(n, spec.zipf_exponent)
        p_id = np.empty(n)
        p_id[order] = p_rank
        id_probs.append(p_id)
        ids.append(order[id_rng.choice(n, size=n_ex, p=p_rank)])
    dense = np.random.default_rng(dense_ss).standard_normal((n_ex, spec.num_dense))

    viral_ids = rank_ids[0][::-1][:spec.num_viral].copy()  # the rarest ids of table 0
    burst = np.zeros(n_ex, bool)
    windows = []
    if spec.bursts:
        length = spec.burst_length
        segment = int(spec.burst_region * n_ex) // spec.num_viral
        burst_rng = np.random.default_rng(burst_ss)
        for k, vid in enumerate(viral_ids):
            start = k * segment + int(burst_rng.integers(0, segment - length + 1))
            ids[0][start:start + length] = vid
            burst[start:start + length] = True
            windows.append((start, start + length, int(vid)))

    rest = (dense @ w + sum(u_j[i] for u_j, i in zip(u, ids))
            + spec.interaction_std * np.sum(a[ids[0]] * g[ids[1]], axis=1)
            + spec.viral_effect * np.isin(ids[0], viral_ids))
    intercept = _solve_intercept(rest, spec.base_ctr)
    logit = intercept + rest
    prob = _sigmoid(logit)
    y = (np.random.default_rng(click_ss).random(n_ex) < prob).astype(np.float32)

    x = np.concatenate([dense, np.stack(ids, axis=1).astype(np.float64)], axis=1)
    info = {"logit": logit, "prob": prob, "intercept": float(intercept), "dense_weights": w,
            "id_effects": u, "interaction_factors": (a, g), "id_probs": id_probs,
            "rank_ids": rank_ids, "viral_ids": viral_ids, "burst": burst,
            "burst_windows": windows}
    return x.astype(np.float32), y, info


class ClickSplits(NamedTuple):
    """`click_splits`' result.

    Attributes:
      dataset: the `data.Dataset` (num_classes 0, float32 inputs, float32 0/1 labels).
      true_logits: {"train", "val", "test"}: the generating model's logit of each example.
      train_burst: (n_train,) bool, the train examples inside a burst window (all bursts are in
        train, in log order).
      bayes: {"val", "test"}: `analysis.ctr.ctr_metrics` of the true logits against the split's
        labels (base rate: the split's own CTR, `ctr_metrics`' default): the Bayes-optimal
        predictor's AUC, log loss and NE, what no model can beat in expectation. A split that
        is empty or holds one class only (AUC and NE undefined) has no entry.
      info: `make_clicks`' info for the whole log.
    """

    dataset: Dataset
    true_logits: dict[str, np.ndarray]
    train_burst: np.ndarray
    bayes: dict[str, dict[str, float]]
    info: dict[str, Any]


def click_splits(spec: ClickSpec, val_fraction: float = 0.1,
                 test_fraction: float = 0.2) -> ClickSplits:
    """The log of `spec` split in time order: train, then val, then test (module docstring).

    Args:
      spec: the generator's settings.
      val_fraction, test_fraction: shares of the log (rounded to whole examples), each in [0, 1);
        train keeps the rest, which must cover `spec.burst_region` (where the bursts are).

    Raises:
      ValueError: fractions out of range, or a train split that would not hold every burst.
    """
    n = spec.num_examples
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name}: {f!r}; expected a fraction in [0, 1)")
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    n_train = n - n_val - n_test
    region = int(spec.burst_region * n)
    if n_train < max(1, region if spec.bursts else 1):
        raise ValueError(f"val_fraction + test_fraction: {val_fraction} + {test_fraction} leave "
                         f"{n_train} train examples; the bursts lie in the first "
                         f"clicks.burst_region = {spec.burst_region} of the log ({region} "
                         "examples), which train must hold")
    x, y, info = make_clicks(spec)
    cuts = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val),
            "test": slice(n_train + n_val, n)}
    dataset = Dataset(train_x=x[cuts["train"]], train_y=y[cuts["train"]],
                      val_x=x[cuts["val"]], val_y=y[cuts["val"]],
                      test_x=x[cuts["test"]], test_y=y[cuts["test"]],
                      num_classes=0, name="clicks")
    logits = {k: info["logit"][s] for k, s in cuts.items()}
    bayes = {k: ctr_metrics(logits[k], y[cuts[k]]) for k in ("val", "test")
             if 0 < y[cuts[k]].sum() < len(y[cuts[k]])}
    return ClickSplits(dataset, logits, info["burst"][cuts["train"]], bayes, info)


def load_clicks(spec: ClickSpec, val_fraction: float = 0.1,
                test_fraction: float = 0.2) -> Dataset:
    """The `data.Dataset` of `click_splits` (num_classes 0: the "binary" task, one logit).

    Inputs are float32 (N, num_dense + num_sparse) with the ids as floats, left unnormalized
    (`norm_stats` (0, 1)): the dense features are standard normal already, and normalizing an id
    column would destroy it. Labels are float32 0/1.
    """
    return click_splits(spec, val_fraction, test_fraction).dataset
