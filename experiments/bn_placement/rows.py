"""The BN-placement study's rows and comparisons, as data.

Chapter 12.4.5 draws two placements of BatchNorm around a layer's nonlinearity:

    option A ("original paper"): z = W a (+ b) -> BN(z) -> ReLU      BN before the activation
    option B ("modern practice"): z = W a + b -> ReLU -> BN          BN after the activation

and says that "both work in practice" and that with BN "the bias b is redundant (BN subtracts the
mean anyway) ... this saves parameters without any performance loss". Each row is one network of
an arm (the CNN or the MLP), as dotted overrides of the arm's config:

  row               norm    position  bias on the conv / Dense
  bn_before         batch   before    none (the library's default: BN follows the layer)
  bn_before_bias    batch   before    kept (`model.bias_before_bn`): redundant in training mode
  bn_after          batch   after     kept (ReLU follows the layer, not BN: the bias moves the
                                      ReLU's threshold)
  bn_after_nobias   batch   after     none (`model.use_bias = False`); from the second layer on,
                                      the previous BN's beta reaches the layer through W, as
                                      W beta, so only the first layer loses every shift
  no_norm           none    -         kept (the reference: what BN buys at this budget)

The comparisons are (row, against) on test accuracy, paired by seed (seed s gives every row of an
arm the same init key, hence the same kernels in bn_before and bn_before_bias, and the same batch
order); Holm's adjustment is over every comparison of both arms. The claims the study tests read
two of them with an equivalence margin (`CLAIMS`).
"""

from __future__ import annotations

from experiments import cli

ARMS = ("cnn", "mlp")

ROWS = {
    "bn_before": {"model.norm": "batch", "model.norm_position": "before",
                  "model.use_bias": True, "model.bias_before_bn": False},
    "bn_before_bias": {"model.norm": "batch", "model.norm_position": "before",
                       "model.use_bias": True, "model.bias_before_bn": True},
    "bn_after": {"model.norm": "batch", "model.norm_position": "after",
                 "model.use_bias": True, "model.bias_before_bn": False},
    "bn_after_nobias": {"model.norm": "batch", "model.norm_position": "after",
                        "model.use_bias": False, "model.bias_before_bn": False},
    "no_norm": {"model.norm": "none", "model.norm_position": "before",
                "model.use_bias": True, "model.bias_before_bn": False},
}

LABELS = {
    "bn_before": "A: layer (no bias) -> BN -> ReLU",
    "bn_before_bias": "A + bias: layer (+ b) -> BN -> ReLU",
    "bn_after": "B: layer (+ b) -> ReLU -> BN",
    "bn_after_nobias": "B, no bias: layer -> ReLU -> BN",
    "no_norm": "no norm: layer (+ b) -> ReLU",
}

# (row, against, what the difference asks), in the report's order; every arm has all of them.
COMPARISONS = (
    ("bn_before_bias", "bn_before", "does the redundant bias before BN change accuracy?"),
    ("bn_after", "bn_before", "BN after the ReLU (B) against before it (A)"),
    ("bn_after_nobias", "bn_after", "does option B need its bias?"),
    ("bn_before", "no_norm", "what option A buys over no normalization"),
    ("bn_after", "no_norm", "what option B buys over no normalization"),
)

# The ledger's claims (experiments/audit/claims.md) read as equivalence tests on one comparison:
# confirmed when the paired-t 95 % CI of the difference lies inside +-margin (Schuirmann's two
# one-sided tests at 2.5 % each: `analysis.inference.decide(margin=...)`), refuted when it lies
# wholly outside, inconclusive otherwise. Margins are accuracy fractions (0.001 = 0.1 pp), the
# ledger's own numbers, fixed before any run. BN-14 is stated on an MNIST MLP (the "primary" arm);
# the CNN is reported next to it.
CLAIMS = {
    "BN-13": {"comparison": ("bn_before_bias", "bn_before"), "margin": 0.001, "primary": "cnn",
              "section": "12.4.5",
              "quote": "With BN, the bias b is redundant (BN subtracts the mean anyway). ... "
                       "This saves parameters without any performance loss.",
              "criterion": "test accuracy difference < 0.1 pt"},
    "BN-14": {"comparison": ("bn_after", "bn_before"), "margin": 0.003, "primary": "mlp",
              "section": "12.4.5",
              "quote": "Option A (Original paper) ... Option B (Modern practice) ... Both work "
                       "in practice.",
              "criterion": "|acc_A - acc_B| < 0.3 pt"},
}


def select_rows(only: str) -> list[str]:
    """The comma-separated rows of `only` in `ROWS` order ("" = every row): `cli.select_rows`."""
    return cli.select_rows(only, ROWS)


def comparisons(names) -> list[tuple[str, str, str]]:
    """`COMPARISONS` whose two rows are both in `names`."""
    return [c for c in COMPARISONS if c[0] in names and c[1] in names]


def combined_verdict(primary: str, others) -> str:
    """The claim's verdict over the arms: the ledger's arm decides, except that a confirmation
    there and a refutation on another arm make it "partly" (the claim holds on one network and
    fails on another)."""
    others = list(others)
    if primary == "confirmed" and "refuted" in others:
        return "partly"
    if primary == "refuted" and "confirmed" in others:
        return "partly"
    return primary


def claim_verdict(low: float, high: float, margin: float) -> str:
    """The equivalence reading of a CI: "confirmed" inside [-margin, margin], "refuted" wholly
    outside it, "inconclusive" when it straddles a bound (more seeds could settle it)."""
    if -margin <= low and high <= margin:
        return "confirmed"
    if low > margin or high < -margin:
        return "refuted"
    return "inconclusive"
