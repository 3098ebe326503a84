"""The config: parsed and checked once into frozen sections; unknown fields and bad values refused."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from experiments.configs import mnist_mlp
from ml_practical import config, early_stopping
from tests.conftest import tiny_config


def _raw(**changes):
    """The recipe config as a plain dict (no ConfigDict type checks) with dotted fields changed."""
    cfg = mnist_mlp.get_config().to_dict()
    for key, value in changes.items():
        *sections, field = key.split(".")
        node = cfg
        for s in sections:
            node = node[s]
        node[field] = value
    return cfg


def test_parse_gives_frozen_typed_sections():
    cfg = config.parse(mnist_mlp.get_config())
    assert isinstance(cfg.data, config.DataConfig) and isinstance(cfg.optim, config.OptimConfig)
    assert isinstance(cfg.early_stopping, early_stopping.EarlyStopping)
    assert cfg.model_name == "mlp" and cfg.model.widths == (512, 256)
    assert cfg.optim.learning_rate == 1e-3 and cfg.train.label_smoothing == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.learning_rate = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = None


@pytest.mark.parametrize("key,value,needle", [
    # A misspelt field in a config file is refused with the close match (a locked ConfigDict
    # only catches misspellings on the command line).
    ("train.lable_smoothing", 0.0, "train.lable_smoothing: unknown field; did you mean "
                                   "'label_smoothing'"),
    ("checkpoint.keep_lastest", 5, "checkpoint.keep_lastest: unknown field; did you mean "
                                   "'keep_latest'"),
    ("model.widhts", (4,), "model.widhts: unknown field; did you mean 'widths'"),
    ("early_stopping.patiense", 3, "did you mean 'patience'"),
    ("optim.weight_decy", 1e-4, "did you mean 'weight_decay'"),
    ("data.placment", "host", "did you mean 'placement'"),
    ("seeds", 3, "seeds: unknown field"),
])
def test_unknown_fields_are_refused_with_the_close_match(key, value, needle):
    with pytest.raises(config.ConfigError, match=needle.replace("(", r"\(")):
        config.parse(_raw(**{key: value}))


@pytest.mark.parametrize("key,value,needle", [
    ("model.drop_rate", 1.0, r"model.drop_rate: 1.0 out of range; expected a number >= 0 and < 1"),
    ("model.hidden_init", "glorot", r"model.hidden_init: initializer: unknown 'glorot'"),
    ("model.norm", "weight", r"model.norm: unknown 'weight'; expected one of"),
    ("early_stopping.patience", -1, r"early_stopping.patience: -1 out of range"),
    ("early_stopping.mode", "maximum", r"early_stopping.mode: unknown 'maximum'"),
    ("early_stopping.monitor", "", r"early_stopping.monitor"),
    ("checkpoint.keep_latest", 0, r"checkpoint.keep_latest: 0 out of range; expected an integer >= 1"),
    ("seed", -1, r"seed: -1 out of range; expected an integer >= 0"),
    ("optim.learning_rate", "fast", r"optim.learning_rate: 'fast' is not a number"),
    ("optim.name", "rmsprop", r"optim.name: unknown 'rmsprop'; expected one of \['adam', 'adamw', "
                              r"'momentum', 'sgd'\]"),
    ("train.num_epochs", True, r"train.num_epochs: True; expected an integer >= 1"),
    ("train.augment", "mixup", r"train.augment: unknown 'mixup'"),
    ("train.batching", "full", r"train.steps_per_epoch"),
    ("data.val_size", 1.5, r"data.val_size"),
    ("data.source", "csv", r"data.source: unknown 'csv'"),
])
def test_bad_values_name_the_field_and_what_is_allowed(key, value, needle):
    with pytest.raises(config.ConfigError, match=needle):
        config.parse(_raw(**{key: value}))


@pytest.mark.parametrize("key", ["optim.learning_rate", "optim.l2", "optim.weight_decay",
                                 "optim.eps", "optim.clip_value", "optim.l1", "model.norm_epsilon"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_numeric_fields_refuse_inf_as_they_refuse_nan(key, value):
    with pytest.raises(config.ConfigError, match=rf"{key}: {value!r}"):
        config.parse(_raw(**{key: value}))


def test_norm_epsilon_zero_is_allowed():
    assert config.parse(_raw(**{"model.norm_epsilon": 0.0})).model.norm_epsilon == 0.0


def test_library_transforms_refuse_non_finite_coefficients():
    from ml_practical import optim
    for make in (lambda v: optim.clip_transform("global_norm", v), optim.add_l1_subgradient,
                 lambda v: optim.proximal_l1(v, 0.1)):
        for v in (float("inf"), float("nan"), -1.0):
            with pytest.raises(ValueError, match="expected a finite number"):
                make(v)
    optim.add_l1_subgradient(0.0)  # zero is a valid coefficient (no penalty)


def test_missing_required_fields_are_named():
    raw = mnist_mlp.get_config().to_dict()
    del raw["optim"]["learning_rate"]
    with pytest.raises(config.ConfigError, match="optim.learning_rate: missing; it is required"):
        config.parse(raw)
    raw = mnist_mlp.get_config().to_dict()
    del raw["early_stopping"]["mode"]
    with pytest.raises(config.ConfigError, match="early_stopping.mode: missing"):
        config.parse(raw)


def test_defaults_live_in_the_sections():
    # A config that gives only what it must gets every other value from the section classes.
    cfg = config.parse({"optim": {"name": "sgd", "learning_rate": 0.1},
                        "early_stopping": {"monitor": "val/loss", "mode": "min", "patience": 3}})
    assert cfg.data == config.DataConfig()
    assert cfg.train == config.TrainConfig()
    assert cfg.checkpoint == config.CheckpointConfig()
    assert cfg.model == config.parse({"optim": {"name": "sgd", "learning_rate": 0.1},
                                      "early_stopping": {"monitor": "val/loss", "mode": "min",
                                                         "patience": 3}}).model
    assert cfg.optim.momentum == config.OptimConfig(name="sgd", learning_rate=0.1).momentum


def test_values_are_normalized_to_their_types():
    cfg = config.parse(_raw(**{"optim.learning_rate": 1, "model.widths": [32, 16]}))
    assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)
    assert cfg.model.widths == (32, 16)


def test_to_dict_round_trips_through_json():
    cfg = config.parse(tiny_config())
    again = config.parse(json.loads(json.dumps(config.to_dict(cfg))))
    assert again == cfg
    assert config.to_dict(cfg)["model"]["name"] == "mlp"


def test_override_checks_again_and_names_the_source():
    cfg = config.parse(tiny_config())
    new = config.override(cfg, {"model.norm": "layer", "seed": 4})
    assert new.model.norm == "layer" and new.seed == 4 and cfg.model.norm == "batch"
    with pytest.raises(config.ConfigError, match="row 'x': model.nrom: unknown field; did you "
                                                 "mean 'norm'"):
        config.override(cfg, {"model.nrom": "layer"}, what="row 'x'")
    with pytest.raises(config.ConfigError, match="row 'x': .*model.drop_rate"):
        config.override(cfg, {"model.drop_rate": 2.0}, what="row 'x'")
    with pytest.raises(config.ConfigError, match="train.num_epochs.x: train.num_epochs is not a "
                                                 "section"):
        config.override(cfg, {"train.num_epochs.x": 1})


def test_study_fields_are_typed_too():
    @dataclasses.dataclass(frozen=True)
    class Study(config.Section):
        section = ""
        seeds: int = config.field(3, ge=1)

    raw = tiny_config()
    with raw.unlocked():
        raw.seeds = 5
    assert config.parse(raw, study=Study).study.seeds == 5
    with raw.unlocked():
        raw.seeds = 0
    with pytest.raises(config.ConfigError, match="seeds: 0 out of range"):
        config.parse(raw, study=Study)


# ------------------------------------------------------------------------------ from the command line


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def repo_root():
    import pathlib
    return pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,needle", [
    ("--config.model.drop_rate=1.0", "model.drop_rate: 1.0 out of range"),
    ("--config.checkpoint.keep_latest=0", "checkpoint.keep_latest: 0 out of range"),
    ("--config.model.hidden_init=glorot", "model.hidden_init"),
])
def test_a_refused_command_line_leaves_nothing_in_the_workdir(tmp_path, repo_root, override,
                                                              needle):
    workdir = tmp_path / "run"
    out = _cli(["--config=experiments/configs/digits_mlp.py", f"--workdir={workdir}", override],
               repo_root)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


def test_a_misspelt_field_in_a_config_file_is_refused(tmp_path, repo_root):
    path = tmp_path / "my_config.py"
    path.write_text(textwrap.dedent("""
        from experiments.configs import digits_mlp

        def get_config():
            cfg = digits_mlp.get_config()
            cfg.train.lable_smoothing = 0.0   # misspelt: would silently train with 0.1
            return cfg
    """))
    workdir = tmp_path / "run"
    out = _cli([f"--config={path}", f"--workdir={workdir}"], repo_root)
    assert out.returncode == 2
    assert "train.lable_smoothing: unknown field; did you mean 'label_smoothing'" in out.stderr
    assert not workdir.exists()


def test_a_misspelt_override_is_refused_by_the_locked_config(tmp_path, repo_root):
    workdir = tmp_path / "run"
    out = _cli(["--config=experiments/configs/digits_mlp.py", f"--workdir={workdir}",
                "--config.train.lable_smoothing=0.0"], repo_root)
    assert out.returncode != 0 and "lable_smoothing" in out.stderr
    assert not workdir.exists()


def test_debug_shows_the_traceback(tmp_path, repo_root):
    out = _cli(["--config=experiments/configs/digits_mlp.py", f"--workdir={tmp_path / 'r'}",
                "--config.seed=-1", "--debug"], repo_root)
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr


def test_every_experiment_config_parses():
    import importlib
    import pathlib

    from experiments.ablation.rows import AblationStudy
    from experiments.clipping.main import ClippingStudy
    from experiments.lsuv.main import LSUVStudy
    from experiments.mc_dropout.main import MCStudy
    from experiments.signal_propagation.main import SignalStudy
    from experiments.sparsity.main import SparsityStudy
    from experiments.zero_init.main import ZeroInitStudy

    studies = {"ablation": AblationStudy, "ablation_digits": AblationStudy,
               "ablation_cnn_digits": AblationStudy,
               "clipping": ClippingStudy, "lsuv": LSUVStudy, "mc_dropout": MCStudy,
               "zero_init": ZeroInitStudy, "mnist_mlp": None, "digits_mlp": None,
               "mnist_cnn": None, "cifar10_resnet20": None, "cifar10_resnet56": None,
               "recipe_no_decay_norm_bias": None, "recipe_decay_dense_only": None}
    from experiments.factorial.main import FactorialStudy

    studies.update(dict.fromkeys(("factorial", "factorial_full", "factorial_digits"),
                                 FactorialStudy))
    from experiments.batch_norm_batch.main import BatchNormBatchStudy
    from experiments.bn_init.main import BNInitStudy
    from experiments.bn_lr.main import BNLrStudy
    from experiments.bn_placement.main import BNPlacementStudy
    from experiments.depth_residual.main import DepthResidualStudy
    from experiments.lab_cnn.rows import LabCnnStudy
    from experiments.sam_dropout.main import SamDropoutStudy
    from experiments.transformer_norm.main import TransformerNormStudy
    from experiments.ctr_case.main import CTRCaseStudy

    for study, names in ((BatchNormBatchStudy, ("batch_norm_batch", "batch_norm_batch_full")),
                         (BNInitStudy, ("bn_init", "bn_init_full")),
                         (BNLrStudy, ("bn_lr", "bn_lr_full")),
                         (BNPlacementStudy, ("bn_placement", "bn_placement_full")),
                         (DepthResidualStudy, ("depth_residual", "depth_residual_full")),
                         (LabCnnStudy, ("lab_cnn", "lab_cnn_full", "lab_cnn_cifar10", "toolkit_lab")),
                         (SamDropoutStudy, ("sam_dropout", "sam_dropout_full", "sam_dropout_mlp")),
                         (TransformerNormStudy, ("transformer_norm", "transformer_norm_full")),
                         (CTRCaseStudy, ("ctr_case", "ctr_case_full"))):
        studies.update(dict.fromkeys(names, study))
    from experiments.audit.main import AuditConfig

    pure = {"signal_propagation": SignalStudy, "sparsity": SparsityStudy, "audit": AuditConfig}
    names = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "experiments" / "configs")
                   .glob("*.py") if p.stem != "__init__")
    assert set(names) == set(studies) | set(pure)
    for name in names:
        raw = importlib.import_module(f"experiments.configs.{name}").get_config()
        if name in pure:
            assert isinstance(config.parse_study(raw, pure[name]), pure[name])
        else:
            assert isinstance(config.parse(raw, study=studies[name]), config.Config)
