"""Fingerprint of the linen layers and models, to show a refactor changed no arithmetic.

Run at two commits on the same machine and compare (issue 17 moved the equations into
`ml_practical.normalization` / `ml_practical.dropout`; a7e10c3 against it: 519 arrays, all equal):

  git worktree add /tmp/before a7e10c3
  (cd /tmp/before && python /path/to/benchmarks/fingerprint_layers.py /tmp/before.npz)
  python -m benchmarks.fingerprint_layers /tmp/after.npz --compare /tmp/before.npz

It records, for BatchNorm (autodiff / manual backward, torch_compat, ghost batches), LayerNorm,
GroupNorm, InstanceNorm, Dropout (both samplers) and MLP / CNN / ResNet variants, the outputs in
both modes, the updated running statistics and the gradients with respect to the variables and the
input; then LSUV's kernels and report, the decay mask and parameter-group multipliers. Arrays are
compared byte for byte. Run from the repository root of the commit being measured (its
`ml_practical` is imported from the current directory).
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from ml_practical import layers, models  # noqa: E402
out = {}
key = jax.random.key(0)
x2 = jax.random.normal(key, (32, 12)) * 3 + 5
x4 = jax.random.normal(jax.random.key(1), (16, 6, 6, 8)) + 2
def run_layer(name, mod, x, rng=True):
    v = mod.init(jax.random.key(2), x, train=False)
    for train in (False, True):
        def f(v, x):
            y, st = mod.apply(v, x, train=train, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
            return jnp.sum(jnp.sin(y)), (y, st)
        (l, (y, st)), g = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(v, x)
        out[f"{name}/{train}/y"] = np.asarray(y)
        for i, leaf in enumerate(jax.tree.leaves((st, g))):
            out[f"{name}/{train}/{i}"] = np.asarray(leaf)
for bw in ("autodiff", "manual"):
    run_layer(f"bn_{bw}", layers.BatchNorm(backward=bw), x2)
    run_layer(f"bn4_{bw}", layers.BatchNorm(backward=bw, torch_compat=True), x4)
    run_layer(f"bng_{bw}", layers.BatchNorm(backward=bw, ghost_batch_size=8), x2)
    run_layer(f"bng4_{bw}", layers.BatchNorm(backward=bw, ghost_batch_size=4, torch_compat=True), x4)
run_layer("ln", layers.LayerNorm(), x2); run_layer("ln_all", layers.LayerNorm(axes="all"), x4)
run_layer("gn", layers.GroupNorm(num_groups=4), x4); run_layer("in", layers.InstanceNorm(), x4)
run_layer("do", layers.Dropout(0.3), x2); run_layer("do16", layers.Dropout(0.3, sampler="threefry16"), x4)
for name, fam, fields, x in [
    ("mlp", "mlp", dict(widths=(16, 8), norm="batch", drop_rate=0.2), x2),
    ("mlp_ln", "mlp", dict(widths=(16, 8), norm="layer", norm_position="after", drop_rate=0.1, dropout_sampler="threefry16"), x2),
    ("cnn", "cnn", dict(widths=(8, 8), norm="batch", drop_rate=0.2, bn_backward="manual"), x4),
    ("cnn_gn", "cnn", dict(widths=(8, 8), norm="group", num_groups=4, pool="avg"), x4),
    ("res", "resnet", dict(depth=8, norm="batch", drop_rate=0.1, width_multiplier=0.5), x4),
    ("res_pre", "resnet", dict(variant="preact", depth=8, norm="instance", width_multiplier=0.5), x4),
    ("res_fix", "resnet", dict(depth=8, norm="none", residual="fixup", width_multiplier=0.5), x4),
]:
    m = models.build_model(fam, fields)
    run_layer(name, m, x)
# the lsuv loop and the masks (refactored for nnx)
import functools
from ml_practical import config as C, losses as LO, lsuv as L, optim as O
m = models.build_model("mlp", dict(widths=(16, 8), norm="batch"))
v = m.init(jax.random.key(0), x2, train=False)
v2, rep = L.lsuv(functools.partial(m.apply, train=False), v, x2, key=jax.random.key(1))
for i, leaf in enumerate(jax.tree.leaves(v2)):
    out[f"lsuv/{i}"] = np.asarray(leaf)
out["lsuv/rep"] = np.asarray([[r["var_before"], r["var_after"], r["scale"], r["iterations"]] for r in rep])
out["mask"] = np.asarray(jax.tree.leaves(LO.default_mask(v["params"])))
g = O.param_groups_of(C.OptimConfig(name="sgd", learning_rate=0.1, wd_mults=("norm_.*=0", "head/.*=2")))
out["mults"] = np.asarray(jax.tree.leaves(g.decay_mults(v["params"])), float)


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a) != sorted(b):
        print(f"different arrays recorded: {sorted(set(a) ^ set(b))[:10]}")
        return 1
    bad = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                and a[k].tobytes() == b[k].tobytes())]
    print(f"{len(a)} arrays, {len(bad)} differ" + (f": {bad[:10]}" if bad else " (bit-identical)"))
    return 1 if bad else 0


np.savez(sys.argv[1], **out)
print(len(out), "arrays written to", sys.argv[1])
if len(sys.argv) == 4 and sys.argv[2] == "--compare":
    sys.exit(compare(sys.argv[3], sys.argv[1]))
