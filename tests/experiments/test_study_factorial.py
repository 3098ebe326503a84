"""The factorial study (experiments/factorial): its cells are the ablation's rows, its analysis
recovers known effects, and end to end on a tiny generated dataset (a 2^2 design over bn and
dropout, a 16-unit MLP, 2 seeds, 2 epochs) its tables are the per-run accuracies' contrasts."""

import itertools
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import cli
from experiments.ablation import main as ablation
from experiments.configs import factorial as factorial_config
from experiments.configs import factorial_digits
from experiments.factorial import factors, main as factorial
from ml_practical import config, loop
from ml_practical.analysis import factorial as ff
from tests.conftest import CallCounter
from tests.template_data import template_dataset

ROOT = pathlib.Path(__file__).resolve().parents[2]


def parse(raw):
    return config.parse(raw, study=factorial.FactorialStudy)


def tiny_dataset():
    return template_dataset(noise=1.5)


def tiny_config(factors_="bn,dropout", design="full", seeds=2):
    cfg = factorial_digits.get_config()
    cfg.data.source = "arrays"
    cfg.factors, cfg.design, cfg.seeds = factors_, design, seeds
    cfg.model.widths = (16,)
    cfg.train.num_epochs = 2
    cfg.train.batch_size = 64
    cfg.train.eval_batch_size = 128
    cfg.train.progress = "never"
    return cfg


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("factorial")
    cfg = parse(tiny_config())
    start = cli.Start(cfg=cfg, workdir=workdir, command="test")
    fit = CallCounter(loop.fit)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "fit", fit)
        results = factorial.execute(start, dataset=tiny_dataset(), quiet=True)
    return {"workdir": workdir, "results": results, "fits": len(fit.calls),
            "on_disk": json.loads((workdir / "results.json").read_text())}


def _y(results):
    """(cells, seeds) accuracies and the (cells, k) levels, from the per-run records stored."""
    names = results["study"]["factors"]
    cells = results["cells"]
    seeds = results["study"]["seeds_analysed"]
    y = np.array([[{r["seed"]: r["test_accuracy"] for r in c["runs"]}[s] for s in seeds]
                  for c in cells.values()])
    lv = np.array([[c["levels"][n] for n in names] for c in cells.values()])
    return y, lv, list(cells)


def test_every_cell_and_seed_runs_once_with_the_factor_levels(study):
    assert study["fits"] == 4 * 2
    res = study["on_disk"]
    assert list(res["cells"]) == ["none", "bn", "dropout", "bn+dropout"]
    assert res["study"]["runs"] == 8 and res["study"]["seeds_analysed"] == [0, 1]
    for name, c in res["cells"].items():
        for r in c["runs"]:
            saved = json.loads((ablation.run_dir(study["workdir"], name, r["seed"])
                                / "config.json").read_text())
            summary = json.loads((ablation.run_dir(study["workdir"], name, r["seed"])
                                  / "summary.json").read_text())
            assert r["test_accuracy"] == summary["test/accuracy"]
            assert saved["seed"] == r["seed"]
            assert saved["model"]["norm"] == ("batch" if c["levels"]["bn"] else "none")
            assert saved["model"]["drop_rate"] == (0.2 if c["levels"]["dropout"] else 0.0)
            # The factors not varied stay at their off level (the ablation's row 1).
            assert (saved["model"]["hidden_init"], saved["optim"]["l2"],
                    saved["train"]["label_smoothing"], saved["train"]["augment"]) == (
                "normal", 0.0, 0.0, "none")


def test_effects_are_the_contrasts_of_the_stored_accuracies(study):
    res = study["on_disk"]
    y, lv, _ = _y(res)
    x = 2 * lv - 1
    n = len(lv)
    by = {e["name"]: e for e in res["effects"]}
    assert list(by) == ["bn", "dropout", "bn × dropout"]
    # In an orthogonal two-level design the effect of T is (2 / n) sum_cells y prod_{t in T} x_t.
    for name, cols in (("bn", [0]), ("dropout", [1]), ("bn × dropout", [0, 1])):
        contrast = 2.0 / n * (np.prod(x[:, cols], axis=1)[:, None] * y).sum(axis=0)
        np.testing.assert_allclose(by[name]["per_seed"], contrast, atol=1e-12)
        t = by[name]["inference"]["t"]
        assert t["mean"] == pytest.approx(contrast.mean(), abs=1e-12)
        if np.std(contrast) > 0:
            ref = stats.ttest_1samp(contrast, 0.0)
            assert t["p"] == pytest.approx(ref.pvalue, rel=1e-9)
            ci = ref.confidence_interval(0.95)
            assert (t["low"], t["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # bn's main effect is mean(on) - mean(off), per seed.
    np.testing.assert_allclose(by["bn"]["per_seed"],
                               y[lv[:, 0] == 1].mean(0) - y[lv[:, 0] == 0].mean(0), atol=1e-12)
    # Holm over the family of three effects.
    p = sorted(float(e["inference"]["t"]["p"]) for e in by.values())
    holm = sorted(float(e["inference"]["p_holm"]) for e in by.values())
    assert holm[0] == pytest.approx(min(1.0, 3 * p[0]))


def test_shapley_values_and_the_chapter_order_on_a_saturated_design(study):
    res = study["on_disk"]
    y, lv, cells = _y(res)
    by = {e["name"]: e for e in res["effects"]}
    # The two-way model: phi = the main effect, and sum phi = v(all) - v(none).
    for s in res["shapley"]:
        np.testing.assert_allclose(s["per_seed"], by[s["factor"]]["per_seed"], atol=1e-12)
    tot = res["shapley_total"]
    np.testing.assert_allclose(tot["sum_phi"], tot["model_all_minus_none"], atol=1e-12)
    # Four cells, four columns: the model is the data, so v(all) - v(none) is measured exactly.
    np.testing.assert_allclose(tot["model_all_minus_none"],
                               y[cells.index("bn+dropout")] - y[cells.index("none")], atol=1e-12)
    order = res["chapter_order"]
    assert order["order"] == ["bn", "dropout"]
    assert [c["cell"] for c in order["chain"]] == ["none", "bn", "bn+dropout"]
    assert all(c["in_design"] for c in order["chain"])
    steps = order["measured_steps"]
    np.testing.assert_allclose(steps[0]["per_seed"], y[cells.index("bn")] - y[cells.index("none")],
                               atol=1e-12)
    np.testing.assert_allclose(steps[1]["per_seed"],
                               y[cells.index("bn+dropout")] - y[cells.index("bn")], atol=1e-12)
    # ...and the model's chapter-order credits are those measured steps; dropout's credit after
    # bn minus its Shapley value is half the interaction (the 0/1 synergy c = 2 x the effect).
    credits = {m["factor"]: m for m in order["model_credits"]}
    np.testing.assert_allclose(credits["dropout"]["per_seed"], steps[1]["per_seed"], atol=1e-12)
    np.testing.assert_allclose(credits["dropout"]["minus_shapley"]["per_seed"],
                               np.asarray(by["bn × dropout"]["per_seed"]), atol=1e-12)
    [inter] = res["interactions"]
    assert inter["name"] == "bn × dropout"
    means = np.asarray(inter["means"])  # [bn][dropout][seed]
    np.testing.assert_allclose(means[1, 1], y[cells.index("bn+dropout")], atol=1e-12)
    # Four cells, four columns: no column is left over to check the model with.
    assert res["higher_order"] == []


def test_reports_hold_the_tables_and_the_figure(study):
    workdir, res = study["workdir"], study["on_disk"]
    md = (workdir / "results.md").read_text()
    for heading in ("## Main effects and two-way interactions", "## Shapley values",
                    "## The chapter's order", "## Cells"):
        assert heading in md
    bd = next(e for e in res["effects"] if e["name"] == "bn × dropout")
    row = next(line for line in md.splitlines() if line.startswith("| bn × dropout |"))
    assert f"{100 * bd['inference']['t']['mean']:+.2f}" in row
    analysis = (workdir / "analysis.md").read_text()
    assert "**bn × dropout**" in analysis and "reduces the need for aggressive dropout" in analysis
    png = (workdir / "factorial.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert res["figures"] == ["factorial.png"] and res["command"] == "test"


def test_rerun_reuses_every_run(study, monkeypatch):
    fit = CallCounter(loop.fit)
    monkeypatch.setattr(loop, "fit", fit)
    again = factorial.run_study(parse(tiny_config()), study["workdir"], tiny_dataset())
    assert fit.calls == []
    assert again["effects"] == study["on_disk"]["effects"]


def test_cells_are_the_ablation_rows():
    cfg = parse(factorial_config.get_config())
    names, levels, words = factorial.study_design(cfg.study)
    assert names == list(factors.NAMES) and levels.shape == (32, 6) and words == [list(range(6))]
    half = factors.cell_table(levels, names)
    full = factors.cell_table(ff.full_factorial(6), names)
    chain = ["small_init", "he", "he_bn", "dropout", "l2", "label_smoothing", "augment"]
    for r, row in enumerate(chain):
        cell = factors.cell_name(factors.NAMES[:r])
        assert (cell in half) == (r % 2 == 0)  # rows 1, 4, 6, 8 lie in the half fraction
        mine = ablation.experiment_config(cfg, cell, 1, table=full)
        theirs = ablation.experiment_config(cfg, row, 1)
        assert config.to_dict(mine) == config.to_dict(theirs), row
        level = {n: int(i < r) for i, n in enumerate(factors.NAMES)}
        assert factors.ablation_row(level) == row
    assert factors.ablation_row({n: int(n == "bn") for n in factors.NAMES}) is None
    assert factors.cell_name([]) == "none" and factors.cell_name(["l2", "init"]) == "init+l2"


def test_analysis_recovers_known_effects_on_the_half_fraction():
    """A synthetic response on the 32 cells: 6 main effects, bn x dropout, and a three-way term
    init x bn x dropout (aliased with l2 x smoothing x augment), plus seed noise."""
    levels, words = ff.half_fraction(6)
    names = list(factors.NAMES)
    x = 2.0 * levels - 1.0
    mains = np.array([0.004, 0.006, 0.001, 0.0005, 0.0, 0.002])  # b_i: effects are 2 b_i
    rng = np.random.default_rng(0)
    base = 0.97 + x @ mains + 0.0015 * x[:, 1] * x[:, 2] + 0.001 * x[:, 0] * x[:, 1] * x[:, 2]
    y = base[:, None] + rng.normal(0, 1e-4, (32, 1)) + rng.normal(0, 1e-4, (1, 4))  # seeds shift
    out = factorial.analyse(y, levels, names, words)
    eff = {e["name"]: e for e in out["effects"]}
    assert len(eff) == 21
    for i, n in enumerate(names):
        assert float(eff[n]["inference"]["t"]["mean"]) == pytest.approx(2 * mains[i], abs=1e-4)
        assert eff[n]["aliases"] == [" × ".join(m for m in names if m != n)]
    assert float(eff["bn × dropout"]["inference"]["t"]["mean"]) == pytest.approx(0.003, abs=1e-4)
    assert eff["bn × dropout"]["inference"]["decision"] == "differs"
    # The three-way term shows in its alias column and nowhere in the two-way model.
    hi = {h["name"]: h for h in out["higher_order"]}
    assert len(hi) == 10
    assert float(hi["init × bn × dropout"]["inference"]["t"]["mean"]) == pytest.approx(0.002,
                                                                                      abs=1e-4)
    assert hi["init × bn × dropout"]["aliases"] == ["l2 × smoothing × augment"]
    # The chapter's order: rows 1 -> 4 -> 6 -> 8 measured, each step adding two techniques.
    order = out["chapter_order"]
    assert [s["added"] for s in order["measured_steps"]] == [
        ["init", "bn"], ["dropout", "l2"], ["smoothing", "augment"]]
    assert [(s["from_row"], s["to_row"]) for s in order["measured_steps"]] == [
        ("small_init", "he_bn"), ("he_bn", "l2"), ("l2", "augment")]
    cell = {tuple(r): i for i, r in enumerate(levels.tolist())}
    np.testing.assert_allclose(order["measured_steps"][0]["per_seed"],
                               y[cell[(1, 1, 0, 0, 0, 0)]] - y[cell[(0,) * 6]], atol=1e-15)
    assert [c["in_design"] for c in order["chain"]] == [True, False] * 3 + [True]
    # Dropout comes after bn in the chapter's order, so it is credited half their synergy more
    # (the 0/1 synergy c = 4 b = 0.006, half of it 0.003) than its order-free share.
    credit = {m["factor"]: m for m in order["model_credits"]}
    assert float(credit["dropout"]["minus_shapley"]["inference"]["t"]["mean"]) == pytest.approx(
        0.003, abs=1e-4)
    assert float(credit["bn"]["minus_shapley"]["inference"]["t"]["mean"]) == pytest.approx(
        -0.003, abs=1e-4)
    tot = out["shapley_total"]
    np.testing.assert_allclose(tot["sum_phi"], tot["model_all_minus_none"], atol=1e-14)
    # all-on minus all-off also carries the three-way term's 2 b = 0.002, which the model lacks.
    assert np.mean(tot["measured_all_minus_none"]) - np.mean(tot["model_all_minus_none"]) == (
        pytest.approx(0.002, abs=2e-4))


def test_the_ablation_contributions_are_read_next_to_phi(tmp_path):
    chain = ["small_init", "xavier", "he", "he_bn", "dropout", "l2", "label_smoothing", "augment"]
    acc = dict(zip(chain, (0.90, 0.95, 0.96, 0.97, 0.975, 0.976, 0.977, 0.98)))
    exps = {n: {"runs": [{"seed": s, "test_accuracy": a + 0.001 * s} for s in (0, 1, 2)]}
            for n, a in acc.items()}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"experiments": exps, "study": {"dataset": {"name": "mnist"}},
                                "config": {"train": {"num_epochs": 50}}}))
    fake_phi = {"t": {"mean": 0.0, "low": 0.0, "high": 0.0}}
    results = {"shapley": [{"factor": n, "inference": fake_phi} for n in factors.NAMES]}
    out = factorial.compare_ablation(str(path), results, list(factors.NAMES))
    rows = {r["factor"]: r for r in out["rows"]}
    # init spans rows 2 and 3 (Xavier, then He): he minus small_init.
    assert (rows["init"]["row"], rows["init"]["parent"]) == ("he", "small_init")
    assert rows["init"]["comparison"]["mean"] == pytest.approx(0.06)
    assert rows["augment"]["comparison"]["mean"] == pytest.approx(0.003)
    assert out["num_epochs"] == 50


def test_bad_study_fields_are_refused_in_one_line(tmp_path):
    cfg = tiny_config(factors_="bn,dropout,l2,smoothing", design="half")
    with pytest.raises(ValueError, match=r"design: 'half' over 4 factors: the fraction "
                                         r"\(resolution 4\) aliases bn × dropout with "
                                         r"l2 × smoothing"):
        parse(cfg)
    cfg = tiny_config(factors_="bn,dropuot")
    with pytest.raises(ValueError, match=r"factors: unknown \['dropuot'\]; expected"):
        parse(cfg)
    cfg = tiny_config(factors_="bn")
    with pytest.raises(ValueError, match="at least two factors"):
        parse(cfg)
    cfg = tiny_config(design="quarter")
    with pytest.raises(ValueError, match=r"design: unknown 'quarter'; expected one of"):
        parse(cfg)
    cfg = tiny_config()
    cfg.ablation_results = str(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="ablation_results: .*nope.json' is not a file"):
        parse(cfg)
    # From the command line: one line, exit status 2, no workdir left behind.
    workdir = tmp_path / "w"
    out = subprocess.run([sys.executable, "-m", "experiments.factorial",
                          "--config=experiments/configs/factorial_digits.py",
                          f"--workdir={workdir}", "--config.factors=init,bn,l2",
                          "--config.design=half"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: design: 'half' over 3 factors" in out.stderr
    assert not workdir.exists()


def test_half_fractions_have_an_even_number_of_techniques_on():
    levels, _ = ff.half_fraction(6)
    table = factors.cell_table(levels, factors.NAMES)
    assert len(table) == 32
    for name in table:
        on = [] if name == "none" else name.split("+")
        assert len(on) % 2 == 0
    assert "init+bn+dropout+l2+smoothing+augment" in table
    assert sum(1 for a, b in itertools.combinations(table, 2) if a == b) == 0
