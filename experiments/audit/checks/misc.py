"""Checks of the ledger's section 8: the MCQ answers (MCQ-*), the case-study numbers (CASE-*)
and the statements no computation can test (SOFT-*)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.audit.core import REGISTRY as R, Context, Finding, verdict_of
from ml_practical import initializers, layers, optim
from ml_practical.analysis import propagation
from ml_practical.config import OptimConfig

# --------------------------------------------------------------------------------------------------
# MCQ: the GATE corner's answers


@R.quick("MCQ-1", test="tests/test_initializers.py")
def _(ctx: Context) -> Finding:
    shape = (512, 256)
    options = {"A": math.sqrt(1 / 512), "B": initializers.expected_std("xavier_normal", shape),
               "C": math.sqrt(2 / 512), "D": math.sqrt(2 / 256)}
    drawn = float(np.std(np.asarray(initializers.xavier_normal()(jax.random.key(ctx.seed), shape))))
    closest = min(options, key=lambda k: abs(options[k] - 0.0510))
    ok = closest == "B" and abs(options["B"] - math.sqrt(2 / 768)) < 1e-12 and abs(
        drawn / options["B"] - 1) < 0.01
    return Finding(
        verdict_of(ok),
        f"Xavier σ for 512 → 256 = {options['B']:.5f} (B); A = {options['A']:.4f}, C (He) = "
        f"{options['C']:.4f}, D = {options['D']:.4f}; a drawn 512×256 kernel has std {drawn:.5f}",
        "initializers.expected_std('xavier_normal', (512, 256)) and one draw of xavier_normal",
        artefact="ml_practical/initializers.py")


@R.quick("MCQ-2", test="tests/test_optim.py::test_proximal_l1_gives_exact_zeros_where_subgradient_does_not")
def _(ctx: Context) -> Finding:
    rng = np.random.default_rng(ctx.seed)
    n, d, relevant = 200, 20, 3
    x = rng.standard_normal((n, d))
    w_true = np.zeros(d)
    w_true[:relevant] = [2.0, -1.5, 1.0]
    y = jnp.asarray(x @ w_true + 0.1 * rng.standard_normal(n), jnp.float32)
    x = jnp.asarray(x, jnp.float32)

    def zeros(mode):
        tx = optim.make_optimizer(OptimConfig(name="sgd", learning_rate=0.05, l1=0.1,
                                              l1_mode=mode))
        params = {"kernel": jnp.zeros(d)}
        grad = jax.grad(lambda p: 0.5 * jnp.mean((x @ p["kernel"] - y) ** 2))

        def step(carry, _):
            p, s = carry
            u, s = tx.update(grad(p), s, p)
            return (jax.tree.map(jnp.add, p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=2000)
        w = np.asarray(p["kernel"])
        return int(np.sum(w == 0.0)), float(np.abs(w[relevant:]).max())

    prox, prox_max = zeros("proximal")
    sub, sub_max = zeros("subgradient")
    return Finding(
        verdict_of(prox == d - relevant),
        f"L1 (λ = 0.1) on a 20-feature lasso with 3 relevant: proximal step {prox}/{d - relevant} "
        f"irrelevant weights exactly 0; the chapter's subgradient update {sub} exact zeros (they "
        f"chatter up to {sub_max:.1e})",
        "optim.make_optimizer(sgd, l1=0.1, l1_mode='proximal' | 'subgradient'), 2000 steps",
        artefact="ml_practical/optim.py",
        note="Answer B holds for the L1 solution (and a proximal step), not for the update "
             "w − η(∂L/∂w + λ sign w) the chapter's answer and formula sheet give (REG-06). "
             "Newly testable: both updates are options of one optax chain (optim.l1_mode), so "
             "the exact-zero count compares them on the same problem.")


@R.quick("MCQ-3", test="tests/test_layers.py::test_dropout_preserves_mean_and_scales_kept_units")
def _(ctx: Context) -> Finding:
    x = jnp.full((1, 1000), 2.5)
    out = np.asarray(layers.Dropout(rate=0.2).apply({}, x, train=True,
                                                    rngs={"dropout": jax.random.key(ctx.seed)}))
    kept = np.unique(out[out != 0])
    return Finding(
        verdict_of(kept.size == 1 and abs(kept[0] - 3.125) < 1e-6),
        f"kept units of 2.5 through layers.Dropout(rate = 0.2, keep 0.8): {kept.tolist()} (D); "
        f"{np.mean(out == 0):.1%} dropped",
        "ml_practical.layers.Dropout on a constant 2.5 input",
        artefact="ml_practical/layers.py")


@R.quick("MCQ-4", test="tests/test_layers.py")
def _(ctx: Context) -> Finding:
    variables = layers.BatchNorm().init(jax.random.key(ctx.seed), jnp.ones((4, 64)), train=False)
    count = lambda tree: sum(int(np.size(v)) for v in jax.tree.leaves(tree))
    params, stats = count(variables["params"]), count(variables["batch_stats"])
    return Finding(
        verdict_of(params == 128 and stats == 128),
        f"layers.BatchNorm on 64 features: {params} learnable parameters (γ, β) (B), {stats} "
        "running statistics (mean, var) in 'batch_stats', not learnable",
        "ml_practical.layers.BatchNorm().init on a (4, 64) batch",
        artefact="ml_practical/layers.py")


@R.quick("MCQ-5", test="tests/test_analysis_propagation.py")
def _(ctx: Context) -> Finding:
    rows = propagation.mean_field([propagation.weight_gain("he_normal", 512, 512)] * 10, "relu")
    preserved = all(abs(r["preact_var"] / rows[0]["preact_var"] - 1.0) < 1e-12 for r in rows)
    z = jax.random.normal(jax.random.key(ctx.seed), (1_000_000,))
    a = np.asarray(jax.nn.relu(z), np.float64)
    var, second = a.var(), (a ** 2).mean()
    explanation_right = abs(var - 0.5) < 0.01
    return Finding(
        verdict_of(preserved and explanation_right, partly=preserved),
        f"answer B: with He's factor 2 the pre-activation variance of layer 10 is "
        f"{rows[-1]['preact_var'] / rows[0]['preact_var']:.3f}× layer 1's (mean-field); the "
        f"explanation 'Var(ReLU(z)) ≈ ½Var(z)' is off: Var = {var:.4f} "
        f"(½ − 1/2π = {0.5 - 1 / (2 * math.pi):.4f}), while E[ReLU(z)²] = {second:.4f}",
        "analysis.propagation.mean_field with he_normal gains; 1e6 N(0, 1) draws through ReLU",
        artefact="ml_practical/analysis/propagation.py",
        note="Same error as INIT-13: it is E[a²], not Var(a), that ReLU halves.")


@R.quick("MCQ-6", test="tests/test_layers.py::test_layernorm_matches_flax_and_numpy_and_ignores_train")
def _(ctx: Context) -> Finding:
    x = jax.random.normal(jax.random.key(ctx.seed), (8, 32)) * 3.0 + 1.0
    ln = layers.LayerNorm()
    v = ln.init(jax.random.key(1), x, train=False)
    alone = np.asarray(ln.apply(v, x[:1], train=False))
    batched = np.asarray(ln.apply(v, x, train=False))[:1]
    bn = layers.BatchNorm()
    vb = bn.init(jax.random.key(1), x, train=False)
    single, _ = bn.apply(vb, x[:1], train=True, mutable=["batch_stats"])
    ln_ok = np.abs(alone - batched).max() < 1e-6
    bn_degenerate = np.abs(np.asarray(single)).max() < 1e-6  # = beta = 0 for a batch of one
    return Finding(
        verdict_of(ln_ok and bn_degenerate),
        f"LayerNorm of a sample alone vs inside a batch of 8: max diff "
        f"{np.abs(alone - batched).max():.1e}; BatchNorm in training mode on a batch of 1 "
        f"outputs β everywhere (max |y| {np.abs(np.asarray(single)).max():.1e}): answer B",
        "ml_practical.layers.LayerNorm and BatchNorm",
        artefact="ml_practical/layers.py",
        note="What can be checked is the reason the answer gives (per-sample statistics, batch "
             "of 1 for autoregressive decoding); 'preferred' itself is practice (LN-04, LN-05).")


# --------------------------------------------------------------------------------------------------
# CASE: the case studies


@R.quick("CASE-01")
def _(ctx: Context) -> Finding:
    before, after = 0.741, 0.765
    relative = (after - before) / before
    return Finding(
        verdict_of(round(100 * relative, 1) == 3.2),
        f"(0.765 − 0.741)/0.741 = {100 * relative:.2f} % relative; +{100 * (after - before):.1f} "
        "AUC points absolute",
        "arithmetic",
        note="The '3.2 % lift' is relative; read as absolute points it would be 2.4.")


R.untestable("CASE-02", "Business and scale figures of the InMobi case study ($12M/yr, 1.6B "
                        "users, 25,000+ apps, 1B+ impressions/day, 15+ TB/day, ~50M parameters, 8 "
                        "layers, 2 engineers x 3 weeks): no public source here to check them "
                        "against, nothing to compute.")
R.untestable("CASE-03", "Meta DLRM scale figures (~12T parameters, 3.7B MAU, 2,048 ZionEX GPUs, "
                        "~1 PB/day, < 50 ms, 0.1 % NE ~ $100M+): business and infrastructure "
                        "numbers, not computable.")
R.untestable("CASE-04", "A statement about Meta's production DLRM. The public reference "
                        "(facebookresearch/dlrm, dlrm_s_pytorch.py: create_emb, create_mlp) "
                        "initializes embedding tables U(+-sqrt(1/n)) with n = the table's number "
                        "of ROWS, not the embedding dimension d, and its MLPs Xavier-normal "
                        "sqrt(2/(m+n)) (biases N(0, 1/m)), not He; so the chapter's description "
                        "is doubtful, but the production code cannot be inspected.")
R.untestable("CASE-05", "Production anecdotes (divergence within minutes without clipping, "
                        "viral-post gradient spikes, LN for BN in the dense net). Proxy for the "
                        "clipping part: CLIP-04 (the clipping study at a diverging learning rate).")
R.untestable("CASE-06", "'< 0.001 % of embeddings active per sample' and 'hashing and INT8 act as "
                        "regularizers' in production DLRM: no data here. Proxy for the INT8 part: "
                        "EXP-05 (8-bit fake-quantized weights on the digits).")

# --------------------------------------------------------------------------------------------------
# SOFT: opinions, history, figures

R.untestable("SOFT-01", "Opinion: 'architecture is ~20 % of making a model work' has no measurable "
                        "definition.")
R.untestable("SOFT-02", "A judgment of the literature (that the smoothness explanation of BN 'has "
                        "more empirical support'); BN-08 and BN-09 are the measurable proxies.")
R.untestable("SOFT-03", "GATE appearance probabilities and marks are exam statistics outside the "
                        "chapter's data.")
R.untestable("SOFT-04", "Salary ranges are labour-market figures, not computable.")
R.untestable("SOFT-05", "Who uses Monte Carlo dropout in production (AIIMS, Waymo) cannot be "
                        "checked here; DROP-10 measures what MC dropout's uncertainty is worth.")
R.untestable("SOFT-06", "'Option A is more common' is a claim about practice; BN-14 measures "
                        "whether the two options differ in accuracy.")
R.untestable("SOFT-07", "Citation: lottery tickets (Frankle & Carbin 2019, not 'Carlin') are "
                        "found by iterative magnitude pruning, not 'L1-like pruning'; attribution "
                        "is not computable.")
