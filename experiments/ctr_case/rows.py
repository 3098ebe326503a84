"""The CTR case study's rows, comparisons and claims, as data (chapter 12, sections 16-17).

Each row is one training recipe, as dotted overrides of the study's run config (the chapter's
DLRM recipe, `experiments/configs/ctr_case.py`), plus the order the training batches take:

  "shuffle": the library's seeded permutation every epoch (`data.batch_indices`); a viral burst
             is spread over the epoch.
  "log":     epoch 1 reads the training split in log order (an online pass over the log: a burst
             arrives as consecutive batches of one viral id), later epochs are shuffled. The loop
             has no such option (`train.batching` is "shuffle" or "full"), so the study stores
             the training split permuted so that the loop's epoch-1 permutation reads it back in
             log order (`main.log_order_dataset`).

Seed s gives every row the same data (one generated log), the same init key and, among rows of
one order and batch size, the same batch order: the comparisons are paired by seed.
"""

from __future__ import annotations

from experiments import cli

NO_EMBED_DECAY = ("embed_.*=0",)

ROWS = {
    # The chapter's recipe (Meta DLRM, section 17) at batch 128.
    "recipe": {"overrides": {}, "order": "shuffle"},
    # 1. BatchNorm vs LayerNorm in the top MLP at a small and a large per-device batch.
    "ln_b32": {"overrides": {"train.batch_size": 32}, "order": "shuffle"},
    "bn_b32": {"overrides": {"train.batch_size": 32, "model.norm": "batch"}, "order": "shuffle"},
    "ln_b512": {"overrides": {"train.batch_size": 512}, "order": "shuffle"},
    "bn_b512": {"overrides": {"train.batch_size": 512, "model.norm": "batch"},
                "order": "shuffle"},
    # 2. Embedding initialization.
    "init_rows": {"overrides": {"model.embed_init": "embedding_rows_uniform"},
                  "order": "shuffle"},
    "init_normal1": {"overrides": {"model.embed_init": "normal(stddev=1.0)"}, "order": "shuffle"},
    # 3. The same L2 on the embeddings too (no wd_mults rule: decay_mask "all" reaches them).
    "embed_decay": {"overrides": {"optim.wd_mults": ()}, "order": "shuffle"},
    # 4. Clipping under viral spikes, shuffled and in log order.
    "no_clip": {"overrides": {"optim.clip": "none"}, "order": "shuffle"},
    "log_clip": {"overrides": {}, "order": "log"},
    "log_no_clip": {"overrides": {"optim.clip": "none"}, "order": "log"},
}

LABELS = {
    "recipe": "chapter recipe: LN top MLP, U(±1/√d), L2 dense only, clip 1.0, batch 128",
    "ln_b32": "LN top MLP, batch 32",
    "bn_b32": "BN top MLP, batch 32",
    "ln_b512": "LN top MLP, batch 512",
    "bn_b512": "BN top MLP, batch 512",
    "init_rows": "embeddings U(±√(1/rows)) (reference DLRM code)",
    "init_normal1": "embeddings N(0, 1) (too large)",
    "embed_decay": "L2 1e-5 on the embeddings too",
    "no_clip": "no gradient clipping (shuffled batches)",
    "log_clip": "clip 1.0, epoch 1 in log order (bursts together)",
    "log_no_clip": "no clipping, epoch 1 in log order (bursts together)",
}

# (row, against, question); differences are row - against, paired by seed.
COMPARISONS = (
    ("ln_b32", "bn_b32", "LN - BN at batch 32"),
    ("bn_b512", "ln_b512", "BN - LN at batch 512"),
    ("recipe", "init_rows", "U(±1/√d) - U(±√(1/rows))"),
    ("recipe", "init_normal1", "U(±1/√d) - N(0, 1)"),
    ("recipe", "embed_decay", "no decay on embeddings - decay on them"),
    ("recipe", "no_clip", "clip 1.0 - no clip (shuffled)"),
    ("log_clip", "log_no_clip", "clip 1.0 - no clip (log order)"),
    ("recipe", "log_clip", "shuffled - log-order epoch 1 (both clipped)"),
)

# Each claim reads one comparison's paired-t 95 % CI of the test-AUC difference.
#   kind "better": the chapter expects row > against: "supported" when the CI lies above 0,
#     "contradicted" when it lies below 0, "inconclusive" when it straddles 0.
#   kind "no_worse": row >= against - margin: "supported" when the CI's low end is above
#     -margin, "contradicted" when its high end is below -margin, else "inconclusive".
#   kind "diverges": reads the divergence counts of `rows` (see `main.diverged`).
# AUC margins are fixed here before any run: 0.002 AUC (0.2 points), the size of effect the
# chapter calls a business win (InMobi's lift was 0.024).
CLAIMS = {
    "LN-small-batch": {
        "source": "CASE-05, sec. 17", "kind": "better", "comparison": ("ln_b32", "bn_b32"),
        "expects": "LayerNorm beats BatchNorm in the top MLP when the per-device batch is small"},
    "BN-large-batch": {
        "source": "sec. 16 (InMobi)", "kind": "no_worse", "margin": 0.002,
        "comparison": ("bn_b512", "ln_b512"),
        "expects": "with large batches BatchNorm's statistics are stable: BN is no worse than LN"},
    "embed-init-1/sqrt(d)": {
        "source": "CASE-04, sec. 16-17", "kind": "no_worse", "margin": 0.002,
        "comparison": ("recipe", "init_rows"),
        "expects": "U(±1/√d) is the right embedding init (the reference code's U(±√(1/rows)) "
                   "is no better)"},
    "embed-init-not-too-large": {
        "source": "sec. 16 ('ensures embedding norms don't explode')", "kind": "better",
        "comparison": ("recipe", "init_normal1"),
        "expects": "a bounded small embedding init beats a large N(0, 1) one"},
    "no-decay-on-embeddings": {
        "source": "sec. 17", "kind": "no_worse", "margin": 0.002,
        "comparison": ("recipe", "embed_decay"),
        "expects": "L2 on dense layers only, NOT on embeddings (decaying them does not help)"},
    "clip-non-negotiable": {
        "source": "CASE-05, sec. 17", "kind": "diverges", "rows": ("no_clip", "log_no_clip"),
        "comparison": ("log_clip", "log_no_clip"),
        "expects": "without clipping (tau = 1.0) training diverges; viral posts cause spikes"},
}


def select_rows(only: str) -> list[str]:
    """The comma-separated rows of `only` in `ROWS` order ("" = every row): `cli.select_rows`."""
    return cli.select_rows(only, ROWS)


def comparisons(names) -> list[tuple[str, str, str]]:
    """`COMPARISONS` whose two rows are both in `names`."""
    return [c for c in COMPARISONS if c[0] in names and c[1] in names]


def verdict(kind: str, low: float, high: float, margin: float = 0.0) -> str:
    """The reading of a difference's CI for a claim of `kind` (see `CLAIMS`)."""
    bound = 0.0 if kind == "better" else -margin
    if low > bound:
        return "supported"
    if high < bound:
        return "contradicted"
    return "inconclusive"
