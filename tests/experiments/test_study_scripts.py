"""Every study script runs end to end, as a user runs it, on tiny data, and writes its artefacts.

Each test is the script's documented command (`python -m experiments.<study> --config=...`) with
overrides that shrink it to seconds on the embedded digits (or the study's own synthetic data),
and checks a property of its results that the study is about.
"""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ["--config.data.source=digits", "--config.data.val_size=287",
          "--config.train.eval_batch_size=500", "--config.train.progress=never"]


def run(study: str, config: str, workdir: pathlib.Path, *overrides: str) -> dict:
    out = subprocess.run([sys.executable, "-m", f"experiments.{study}",
                          f"--config=experiments/configs/{config}.py", f"--workdir={workdir}",
                          *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"stdout": out.stdout, "stderr": out.stderr}


def _png(path: pathlib.Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _results(workdir: pathlib.Path) -> dict:
    results = json.loads((workdir / "results.json").read_text())
    assert (workdir / "results.md").read_text().strip()
    for name in results.get("figures", []):
        assert _png(workdir / name), name
    return results


def test_train(tmp_path):
    out = run("train", "digits_mlp", tmp_path, "--config.train.num_epochs=2",
              "--config.train.progress=never")
    summary = json.loads(out["stdout"].strip().splitlines()[-1])
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "max_epochs"
    assert summary["test/accuracy"] > 0.5
    assert json.loads((tmp_path / "summary.json").read_text())["test/loss"] == summary["test/loss"]


def test_ablation(tmp_path):
    run("ablation", "ablation_digits", tmp_path, "--config.only=small_init,xavier",
        "--config.seeds=2", "--config.train.num_epochs=2", "--config.data.limit_train=256",
        "--config.model.widths=(16,)", "--config.train.progress=never")
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["experiments"]) == ["small_init", "xavier"]
    [c] = results["contributions"]
    assert (c["experiment"], c["parent"]) == ("xavier", "small_init")
    for name in ("results.md", "analysis.md"):
        assert (tmp_path / name).read_text().strip()
    for name in ("curves.png", "contributions.png"):
        assert _png(tmp_path / name)
    assert results["study"]["model"]["kernel_shapes"] == [[64, 16], [16, 10]]


def test_signal_propagation(tmp_path):
    run("signal_propagation", "signal_propagation", tmp_path, "--config.depth=3",
        "--config.deep_depth=4", "--config.width=256", "--config.num_samples=256",
        "--config.seeds=2")
    results = _results(tmp_path)
    relu = results["studies"]["relu"]
    # The mean-field factor per layer: He keeps the variance (1), Xavier halves it (1/2).
    assert relu["he_normal"]["ratio_theory"] == pytest.approx([1.0, 1.0])
    assert relu["xavier_normal"]["ratio_theory"] == pytest.approx([0.5, 0.5])
    for ratio in relu["he_normal"]["ratio_measured"]:
        assert 0.75 < ratio < 1.25
    assert len(results["c2"]["he_normal"]["measured"]) == 4


def test_sparsity(tmp_path):
    run("sparsity", "sparsity", tmp_path, "--config.fit.steps=600", "--config.seeds=2")
    results = _results(tmp_path)
    pen = results["penalties"]
    assert [r["seed"] for r in pen["l1_proximal"]["runs"]] == [0, 1]
    # Only the proximal step makes exact zeros; the subgradient leaves every weight non-zero.
    for prox, sub in zip(pen["l1_proximal"]["runs"], pen["l1_subgradient"]["runs"]):
        assert prox["support"]["exact_zeros"] > 50
        assert sub["support"]["exact_zeros"] == 0
        assert prox["support"]["recall"] == 1.0


def test_zero_init(tmp_path):
    run("zero_init", "zero_init", tmp_path, *DIGITS, "--config.train.num_epochs=1",
        "--config.model.widths=(16,)", "--config.only=constant,he", "--config.seeds=1")
    results = _results(tmp_path)
    [constant], [he] = results["cases"]["constant"]["runs"], results["cases"]["he"]["runs"]
    # Units started equal stay bit-identical (the symmetry catastrophe); random ones do not.
    assert constant["final"]["dense_0"]["spread"] == 0.0
    assert constant["final"]["dense_0"]["distinct_units"] == 1
    assert he["final"]["dense_0"]["distinct_units"] == 16
    assert [e["epoch"] for e in constant["history"]] == [0, 1]
    # One seed: the comparison is reported, without an interval.
    [c] = results["comparisons"]
    assert (c["case"], c["against"], c["inference"]["n"]) == ("constant", "he", 1)
    assert c["inference"]["decision"] == "undecided"


def test_lsuv(tmp_path):
    run("lsuv", "lsuv", tmp_path, *DIGITS, "--config.train.num_epochs=1",
        "--config.model.widths=(32,32,32,32)", "--config.measure_batch_size=200",
        "--config.lsuv.batch_size=256", "--config.activations=relu", "--config.seeds=1")
    results = _results(tmp_path)
    [lsuv] = [r for r in results["runs"] if r["init"] == "lsuv"]
    assert all(row["converged"] for row in lsuv["lsuv_report"])
    for row in lsuv["lsuv_report"]:
        assert abs(row["var_after"] - 1.0) < 0.1
    assert len(lsuv["step_loss"]) == lsuv["steps_per_epoch"]


def test_clipping(tmp_path):
    run("clipping", "clipping", tmp_path, *DIGITS, "--config.train.num_epochs=1",
        "--config.model.widths=(16,)", "--config.train.batch_size=64",
        "--config.learning_rates=0.1", "--config.seeds=1")
    results = _results(tmp_path)
    runs = {r["clip"]: r for r in results["runs"]}
    assert len(runs) == len(results["runs"])  # one seed: one run per clip
    assert set(runs) == {"none", "value", "global_norm"}
    # Clipping by global norm keeps the gradient's direction: the cosine is 1 up to rounding.
    assert runs["global_norm"]["summary"]["cosine_min"] > 1 - 1e-5
    assert runs["none"]["summary"]["clipped_fraction"] == 0.0
    assert len(runs["value"]["steps"]["cosine"]) == runs["value"]["summary"]["steps"]


def test_mc_dropout(tmp_path):
    run("mc_dropout", "mc_dropout", tmp_path, *DIGITS, "--config.train.num_epochs=15",
        "--config.train.batch_size=64", "--config.model.widths=(32,)",
        "--config.mc.num_samples=5", "--config.mc.batch_size=100", "--config.mc.time_loop=False",
        "--config.seeds=1")
    results = _results(tmp_path)
    methods = results["methods"]
    assert set(methods) == {"deterministic", "mc_T5"}
    for m in methods.values():
        assert 0.0 <= m["ece_15bin"] <= 1.0 and 0.5 < m["accuracy"] <= 1.0
    assert (tmp_path / "train" / "seed_0" / "summary.json").exists()
