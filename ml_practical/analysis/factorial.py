"""Two-level factorial designs: cells with their alias structure, effects by least squares, Shapley.

A design is an (n_cells, k) integer array of levels, 0 (off) or 1 (on), one column per factor.
A model term is a sorted tuple of factor indices: () the intercept, (i,) a main effect, (i, j) a
two-way interaction. Models are fitted in the +-1 coding x = 2 * level - 1, where the columns of a
regular two-level design are orthogonal (Box, Hunter & Hunter, "Statistics for Experimenters",
2nd ed. 2005, ch. 5-6):

  y = b_() + sum_T b_T prod_{t in T} x_t,

and the *effect* of a non-intercept term is 2 b_T. For a main effect this is
mean(y | on) - mean(y | off); for a two-way interaction it is half the change of i's effect when j
is switched on: ((effect of i, j on) - (effect of i, j off)) / 2.

Fractions. A regular 2^(k-p) fraction keeps the cells with prod_{t in w} x_t = +1 for each of p
generator words w (its defining relation I = w_1 = ... and all their products). A term T is then
aliased with T * W (symmetric difference) for every word W of the defining relation: their columns
are equal in the fraction and only their sum is estimable. The resolution is the shortest word's
length; the half fraction 2^(6-1) with I = ABCDEF has resolution VI, so every main effect is aliased
only with a five-way and every two-way interaction only with a four-way interaction.

Shapley values (Shapley 1953). For a value function v(S) on subsets S of the factors (S = the
factors switched on), phi_i = sum_{S not containing i} |S|! (k-|S|-1)! / k! (v(S + i) - v(S)).
For v written in the +-1 coding, each term b_T contributes 2 b_T / |T| to every member of T when |T|
is odd and nothing when |T| is even (the term's share of v(all) - v(none), split evenly by
symmetry), so

  phi_i = sum_{T containing i, |T| odd} 2 b_T / |T|.

Under a model with main effects and two-way interactions only, written in the 0/1 coding
v(S) = c_0 + sum_{i in S} a_i + sum_{i<j in S} c_ij, this is phi_i = a_i + 1/2 sum_{j != i} c_ij,
which equals the main effect 2 b_i: with no three-way or higher terms the Shapley value and the
balanced average (Banzhaf) value coincide. The phi_i sum to v(all) - v(none) (efficiency).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

Term = tuple[int, ...]


# --------------------------------------------------------------------------- designs


def full_factorial(k: int) -> np.ndarray:
    """All 2^k cells in standard (Yates) order: factor j of cell c is bit j of c.

    Returns:
      An int8 array of shape (2^k, k) of levels 0 / 1.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: {k!r}; expected the number of factors, an integer >= 1")
    cells = np.arange(2 ** k)
    return ((cells[:, None] >> np.arange(k)[None, :]) & 1).astype(np.int8)


def _word(word: Sequence[int], k: int) -> frozenset[int]:
    w = frozenset(int(i) for i in word)
    if len(w) != len(word) or not w or any(i < 0 or i >= k for i in w):
        raise ValueError(f"words: {list(word)}; expected distinct factor indices in [0, {k})")
    return w


def defining_relation(words: Sequence[Sequence[int]], k: int) -> list[frozenset[int]]:
    """Every word of the defining relation: the products (symmetric differences) of the generators.

    Args:
      words: the p generator words, each a sequence of factor indices.
      k: the number of factors.

    Returns:
      The 2^p - 1 words other than I, sorted by length then indices.

    Raises:
      ValueError: a bad word, or generators that are not independent (a product equal to I).
    """
    gens = [_word(w, k) for w in words]
    out = []
    for r in range(1, len(gens) + 1):
        for combo in itertools.combinations(gens, r):
            w: frozenset[int] = frozenset()
            for g in combo:
                w = w ^ g
            if not w:
                raise ValueError(f"words: {[sorted(g) for g in gens]} are not independent (a "
                                 "product of them is the identity); expected p independent words")
            out.append(w)
    return sorted(out, key=lambda w: (len(w), sorted(w)))


def fractional_factorial(k: int, words: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """The regular fraction of the 2^k design with I = w for each generator word w.

    Keeps, in standard order, the cells whose +-1 levels multiply to +1 over every word (with
    words = [all factors], the cells with an even number of factors on). No words: the full design.

    Returns:
      An int8 array of shape (2^(k - p), k).
    """
    full = full_factorial(k)
    defining_relation(words, k)  # checks the words
    x = 2 * full.astype(np.int64) - 1
    keep = np.ones(len(full), bool)
    for w in words:
        keep &= np.prod(x[:, sorted(_word(w, k))], axis=1) == 1
    return full[keep]


def half_fraction(k: int) -> tuple[np.ndarray, list[list[int]]]:
    """The 2^(k-1) half fraction with I = (all k factors): its cells and its generator word.

    Resolution k: for k >= 5 every main effect and two-way interaction is estimable.
    """
    words = [list(range(k))]
    return fractional_factorial(k, words), words


def resolution(words: Sequence[Sequence[int]], k: int) -> float:
    """The length of the shortest word of the defining relation (inf for the full design)."""
    rel = defining_relation(words, k)
    return float(min(len(w) for w in rel)) if rel else math.inf


def aliases(term: Sequence[int], words: Sequence[Sequence[int]], k: int) -> list[Term]:
    """The terms aliased with `term` in the fraction: term * W for every word W of the relation."""
    t = frozenset(int(i) for i in term)
    return sorted((tuple(sorted(t ^ w)) for w in defining_relation(words, k)),
                  key=lambda s: (len(s), s))


def model_terms(k: int, order: int = 2) -> list[Term]:
    """The intercept, the k main effects, then the interactions up to `order`, in that order."""
    if not 0 <= order <= k:
        raise ValueError(f"order: {order}; expected an interaction order in [0, {k}]")
    return [t for r in range(order + 1) for t in itertools.combinations(range(k), r)]


def term_name(term: Term, names: Sequence[str], sep: str = " × ") -> str:
    """"intercept", "bn" or "bn × dropout" for a term over the factor names."""
    return sep.join(names[i] for i in term) if term else "intercept"


def check_estimable(terms: Sequence[Term], words: Sequence[Sequence[int]], k: int,
                    names: Sequence[str] | None = None) -> None:
    """Raises ValueError naming two model terms that the fraction aliases with each other.

    Two terms T, U of a regular fraction have equal columns iff T * U is a word of the defining
    relation, and orthogonal columns otherwise; the model is estimable iff no such pair exists.
    """
    rel = set(defining_relation(words, k))
    names = names or [chr(ord("A") + i) for i in range(k)]
    for a, b in itertools.combinations(terms, 2):
        if frozenset(a) ^ frozenset(b) in rel:
            res = resolution(words, k)
            raise ValueError(
                f"the fraction (resolution {res:g}) aliases {term_name(a, names)} with "
                f"{term_name(b, names)}; expected a design where the model's terms are not "
                "aliased (the full design, or a half fraction over >= 5 factors for a two-way "
                "model)")


def residual_terms(terms: Sequence[Term], words: Sequence[Sequence[int]], k: int) -> list[Term]:
    """The design's other estimable columns: one term per alias class that holds no model term.

    Each class is represented by its lowest-order term (then the first in index order); with the
    model's terms these make the saturated model of the design (as many columns as cells). In the
    half fraction 2^(6-1) with I = ABCDEF and the two-way model they are the ten three-way
    interactions that contain A, each standing for itself plus its alias (ABC = DEF).
    """
    rel = defining_relation(words, k)
    taken: set[frozenset[int]] = set()

    def claim(t: Sequence[int]) -> None:
        ft = frozenset(t)
        taken.update({ft} | {ft ^ w for w in rel})

    for t in terms:
        claim(t)
    out = []
    for t in model_terms(k, k):
        if frozenset(t) not in taken:
            out.append(t)
            claim(t)
    return out


def model_matrix(levels: np.ndarray, terms: Sequence[Term]) -> np.ndarray:
    """The +-1-coded columns prod_{t in T} x_t of each term (a column of ones for the intercept)."""
    lv = _levels(levels)
    x = 2.0 * lv - 1.0
    return np.stack([np.prod(x[:, list(t)], axis=1) if t else np.ones(len(lv)) for t in terms],
                    axis=1)


def _levels(levels: np.ndarray) -> np.ndarray:
    lv = np.asarray(levels)
    if lv.ndim != 2 or not np.isin(lv, (0, 1)).all():
        raise ValueError(f"levels: shape {lv.shape}; expected an (n_cells, k) array of 0 / 1")
    return lv.astype(np.float64)


# --------------------------------------------------------------------------- estimation


def fit(levels: np.ndarray, y: np.ndarray, terms: Sequence[Term]) -> np.ndarray:
    """Ordinary least squares coefficients b_T of the +-1-coded model.

    Args:
      levels: (n_cells, k) levels 0 / 1.
      y: (n_cells,) responses, or (n_cells, m) for m replicates (e.g. seeds), each fitted alone.
      terms: the model's terms (`model_terms`).

    Returns:
      (n_terms,) or (n_terms, m) coefficients, in `terms` order. The effect of a term is 2 b_T.

    Raises:
      ValueError: shapes that disagree, non-finite responses, or a rank-deficient model (terms
        aliased in this design: `check_estimable` names them).
    """
    X = model_matrix(levels, terms)
    y = np.asarray(y, dtype=np.float64)
    if y.shape[0] != X.shape[0] or y.ndim not in (1, 2):
        raise ValueError(f"y: shape {y.shape}; expected ({X.shape[0]},) or ({X.shape[0]}, m), one "
                         "response per cell")
    if not np.all(np.isfinite(y)):
        raise ValueError("y: holds a non-finite response")
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError(f"terms: {len(terms)} terms but the design's model matrix has rank "
                         f"{np.linalg.matrix_rank(X)}; some terms are aliased (check_estimable)")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return coef


def effects(levels: np.ndarray, y: np.ndarray, terms: Sequence[Term]) -> np.ndarray:
    """2 b_T for every term (the intercept's entry is the fitted grand mean b_(), not doubled)."""
    coef = fit(levels, y, terms)
    scale = np.array([1.0 if not t else 2.0 for t in terms])
    return coef * (scale if coef.ndim == 1 else scale[:, None])


def main_effect_contrast(levels: np.ndarray, y: np.ndarray, factor: int) -> np.ndarray:
    """mean(y | factor on) - mean(y | factor off) over the cells given (per column of y)."""
    lv = np.asarray(levels)[:, factor]
    y = np.asarray(y, dtype=np.float64)
    return y[lv == 1].mean(axis=0) - y[lv == 0].mean(axis=0)


def predict(coefficients: np.ndarray, terms: Sequence[Term], levels: np.ndarray) -> np.ndarray:
    """The model's value at the given cells: model_matrix(levels, terms) @ coefficients."""
    return model_matrix(levels, terms) @ np.asarray(coefficients, dtype=np.float64)


# --------------------------------------------------------------------------- Shapley


def zero_one_coefficients(coefficients: np.ndarray, terms: Sequence[Term], k: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-way model's +-1 coefficients rewritten in the 0/1 coding.

    With x = 2 s - 1: v(S) = c_0 + sum_{i in S} a_i + sum_{i<j in S} c_ij where
    c_ij = 4 b_ij, a_i = 2 b_i - 2 sum_{j != i} b_ij and c_0 = b_() - sum_i b_i + sum_{i<j} b_ij.

    Returns:
      (c_0, a, c): c_0 of shape (...), a of shape (k, ...), c a symmetric (k, k, ...) array with a
      zero diagonal; "..." is the replicate axis of `coefficients`, if any.

    Raises:
      ValueError: a term of order 3 or more (this is the two-way model), or a missing main effect.
    """
    coef = np.asarray(coefficients, dtype=np.float64)
    rest = coef.shape[1:]
    b0 = np.zeros(rest)
    b = np.zeros((k, *rest))
    bij = np.zeros((k, k, *rest))
    for t, value in zip(terms, coef):
        if len(t) == 0:
            b0 = b0 + value
        elif len(t) == 1:
            b[t[0]] = value
        elif len(t) == 2:
            bij[t[0], t[1]] = bij[t[1], t[0]] = value
        else:
            raise ValueError(f"terms: {t} is of order {len(t)}; expected a model with main "
                             "effects and two-way interactions only")
    a = 2.0 * b - 2.0 * bij.sum(axis=1)
    c = 4.0 * bij
    c0 = b0 - b.sum(axis=0) + bij.sum(axis=(0, 1)) / 2.0
    return c0, a, c


def shapley_two_way(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """phi_i = a_i + 1/2 sum_{j != i} c_ij: the exact Shapley value of v(S) = c_0 + sum_{i in S}
    a_i + sum_{i<j in S} c_ij (each pair's synergy split evenly between its two members).

    Args:
      a: (k, ...) main coefficients in the 0/1 coding.
      c: (k, k, ...) symmetric pair coefficients (the diagonal is ignored).
    """
    a = np.asarray(a, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64).copy()
    k = a.shape[0]
    c[np.arange(k), np.arange(k)] = 0.0
    return a + 0.5 * c.sum(axis=1)


def shapley_from_coefficients(coefficients: np.ndarray, terms: Sequence[Term], k: int
                              ) -> np.ndarray:
    """phi_i = sum_{T containing i, |T| odd} 2 b_T / |T| for a +-1-coded model of any order.

    Returns:
      (k,) or (k, m) Shapley values of v(S) = the model at the cell with exactly S switched on.
    """
    coef = np.asarray(coefficients, dtype=np.float64)
    phi = np.zeros((k, *coef.shape[1:]))
    for t, value in zip(terms, coef):
        if len(t) % 2 == 1:
            for i in t:
                phi[i] = phi[i] + 2.0 * value / len(t)
    return phi


def shapley_brute_force(v: Callable[[frozenset[int]], float], k: int) -> np.ndarray:
    """The Shapley values of any set function on k players, from the definition (2^k evaluations).

    For checking the closed forms; exponential in k.
    """
    cache = {frozenset(s): float(v(frozenset(s)))
             for r in range(k + 1) for s in itertools.combinations(range(k), r)}
    phi = np.zeros(k)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        for r in range(k):
            w = math.factorial(r) * math.factorial(k - r - 1) / math.factorial(k)
            for s in itertools.combinations(others, r):
                s = frozenset(s)
                phi[i] += w * (cache[s | {i}] - cache[s])
    return phi


def ordered_credits(v: Callable[[Sequence[int]], np.ndarray], order: Sequence[int], k: int
                    ) -> np.ndarray:
    """What a cumulative ablation in `order` credits each factor: v(first r) - v(first r - 1).

    Args:
      v: the value of a cell given as a (k,) 0/1 level vector (e.g. `predict` of a fitted model).
      order: the factors in the order they are switched on.

    Returns:
      (len(order), ...) credits, in `order`; they sum to v(all in order) - v(none).
    """
    levels = np.zeros(k, np.int8)
    prev = np.asarray(v(levels.copy()), dtype=np.float64)
    out = []
    for i in order:
        levels[i] = 1
        cur = np.asarray(v(levels.copy()), dtype=np.float64)
        out.append(cur - prev)
        prev = cur
    return np.stack(out)

