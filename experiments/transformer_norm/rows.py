"""The Transformer-normalization study's rows, comparisons and claims, as data.

Two families of rows; each row is a set of dotted overrides of the study's training config plus
the family's own settings (`main.row_config` adds depth, learning rate, batch and warmup):

Family "placement" (chapter 12.5's LayerNorm inside the Transformer, and the warmup of the
Transformer recipe; Xiong et al. 2020 "On Layer Normalization in the Transformer Architecture",
Liu et al. 2020 "Understanding the Difficulty of Training Transformers"): LayerNorm, pre-LN or
post-LN, with a linear warmup over `warmup_frac` of the steps or none, at the study's
`placement_lr` and depth `placement_layers` (deep and fast enough that post-LN without warmup is
expected to fail):

  row              placement   warmup
  pre_warmup       pre         warmup_frac of the steps
  pre_nowarmup     pre         0
  post_warmup      post        warmup_frac of the steps
  post_nowarmup    post        0

Family "norm" (12.5.1 "BN's limitation: batch dependence" and the interview answer "why do
Transformers use LayerNorm"): pre-norm blocks with LayerNorm, RMSNorm or BatchNorm (over every
(sample, position) pair, padding included: the naive drop-in), at `small_batch` and at
`large_batch`, the same number of examples seen (the same epochs, so the small batch takes
large_batch / small_batch times more steps), at `norm_lr`, with warmup:

  row            norm    batch
  layer_small    layer   small_batch
  rms_small      rms     small_batch
  batch_small    batch   small_batch
  layer_large    layer   large_batch
  rms_large      rms     large_batch
  batch_large    batch   large_batch

Seed s gives every row of a family the same init key and, at one batch size, the same batch
order, so differences are paired by seed.
"""

from __future__ import annotations

from experiments import cli

FAMILIES = ("placement", "norm")

ROWS = {
    "pre_warmup": {"family": "placement", "warmup": True,
                   "overrides": {"model.placement": "pre", "model.norm": "layer"}},
    "pre_nowarmup": {"family": "placement", "warmup": False,
                     "overrides": {"model.placement": "pre", "model.norm": "layer"}},
    "post_warmup": {"family": "placement", "warmup": True,
                    "overrides": {"model.placement": "post", "model.norm": "layer"}},
    "post_nowarmup": {"family": "placement", "warmup": False,
                      "overrides": {"model.placement": "post", "model.norm": "layer"}},
    "layer_small": {"family": "norm", "warmup": True, "batch": "small",
                    "overrides": {"model.placement": "pre", "model.norm": "layer"}},
    "rms_small": {"family": "norm", "warmup": True, "batch": "small",
                  "overrides": {"model.placement": "pre", "model.norm": "rms"}},
    "batch_small": {"family": "norm", "warmup": True, "batch": "small",
                    "overrides": {"model.placement": "pre", "model.norm": "batch"}},
    "layer_large": {"family": "norm", "warmup": True, "batch": "large",
                    "overrides": {"model.placement": "pre", "model.norm": "layer"}},
    "rms_large": {"family": "norm", "warmup": True, "batch": "large",
                  "overrides": {"model.placement": "pre", "model.norm": "rms"}},
    "batch_large": {"family": "norm", "warmup": True, "batch": "large",
                    "overrides": {"model.placement": "pre", "model.norm": "batch"}},
}

LABELS = {
    "pre_warmup": "pre-LN, warmup",
    "pre_nowarmup": "pre-LN, no warmup",
    "post_warmup": "post-LN, warmup",
    "post_nowarmup": "post-LN, no warmup",
    "layer_small": "LayerNorm, small batch",
    "rms_small": "RMSNorm, small batch",
    "batch_small": "BatchNorm, small batch",
    "layer_large": "LayerNorm, large batch",
    "rms_large": "RMSNorm, large batch",
    "batch_large": "BatchNorm, large batch",
}

# (row, against, metric, question): paired by seed, in the report's order. Metric "test_accuracy"
# (eval mode) or "final_train_loss". Holm's adjustment is over every comparison that ran.
COMPARISONS = (
    ("post_nowarmup", "post_warmup", "test_accuracy", "does post-LN need warmup?"),
    ("pre_nowarmup", "pre_warmup", "test_accuracy", "does pre-LN need warmup?"),
    ("post_nowarmup", "pre_nowarmup", "test_accuracy", "post-LN against pre-LN, no warmup"),
    ("post_warmup", "pre_warmup", "test_accuracy", "post-LN against pre-LN, with warmup"),
    ("post_nowarmup", "post_warmup", "final_train_loss", "post-LN without warmup: train loss"),
    ("batch_small", "layer_small", "test_accuracy", "BN against LN at the small batch"),
    ("rms_small", "layer_small", "test_accuracy", "RMSNorm against LN at the small batch"),
    ("batch_large", "layer_large", "test_accuracy", "BN against LN at the large batch"),
    ("rms_large", "layer_large", "test_accuracy", "RMSNorm against LN at the large batch"),
    ("batch_small", "batch_large", "test_accuracy", "BN: small against large batch"),
    ("layer_small", "layer_large", "test_accuracy", "LN: small against large batch"),
)

# The claims, each read on one comparison's paired-t 95 % CI (`claim_verdict`). "expect" is the
# sign the chapter (or the cited papers) predicts for row - against: "negative" (row worse),
# "none" (equivalent within margin, accuracy fraction).
CLAIMS = {
    "LN-05": {"comparison": ("batch_small", "layer_small"), "metric": "test_accuracy",
              "expect": "negative", "margin": 0.0, "section": "12.5.1, 12.5.3, Q6",
              "quote": "Transformers use Layer Normalization because: (1) it works with "
                       "variable-length sequences, (2) it's independent of batch size ... BN "
                       "would require batch statistics",
              "expects": "BatchNorm below LayerNorm inside a Transformer at a small batch on "
                         "variable-length (padded) sequences"},
    "LN-05-large": {"comparison": ("batch_large", "layer_large"), "metric": "test_accuracy",
                    "expect": "negative", "margin": 0.0, "section": "12.5.3",
                    "quote": "BatchNorm: Best for ... large batch training; LayerNorm: "
                             "Transformers",
                    "expects": "BatchNorm below LayerNorm inside a Transformer at the larger "
                               "batch too (if LN is the Transformer's choice beyond batch size)"},
    "RMS-LLaMA": {"comparison": ("rms_small", "layer_small"), "metric": "test_accuracy",
                  "expect": "none", "margin": 0.01, "section": "12.5.3 (LN-04: LLaMA uses RMSNorm)",
                  "quote": "Used in BERT, GPT, LLaMA, ViT",
                  "expects": "RMSNorm equivalent to LayerNorm within 1 pp (the LLaMA "
                             "substitution)"},
    "WARMUP-post": {"comparison": ("post_nowarmup", "post_warmup"), "metric": "test_accuracy",
                    "expect": "negative", "margin": 0.0, "section": "12 recipe (warmup); Xiong "
                    "et al. 2020",
                    "quote": "Training: Learning rate warmup, cosine decay, gradient clipping",
                    "expects": "post-LN without warmup below post-LN with warmup at a high "
                               "learning rate"},
    "WARMUP-pre": {"comparison": ("pre_nowarmup", "pre_warmup"), "metric": "test_accuracy",
                   "expect": "none", "margin": 0.01, "section": "Xiong et al. 2020",
                   "quote": "Pre-LN Transformers can be trained without the warm-up stage",
                   "expects": "pre-LN without warmup equivalent to pre-LN with warmup within "
                              "1 pp"},
}


def select_rows(only: str) -> list[str]:
    """The comma-separated rows of `only` in `ROWS` order ("" = every row): `cli.select_rows`."""
    return cli.select_rows(only, ROWS)


def comparisons(names) -> list[tuple[str, str, str, str]]:
    """`COMPARISONS` whose two rows are both in `names`."""
    return [c for c in COMPARISONS if c[0] in names and c[1] in names]


def claim_verdict(low: float, high: float, expect: str, margin: float) -> str:
    """The reading of a paired-t CI of row - against.

    expect "negative" (the row is worse): "confirmed" when the CI lies wholly below -margin,
    "refuted" when it lies wholly at or above 0 (the row is not worse), "inconclusive" otherwise.
    expect "none" (equivalence): "confirmed" inside [-margin, margin], "refuted" wholly outside
    it, "inconclusive" otherwise (more seeds could settle it).
    """
    if expect == "negative":
        if high < -margin:
            return "confirmed"
        if low >= 0:
            return "refuted"
        return "inconclusive"
    if expect == "none":
        if -margin <= low and high <= margin:
            return "confirmed"
        if low > margin or high < -margin:
            return "refuted"
        return "inconclusive"
    raise ValueError(f"expect: {expect!r}; expected 'negative' or 'none'")
