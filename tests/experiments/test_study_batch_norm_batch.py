"""The batch-size / normalization study (issue 15): its cells, a tiny end-to-end run on the
embedded digits (2 norms x 2 batches, a ghost and an accumulation cell, 3 seeds vmapped, one
epoch), its statistics against scipy and numpy on the stored per-seed values, its verdict rules
on constructed inputs, and its audit checks."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments.audit.core import VERDICTS, Context
from experiments.batch_norm_batch import audit, grid, report
from experiments.batch_norm_batch.main import BatchNormBatchStudy, cell_config
from experiments.configs import batch_norm_batch as study_config
from ml_practical import config as config_lib
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = 3
FIGURES = ("accuracy_vs_batch.png", "gap_vs_batch.png", "separation.png", "mismatch.png")


def _default():
    return config_lib.parse(study_config.get_config(), study=BatchNormBatchStudy)


def test_default_cells_vary_the_three_batches_independently():
    cfg = _default()
    cells = cfg.study.cells()
    assert len(cells) == 6 * 8 + 5 + 4 + 1
    assert all(f"{n}/b{b}" in cells for n in grid.NORMS for b in cfg.study.batches)
    g = cells["batch/b128/ghost2"]
    assert (g.bn_batch, g.batch, g.device_batch) == (2, 128, 128)
    a = cells["batch/b128/accum16"]
    assert (a.bn_batch, a.batch, a.device_batch) == (8, 128, 8)
    f = cells["batch/b256/ghost8"]
    assert (f.bn_batch, f.batch, f.device_batch) == (8, 256, 256)
    # A ghost batch as large as the batch is plain BN: trained once, under the grid's name.
    assert "batch/b128/ghost128" not in cells and "batch/b8/ghost8" not in cells
    for cell in cells.values():
        run_cfg = cell_config(cfg, cell, 0)
        assert run_cfg.train.batch_size == cell.batch
        assert run_cfg.model.ghost_batch_size == cell.ghost
        assert run_cfg.train.grad_accum_steps == cell.accum
        # lr ∝ sqrt(gradient batch), 1e-2 at 128: the ghost and accumulation cells at 128 too.
        assert run_cfg.optim.learning_rate == pytest.approx(1e-2 * math.sqrt(cell.batch / 128))
    # The evaluation batch (2000) is cut to a multiple of a ghost size that does not divide it.
    assert cell_config(cfg, cells["batch/b128/ghost32"], 0).train.eval_batch_size == 1984
    assert cell_config(cfg, cells["batch/b128/ghost16"], 0).train.eval_batch_size == 2000
    assert grid.scaled_lr(0.1, 32, 128, "linear") == pytest.approx(0.025)
    assert cells["layer/b2"].run_path == "layer/b2"
    assert cells["batch/b128/ghost8"].run_path == "batch/b128_ghost8"


def test_bad_study_fields_name_the_field():
    raw = study_config.get_config()
    raw.parts = "grid,ghosts"
    with pytest.raises(config_lib.ConfigError, match="parts"):
        config_lib.parse(raw, study=BatchNormBatchStudy)
    raw = study_config.get_config()
    raw.ghost_sizes = (3,)
    with pytest.raises(config_lib.ConfigError, match="ghost_sizes: 3 does not divide"):
        config_lib.parse(raw, study=BatchNormBatchStudy)


def _inf(mean, low, high, decision="undecided", n=3):
    return {"n": n, "t": {"mean": mean, "low": low, "high": high}, "decision": decision}


def test_verdict_rules_on_constructed_comparisons():
    ln_fine, ln_hurt = _inf(0.01, -0.002, 0.02), _inf(-0.02, -0.03, -0.01)
    assert report.verdict_bn16(_inf(-0.03, -0.05, -0.01), ln_fine) == "confirmed"
    assert report.verdict_bn16(_inf(-0.03, -0.05, -0.01), ln_hurt) == "refuted"
    assert report.verdict_bn16(_inf(-0.002, -0.008, 0.004), ln_fine) == "refuted"  # > -1 pp
    assert report.verdict_bn16(_inf(-0.03, -0.08, 0.02), ln_fine) == "inconclusive"
    assert report.verdict_bn16(None, ln_fine) == "not run"
    assert report.signed(_inf(0.01, 0.005, 0.02, "differs"), expect_positive=True) == "confirmed"
    assert report.signed(_inf(-0.01, -0.02, -0.005, "differs"),
                         expect_positive=True) == "refuted"
    assert report.signed(_inf(0.01, -0.005, 0.02), expect_positive=True) == "inconclusive"
    assert report.signed({"n": 0}, expect_positive=True) == "not run"
    pos, neg = _inf(0.01, 0.0, 0.02, "differs"), _inf(-0.01, -0.02, 0.0, "differs")
    assert report.verdict_all_positive([pos, pos]) == "confirmed"
    assert report.verdict_all_positive([pos, _inf(0.01, -0.01, 0.03)]) == "inconclusive"
    assert report.verdict_all_positive([pos, neg]) == "refuted"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("studies") / "batch_norm_batch"
    out = subprocess.run(
        [sys.executable, "-m", "experiments.batch_norm_batch",
         "--config=experiments/configs/batch_norm_batch.py", f"--workdir={workdir}",
         "--config.data.source=digits", "--config.data.val_size=287",
         "--config.data.limit_train=64", "--config.data.placement=device",
         "--config.seed_mode=vmap", "--config.train.eval_batch_size=500",
         "--config.train.num_epochs=1", "--config.model.widths=(4,)",
         "--config.norms=batch,layer", "--config.batches=(2,4)",
         "--config.ghost_grad_batch=4", "--config.ghost_sizes=(2,)",
         "--config.fixed_bn_batch=2", "--config.accum_batches=(4,)",
         "--config.measure_rows=32", f"--config.seeds={SEEDS}"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text()}


def test_files_and_cells(study):
    workdir, res = study["workdir"], study["results"]
    for name in ("results.json", "results.md", "analysis.md", *FIGURES):
        assert (workdir / name).exists(), name
    assert list(res["cells"]) == ["batch/b2", "batch/b4", "layer/b2", "layer/b4",
                                  "batch/b4/ghost2", "batch/b4/accum2"]
    for name, c in res["cells"].items():
        assert [r["seed"] for r in c["runs"]] == list(range(SEEDS))
        for r in c["runs"]:
            run = workdir / "runs" / grid.Cell(name, c["part"], c["norm"], c["batch"], c["ghost"],
                                               c["accum"]).run_path / f"seed_{r['seed']}"
            cfg = json.loads((run / "config.json").read_text())
            assert (cfg["seed"], cfg["train"]["batch_size"], cfg["model"]["ghost_batch_size"],
                    cfg["train"]["grad_accum_steps"]) == (r["seed"], c["batch"], c["ghost"],
                                                          c["accum"])
            assert (run / "bn_measures.json").exists()
            assert r["gap"] == pytest.approx(r["train_accuracy"] - r["test_accuracy"], abs=1e-12)
            modes = r["test_modes"]
            assert modes["accuracy_gap"] == pytest.approx(
                modes["eval"]["accuracy"] - modes["train"]["accuracy"], abs=1e-12)
            if modes["rows"] == res["dataset"]["num_test"]:
                # The measure's eval mode is the loop's test evaluation of the same weights.
                assert modes["eval"]["accuracy"] == pytest.approx(r["test_accuracy"], abs=1e-6)
            if c["norm"] != "batch":
                assert r["mean_rms"] is None and modes["train"] == modes["eval"]
        acc = [r["test_accuracy"] for r in c["runs"]]
        s = c["summary"]["test_accuracy"]
        ci = stats.t.interval(0.95, SEEDS - 1, loc=np.mean(acc), scale=stats.sem(acc))
        assert s["mean"] == pytest.approx(np.mean(acc))
        if np.ptp(acc) > 0:
            assert (s["low"], s["high"]) == pytest.approx(ci, rel=1e-9)
    assert res["cells"]["batch/b4/ghost2"]["bn_batch"] == 2
    assert res["cells"]["batch/b4/accum2"]["device_batch"] == 2


def _value(res, name, metric):
    return {r["seed"]: report.METRICS[metric][0](r) for r in res["cells"][name]["runs"]}


def test_stored_comparisons_are_the_per_seed_values_and_scipy_agrees(study):
    res = study["results"]
    fam = res["families"]
    # Differences and differences in differences, recomputed from the per-seed runs.
    bn = report.find(fam, "small_batch", "BN:")
    a, b = _value(res, "batch/b2", "test_accuracy"), _value(res, "batch/b4", "test_accuracy")
    np.testing.assert_allclose(bn["values"], [a[s] - b[s] for s in range(SEEDS)], atol=1e-12)
    check_p(bn["inference"]["t"]["p"], [a[s] for s in range(SEEDS)],
            [b[s] for s in range(SEEDS)])
    did = report.find(fam, "sensitivity", "BN - LN")
    la, lb = _value(res, "layer/b2", "test_accuracy"), _value(res, "layer/b4", "test_accuracy")
    np.testing.assert_allclose(did["values"], [a[s] - b[s] - (la[s] - lb[s]) for s in range(SEEDS)],
                               atol=1e-12)
    # The two separation parts add up to the total, seed by seed.
    total = report.find(fam, "separation", "both")["values"]
    parts = [report.find(fam, "separation", k)["values"]
             for k in ("BN batch alone", "gradient batch alone:")]
    np.testing.assert_allclose(total, np.add(*parts), atol=1e-12)
    # The BN-11 slope: numpy's least squares of the gap on log2(BN batch), per seed.
    slope = report.find(fam, "regularization", "slope of the gap on log2(BN")
    g2, g4 = _value(res, "batch/b4/ghost2", "gap"), _value(res, "batch/b4", "gap")
    np.testing.assert_allclose(slope["values"], [np.polyfit([1.0, 2.0], [g2[s], g4[s]], 1)[0]
                                                 for s in range(SEEDS)], atol=1e-12)
    for entries in fam.values():
        ran = [e for e in entries if e["inference"].get("n")]
        for e in ran:
            v = np.asarray(e["values"])
            check_p(e["inference"]["t"]["p"], v, np.zeros_like(v))
        if ran:
            check_holm([{"inference": e["inference"]} for e in ran])


def test_reports_and_audit(study):
    res, md = study["results"], study["md"]
    for key, title in (("small_batch", "Smallest"), ("separation", "Separating")):
        assert title in md
        for e in res["families"][key]:
            assert e["name"] in md
    assert set(res["verdicts"]) >= {"BN-16", "BN-11", "gn_small_batch", "batch_size_sensitivity"}
    assert all(v["verdict"] in VERDICTS for v in res["verdicts"].values())
    ctx = Context(study["workdir"].parent)
    for check, claim in ((audit.check_BN_16, "BN-16"), (audit.check_BN_11, "BN-11")):
        finding = check(ctx)
        assert finding.verdict == res["verdicts"][claim]["verdict"]
        assert finding.ci is not None
    empty = Context(study["workdir"].parent / "nowhere")
    assert audit.check_BN_16(empty).verdict == "not run"
