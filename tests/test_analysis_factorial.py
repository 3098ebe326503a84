"""`analysis.factorial` against closed forms: the half fraction's size, orthogonality and aliases,
effects recovered exactly from synthetic responses, and Shapley values against the definition."""

import itertools

import numpy as np
import pytest

from ml_practical.analysis import factorial as ff

K = 6


def _pm(levels):
    return 2 * np.asarray(levels, np.int64) - 1


def test_full_factorial_is_every_cell_once_in_standard_order():
    full = ff.full_factorial(3)
    assert full.shape == (8, 3)
    assert full[:4].tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert len({tuple(r) for r in ff.full_factorial(K)}) == 64
    with pytest.raises(ValueError, match="k: 0; expected the number of factors"):
        ff.full_factorial(0)


def test_half_fraction_keeps_the_even_cells_with_orthogonal_two_way_columns():
    cells, words = ff.half_fraction(K)
    assert words == [[0, 1, 2, 3, 4, 5]]
    assert cells.shape == (32, K)
    # I = ABCDEF: the +-1 levels multiply to +1, i.e. an even number of factors on.
    assert np.all(np.prod(_pm(cells), axis=1) == 1)
    assert np.all(cells.sum(axis=1) % 2 == 0)
    assert cells[0].tolist() == [0] * K and [1] * K in cells.tolist()
    # Balanced: every factor on in 16 cells, every pair of factors in each of its 4 combinations 8x.
    assert cells.sum(axis=0).tolist() == [16] * K
    for i, j in itertools.combinations(range(K), 2):
        combos = {c: int(np.sum((cells[:, i] == c[0]) & (cells[:, j] == c[1])))
                  for c in itertools.product((0, 1), repeat=2)}
        assert set(combos.values()) == {8}
    # The 22 columns of the two-way model are orthogonal: X^T X = 32 I.
    terms = ff.model_terms(K, 2)
    assert len(terms) == 1 + 6 + 15
    X = ff.model_matrix(cells, terms)
    np.testing.assert_array_equal(X.T @ X, 32 * np.eye(22))


def test_alias_structure_of_the_half_fraction():
    cells, words = ff.half_fraction(K)
    assert ff.resolution(words, K) == 6
    assert ff.resolution([], K) == float("inf")
    assert ff.defining_relation(words, K) == [frozenset(range(K))]
    assert ff.aliases((0,), words, K) == [(1, 2, 3, 4, 5)]          # A = BCDEF
    assert ff.aliases((1, 2), words, K) == [(0, 3, 4, 5)]           # BC = ADEF
    assert ff.aliases((0, 1, 2), words, K) == [(3, 4, 5)]           # ABC = DEF
    # Aliased columns are equal in the fraction, and orthogonal to the rest.
    X = ff.model_matrix(cells, [(0,), (1, 2, 3, 4, 5), (0, 1, 2), (3, 4, 5), (0, 1)])
    np.testing.assert_array_equal(X[:, 0], X[:, 1])
    np.testing.assert_array_equal(X[:, 2], X[:, 3])
    assert X[:, 0] @ X[:, 2] == 0 and X[:, 0] @ X[:, 4] == 0
    ff.check_estimable(ff.model_terms(K, 2), words, K)  # resolution VI: fine
    with pytest.raises(ValueError, match=r"resolution 6\) aliases A × B × C with D × E × F"):
        ff.check_estimable(ff.model_terms(K, 3), words, K)
    # With the two-way model, the half fraction's remaining 10 columns are the 3-way alias pairs.
    rest = ff.residual_terms(ff.model_terms(K, 2), words, K)
    assert rest == [t for t in itertools.combinations(range(K), 3) if 0 in t] and len(rest) == 10
    X = ff.model_matrix(cells, ff.model_terms(K, 2) + rest)
    np.testing.assert_array_equal(X.T @ X, 32 * np.eye(32))  # saturated and orthogonal
    assert ff.residual_terms(ff.model_terms(3, 2), [], 3) == [(0, 1, 2)]
    assert ff.residual_terms(ff.model_terms(5, 2), ff.half_fraction(5)[1], 5) == []  # ABC = DE
    # Over 4 factors the half fraction is resolution IV: two-way interactions pair up.
    _, w4 = ff.half_fraction(4)
    with pytest.raises(ValueError, match=r"aliases bn × dropout with l2 × smoothing"):
        ff.check_estimable(ff.model_terms(4, 2), w4, 4, ["bn", "dropout", "l2", "smoothing"])


def test_a_quarter_fraction_and_dependent_words():
    # 2^(6-2) with I = ABCE = BCDF (so also = ADEF): resolution IV, 16 cells.
    words = [[0, 1, 2, 4], [1, 2, 3, 5]]
    cells = ff.fractional_factorial(K, words)
    assert cells.shape == (16, K)
    assert ff.defining_relation(words, K) == [frozenset({0, 1, 2, 4}), frozenset({0, 3, 4, 5}),
                                              frozenset({1, 2, 3, 5})]
    assert ff.resolution(words, K) == 4
    with pytest.raises(ValueError, match="not independent"):
        ff.defining_relation([[0, 1], [0, 1]], K)
    with pytest.raises(ValueError, match=r"words: \[0, 7\]; expected distinct factor indices"):
        ff.fractional_factorial(K, [[0, 7]])


def _synthetic(rng, terms):
    return {t: (0.97 if not t else float(rng.normal(0, 0.01))) for t in terms}


def _response(cells, coefs):
    x = _pm(cells).astype(float)
    return sum(b * (np.prod(x[:, list(t)], axis=1) if t else 1.0) for t, b in coefs.items())


def test_known_effects_are_recovered_exactly_from_the_half_fraction():
    rng = np.random.default_rng(1)
    cells, _ = ff.half_fraction(K)
    terms = ff.model_terms(K, 2)
    truth = _synthetic(rng, terms)
    y = _response(cells, truth)
    coef = ff.fit(cells, y, terms)
    np.testing.assert_allclose(coef, [truth[t] for t in terms], atol=1e-14)
    eff = ff.effects(cells, y, terms)
    assert eff[0] == pytest.approx(truth[()])
    np.testing.assert_allclose(eff[1:], [2 * truth[t] for t in terms[1:]], atol=1e-14)
    # The main effect is mean(on) - mean(off); the BC interaction half the change of B's effect
    # when C is switched on.
    for i in range(K):
        assert eff[1 + i] == pytest.approx(ff.main_effect_contrast(cells, y, i), abs=1e-14)
    bc = terms.index((1, 2))
    on, off = cells[:, 2] == 1, cells[:, 2] == 0
    b_with_c = ff.main_effect_contrast(cells[on], y[on], 1)
    b_without_c = ff.main_effect_contrast(cells[off], y[off], 1)
    assert eff[bc] == pytest.approx((b_with_c - b_without_c) / 2, abs=1e-14)
    # Replicates (seeds) are fitted column by column.
    y2 = np.stack([y, y + 0.01 * _pm(cells)[:, 3]], axis=1)
    coef2 = ff.fit(cells, y2, terms)
    np.testing.assert_allclose(coef2[:, 0], coef, atol=1e-14)
    shift = np.zeros(len(terms))
    shift[terms.index((3,))] = 0.01
    np.testing.assert_allclose(coef2[:, 1] - coef, shift, atol=1e-14)


def test_a_four_way_term_lands_on_its_aliased_two_way_column():
    cells, _ = ff.half_fraction(K)
    terms = ff.model_terms(K, 2)
    y = _response(cells, {(): 0.5, (0, 1): 0.02, (2, 3, 4, 5): 0.03})  # CDEF = AB
    coef = ff.fit(cells, y, terms)
    assert coef[terms.index((0, 1))] == pytest.approx(0.05)
    # In the full design the same response separates them: AB is 0.02 again.
    full = ff.full_factorial(K)
    yf = _response(full, {(): 0.5, (0, 1): 0.02, (2, 3, 4, 5): 0.03})
    assert ff.fit(full, yf, terms)[terms.index((0, 1))] == pytest.approx(0.02)


def test_fit_refuses_aliased_terms_and_bad_responses():
    cells, _ = ff.half_fraction(4)
    with pytest.raises(ValueError, match="rank 8; some terms are aliased"):
        ff.fit(cells, np.zeros(8), ff.model_terms(4, 2))
    with pytest.raises(ValueError, match=r"y: shape \(5,\); expected \(8,\)"):
        ff.fit(cells, np.zeros(5), ff.model_terms(4, 1))
    with pytest.raises(ValueError, match="non-finite"):
        ff.fit(cells, np.full(8, np.nan), ff.model_terms(4, 1))
    with pytest.raises(ValueError, match=r"levels: shape \(8,\); expected an \(n_cells, k\)"):
        ff.model_matrix(np.zeros(8), [()])


def _two_way_v(c0, a, c):
    def v(s):
        s = sorted(s)
        return c0 + sum(a[i] for i in s) + sum(c[i, j] for i, j in itertools.combinations(s, 2))
    return v


def test_two_way_shapley_equals_the_definition_over_all_64_subsets():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 0.01, K)
    c = rng.normal(0, 0.005, (K, K))
    c = np.triu(c, 1) + np.triu(c, 1).T
    v = _two_way_v(0.96, a, c)
    brute = ff.shapley_brute_force(v, K)
    phi = ff.shapley_two_way(a, c)
    np.testing.assert_allclose(phi, brute, atol=1e-15)
    # Efficiency: the values sum to v(all) - v(none).
    assert phi.sum() == pytest.approx(v(frozenset(range(K))) - v(frozenset()), abs=1e-15)


def test_zero_one_rewrite_and_shapley_of_a_fitted_model():
    rng = np.random.default_rng(3)
    terms = ff.model_terms(K, 2)
    truth = _synthetic(rng, terms)
    cells, _ = ff.half_fraction(K)
    coef = ff.fit(cells, _response(cells, truth), terms)
    c0, a, c = ff.zero_one_coefficients(coef, terms, K)
    # The 0/1 form is the same function on all 64 cells, the 32 outside the fraction included.
    v01 = _two_way_v(c0, a, c)
    full = ff.full_factorial(K)
    pred = ff.predict(coef, terms, full)
    np.testing.assert_allclose([v01(frozenset(np.flatnonzero(r))) for r in full], pred, atol=1e-14)
    phi = ff.shapley_two_way(a, c)
    np.testing.assert_allclose(phi, ff.shapley_brute_force(v01, K), atol=1e-14)
    # Without three-way terms the Shapley value is the main effect 2 b_i.
    np.testing.assert_allclose(phi, 2 * coef[1:1 + K], atol=1e-14)
    np.testing.assert_allclose(ff.shapley_from_coefficients(coef, terms, K), phi, atol=1e-14)
    # Per seed: the replicate axis is carried through.
    coefs = np.stack([coef, 2 * coef], axis=1)
    _, a2, c2 = ff.zero_one_coefficients(coefs, terms, K)
    np.testing.assert_allclose(ff.shapley_two_way(a2, c2)[:, 1], 2 * phi, atol=1e-14)
    with pytest.raises(ValueError, match="order 3"):
        ff.zero_one_coefficients(np.zeros(2), [(), (0, 1, 2)], K)


def test_shapley_of_higher_order_terms_is_2b_over_the_order_for_odd_orders():
    rng = np.random.default_rng(4)
    terms = ff.model_terms(K, K)  # every one of the 64 terms
    coef = rng.normal(0, 0.01, len(terms))
    full = ff.full_factorial(K)
    values = dict(zip((frozenset(np.flatnonzero(r)) for r in full),
                      ff.predict(coef, terms, full)))
    brute = ff.shapley_brute_force(values.__getitem__, K)
    np.testing.assert_allclose(ff.shapley_from_coefficients(coef, terms, K), brute, atol=1e-14)
    # A lone three-way term b x_A x_B x_C gives 2b/3 to each of A, B, C and nothing elsewhere.
    phi = ff.shapley_from_coefficients(np.array([0.03]), [(0, 1, 2)], K)
    np.testing.assert_allclose(phi, [0.02, 0.02, 0.02, 0, 0, 0], atol=1e-15)


def test_ordered_credits_depend_on_the_order_and_sum_to_the_total():
    c = np.zeros((K, K))
    c[0, 1] = c[1, 0] = -0.01   # A and B overlap: whichever comes second gets less
    a = np.array([0.02, 0.02, 0, 0, 0, 0.005])
    v = _two_way_v(0.9, a, c)

    def v_levels(levels):
        return v(frozenset(np.flatnonzero(levels)))

    first = ff.ordered_credits(v_levels, [0, 1, 2, 3, 4, 5], K)
    second = ff.ordered_credits(v_levels, [1, 0, 2, 3, 4, 5], K)
    np.testing.assert_allclose(first, [0.02, 0.01, 0, 0, 0, 0.005], atol=1e-15)
    np.testing.assert_allclose(second, [0.02, 0.01, 0, 0, 0, 0.005], atol=1e-15)  # B, then A
    assert first.sum() == pytest.approx(v(frozenset(range(K))) - v(frozenset()))
    phi = ff.shapley_two_way(a, c)
    np.testing.assert_allclose(phi[:2], [0.015, 0.015])  # the order-free split
