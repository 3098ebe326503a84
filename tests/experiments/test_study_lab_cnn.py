"""The lab on a CNN (experiments/lab_cnn): the ablation's rows on a CNN and an MLP built from the
same config, the per-family and cross-family statistics against scipy on the stored per-seed
values, the verdict rules on constructed inputs, the finished runs reused, the CIFAR-10 config on
a fake CIFAR binary written here in the canonical format, and a missing data_dir's one line."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments.ablation import main as ablation
from experiments.audit.core import VERDICTS, Context
from experiments.configs import lab_cnn, lab_cnn_cifar10, lab_cnn_full
from experiments.lab_cnn import audit
from experiments.lab_cnn import main as lab
from experiments.lab_cnn.rows import EXPERIMENTS, LabCnnStudy, chapter_steps, row_table
from ml_practical import config, loop
from ml_practical.analysis import inference
from tests.conftest import CallCounter
from tests.stats_checks import check_holm, check_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROWS = ("he", "he_bn", "dropout")
SEEDS = 3


def parse(raw):
    return config.parse(raw, study=LabCnnStudy)


def tiny_config(**study):
    """lab_cnn.py shrunk to seconds: the digits, 128 images, a one-conv CNN, 1 epoch, vmapped
    seeds on the device."""
    cfg = lab_cnn.get_config()
    cfg.data.source = "digits"
    cfg.data.val_size = 287
    cfg.data.limit_train = 128
    cfg.data.placement = "device"
    cfg.train.unroll = False
    cfg.train.num_epochs = 1
    cfg.train.eval_batch_size = 500
    cfg.train.progress = "never"
    cfg.model.widths = (4,)
    cfg.mlp_widths = (16,)
    cfg.seeds = SEEDS
    cfg.only = ",".join(ROWS)
    cfg.seed_mode = "vmap"
    for key, value in study.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lab_cnn")
    results = lab.run_study(parse(tiny_config()), workdir)
    return {"workdir": workdir, "results": results}


def _summaries(workdir, family, name):
    return [json.loads((ablation.run_dir(workdir / family, name, s) / "summary.json").read_text())
            for s in range(SEEDS)]


def _acc(workdir, family, name):
    return np.array([s["test/accuracy"] for s in _summaries(workdir, family, name)])


def test_both_families_run_every_row_on_the_same_data(study):
    workdir, results = study["workdir"], study["results"]
    assert results["study"]["families"] == ["cnn", "mlp"]
    assert results["study"]["seeds"] == [0, 1, 2] and results["study"]["complete"]
    for name in ("results.json", "results.md", "analysis.md"):
        assert (workdir / name).read_text().strip()
    assert (workdir / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = {}
    for family in ("cnn", "mlp"):
        assert list(results["families"][family]["experiments"]) == list(ROWS)
        for png in ("curves.png", "contributions.png"):
            assert (workdir / family / png).exists()
        for name in ROWS:
            for seed in range(SEEDS):
                resolved[family, name, seed] = json.loads(
                    (ablation.run_dir(workdir / family, name, seed) / "config.json").read_text())
    cnn, mlp = resolved["cnn", "he_bn", 1], resolved["mlp", "he_bn", 1]
    assert (cnn["model"]["name"], mlp["model"]["name"]) == ("cnn", "mlp")
    assert mlp["model"]["widths"] == [16] and cnn["model"]["widths"] == [4]
    for key in ("norm", "norm_position", "hidden_init", "output_init", "drop_rate",
                "bn_backward"):  # the rows' fields and the CNN's norm settings reach the MLP
        assert mlp["model"][key] == cnn["model"][key], key
    assert cnn["model"]["norm"] == "batch" and resolved["mlp", "he", 0]["model"]["norm"] == "none"
    assert resolved["mlp", "dropout", 2]["model"]["drop_rate"] == 0.2
    # Same data, optimizer, epochs, batch, stopping rule and seed; only the MLP's placement differs.
    for section in ("optim", "early_stopping"):
        assert mlp[section] == cnn[section]
    assert {k: v for k, v in mlp["data"].items() if k != "placement"} == \
        {k: v for k, v in cnn["data"].items() if k != "placement"}
    assert {k: v for k, v in mlp["train"].items() if k != "unroll"} == \
        {k: v for k, v in cnn["train"].items() if k != "unroll"}
    assert mlp["seed"] == cnn["seed"] == 1


def test_row_statistics_are_the_stored_runs(study):
    workdir, results = study["workdir"], study["results"]
    md = (workdir / "results.md").read_text()
    for family in ("cnn", "mlp"):
        for name in ROWS:
            acc = _acc(workdir, family, name)
            stats_ = results["families"][family]["experiments"][name]["test_accuracy"]
            assert stats_["values"] == pytest.approx(acc.tolist(), abs=0)
            assert stats_["mean"] == pytest.approx(acc.mean(), abs=1e-12)
            assert stats_["std"] == pytest.approx(acc.std(ddof=1), abs=1e-12)
            if np.ptp(acc) > 0:  # the row's 95 % interval: scipy's t interval of the mean
                lo, hi = stats.t.interval(0.95, SEEDS - 1, loc=acc.mean(), scale=stats.sem(acc))
                assert f"{100 * acc.mean():.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" in md


def test_steps_and_interactions_against_scipy(study):
    workdir, results = study["workdir"], study["results"]
    for family in ("cnn", "mlp"):
        comps = results["families"][family]["contributions"]
        assert [(c["experiment"], c["parent"]) for c in comps] == [("he_bn", "he"),
                                                                   ("dropout", "he_bn")]
        for c in comps:
            a, b = _acc(workdir, family, c["experiment"]), _acc(workdir, family, c["parent"])
            check_p(c["test_accuracy"]["inference"]["t"]["p"], a, b)
        check_holm([c["test_accuracy"] for c in comps])
    inter = results["interactions"]
    assert [i["experiment"] for i in inter] == ["he_bn", "dropout"]
    for i in inter:
        step = {f: _acc(workdir, f, i["experiment"]) - _acc(workdir, f, i["parent"])
                for f in ("cnn", "mlp")}
        assert i["seeds"] == [0, 1, 2]
        np.testing.assert_allclose(i["differences"], step["cnn"] - step["mlp"], atol=1e-12)
        check_p(i["inference"]["t"]["p"], step["cnn"], step["mlp"])
    check_holm(inter)
    margin = results["study"]["margin"]
    assert margin == pytest.approx(0.005)
    for c in results["conclusions"]:  # each verdict is decide()'s on the stored comparison
        for family in ("cnn", "mlp"):
            inf = next(x for x in results["families"][family]["contributions"]
                       if x["experiment"] == c["experiment"])["test_accuracy"]["inference"]
            assert c[family]["verdict"] == lab.verdict(inf, margin)
        assert c["verdict_change"] == lab.change_of(c["mlp"]["verdict"], c["cnn"]["verdict"])


def _comp(diffs):
    return inference.compare_family({"x": diffs})["x"]


def test_verdict_rules_on_constructed_inputs():
    helps, hurts = _comp([0.02, 0.021, 0.019]), _comp([-0.02, -0.021, -0.019])
    flat, noisy = _comp([0.001, -0.001, 0.0005]), _comp([0.03, -0.02, 0.01])
    assert [lab.verdict(c, 0.005) for c in (helps, hurts, flat, noisy)] == [
        "helps", "hurts", "equivalent", "undecided"]
    assert lab.verdict(flat, None) == "undecided"  # no margin: never "equivalent"
    assert lab.change_of("helps", "hurts") == "reversed"
    assert lab.change_of("helps", "undecided") == "decided on one only"
    assert lab.change_of("helps", "equivalent") == "changes"
    assert lab.change_of("equivalent", "equivalent") == "same"
    inter = [{"experiment": "he_bn", "inference": helps, "decision": "differs"},
             {"experiment": "augment", "inference": hurts, "decision": "differs"},
             {"experiment": "dropout", "inference": flat, "decision": "equivalent"}]
    got = {e["row"]: e["verdict"] for e in lab.expectations(inter)}
    # BN / augmentation expected "+" (CNN gains more), dropout "-" (CNN gains less)
    assert got == {"he_bn": "confirmed", "augment": "refuted", "dropout": "refuted"}
    inter[2] = {"experiment": "dropout", "inference": noisy, "decision": "undecided"}
    assert {e["row"]: e["verdict"] for e in lab.expectations(inter)}["dropout"] == "inconclusive"
    assert lab.expectations(inter[:1])[1]["verdict"] == "not run"


def test_chapter_claims_rule():
    """Confirmed when the step helps, refuted when it hurts or is equivalent to 0 while the
    chapter's step exceeds the margin, else inconclusive."""
    steps = chapter_steps()
    assert steps["xavier"] == pytest.approx(0.007) and steps["dropout"] == pytest.approx(0.001)
    assert "augment" not in steps and "small_init" not in steps
    flat = [0.001, -0.001, 0.0005]
    fam = {"mlp": {"contributions": [
        {"experiment": name, "parent": EXPERIMENTS[name].parent, "change": "",
         "test_accuracy": {"inference": _comp(d)}}
        for name, d in (("xavier", flat), ("dropout", flat), ("he", [-0.02, -0.021, -0.019]),
                        ("he_bn", [0.02, 0.021, 0.019]))]}}
    got = {c["experiment"]: c["verdict"] for c in lab.chapter_claims(fam, 0.005, EXPERIMENTS)}
    assert got == {"xavier": "refuted", "dropout": "inconclusive", "he": "refuted",
                   "he_bn": "confirmed"}


def test_finished_runs_are_reused(study, monkeypatch):
    fit, fit_seeds = CallCounter(loop.fit), CallCounter(loop.fit_seeds)
    monkeypatch.setattr(loop, "fit", fit)
    monkeypatch.setattr(loop, "fit_seeds", fit_seeds)
    again = lab.run_study(parse(tiny_config()), study["workdir"])
    assert fit.calls == [] and fit_seeds.calls == []
    for key in ("families", "conclusions", "interactions", "expectations", "chapter"):
        a = json.loads(json.dumps(again[key]))
        b = json.loads(json.dumps(study["results"][key]))
        for fam in (a, b) if key == "families" else ():
            for r in fam.values():
                r["study"].pop("wall_time_s")
        assert a == b, key


def test_audit_states_the_cnn_steps(study, tmp_path):
    ctx = Context(studies=tmp_path)
    assert audit.check_lab_cnn(ctx).verdict == "not run"
    (tmp_path / "lab_cnn").mkdir()
    (tmp_path / "lab_cnn" / "results.json").write_text(
        (study["workdir"] / "results.json").read_text())
    finding = audit.check_lab_cnn(ctx)
    assert finding.verdict in VERDICTS and finding.verdict != "not run"
    claims = [c for c in study["results"]["chapter"] if c["family"] == "cnn"]
    assert [c["experiment"] for c in claims] == ["he_bn", "dropout"]
    assert finding.ci == (pytest.approx(claims[0]["low"]), pytest.approx(claims[0]["high"]))
    outcomes = [audit._OUTCOME[c["verdict"]] for c in claims]
    assert finding.verdict == audit._overall(outcomes)
    assert "he_bn: Δ" in finding.measured and "dropout: Δ" in finding.measured
    assert audit._overall(["+", "+"]) == "confirmed" and audit._overall(["+", "0"]) == "partly"
    assert audit._overall(["-", "0"]) == "refuted" and audit._overall(["0"]) == "inconclusive"


def test_configs_parse_and_bad_values_name_the_field():
    for module in (lab_cnn, lab_cnn_full, lab_cnn_cifar10):
        cfg = parse(module.get_config())
        assert cfg.model_name == "cnn" and cfg.study.families == "cnn,mlp"
        assert cfg.study.seeds >= 3 and cfg.optim.name == "adam"
        assert cfg.early_stopping.monitor == "val/accuracy"
        assert lab.family_config(cfg, "mlp").model_name == "mlp"
    cifar = parse(lab_cnn_cifar10.get_config())
    assert (cifar.data.source, cifar.data.normalize, cifar.study.augment) == (
        "cifar10", "per_channel", "flip_crop")
    for field, value, words in (("families", "cnn,rnn", "families"),
                                ("augment", "twirl", "augment"),
                                ("margin_pp", -1.0, "margin_pp")):
        raw = lab_cnn.get_config()
        raw[field] = value
        with pytest.raises(config.ConfigError, match=words):
            parse(raw)
    raw = lab_cnn.get_config()
    with raw.unlocked():
        raw.model = config.defaults("mlp").model
    with pytest.raises(config.ConfigError, match="model.name"):
        lab.run_study(parse(raw), "/nonexistent/never-written")


def _write_cifar10(directory: pathlib.Path, per_file: int, n_test: int, seed: int = 0):
    """The binary version's files, record by record: <1 byte label><R plane><G plane><B plane>."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)

    def records(n):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        planes = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # channel-major, row-major
        return np.concatenate([labels[:, None], planes], axis=1).tobytes()

    for i in range(1, 6):
        (directory / f"data_batch_{i}.bin").write_bytes(records(per_file))
    (directory / "test_batch.bin").write_bytes(records(n_test))


def test_cifar10_config_builds_its_rows_on_a_fake_binary(tmp_path):
    data_dir = tmp_path / "cifar-10-batches-bin"
    _write_cifar10(data_dir, per_file=4, n_test=10)
    raw = lab_cnn_cifar10.get_config()
    raw.data.data_dir = str(tmp_path)  # the parent of the official directory, as documented
    raw.data.cifar_strict = False
    raw.data.val_size = 4
    raw.model.widths = (4,)
    raw.mlp_widths = (8,)
    raw.train.num_epochs = 1
    raw.train.batch_size = 8         # 16 training images: 2 steps
    raw.train.progress = "never"
    raw.seeds = 1
    cfg = parse(raw)
    # Every row of both families builds on CIFAR (row 8 with CIFAR's augmentation) ...
    table = row_table(cfg.study.augment, source=cfg.data.source)
    for family in ("cnn", "mlp"):
        fcfg = lab.family_config(cfg, family)
        for name in ("small_init", "xavier", "he", "he_bn", "dropout", "l2", "label_smoothing",
                     "augment"):
            run_cfg = ablation.experiment_config(fcfg, name, 0, steps_per_epoch=2, table=table)
            assert run_cfg.model_name == family and run_cfg.data.source == "cifar10"
        assert run_cfg.train.augment == "flip_crop"
    assert all(r.expected_accuracy is None and r.goal_accuracy is None for r in table.values())
    # ... and row 8 trains its 2 steps on the CNN from the fake binary files.
    cfg = parse(dict(raw.to_dict(), only="augment", families="cnn"))
    results = lab.run_study(cfg, tmp_path / "work")
    assert results["study"]["dataset"]["image_shape"] == [32, 32, 3]
    assert results["study"]["dataset"]["num_train"] == 16
    assert list(results["families"]["cnn"]["experiments"]) == ["augment"]
    run = ablation.run_dir(tmp_path / "work" / "cnn", "augment", 0)
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["train"]["augment"] == "flip_crop"
    assert resolved["data"]["normalize"] == "per_channel"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and 0.0 <= summary["test/accuracy"] <= 1.0
    assert row_table("") == EXPERIMENTS


def test_missing_cifar_data_dir_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ML_PRACTICAL_DATA_DIR"}
    workdir = tmp_path / "work"
    out = subprocess.run([sys.executable, "-m", "experiments.lab_cnn",
                          "--config=experiments/configs/lab_cnn_cifar10.py",
                          f"--workdir={workdir}", "--compilation_cache="],
                         check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("error: data.data_dir is empty") and "ML_PRACTICAL_DATA_DIR" in first
    assert "Traceback" not in out.stderr
    assert not workdir.exists()  # nothing left behind


def test_family_config_keeps_the_cnn_untouched():
    cfg = parse(lab_cnn.get_config())
    assert lab.family_config(cfg, "cnn") is cfg
    mlp = lab.family_config(cfg, "mlp")
    assert mlp.model.widths == (512, 256)
    assert (mlp.train.unroll, mlp.data.placement) == (False, "auto")
    assert dataclasses.replace(mlp.train, unroll=True) == cfg.train
    assert mlp.study == cfg.study
