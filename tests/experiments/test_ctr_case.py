"""The CTR case study (experiments/ctr_case) end to end on a tiny log, as a user runs it."""

import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--config.seeds=1", "--config.only=recipe,log_no_clip", "--config.train.num_epochs=2",
        "--config.clicks.num_examples=3000", "--config.clicks.table_sizes=(40,20,10)",
        "--config.train.progress=never"]


def run(workdir: pathlib.Path) -> str:
    out = subprocess.run([sys.executable, "-m", "experiments.ctr_case",
                          "--config=experiments/configs/ctr_case.py", f"--workdir={workdir}",
                          *TINY], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_ctr_case_tiny(tmp_path):
    first = run(tmp_path)
    assert "[trained]" in first
    for name in ("results.json", "results.md", "analysis.md"):
        assert (tmp_path / name).read_text().strip(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["rows"] == ["recipe", "log_no_clip"]
    for row in results["rows"]:
        runs = results["runs"][row]
        assert [r["seed"] for r in runs] == [0]
        for r in runs:
            assert math.isfinite(r["test"]["auc"]) and math.isfinite(r["test"]["ne"])
            assert r["epochs_run"] <= 2
            assert isinstance(r["alerts"], int)
        assert (tmp_path / row / "seed_0" / "ctr.json").exists()
    assert "alerts_on_burst_steps" in results["runs"]["log_no_clip"][0]
    assert math.isfinite(results["bayes"]["test"]["auc"])
    analysis = (tmp_path / "analysis.md").read_text()
    assert "Verdict: **" in analysis and "the chapter expects" in analysis
    assert all("verdict" in c for c in results["claims"].values())
    # A rerun reads every finished run back and rewrites the reports.
    second = run(tmp_path)
    assert "[trained]" not in second and second.count("[read back]") == 2
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["runs"]["recipe"][0]["test"] == results["runs"]["recipe"][0]["test"]


def test_log_order_dataset_reads_epoch_one_in_log_order():
    import numpy as np

    from experiments.ctr_case.main import log_order_dataset
    from ml_practical import clicks, data

    spec = clicks.ClickSpec(num_examples=2000, table_sizes=(40, 20))
    ds = clicks.click_splits(spec).dataset
    stored = log_order_dataset(ds, seed=3)
    idx = data.batch_indices(3, 1, len(ds.train_y), 64)
    np.testing.assert_array_equal(stored.train_x[idx.reshape(-1)],
                                  ds.train_x[:idx.size])
    # Later epochs are shuffled again.
    idx2 = data.batch_indices(3, 2, len(ds.train_y), 64)
    assert not np.array_equal(stored.train_x[idx2.reshape(-1)], ds.train_x[:idx2.size])
