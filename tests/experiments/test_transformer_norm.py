"""The Transformer-normalization study (experiments/transformer_norm), as a user runs it: its
documented command on a tiny override (1 seed, 3 rows, one short epoch, a few hundred sequences)
writes its reports with every row and seed and finite numbers, states its verdicts, and a second
invocation reads the runs back instead of training; a bad study field is one error line."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from experiments.transformer_norm import rows

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROWS = ("post_warmup", "post_nowarmup", "batch_small")
TINY = ["--config.seeds=1", f"--config.only={','.join(ROWS)}", "--config.num_train=128",
        "--config.num_val=32", "--config.num_test=64", "--config.train.num_epochs=1",
        "--config.norm_epochs=1", "--config.placement_layers=1", "--config.placement_batch=32",
        "--config.small_batch=16", "--config.large_batch=32", "--config.early_steps=2",
        "--config.train.eval_batch_size=64"]


def run(workdir, *overrides, expect_ok=True):
    out = subprocess.run([sys.executable, "-m", "experiments.transformer_norm",
                          "--config=experiments/configs/transformer_norm.py",
                          f"--workdir={workdir}", *overrides], check=False, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    if expect_ok:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _finite_numbers(record: dict, keys) -> None:
    for k in keys:
        assert isinstance(record[k], (int, float)) and math.isfinite(record[k]), (k, record[k])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("transformer_norm") / "study"
    first = run(workdir, *TINY)
    results = json.loads((workdir / "results.json").read_text())
    summaries = {p: p.stat().st_mtime_ns for p in workdir.rglob("summary.json")}
    second = run(workdir, *TINY)
    return {"workdir": workdir, "first": first, "second": second, "results": results,
            "summaries": summaries}


def test_reports_hold_every_row_and_seed_with_finite_numbers(study):
    workdir, results = study["workdir"], study["results"]
    for name in ("results.json", "results.md", "analysis.md"):
        assert (workdir / name).read_text().strip()
    for name in results["figures"]:
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert results["rows"] == list(ROWS)
    assert set(results["runs"]) == set(ROWS)
    for row in ROWS:
        [rec] = results["runs"][row]
        assert rec["seed"] == 0
        _finite_numbers(rec, ("test_accuracy", "final_train_loss", "first_loss",
                              "early_max_grad_norm", "clipped_share", "train_mode_accuracy",
                              "train_eval_gap"))
        assert 0 <= rec["test_accuracy"] <= 1
        assert rec["test_accuracy"] == pytest.approx(rec["test_accuracy_recomputed"], abs=1e-6)
        assert rec["loss_curve"] and all(math.isfinite(p[1]) for p in rec["loss_curve"])
        assert results["summary"][row]["test_accuracy"]["n"] == 1
    # LayerNorm has no batch statistics: the same predictions in training mode (no dropout).
    [post] = results["runs"]["post_warmup"]
    assert post["train_eval_gap"] == 0
    # The rows' settings: the placement family's depth override and the norm family's batch.
    settings = {**results["families"]["placement"]["settings"],
                **results["families"]["norm"]["settings"]}
    assert settings["post_warmup"]["layers"] == 1 and settings["batch_small"]["batch"] == 16
    assert settings["post_nowarmup"]["warmup_steps"] == 0
    assert results["config"]["train"]["label_smoothing"] == 0.1
    assert results["config"]["optim"]["clip"] == "global_norm"


def test_verdicts_are_stated(study):
    workdir, results = study["workdir"], study["results"]
    claims = results["claims"]
    assert set(claims) == set(rows.CLAIMS)
    assert claims["WARMUP-post"]["verdict"] in ("confirmed", "refuted", "inconclusive")
    assert claims["LN-05"]["verdict"] == "not run"  # layer_small did not run
    sentence = claims["WARMUP-post"]["sentence"]
    assert "the chapter expects" in sentence and "95 % CI over 1 seeds, paired" in sentence
    md, analysis = (workdir / "results.md").read_text(), (workdir / "analysis.md").read_text()
    for text in (md, analysis):
        assert sentence in text
        assert "CLIP-05" in text and "tau = 1" in text


def test_a_rerun_reads_the_runs_back(study):
    first, second = study["first"].stdout, study["second"].stdout
    assert first.count("[trained]") == len(ROWS) and "[read back]" not in first
    assert second.count("[read back]") == len(ROWS) and "[trained]" not in second
    now = {p: p.stat().st_mtime_ns for p in study["workdir"].rglob("summary.json")}
    assert now == study["summaries"] and len(now) == len(ROWS)


def test_a_bad_field_is_one_error_line(tmp_path):
    out = run(tmp_path / "bad", "--config.placement_lr=-1", expect_ok=False)
    assert out.returncode == 2
    assert "placement_lr" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("low, high, expect, margin, verdict", [
    (-0.5, -0.1, "negative", 0.0, "confirmed"), (-0.1, 0.2, "negative", 0.0, "inconclusive"),
    (0.0, 0.1, "negative", 0.0, "refuted"), (-0.005, 0.004, "none", 0.01, "confirmed"),
    (0.02, 0.05, "none", 0.01, "refuted"), (-0.02, 0.0, "none", 0.01, "inconclusive")])
def test_claim_verdict(low, high, expect, margin, verdict):
    assert rows.claim_verdict(low, high, expect, margin) == verdict
