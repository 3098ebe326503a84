"""The SAM x dropout study (experiments/sam_dropout, ★R2): end to end on a tiny generated dataset
(a small CNN, the four rows, 2 seeds, 2 epochs) it writes its files and each run's sharpness, its
rows start from the same weights per seed, its comparisons are scipy's paired t on the stored
per-seed values (Holm within a family), its verdicts follow the rules in `rows`, a rerun trains
nothing, and the audit check reads the same verdict."""

import json

import jax
import numpy as np
import pytest

from experiments import cli
from experiments.audit.core import Context
from experiments.configs import sam_dropout as study_config
from experiments.sam_dropout import audit, rows
from experiments.sam_dropout import main as study_main
from ml_practical import config, experiment, loop
from tests.stats_checks import check_holm, check_paired_comparison
from tests.template_data import template_dataset

SEEDS = 2


def tiny_config(**study):
    raw = study_config.get_config()
    raw.data.source = "arrays"
    raw.data.limit_train = 0
    raw.data.chunk_steps = 2
    raw.model.widths = (4, 8)
    raw.seeds = SEEDS
    raw.sharpness_examples = 64
    raw.lanczos_steps = 4
    raw.train.num_epochs = 2
    raw.train.batch_size = 64
    raw.train.eval_batch_size = 128
    raw.train.progress = "never"
    for k, v in study.items():
        section, _, name = k.rpartition(".")
        (raw[section] if section else raw)[name] = v
    return config.parse(raw, study=study_main.SamDropoutStudy)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("studies") / audit.STUDY_DIR
    dataset = template_dataset(n_train=128, n_val=32, n_test=64)
    start = cli.Start(cfg=tiny_config(), workdir=workdir, command="test")
    results = study_main.execute(start, dataset=dataset, quiet=True)
    return {"workdir": workdir, "results": results, "dataset": dataset,
            "on_disk": json.loads((workdir / "results.json").read_text())}


# --------------------------------------------------------------------------- rules, constructed

UP, DOWN, ZERO = (0.01, 0.03), (-0.03, -0.01), (-0.01, 0.01)


@pytest.mark.parametrize("no_drop, drop, verdict", [
    (DOWN, DOWN, "confirmed"), (DOWN, ZERO, "partly"), (ZERO, ZERO, "inconclusive"),
    (UP, DOWN, "refuted"), (DOWN, UP, "refuted")])
def test_flatter_verdict(no_drop, drop, verdict):
    assert rows.flatter_verdict(no_drop, drop) == verdict


@pytest.mark.parametrize("d_sgd, inter, sam_vs, verdict", [
    (UP, DOWN, (-0.02, -0.01), "confirmed"),        # dropout helps less under SAM
    (UP, ZERO, (-0.004, 0.01), "confirmed"),        # SAM alone non-inferior within 0.5 pp
    (UP, ZERO, (-0.03, -0.006), "refuted"),         # SAM alone clearly worse
    (UP, ZERO, (-0.01, 0.0), "inconclusive"),       # straddles the margin
    (ZERO, DOWN, (0.0, 0.01), "inconclusive"),      # dropout does not help under SGD
    ((-np.inf, np.inf), DOWN, UP, "inconclusive")])
def test_need_verdict(d_sgd, inter, sam_vs, verdict):
    assert rows.need_verdict(d_sgd, inter, sam_vs) == verdict


def test_interaction_is_a_per_seed_difference_in_differences():
    v = {"sgd": {0: 0.90, 1: 0.91}, "sgd_dropout": {0: 0.93, 1: 0.92},
         "sam": {0: 0.92, 1: 0.94}, "sam_dropout": {0: 0.925, 1: 0.935}}
    seeds, d = rows.difference(v, rows.COMPARISONS["acc: interaction"][2])
    assert seeds == [0, 1]
    np.testing.assert_allclose(d, [(0.925 - 0.92) - (0.93 - 0.90), (0.935 - 0.94) - (0.92 - 0.91)])


def test_bad_study_fields_are_refused_in_one_line():
    for kw, match in (({"seeds": 1}, "seeds"), ({"sam_rho": 0.0}, "sam_rho"),
                      ({"drop_rate": 1.0}, "drop_rate"), ({"lanczos_steps": 1}, "lanczos_steps")):
        with pytest.raises(config.ConfigError, match=match) as e:
            tiny_config(**kw)
        assert "\n" not in str(e.value)
    cfg = tiny_config(**{"optim.sam_rho": 0.1})
    with pytest.raises(config.ConfigError, match="optim.sam_rho: 0.1") as e:
        study_main.run_study(cfg, "/nonexistent")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="row: 'adam'"):
        rows.overrides("adam", 0.05, 0.5)


def test_rows_share_the_init_and_differ_only_in_sam_and_dropout():
    cfg = tiny_config()
    ds = template_dataset(n_train=128, n_val=32, n_test=64)
    for seed in (0, 1):
        cfgs = {r: study_main.row_config(cfg, r, seed) for r in rows.ROWS}
        params = {r: experiment.build_experiment(c, dataset=ds).init_state().params
                  for r, c in cfgs.items()}
        for r in rows.ROWS:
            jax.tree.map(np.testing.assert_array_equal, params[r], params["sgd"])
            assert cfgs[r].seed == seed
            assert (cfgs[r].optim.sam_rho > 0) == rows.ROWS[r]["sam"]
            assert (cfgs[r].model.drop_rate > 0) == rows.ROWS[r]["dropout"]
            assert cfgs[r].optim.l2 == cfgs["sgd"].optim.l2 and cfgs[r].data == cfgs["sgd"].data


# --------------------------------------------------------------------------- end to end


def test_files(study):
    workdir = study["workdir"]
    for name in ("results.json", "results.md", "analysis.md", "accuracy.png", "sharpness.png"):
        assert (workdir / name).exists(), name
    for row in rows.ROWS:
        for s in range(SEEDS):
            run = study_main.run_dir(workdir, row, s)
            assert json.loads((run / "config.json").read_text())["seed"] == s
            sharp = json.loads((run / study_main.SHARPNESS_FILE).read_text())
            rec = study["on_disk"]["runs"][row][s]
            assert rec["lambda_power"] == sharp["power"]["eigenvalue"]
            assert rec["lambda_lanczos"] == sharp["lanczos"]["max"]
            assert rec["epsilon_sharpness"] == sharp["epsilon"]["sharpness"]
            assert sharp["num_examples"] == 64


def test_comparisons_are_scipys_paired_t(study):
    res = study["on_disk"]
    values = {m: {row: {r["seed"]: r[m] for r in runs} for row, runs in res["runs"].items()}
              for m in ("test_accuracy", "lambda_power")}
    comps = res["comparisons"]
    assert list(comps) == list(rows.COMPARISONS)
    for name, c in comps.items():
        terms = rows.COMPARISONS[name][2]
        v = values[c["metric"]]
        if len(terms) == 2:
            a = [v[terms[0][1]][s] for s in c["seeds"]]
            b = [v[terms[1][1]][s] for s in c["seeds"]]
        else:  # the interaction: (sam_dropout - sam) against (sgd_dropout - sgd)
            a = [v["sam_dropout"][s] - v["sam"][s] for s in c["seeds"]]
            b = [v["sgd_dropout"][s] - v["sgd"][s] for s in c["seeds"]]
        check_paired_comparison(c, a, b)
    for family in ("sharpness", "accuracy"):
        check_holm([c for c in comps.values() if c["family"] == family])


def test_verdicts_follow_the_rules_and_the_audit_reads_them(study):
    res = study["on_disk"]
    ci = lambda n: (res["comparisons"][n]["inference"]["t"]["low"],
                    res["comparisons"][n]["inference"]["t"]["high"])
    flat = rows.flatter_verdict(ci("lambda: sam - sgd"), ci("lambda: sam_dropout - sgd_dropout"))
    need = rows.need_verdict(ci("acc: dropout under sgd"), ci("acc: interaction"),
                             ci("acc: sam - sgd_dropout"))
    assert res["claims"]["EXP-07a"]["verdict"] == flat
    assert res["claims"]["EXP-07b"]["verdict"] == need
    finding = audit.check_EXP_07(Context(studies=study["workdir"].parent))
    assert finding.verdict == flat
    assert finding.ci == pytest.approx(ci("lambda: sam - sgd"))
    assert f": {need}." in finding.note
    assert audit.check_EXP_07(Context(studies=study["workdir"].parent / "absent")).verdict == \
        "not run"


def test_the_audit_replaces_the_untestable_row():
    from experiments.audit import checks  # noqa: F401  (registers every check)
    from experiments.audit.core import REGISTRY

    check = REGISTRY.checks["EXP-07"]
    assert check.how == "study" and check.fn is audit.check_EXP_07


def test_a_rerun_trains_nothing(study, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(loop, "fit", refuse)
    start = cli.Start(cfg=tiny_config(), workdir=study["workdir"], command="test")
    again = study_main.execute(start, dataset=study["dataset"], quiet=True)
    assert again["comparisons"] == study["results"]["comparisons"]


@pytest.mark.parametrize("verdicts, combined", [
    (["confirmed", "confirmed"], "confirmed"), (["refuted", "refuted"], "refuted"),
    (["confirmed", "refuted"], "partly"), (["partly", "inconclusive"], "partly"),
    (["confirmed", "inconclusive"], "partly"), (["refuted", "inconclusive"], "refuted"),
    (["inconclusive", "inconclusive"], "inconclusive"), (["confirmed"], "confirmed"), ([], "inconclusive")])
def test_combined_verdict(verdicts, combined):
    assert rows.combined_verdict(verdicts) == combined


def test_the_audit_combines_the_cnn_and_the_mlp_setups(study, tmp_path):
    # A second setup whose lambda_max comparison is flipped: the CNN's verdict and its mirror
    # combine by the rule (confirmed + refuted -> partly), and the note names both setups.
    import shutil

    studies = tmp_path / "studies"
    shutil.copytree(study["workdir"], studies / audit.STUDY_DIR)
    res = json.loads((study["workdir"] / "results.json").read_text())
    for name in ("lambda: sam - sgd", "lambda: sam_dropout - sgd_dropout"):
        t = res["comparisons"][name]["inference"]["t"]
        t["low"], t["high"], t["mean"] = -t["high"], -t["low"], -t["mean"]
    (studies / audit.MLP_STUDY_DIR).mkdir()
    (studies / audit.MLP_STUDY_DIR / "results.json").write_text(json.dumps(res))
    cnn = audit.setup_verdicts(study["on_disk"])[0]
    mlp = audit.setup_verdicts(res)[0]
    finding = audit.check_EXP_07(Context(studies=studies))
    assert finding.verdict == rows.combined_verdict([cnn, mlp])
    assert f"CNN {cnn} /" in finding.note and f"MLP {mlp} /" in finding.note
    assert "MLP:" in finding.measured and audit.MLP_STUDY_DIR in finding.artefact
