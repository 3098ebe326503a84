"""Tests for ml_practical.initializers: formulas, sample statistics, jax agreement, and specs."""

# The formulas are checked against the chapter's hand values, sample statistics against the
# formulas, and samples against jax.nn.initializers where both draw alike.

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import initializers as I

# Few distinct shapes on purpose: each (sampler, shape, dtype) is one XLA compile, which dominates
# the runtime of these tests.
DENSE = (1000, 1000)            # 1e6 samples: sample std within ~0.1% of the truth
CONV = (3, 3, 64, 128)          # fan_in 576, fan_out 1152, 73,728 samples: std within ~0.3%
SMALL = (64, 32)
STD_RTOL = 0.02


def _key(seed: int = 0) -> jax.Array:
    return jax.random.key(seed)


def _stats(w) -> tuple[float, float]:
    w = np.asarray(w).astype(np.float64)
    return float(w.mean()), float(w.std())


def _fans(shape):
    rf = math.prod(shape[:-2])
    return shape[-2] * rf, shape[-1] * rf


# The formulas written out independently of the module, so a slip in either shows up.
def _xavier(shape):
    fi, fo = _fans(shape)
    return math.sqrt(2.0 / (fi + fo))


def _he(shape, mode="fan_in", a=0.0):
    fi, fo = _fans(shape)
    fan = {"fan_in": fi, "fan_out": fo, "fan_avg": (fi + fo) / 2}[mode]
    return math.sqrt(2.0 / ((1 + a * a) * fan))


def _ortho(shape, gain=1.0):
    return gain / math.sqrt(max(math.prod(shape[:-1]), shape[-1]))


CASES = [  # (name, kwargs, std formula)
    ("normal", {}, lambda s: 0.01),
    ("normal", {"stddev": 0.5, "truncated": True}, lambda s: 0.5),
    ("xavier_normal", {}, _xavier),
    ("xavier_normal", {"truncated": True}, _xavier),
    ("xavier_uniform", {}, _xavier),
    ("he_normal", {}, _he),
    ("he_normal", {"truncated": True}, _he),
    ("he_normal", {"mode": "fan_out"}, lambda s: _he(s, "fan_out")),
    ("he_normal", {"mode": "fan_avg"}, lambda s: _he(s, "fan_avg")),
    ("he_normal", {"negative_slope": 0.2}, lambda s: _he(s, a=0.2)),
    ("he_uniform", {}, _he),
    ("he_uniform", {"mode": "fan_out", "negative_slope": 0.2}, lambda s: _he(s, "fan_out", 0.2)),
    ("he_uniform", {"mode": "fan_avg"}, lambda s: _he(s, "fan_avg")),
    ("orthogonal", {}, _ortho),
    ("orthogonal", {"gain": 2.0}, lambda s: _ortho(s, 2.0)),
    ("embedding_uniform", {}, lambda s: 1.0 / math.sqrt(3 * s[-1])),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw, _ in CASES]


# ------------------------------------------------------------------------------------------------
# Fans


@pytest.mark.parametrize("shape, fans", [
    ((256, 128), (256, 128)),
    ((3, 3, 16, 32), (144, 288)),          # receptive field 9
    ((5, 16, 32), (80, 160)),              # 1-D conv
    ((2, 3, 3, 4, 8), (72, 144)),          # 3-D conv, receptive field 18
    ((7,), (7, 7)),                        # bias / scale vector
])
def test_compute_fans(shape, fans):
    assert I.compute_fans(shape) == fans


def test_compute_fans_rejects_scalar():
    with pytest.raises(ValueError, match="shape"):
        I.compute_fans(())


# ------------------------------------------------------------------------------------------------
# The chapter's hand values


def test_chapter_example1_hand_values():
    shape = (256, 128)
    xavier = I.expected_std("xavier_normal", shape)
    assert round(xavier, 4) == 0.0722 and round(xavier**2, 5) == 0.00521
    assert round(math.sqrt(3) * I.expected_std("xavier_uniform", shape), 4) == 0.125
    he = I.expected_std("he_normal", shape)
    assert round(he, 4) == 0.0884 and he > xavier

    # 32,768 entries: standard error of the sample std ~0.4%, so 2% is a 5-sigma band.
    assert _stats(I.xavier_normal()(_key(1), shape))[1] == pytest.approx(0.0722, rel=STD_RTOL)
    assert _stats(I.he_normal()(_key(1), shape))[1] == pytest.approx(0.0884, rel=STD_RTOL)
    w = np.asarray(I.xavier_uniform()(_key(1), shape))
    assert 0.1249 < np.abs(w).max() <= 0.125
    assert _stats(w)[1] == pytest.approx(0.125 / math.sqrt(3), rel=STD_RTOL)


def test_chapter_exercise_b2_and_mcq_q1():
    shape = (1024, 512)
    xavier = I.expected_std("xavier_normal", shape)
    he = I.expected_std("he_normal", shape)
    assert xavier == pytest.approx(math.sqrt(2 / 1536)) and round(xavier, 4) == 0.0361
    assert round(he, 4) == 0.0442
    assert round(he / xavier, 4) == 1.2247 and he / xavier == pytest.approx(math.sqrt(1.5))
    # MCQ Q1: n_in=512, n_out=256 -> 0.0510
    assert round(I.expected_std("xavier_normal", (512, 256)), 4) == 0.0510


def test_chapter_exercise_b1_leaky_relu_variance():
    var = I.expected_std("he_normal", (500, 100), negative_slope=0.2) ** 2
    assert var == pytest.approx(2 / (1.04 * 500), rel=1e-12)
    w = I.he_normal(negative_slope=0.2)(_key(2), DENSE)
    assert _stats(w)[1] ** 2 == pytest.approx(2 / (1.04 * 1000), rel=2 * STD_RTOL)


# ------------------------------------------------------------------------------------------------
# Sample statistics against the formulas


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("name, kwargs, formula", CASES, ids=CASE_IDS)
def test_sample_std_and_mean_match_formula(name, kwargs, formula, shape):
    w = I.get(name, **kwargs)(_key(4), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    target = formula(shape)
    assert I.expected_std(name, shape, **kwargs) == pytest.approx(target, rel=1e-12)
    mean, std = _stats(w)
    assert std == pytest.approx(target, rel=STD_RTOL)
    assert abs(mean) < 6 * target / math.sqrt(w.size)  # 6 standard errors


@pytest.mark.parametrize("name, kwargs, limit", [
    ("xavier_uniform", {}, math.sqrt(6 / (576 + 1152))),
    ("he_uniform", {}, math.sqrt(6 / 576)),
    ("he_uniform", {"mode": "fan_out"}, math.sqrt(6 / 1152)),
    ("he_uniform", {"negative_slope": 0.2}, math.sqrt(3 * 2 / (1.04 * 576))),
    ("embedding_uniform", {}, 1 / math.sqrt(128)),
])
def test_uniform_limits(name, kwargs, limit):
    w = I.get(name, **kwargs)(_key(5), CONV)
    absmax = float(np.abs(np.asarray(w)).max())
    assert absmax <= limit * (1 + 1e-6)
    assert absmax > limit * 0.999  # 73,728 draws fill the interval
    assert _stats(w)[1] == pytest.approx(limit / math.sqrt(3), rel=STD_RTOL)


def test_modes_differ_on_non_square_kernel():
    # CONV: fan_in 576 < fan_avg 864 < fan_out 1152, so the stds are strictly ordered.
    stds = {m: _stats(I.he_normal(mode=m)(_key(6), CONV))[1] for m in I.FAN_MODES}
    assert stds["fan_in"] > stds["fan_avg"] > stds["fan_out"]
    assert stds["fan_avg"] == pytest.approx(math.sqrt(2 / 864), rel=STD_RTOL)


def test_embedding_bounds():
    for shape in (DENSE, CONV):  # d = 1000 and d = 128
        w = np.asarray(I.embedding_uniform()(_key(7), shape), np.float64).reshape(-1, shape[-1])
        bound = 1 / math.sqrt(shape[-1])
        assert 0.999 * bound < np.abs(w).max() <= bound
        # Expected squared row norm d * 1/(3d) = 1/3, independent of d.
        assert np.mean(np.sum(w**2, axis=1)) == pytest.approx(1 / 3, rel=0.01)


# ------------------------------------------------------------------------------------------------
# Truncation


def test_truncation_constant_is_std_of_standard_normal_cut_at_2():
    pdf2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))  # P(|Z| < 2)
    assert I.TRUNCATED_NORMAL_STD == pytest.approx(math.sqrt(1 - 4 * pdf2 / mass), rel=1e-14)


@pytest.mark.parametrize("name, kwargs, std", [
    ("normal", {"stddev": 0.05}, 0.05),
    ("xavier_normal", {}, math.sqrt(2 / 2000)),
    ("he_normal", {}, math.sqrt(2 / 1000)),
])
def test_untruncated_default_has_tails_truncated_has_none(name, kwargs, std):
    w = np.asarray(I.get(name, **kwargs)(_key(8), DENSE))
    # P(|Z| > 2) = 1 - erf(sqrt 2) = 0.0455; standard error at 1e6 draws is 2e-4.
    assert np.mean(np.abs(w) > 2 * std) == pytest.approx(0.0455, abs=0.002)

    wt = np.asarray(I.get(name, truncated=True, **kwargs)(_key(8), DENSE))
    sigma_underlying = std / I.TRUNCATED_NORMAL_STD  # the normal that was cut at 2 sigma
    assert np.abs(wt).max() <= 2 * sigma_underlying * (1 + 1e-6)
    assert np.abs(wt).max() > 2 * sigma_underlying * 0.999
    assert np.std(wt) == pytest.approx(std, rel=STD_RTOL)  # rescaled: std still the formula


# ------------------------------------------------------------------------------------------------
# Agreement with jax.nn.initializers (same key -> same draw where both draw the same thing)


VS = jax.nn.initializers.variance_scaling
SAME_DRAW = {  # case -> (ours, jax's), both drawn with the same key on CONV
    "he_normal_trunc": (I.he_normal(truncated=True), jax.nn.initializers.he_normal()),
    "glorot_normal": (I.xavier_normal(truncated=True), jax.nn.initializers.glorot_normal()),
    "glorot_uniform": (I.xavier_uniform(), jax.nn.initializers.glorot_uniform()),
    "he_uniform": (I.he_uniform(), jax.nn.initializers.he_uniform()),
    "he_normal_is_vs_fan_in_normal": (I.he_normal(), VS(2.0, "fan_in", "normal")),
    "fan_out": (I.he_normal(mode="fan_out"), VS(2.0, "fan_out", "normal")),
    "fan_avg": (I.he_normal(mode="fan_avg"), VS(2.0, "fan_avg", "normal")),
    "leaky_trunc": (I.he_normal(negative_slope=0.2, truncated=True),
                    VS(2.0 / 1.04, "fan_in", "truncated_normal")),
    # jax's truncated_normal does not rescale, so its stddev must be pre-divided to match ours.
    "truncated_normal": (I.normal(0.01, truncated=True),
                         jax.nn.initializers.truncated_normal(0.01 / I.TRUNCATED_NORMAL_STD)),
}
CONV1D = (5, 16, 32)  # fan_in 80, fan_out 160


@pytest.fixture(scope="module")
def jax_draws():
    """All jax.nn.initializers references in one jitted program: one compile instead of a dozen."""
    def draw_all(key):
        out = {case: theirs(key, CONV) for case, (_, theirs) in SAME_DRAW.items()}
        out["conv1d_fan_in"] = VS(1.0, "fan_in", "normal")(key, CONV1D)
        out["conv1d_fan_out"] = VS(1.0, "fan_out", "normal")(key, CONV1D)
        out["he_normal_dense"] = jax.nn.initializers.he_normal()(jax.random.fold_in(key, 1), DENSE)
        return out
    return jax.device_get(jax.jit(draw_all)(_key(9)))


@pytest.mark.parametrize("case", list(SAME_DRAW))
def test_same_draw_as_jax(case, jax_draws):
    ours = SAME_DRAW[case][0](_key(9), CONV)
    np.testing.assert_allclose(np.asarray(ours), jax_draws[case], rtol=1e-5, atol=1e-9)


def test_fans_agree_with_jax_on_1d_conv(jax_draws):
    # variance_scaling(1, mode, "normal") draws normal * sqrt(1/fan): the ratio recovers jax's fan.
    # (2-D conv fans are checked by test_same_draw_as_jax on CONV.)
    z = np.asarray(I.normal(1.0)(_key(9), CONV1D))
    fan_in, fan_out = I.compute_fans(CONV1D)
    assert (fan_in, fan_out) == (80, 160)
    np.testing.assert_allclose(z / jax_draws["conv1d_fan_in"], math.sqrt(fan_in), rtol=1e-5)
    np.testing.assert_allclose(z / jax_draws["conv1d_fan_out"], math.sqrt(fan_out), rtol=1e-5)


def test_truncated_he_std_equals_jax_he_normal_std_and_default_is_not_jax(jax_draws):
    theirs = jax_draws["he_normal_dense"]  # a different key from ours
    ours = np.asarray(I.he_normal(truncated=True)(_key(10), DENSE))
    assert np.std(ours) == pytest.approx(np.std(theirs), rel=STD_RTOL)
    assert np.std(theirs) == pytest.approx(math.sqrt(2 / 1000), rel=STD_RTOL)
    # The default (untruncated) is a different distribution from jax's he_normal: it has tails.
    default = np.asarray(I.he_normal()(_key(10), DENSE))
    assert np.abs(default).max() > 1.5 * np.abs(theirs).max()


# ------------------------------------------------------------------------------------------------
# Orthogonal


@pytest.mark.parametrize("shape", [SMALL, (32, 64), (64, 64), CONV, (2, 2, 4, 64)],
                         ids=["tall", "wide", "square", "conv_tall", "conv_wide"])
@pytest.mark.parametrize("gain", [1.0, 1.7])
def test_orthogonal_is_orthogonal(shape, gain):
    w = I.orthogonal(gain)(_key(12), shape)
    assert w.shape == shape
    m = np.asarray(w, np.float64).reshape(-1, shape[-1]) / gain
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-5)


def test_orthogonal_sign_correction_makes_r_diagonal_positive():
    # Saxe et al. / Mezzadri 2007: Q * sign(diag R) is Haar; equivalently Q^T A has a positive
    # diagonal for the normal matrix A it was built from (same key, same draw as inside).
    shape = SMALL
    a = np.asarray(I.normal(1.0)(_key(13), shape), np.float64)  # jax.random.normal(key, shape)
    q = np.asarray(I.orthogonal()(_key(13), shape), np.float64)
    r = q.T @ a
    assert np.all(np.diag(r) > 0)
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-4)  # and Q^T A is upper triangular


def test_orthogonal_rejects_1d():
    with pytest.raises(ValueError, match="shape"):
        I.orthogonal()(_key(0), (10,))


# ------------------------------------------------------------------------------------------------
# dtype, determinism, jit, flax


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", I.names())
def test_dtype_respected(name, dtype):
    # bfloat16 rounding (8-bit mantissa) is unbiased to well under 2% of the std.
    shape = CONV
    kwargs = {"value": 0.5} if name == "constant" else {}
    w = I.get(name, **kwargs)(_key(14), shape, dtype)
    assert w.dtype == dtype and w.shape == shape
    target = {"constant": 0.0, "zeros": 0.0}.get(name, I.expected_std(name, shape, **kwargs))
    mean, std = _stats(w)
    if name == "constant":
        assert mean == 0.5 and std == 0.0
    else:
        assert std == pytest.approx(target, rel=STD_RTOL, abs=1e-12)


@pytest.mark.parametrize("name", I.names())
def test_deterministic_for_same_key(name):
    kwargs = {"value": 2.0} if name == "constant" else {}
    init = I.get(name, **kwargs)
    a, b = init(_key(15), SMALL), init(_key(15), SMALL)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if name not in ("zeros", "constant"):
        assert not np.array_equal(np.asarray(a), np.asarray(init(_key(16), SMALL)))


def test_jittable_inside_a_larger_program():
    names = ["he_normal", "xavier_uniform", "orthogonal"]
    jitted = jax.jit(lambda key: [I.get(n)(key, SMALL) for n in names])
    for name, w in zip(names, jitted(_key(17))):
        np.testing.assert_allclose(np.asarray(w), np.asarray(I.get(name)(_key(17), SMALL)),
                                   rtol=1e-5, atol=1e-7)


def test_works_as_flax_kernel_init():
    dense = nn.Dense(1000, kernel_init=I.he_normal())
    params = dense.init(jax.random.PRNGKey(0), jnp.ones((1, 1000)))["params"]
    assert params["kernel"].shape == (1000, 1000)
    assert _stats(params["kernel"])[1] == pytest.approx(math.sqrt(2 / 1000), rel=STD_RTOL)

    conv = nn.Conv(128, (3, 3), kernel_init=I.xavier_uniform(), bias_init=I.constant(0.1))
    params = conv.init(jax.random.PRNGKey(1), jnp.ones((1, 8, 8, 64)))["params"]
    assert params["kernel"].shape == CONV
    assert _stats(params["kernel"])[1] == pytest.approx(math.sqrt(2 / 1728), rel=STD_RTOL)
    np.testing.assert_array_equal(np.asarray(params["bias"]), np.full(128, 0.1, np.float32))

    embed = nn.Embed(1000, 64, embedding_init=I.embedding_uniform())
    table = embed.init(jax.random.PRNGKey(2), jnp.zeros((1,), jnp.int32))["params"]["embedding"]
    assert np.abs(np.asarray(table)).max() <= 1 / 8


# ------------------------------------------------------------------------------------------------
# get() and argument validation


@pytest.mark.parametrize("name, kwargs", [
    ("zeros", {}), ("constant", {"value": 3.0}), ("normal", {"stddev": 0.1}),
    ("xavier_normal", {"truncated": True}), ("xavier_uniform", {}),
    ("he_normal", {"mode": "fan_out", "negative_slope": 0.1}), ("he_uniform", {"mode": "fan_avg"}),
    ("orthogonal", {"gain": 1.5}), ("embedding_uniform", {}),
])
def test_get_resolves_each_name_to_its_factory(name, kwargs):
    factory = getattr(I, name)
    shape = SMALL
    np.testing.assert_array_equal(np.asarray(I.get(name, **kwargs)(_key(18), shape)),
                                  np.asarray(factory(**kwargs)(_key(18), shape)))


def test_get_covers_the_shared_names():
    assert I.names() == sorted(["zeros", "constant", "normal", "xavier_normal", "xavier_uniform",
                                "he_normal", "he_uniform", "orthogonal", "embedding_uniform",
                                "embedding_rows_uniform"])


def test_get_passes_callables_through():
    init = jax.nn.initializers.lecun_normal()
    assert I.get(init) is init
    with pytest.raises(ValueError, match="callable"):
        I.get(init, stddev=0.1)


def test_get_unknown_name_lists_valid_names_sorted():
    with pytest.raises(ValueError) as err:
        I.get("kaiming")
    assert str(err.value) == (
        "initializer: unknown 'kaiming'; expected one of ['constant', 'embedding_rows_uniform', "
        "'embedding_uniform', "
        "'he_normal', 'he_uniform', 'normal', 'orthogonal', 'xavier_normal', 'xavier_uniform', "
        "'zeros']")


def test_get_rejects_arguments_the_factory_does_not_take():
    with pytest.raises(ValueError, match=r"unexpected argument\(s\) \['mode'\]"):
        I.get("xavier_normal", mode="fan_in")


@pytest.mark.parametrize("call, field", [
    (lambda: I.normal(stddev=0.0), "stddev"),
    (lambda: I.normal(stddev=-0.01), "stddev"),
    (lambda: I.get("normal", stddev=float("nan")), "stddev"),
    (lambda: I.orthogonal(gain=0.0), "gain"),
    (lambda: I.get("orthogonal", gain=-1.0), "gain"),
    (lambda: I.he_normal(mode="fan_geo_avg"), "mode"),
    (lambda: I.get("he_uniform", mode="in"), "mode"),
    (lambda: I.he_normal(negative_slope=-0.2), "negative_slope"),
    (lambda: I.get("he_uniform", negative_slope=-1.0), "negative_slope"),
])
def test_invalid_arguments_raise_naming_the_argument(call, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        call()


def test_invalid_mode_error_lists_modes():
    with pytest.raises(ValueError, match=r"expected one of \['fan_avg', 'fan_in', 'fan_out'\]"):
        I.he_normal(mode="avg")


# ------------------------------------------------------------------------------------------------
# Specs: a name with arguments in call syntax, as a config file writes it


@pytest.mark.parametrize("spec, parsed", [
    ("he_normal", ("he_normal", {})),
    ("normal(stddev=0.05)", ("normal", {"stddev": 0.05})),
    ("constant(0.01)", ("constant", {"value": 0.01})),
    ("he_normal('fan_out', 0.2)", ("he_normal", {"mode": "fan_out", "negative_slope": 0.2})),
    ("normal(0.5, truncated=True)", ("normal", {"stddev": 0.5, "truncated": True})),
    (" normal ( stddev = 0.05 ) ", ("normal", {"stddev": 0.05})),
    ("zeros()", ("zeros", {})),
])
def test_parse_spec(spec, parsed):
    assert I.parse_spec(spec) == parsed


def test_constant_spec_equals_constant_with_value():
    np.testing.assert_array_equal(np.asarray(I.get("constant(0.01)")(_key(19), SMALL)),
                                  np.asarray(I.get("constant", value=0.01)(_key(19), SMALL)))
    np.testing.assert_array_equal(np.asarray(I.get("constant(0.01)")(_key(19), SMALL)),
                                  np.full(SMALL, 0.01, np.float32))


def test_normal_spec_draws_its_stddev():
    w = I.get("normal(stddev=0.05)")(_key(20), DENSE)
    assert w.shape == DENSE and w.dtype == jnp.float32
    assert _stats(w)[1] == pytest.approx(0.05, rel=STD_RTOL)
    np.testing.assert_array_equal(np.asarray(w),
                                  np.asarray(I.get("normal", stddev=0.05)(_key(20), DENSE)))


def test_spec_arguments_are_checked_like_keyword_arguments():
    with pytest.raises(ValueError, match=r"^stddev: "):
        I.get("normal(stddev=-0.01)")
    with pytest.raises(ValueError, match=r"unexpected argument\(s\) \['mode'\]"):
        I.get("xavier_normal(mode='fan_in')")
    with pytest.raises(ValueError, match=r"^initializer: unknown 'kaiming'; expected one of "
                                         r"\['constant', "):
        I.get("kaiming(0.1)")


@pytest.mark.parametrize("spec", [
    "normal(stddev=0.05",                 # unclosed
    "normal(stddev=0.05))",               # one parenthesis too many
    "normal(0.05)[0]",                    # not a call
    "he_normal(mode=fan_out)",            # a name, not a literal
    "normal(*[0.05])",                    # starred arguments
    "constant(0.1, value=0.2)",           # the same argument twice
    "constant(value=0.01, value=0.02)",   # the same keyword twice (a SyntaxError in Python)
    "normal(0.05)(1)",                    # a call of a call
    "constant(0.1, 0.2)",                 # more positional arguments than the factory takes
])
def test_malformed_spec_raises_naming_the_spec(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        I.get(spec)


def test_expected_std_takes_specs_too():
    assert I.expected_std("normal(stddev=0.05)", (300, 200)) == 0.05
    assert I.expected_std("constant(0.3)", (3, 3)) == 0.0
    assert I.expected_std("he_normal(mode='fan_out')", (300, 200)) == \
        I.expected_std("he_normal", (300, 200), mode="fan_out")
