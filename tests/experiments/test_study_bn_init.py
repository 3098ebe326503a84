"""The BatchNorm x initialization study (issue 15): one tiny end-to-end run on the embedded digits
(Adam, BN; small / He / LSUV; 3 seeds; 34 steps; one compiled program), checked against numpy and
scipy; the whole family of comparisons (both norms, both optimizers), the measures and the verdict
rules on constructed inputs."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import stats_report
from experiments.audit.core import VERDICTS, Context
from experiments.bn_init import audit, claims, grid, main, measure, report
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
INITS, NORMS, SEEDS, WINDOW = ("small", "he", "lsuv"), ("bn",), 3, 5
TARGET_LOSS, TARGET_ACC = 1.8, 0.5


def _run(workdir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "experiments.bn_init", "--config=experiments/configs/bn_init.py",
         f"--workdir={workdir}", "--config.data.source=digits", "--config.data.val_size=287",
         "--config.data.limit_train=0", "--config.train.eval_batch_size=500",
         "--config.train.progress=never", "--config.train.num_epochs=2",
         "--config.optimizers=adam", f"--config.inits={','.join(INITS)}",
         f"--config.norms={','.join(NORMS)}", f"--config.seeds={SEEDS}",
         f"--config.window={WINDOW}", f"--config.target_loss={TARGET_LOSS}",
         f"--config.target_accuracy={TARGET_ACC}", "--config.lsuv.batch_size=64",
         "--config.train.unroll=False", *extra],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bn_init")
    out = _run(workdir)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {"workdir": workdir, "stdout": out.stdout,
            "results": json.loads((workdir / "results.json").read_text()),
            "md": (workdir / "results.md").read_text(),
            "analysis": (workdir / "analysis.md").read_text()}


# --------------------------------------------------------------------------- the run


def test_grid_files_and_pairing(study):
    res, workdir = study["results"], study["workdir"]
    assert list(res["cells"]) == [grid.cell_name("adam", n, i) for n in NORMS for i in INITS]
    assert res["budget_steps"] == 2 * (1150 // 64)
    for cell in res["cells"].values():
        assert [r["seed"] for r in cell["runs"]] == list(range(SEEDS))
        for r in cell["runs"]:
            path = workdir / "runs" / "adam" / cell["norm"] / cell["init"] / f"seed_{r['seed']}"
            cfg = json.loads((path / "config.json").read_text())
            assert cfg["seed"] == r["seed"]  # seed s: the same batch order in every cell
            assert cfg["model"]["norm"] == grid.NORMS[cell["norm"]]
            assert cfg["optim"]["name"] == "adam" and cfg["optim"]["learning_rate"] == 1e-3
            want = "he_normal" if cell["init"] == "lsuv" else grid.INITS[cell["init"]]
            assert cfg["model"]["hidden_init"] == want
            assert len(r["step_loss"]) == len(r["step_accuracy"]) == res["budget_steps"]
    for name in ["results.md", "analysis.md", *res["figures"]]:
        assert (workdir / name).stat().st_size > 0
    assert all((workdir / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in res["figures"])


def test_lsuv_cells_start_at_unit_variance(study):
    for norm in NORMS:
        for r in study["results"]["cells"][grid.cell_name("adam", norm, "lsuv")]["runs"]:
            report = r["lsuv_report"]
            assert [row["layer"] for row in report] == [f"conv_{j}" for j in range(4)]  # no head
            for row in report:
                assert row["converged"] and abs(row["var_after"] - 1.0) < 0.1


def _steps_numpy(values, target, window, below):
    """The measure written out: the first t whose trailing window mean reaches the target."""
    values = np.asarray(values, np.float64)
    for t in range(window, len(values) + 1):
        m = np.nanmean(values[t - window:t])
        if (m <= target) if below else (m >= target):
            return t, False
    return len(values), True


def test_measures_against_numpy(study):
    for cell in study["results"]["cells"].values():
        for r in cell["runs"]:
            for name, key, target, below in (("loss", "step_loss", TARGET_LOSS, True),
                                             ("accuracy", "step_accuracy", TARGET_ACC, False)):
                steps, censored = _steps_numpy(r[key], target, WINDOW, below)
                assert r["measures"][name]["steps"] == steps
                assert r["measures"][name]["censored"] == censored
            assert r["first_window_loss"] == pytest.approx(np.mean(r["step_loss"][:WINDOW]))
        logs = np.log([r["measures"]["loss"]["steps"] for r in cell["runs"]])
        ci = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs)) \
            if np.ptp(logs) > 0 else (logs.mean(), logs.mean())
        s = cell["summary"]["loss"]
        assert (math.log(s["low"]), math.log(s["high"])) == pytest.approx(ci, rel=1e-9, abs=1e-12)


def _check_family(comps, cells, inits, seeds):
    """Every comparison is the paired t of the log steps the cells hold; Holm over the family."""
    for c in comps.values():
        opt = c["optimizer"]
        if c["kind"] == "speed":
            runs = {i: cells[grid.cell_name(opt, "bn", i)]["runs"] for i in ("small", "he")}
            steps = {i: [r["measures"][c["measure"]]["steps"] for r in runs[i]] for i in runs}
            assert c["arm_steps"] == steps["small"] and c["against_steps"] == steps["he"]
            assert c["against_censored"] == [r["measures"][c["measure"]]["censored"]
                                             for r in runs["he"]]
            a, b = np.log(steps["small"]), np.log(steps["he"])
        else:
            spread, censored = {}, {}
            for n in ("none", "bn"):
                logs = np.log([[cells[grid.cell_name(opt, n, i)]["runs"][s]["measures"]["loss"]
                                ["steps"] for i in inits] for s in range(len(seeds))])
                spread[n] = logs.max(axis=1) - logs.min(axis=1)
                censored[n] = sum(r["measures"]["loss"]["censored"] for i in inits
                                  for r in cells[grid.cell_name(opt, n, i)]["runs"])
            assert c["censored"] == censored
            a, b = spread["none"], spread["bn"]
        np.testing.assert_allclose(c["differences"], a - b, rtol=0, atol=1e-12)
        inf = c["inference"]
        assert inf["n"] == len(seeds)
        check_p(inf["t"]["p"], a, b)
        if np.ptp(a - b) > 0:
            ci = stats.ttest_rel(a, b).confidence_interval(0.95)
            assert (inf["t"]["low"], inf["t"]["high"]) == pytest.approx((ci.low, ci.high),
                                                                          rel=1e-9)
    check_holm(list(comps.values()))


def test_comparisons_are_the_paired_t_of_the_stored_steps(study):
    comps = study["results"]["comparisons"]
    assert list(comps) == ["speed/loss/adam", "speed/accuracy/adam"]  # one norm: no spread
    _check_family(comps, study["results"]["cells"], INITS, range(SEEDS))


def test_the_whole_family_on_constructed_cells():
    rng = np.random.default_rng(0)
    optimizers, norms, inits, seeds = ("sgd", "adam"), ("bn", "none"), list(grid.INITS), [0, 1, 2]
    budget = 500
    cells = {}
    for o in optimizers:
        for n in norms:
            for i in inits:
                runs = []
                for s in seeds:
                    steps = {m: int(rng.integers(20, budget + 200)) for m in grid.MEASURES}
                    runs.append({"seed": s, "measures": {
                        m: {"steps": min(v, budget), "censored": v >= budget}
                        for m, v in steps.items()}})
                cells[grid.cell_name(o, n, i)] = {"runs": runs}
    comps = main.comparisons(cells, optimizers, norms, inits)
    assert list(comps) == ["speed/loss/sgd", "speed/loss/adam", "speed/accuracy/sgd",
                           "speed/accuracy/adam", "sensitivity/loss/sgd", "sensitivity/loss/adam"]
    _check_family(comps, cells, inits, seeds)
    verdicts = claims.judge(comps)
    assert set(verdicts["speed"]) == set(verdicts["sensitivity"]) == set(optimizers)


def test_report_shows_the_table_and_the_verdicts(study):
    res, md = study["results"], study["md"]
    comps = res["comparisons"]
    rows = [(report.comparison_label(c), c["against"], c["inference"]) for c in comps.values()]
    assert stats_report.comparison_table(rows, what="comparison", scale=1.0, digits=3,
                                         unit="log") in md
    for c in comps.values():
        assert stats_report.formal(c["inference"], 1, 3, "log") in md
    assert res["verdicts"] == claims.judge(comps)  # the stored verdicts are the rules'
    assert f"BN-12 (c): **{res['verdicts']['BN-12']}**" in md
    assert f"**{res['verdicts']['BN-12']}**" in study["analysis"]


def test_rerun_reuses_every_run(study):
    out = _run(study["workdir"])
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("adam/")]
    assert len(lines) == len(INITS) * len(NORMS) and all("[reused;" in line for line in lines)
    again = json.loads((study["workdir"] / "results.json").read_text())
    assert again["comparisons"] == study["results"]["comparisons"]


def test_audit_reads_the_study(study, tmp_path):
    (tmp_path / audit.STUDY_DIR).symlink_to(study["workdir"])
    finding = audit.check_BN_12(Context(studies=tmp_path))
    assert finding.verdict in VERDICTS and finding.verdict != "not run"
    assert finding.verdict == claims.judge(study["results"]["comparisons"])["BN-12"]
    speed = [c for c in study["results"]["comparisons"].values() if c["kind"] == "speed"]
    best = max(math.exp(c["inference"]["t"]["high"]) for c in speed)
    assert finding.ci[1] == pytest.approx(best)
    assert audit.check_BN_12(Context(studies=tmp_path / "none")).verdict == "not run"


def test_bad_axis_value_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.bn_init", "--config=experiments/configs/bn_init.py",
         f"--workdir={tmp_path / 'w'}", "--config.inits=small,kaiming"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "error: inits: 'small,kaiming'" in out.stderr
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- constructed inputs


def test_running_mean_and_steps_to():
    x = [3.0, 2.0, 1.0, 0.0, np.nan, 0.0]
    np.testing.assert_allclose(measure.running_mean(x, 2), [2.5, 1.5, 0.5, 0.0, 0.0])
    assert measure.steps_to(x, 1.5, 2) == {"steps": 3, "censored": False, "budget": 6}
    assert measure.steps_to(x, -1.0, 2) == {"steps": 6, "censored": True, "budget": 6}
    assert measure.steps_to([0.1, 0.5, 0.9], 0.7, 2, direction="above")["steps"] == 3
    assert measure.running_mean([1.0], 2).size == 0
    assert np.isnan(measure.running_mean([np.nan, np.inf, 1.0], 2)[0])
    assert measure.log_spread({"a": 100, "b": 400, "c": 200}) == pytest.approx(math.log(4))


def _comp(d, decision="differs", **extra):
    t = {"mean": float(np.mean(d)), "low": float(np.min(d)), "high": float(np.max(d))}
    return {"inference": {"n": len(d), "t": t, "decision": decision}, **extra}


def test_speed_rule_with_censoring():
    fast_he = {"arm_censored": [False] * 3, "against_censored": [False] * 3}
    big = math.log(3.0)
    assert claims.speed_status(_comp([big, big + 0.1, big - 0.1], **fast_he)) == "holds"
    # He's speed-up CI reaches below 1.5: not shown.
    assert claims.speed_status(_comp([0.1, big, 1.0], **fast_he)) == "undecided"
    # A censored He run could hide how slow He is: no "holds".
    assert claims.speed_status(_comp([big] * 3, arm_censored=[False] * 3,
                                     against_censored=[True, False, False])) == "undecided"
    slow_he = [-1.0, -0.9, -1.1]
    assert claims.speed_status(_comp(slow_he, **fast_he)) == "fails"
    # A censored small-random run could hide how slow small is: no "fails".
    assert claims.speed_status(_comp(slow_he, arm_censored=[True, False, False],
                                     against_censored=[False] * 3)) == "undecided"
    assert claims.speed_status({"inference": {"n": 0}}) == "undecided"


def test_sensitivity_and_claim_rules():
    c = lambda d, cens, decision="differs": _comp(d, decision, arm="none", against="bn",
                                                    censored=cens)
    assert claims.sensitivity_status(c([1.0, 2.0], {"none": 5, "bn": 0})) == "holds"
    assert claims.sensitivity_status(c([1.0, 2.0], {"none": 0, "bn": 1})) == "undecided"
    assert claims.sensitivity_status(c([-1.0, -2.0], {"none": 0, "bn": 3})) == "fails"
    assert claims.sensitivity_status(c([-1.0, -2.0], {"none": 1, "bn": 0})) == "undecided"
    assert claims.sensitivity_status(c([1.0, 2.0], {"none": 0, "bn": 0}, "undecided")) \
        == "undecided"
    assert claims.combine_measures(["holds", "holds"]) == "holds"
    assert claims.combine_measures(["fails", "undecided"]) == "undecided"
    assert claims.combine_optimizers({"sgd": "holds", "adam": "fails"}) == "fails"
    assert claims.combine_optimizers({"sgd": "holds", "adam": "undecided"}) == "undecided"
    table = {("holds", "holds"): "confirmed", ("holds", "fails"): "partly",
             ("fails", "holds"): "partly", ("fails", "undecided"): "refuted",
             ("fails", "fails"): "refuted", ("holds", "undecided"): "inconclusive",
             ("undecided", "undecided"): "inconclusive"}
    for (speed, sens), verdict in table.items():
        assert claims.bn12_verdict(speed, sens) == verdict
    assert [claims.myth_verdict(s) for s in ("holds", "fails", "undecided")] == [
        "confirmed", "refuted", "inconclusive"]
