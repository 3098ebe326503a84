"""Normalization inside a Transformer: python -m experiments.transformer_norm ...

Chapter 12.5 ("Layer Normalization — the Transformer's choice"), its interview answer "why do
Transformers use LayerNorm instead of BatchNorm?", and the Transformer recipe's warmup and
gradient clipping (tau = 1.0), measured on `models.Transformer` encoders trained on the synthetic
"majority" sequence task (`ml_practical.sequences`: variable lengths, right-padded), which the
study generates from its own fields (`TransformerNormStudy`).

Every row of `rows.ROWS` x every seed 0 .. seeds - 1 trains with `loop.fit` in
<workdir>/<family>/<row>/seed_<s>, one after the other (seeds are not vmapped: on this CPU a
vmapped group of 3 was slower per seed than sequential runs, the step being compute-bound).
Every run trains its whole budget (early stopping off) and the last state is tested, so paired
runs differ only in their row. The library's `hooks.StepLog` keeps each epoch's per-step loss,
gradient norm (pre-clipping) and skip flag (<run>/steps/), from which the study takes the loss
curve, the largest gradient norm of the first `early_steps` steps and the share of steps that
clipping changed.

After each run, from its final state (<run>/transformer_norm.json): the test accuracy in
evaluation mode (BatchNorm on running statistics; recomputed, against the summary's), on the
short-only and long-only test sequences (`length_bands`), and in training mode without dropout
at the row's own batch size (BatchNorm on each test batch's statistics: the train/eval mismatch;
LayerNorm and RMSNorm give the same numbers in both modes). A run whose summary.json and
transformer_norm.json exist with the same config is read back, not retrained, so a finished
study regenerates its report in seconds.

Divergence: a run "diverged" when any step was non-finite (skipped) or its last epoch's mean
training loss ends above its first step's loss; it "stalled" when that loss ends at or above
0.95 ln K (no better than the uniform prediction, whose label-smoothed loss is ln K).

Statistics: per row, each metric's mean with its t interval over seeds; per comparison
(`rows.COMPARISONS`, plus the interaction (BN - LN at the small batch) - (BN - LN at the large
batch) when its four rows ran), the per-seed paired differences through
`analysis.inference.compare_family` (paired t and bootstrap intervals, Holm over all of them);
per claim (`rows.CLAIMS`), the reading of the comparison's paired-t CI (`rows.claim_verdict`)
and the sentence "the chapter expects X, we measure Y ± Z (95 % CI over N seeds, paired)".

Workarounds for what the library lacks (nothing in ml_practical/ was changed): the Transformer
runs dropout whenever train=True, so the training-mode evaluation uses a copy of the model with
every dropout rate 0 (dropout has no parameters, so the trained variables apply unchanged); the
sequence data are generated here (`sequences.load_sequences`), the config's data section saying
only `source = "arrays"`.

Writes results.json, results.md, analysis.md (`report`) and loss_curves.png, accuracy.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np

from experiments import cli
from experiments.ablation.main import finished_run
from experiments.transformer_norm import report, rows
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, run_files, sequences
from ml_practical.analysis import inference
from ml_practical.config import Section, field

EXTRAS_FILE = "transformer_norm.json"
STEP_KEYS = ("loss", "grad_norm", "skipped")
CURVE_POINTS = 60          # points of each stored loss curve (window means of the per-step loss)
STALL_FRACTION = 0.95      # "stalled": final train loss >= this x ln K
METRICS = ("test_accuracy", "final_train_loss", "first_loss", "early_max_grad_norm",
           "max_grad_norm", "clipped_share", "train_mode_accuracy", "eval_mode_accuracy_same",
           "train_eval_gap", "short_accuracy", "long_accuracy")


@dataclasses.dataclass(frozen=True)
class TransformerNormStudy(Section):
    """The study's own fields; the training sections are shared by every row.

    Attributes:
      seeds: seeds 0 .. seeds - 1 of every row.
      only: comma-separated rows (`rows.ROWS`); "" = every row.
      num_train, num_val, num_test: sequences per split (three independent draws).
      data_seed: the generator's seed (the data are the same for every row and seed).
      num_classes, vocab_size, min_len, max_len: the "majority" task (`sequences.SequenceSpec`,
        tight = True); the model's vocab_size / num_classes / max_len are set from these.
      warmup_frac: the warmup rows' linear warmup, as a fraction of the run's optimizer steps.
      placement_layers, placement_lr, placement_batch: the placement family's depth, peak
        learning rate and batch.
      norm_layers, norm_lr: the norm family's depth and peak learning rate (both batches).
      norm_epochs: the norm family's epochs (0: train.num_epochs), the same at both batches.
      small_batch, large_batch: the norm family's two batch sizes.
      early_steps: the "early" gradient-norm window, in optimizer steps from the start.

    Each run's config is the study config with these fields replaced (`row_config`):
    model.vocab_size / num_classes / max_len (from the task), model.num_layers,
    model.placement, model.norm, optim.learning_rate, optim.warmup_steps, train.batch_size and
    train.num_epochs (the norm family's, when norm_epochs > 0); set those through the study
    fields above. Every other field (model.d_model, optim.clip_value, train.label_smoothing,
    ...) applies to every row as given.
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    only: str
    num_train: int = field(ge=1)
    num_val: int = field(ge=1)
    num_test: int = field(ge=1)
    data_seed: int = field(ge=0)
    num_classes: int = field(ge=2)
    vocab_size: int = field(ge=4)
    min_len: int = field(ge=2)
    max_len: int = field(ge=2)
    warmup_frac: float = field(ge=0, lt=1)
    placement_layers: int = field(ge=1)
    placement_lr: float = field(gt=0)
    placement_batch: int = field(ge=1)
    norm_layers: int = field(ge=1)
    norm_lr: float = field(gt=0)
    norm_epochs: int = field(ge=0)
    small_batch: int = field(ge=1)
    large_batch: int = field(ge=1)
    early_steps: int = field(ge=1)

    def check(self):
        try:
            rows.select_rows(self.only)
            self.spec()
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None
        for name in ("placement_batch", "small_batch", "large_batch"):
            if getattr(self, name) > self.num_train:
                raise config_lib.ConfigError(f"{name}: {getattr(self, name)} exceeds num_train "
                                             f"{self.num_train}; expected at most one batch "
                                             "per epoch's worth of sequences")

    def spec(self) -> sequences.SequenceSpec:
        return sequences.SequenceSpec(rule="majority", num_classes=self.num_classes,
                                      vocab_size=self.vocab_size, min_len=self.min_len,
                                      max_len=self.max_len, tight=True)

    def length_bands(self) -> dict[str, tuple[int, int]]:
        """The test subsets by unpadded length: the lowest and the highest third of the range."""
        third = (self.max_len - self.min_len) // 3
        return {"short": (self.min_len, self.min_len + third),
                "long": (self.max_len - third, self.max_len)}


def load_data(study: TransformerNormStudy) -> data_lib.Dataset:
    return sequences.load_sequences(study.spec(), study.num_train, study.num_val,
                                    study.num_test, seed=study.data_seed)


def row_settings(cfg: config_lib.Config, row: str) -> dict[str, Any]:
    """The family settings of a row: layers, lr, batch, epochs, steps, warmup steps."""
    st, spec = cfg.study, rows.ROWS[row]
    if spec["family"] == "placement":
        layers, lr, batch = st.placement_layers, st.placement_lr, st.placement_batch
        epochs = cfg.train.num_epochs
    else:
        layers, lr = st.norm_layers, st.norm_lr
        batch = st.small_batch if spec["batch"] == "small" else st.large_batch
        epochs = st.norm_epochs or cfg.train.num_epochs
    steps = epochs * (st.num_train // batch)
    warmup = round(st.warmup_frac * steps) if spec["warmup"] else 0
    return {"layers": layers, "lr": lr, "batch": batch, "epochs": epochs, "steps": steps,
            "warmup_steps": warmup}


def row_config(cfg: config_lib.Config, row: str, seed: int) -> config_lib.Config:
    """One run's training config (no study fields): the study config with the row's settings
    and overrides, the model sized to the task, and `seed`."""
    st, s = cfg.study, row_settings(cfg, row)
    over = {"model.vocab_size": st.vocab_size, "model.num_classes": st.num_classes,
            "model.max_len": st.spec().length, "model.num_layers": s["layers"],
            "optim.learning_rate": s["lr"], "optim.warmup_steps": s["warmup_steps"],
            "train.batch_size": s["batch"], "train.num_epochs": s["epochs"],
            **rows.ROWS[row]["overrides"], "seed": int(seed)}
    return config_lib.override(cfg, over, what=f"row {row!r}")


def run_dir(workdir, row: str, seed: int) -> pathlib.Path:
    return loop.seed_dir(pathlib.Path(workdir) / rows.ROWS[row]["family"] / row, seed)


# --------------------------------------------------------------------------- per-run measures


def _apply_batches(model, variables, x: np.ndarray, batch: int, *, train: bool) -> np.ndarray:
    """Logits of `x` in batches of `batch` rows (train: BatchNorm on each batch's statistics)."""
    if train:
        fn = jax.jit(lambda v, xb: model.apply(v, xb, train=True, mutable=["batch_stats"])[0])
    else:
        fn = jax.jit(lambda v, xb: model.apply(v, xb, train=False))
    out = [np.asarray(fn(variables, x[i:i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


def evaluate_modes(model, variables, dataset: data_lib.Dataset, batch: int, bands,
                   eval_batch: int) -> dict[str, Any]:
    """Eval-mode accuracy on the test set and its length bands; training-mode (no dropout)
    accuracy at `batch` on the first (n // batch) * batch test sequences, with the eval-mode
    accuracy on the same sequences."""
    x, y = np.asarray(dataset.test_x), np.asarray(dataset.test_y)
    pred = _apply_batches(model, variables, x, eval_batch, train=False).argmax(-1)
    lengths = (x != sequences.PAD).sum(axis=1)
    out: dict[str, Any] = {"test_accuracy_recomputed": float(np.mean(pred == y))}
    for name, (lo, hi) in bands.items():
        keep = (lengths >= lo) & (lengths <= hi)
        out[f"{name}_accuracy"] = float(np.mean(pred[keep] == y[keep])) if keep.any() else math.nan
        out[f"{name}_count"] = int(keep.sum())
    n = (len(x) // batch) * batch
    no_drop = model.clone(attn_drop_rate=0.0, resid_drop_rate=0.0, embed_drop_rate=0.0)
    train_pred = _apply_batches(no_drop, variables, x[:n], batch, train=True).argmax(-1)
    out["train_mode_accuracy"] = float(np.mean(train_pred == y[:n])) if n else math.nan
    out["eval_mode_accuracy_same"] = float(np.mean(pred[:n] == y[:n])) if n else math.nan
    out["train_eval_gap"] = out["eval_mode_accuracy_same"] - out["train_mode_accuracy"]
    out["train_mode_examples"] = int(n)
    return out


def step_measures(steps: dict[int, dict[str, np.ndarray]], early_steps: int,
                  clip_value: float | None) -> dict[str, Any]:
    """From the per-step logs: first loss, early and overall max gradient norm, the share of
    steps clipping changed, non-finite steps, and the loss curve (window means)."""
    cat = {k: np.concatenate([np.asarray(steps[e][k], np.float64).reshape(-1)
                              for e in sorted(steps)]) if steps else np.zeros(0)
           for k in STEP_KEYS}
    loss, grad, skipped = cat["loss"], cat["grad_norm"], cat["skipped"]
    finite_grad = grad[np.isfinite(grad)]
    early = grad[:early_steps]
    early = early[np.isfinite(early)]
    windows = np.array_split(np.arange(len(loss)), min(CURVE_POINTS, max(len(loss), 1)))
    curve = [[int(w[-1]) + 1, float(np.nanmean(np.where(np.isfinite(loss[w]), loss[w], np.nan)))
              if np.isfinite(loss[w]).any() else math.nan] for w in windows if len(w)]
    return {"num_steps": len(loss), "first_loss": float(loss[0]) if len(loss) else math.nan,
            "early_max_grad_norm": float(early.max()) if early.size else math.nan,
            "max_grad_norm": float(finite_grad.max()) if finite_grad.size else math.nan,
            "clipped_share": (float(np.mean(finite_grad > clip_value))
                              if clip_value is not None and finite_grad.size else math.nan),
            "non_finite_steps": int(np.sum(skipped > 0) + np.sum(~np.isfinite(loss))),
            "loss_curve": curve}


def _record(seed: int, summary: dict, history: list[dict], extras: dict,
            num_classes: int) -> dict:
    last = history[-1] if history else {}
    final = last.get("train/loss", math.nan)
    final = math.nan if final is None else float(final)
    diverged = (extras["non_finite_steps"] > 0 or not math.isfinite(final)
                or final > extras["first_loss"])
    stalled = not math.isfinite(final) or final >= STALL_FRACTION * math.log(num_classes)
    return {"seed": seed, "test_accuracy": summary["test/accuracy"],
            "test_loss": summary["test/loss"], "final_train_loss": final,
            "train_accuracy": last.get("train/accuracy"), "val_accuracy": last.get("val/accuracy"),
            "epochs_run": summary["epochs_run"], "stop_reason": summary["stop_reason"],
            "wall_time_s": summary["wall_time_s"], "diverged": bool(diverged),
            "stalled": bool(stalled), "epoch_train_loss": [h.get("train/loss") for h in history],
            **extras}


Interrupted = cli.StudyInterrupted  # a signal stopped a run (rerunning the command resumes it)


def train_row(cfg: config_lib.Config, row: str, dataset: data_lib.Dataset, workdir, *,
              say: Callable[[str], None]) -> list[dict]:
    """Trains (or reads back) one row at every seed; its per-seed records.

    Raises:
      Interrupted: Ctrl-C / SIGTERM stopped a run (nothing of it is recorded here).
    """
    st = cfg.study
    out = []
    for s in range(st.seeds):
        run_cfg, path = row_config(cfg, row, s), run_dir(workdir, row, s)
        done = finished_run(path, run_cfg)
        status = "read back"
        if done is not None and (path / EXTRAS_FILE).exists():
            summary, history = done
            extras = json.loads((path / EXTRAS_FILE).read_text())
        else:
            result = loop.fit(run_cfg, path, dataset=dataset, hooks=[loop.StepLog(STEP_KEYS)])
            if result.summary["stop_reason"] == "interrupted":
                raise Interrupted(f"{row} seed {s}")
            summary, history = result.summary, result.history
            variables = {"params": jax.device_get(result.state.params),
                         "batch_stats": jax.device_get(result.state.batch_stats)}
            clip = run_cfg.optim.clip_value if run_cfg.optim.clip == "global_norm" else None
            extras = step_measures(run_files.RunFiles(path, tensorboard=False).read_steps(),
                                   st.early_steps, clip)
            extras.update(evaluate_modes(run_cfg.model, variables, dataset,
                                         run_cfg.train.batch_size, st.length_bands(),
                                         run_cfg.train.eval_batch_size))
            run_files.atomic_write_text(path / EXTRAS_FILE,
                                        json.dumps(run_files.to_jsonable(extras), indent=1))
            status = "trained"
        rec = _record(s, summary, history, extras, st.num_classes)
        say(f"{row} seed {s}: test accuracy {100 * rec['test_accuracy']:.2f}%, final train loss "
            f"{rec['final_train_loss']:.3f}, early max |g| {rec['early_max_grad_norm']:.3g}"
            f"{', diverged' if rec['diverged'] else ''}{', stalled' if rec['stalled'] else ''}, "
            f"{rec['wall_time_s']:.0f} s [{status}]")
        out.append(rec)
    return out


# --------------------------------------------------------------------------- statistics


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def row_summary(runs: list[dict]) -> dict:
    """Per metric: mean, sd and the 95 % t interval of the mean over seeds; counts of diverged
    and stalled runs."""
    out: dict[str, Any] = {"n": len(runs), "diverged": sum(r["diverged"] for r in runs),
                           "stalled": sum(r["stalled"] for r in runs)}
    for m in METRICS:
        values = _finite(r.get(m) for r in runs)
        if not values:
            out[m] = {"mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan,
                      "n": 0, "values": []}
            continue
        t = inference.paired_t(values)
        out[m] = {"mean": float(np.mean(values)),
                  "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                  "low": t["low"], "high": t["high"], "n": len(values), "values": values}
    return out


def _per_seed(runs: list[dict], metric: str) -> dict[int, float]:
    return {r["seed"]: float(r[metric]) for r in runs}


INTERACTION = ("BN - LN: small minus large batch",
               ("batch_small", "layer_small", "batch_large", "layer_large"))


def compare_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Every `rows.COMPARISONS` entry whose rows ran (and the interaction), paired by seed,
    Holm over them all."""
    out = []
    for row, against, metric, question in rows.comparisons(list(runs)):
        a, b = _per_seed(runs[row], metric), _per_seed(runs[against], metric)
        seeds = sorted(set(a) & set(b))
        out.append({"row": row, "against": against, "metric": metric, "question": question,
                    "seeds": seeds, "differences": [a[s] - b[s] for s in seeds]})
    label, (bs, ls, bl, ll) = INTERACTION
    if all(r in runs for r in (bs, ls, bl, ll)):
        acc = {r: _per_seed(runs[r], "test_accuracy") for r in (bs, ls, bl, ll)}
        seeds = sorted(set.intersection(*(set(v) for v in acc.values())))
        out.append({"row": f"({bs} − {ls})", "against": f"({bl} − {ll})",
                    "metric": "test_accuracy", "question": label, "seeds": seeds,
                    "differences": [(acc[bs][s] - acc[ls][s]) - (acc[bl][s] - acc[ll][s])
                                    for s in seeds]})
    family = inference.compare_family({_key(c): c["differences"] for c in out})
    for c in out:
        c["inference"] = family[_key(c)]
    return out


def _key(c: dict) -> str:
    return f"{c['metric']}: {c['row']} - {c['against']}"


def claims(comps: list[dict]) -> dict[str, dict]:
    """Each `rows.CLAIMS` entry read on its comparison, with its verdict sentence."""
    out = {}
    for cid, claim in rows.CLAIMS.items():
        row, against = claim["comparison"]
        comp = next((c for c in comps if (c["row"], c["against"], c["metric"])
                     == (row, against, claim["metric"])), None)
        entry = {**claim, "comparison": [row, against]}
        if comp is None or not comp["inference"].get("n"):
            entry.update(verdict="not run", sentence=f"{cid}: not run (rows {row} and "
                         f"{against} are needed)")
            out[cid] = entry
            continue
        t = comp["inference"]["t"]
        verdict = rows.claim_verdict(t["low"], t["high"], claim["expect"], claim["margin"])
        half = (t["high"] - t["low"]) / 2
        half_text = f"{100 * half:.2f}" if math.isfinite(half) else "∞ (one seed)"
        entry.update(
            n=t["n"], mean=t["mean"], low=t["low"], high=t["high"],
            p_holm=comp["inference"].get("p_holm"), verdict=verdict,
            sentence=(f"{cid}: the chapter expects {claim['expects']}; we measure {row} − "
                      f"{against} = {100 * t['mean']:+.2f} ± {half_text} pp test accuracy "
                      f"(95 % CI over {t['n']} seeds, paired): {verdict}"))
        out[cid] = entry
    return out


def clipping_note(cfg: config_lib.Config, runs: dict[str, list[dict]]) -> dict[str, Any]:
    """CLIP-05 as the setting used: tau, and how often it acted (per row, mean over seeds)."""
    o = cfg.optim
    share = {row: float(np.mean(_finite(r["clipped_share"] for r in rs)))
             if _finite(r["clipped_share"] for r in rs) else math.nan for row, rs in runs.items()}
    sentence = (f"CLIP-05: the chapter's 'tau = 1.0 for Transformers' is the setting of every run "
                f"(clip {o.clip}, tau = {o.clip_value:g}); not tested against other values. "
                "Share of steps whose pre-clipping gradient norm exceeded tau, per row (mean "
                "over seeds): " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in share.items()))
    return {"clip": o.clip, "clip_value": o.clip_value, "clipped_share": share,
            "sentence": sentence}


def _family_model(m) -> str:
    """The family's shared network (placement and norm are the rows')."""
    return (f"Transformer encoder, {m.num_layers} blocks (placement and norm per row), d "
            f"{m.d_model}, {m.num_heads} heads, MLP x{m.mlp_ratio}, dropout attn "
            f"{m.attn_drop_rate:g} / residual {m.resid_drop_rate:g} / embedding "
            f"{m.embed_drop_rate:g}, {m.pooling} pooling, sequences of {m.max_len}")


def run_study(cfg: config_lib.Config, workdir, dataset: data_lib.Dataset | None = None, *,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains (or reads back) every row x seed and returns the results dict."""
    say = log or (lambda _: None)
    workdir = pathlib.Path(workdir)
    names = rows.select_rows(cfg.study.only)
    for row in names:  # every run's config is checked before anything runs
        row_config(cfg, row, 0)
    if dataset is None:
        dataset = load_data(cfg.study)
    runs = {row: train_row(cfg, row, dataset, workdir, say=say) for row in names}
    comps = compare_rows(runs)
    families = {}
    for fam in rows.FAMILIES:
        members = [r for r in names if rows.ROWS[r]["family"] == fam]
        if members:
            families[fam] = {
                "rows": members,
                "model": _family_model(row_config(cfg, members[0], 0).model),
                "settings": {r: row_settings(cfg, r) for r in members}}
    return {"dataset": dataset.info(), "task": dataclasses.asdict(cfg.study.spec()),
            "length_bands": cfg.study.length_bands(), "rows": names,
            "labels": {n: rows.LABELS[n] for n in names}, "families": families,
            "runs": runs, "summary": {row: row_summary(r) for row, r in runs.items()},
            "comparisons": comps, "claims": claims(comps),
            "clipping": clipping_note(cfg, runs),
            "train_time_s": sum(r["wall_time_s"] for v in runs.values() for r in v)}


def execute(run: cli.Start, dataset: data_lib.Dataset | None = None, *,
            log: Callable[[str], None] | None = None,
            quiet: bool = False) -> dict[str, Any] | None:
    """The study from a parsed `cli.Start` (`cli.execute_study`): the runs, the figures,
    results.json / results.md and analysis.md. None, and no report, when a signal stopped a run."""
    return cli.execute_study(run, run_study, report, dataset, log=log, quiet=quiet)


def main(argv):
    run = cli.start(argv, "experiments.transformer_norm", study=TransformerNormStudy)
    execute(run, log=lambda s: print(s, flush=True))
