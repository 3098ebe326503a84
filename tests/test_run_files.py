"""run_files: TensorBoard logging must not drag PyTorch into a JAX run."""

import subprocess
import sys
import textwrap


def test_tensorboard_writer_does_not_import_torch(tmp_path):
    # A stand-in `torch` on the path that records being imported: tensorboardX.writer imports
    # torch whenever one is installed (~200 MiB, ~0.9 s for the real one).
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "torch_was_imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nTensor = object\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / 'fake')!r})
        from ml_practical import run_files
        files = run_files.RunFiles({str(tmp_path / 'run')!r})
        files.append_metrics({{"epoch": 1, "train/loss": 0.5}})
        files.close()
        import os
        assert sys.modules.get("tensorboardX.writer") is not None
        before = os.path.exists({str(marker)!r})
        import torch  # the block is lifted: a later import by the user still works
        print(before, os.path.exists({str(marker)!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # Logging did not import torch; the user's explicit import afterwards did.
    assert out.stdout.split() == ["False", "True"]
    events = list((tmp_path / "run" / "tb").glob("events.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_tensorboard_writer_import_leaves_no_torch_module(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("Tensor = object\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / 'fake')!r})
        from ml_practical import run_files
        run_files._import_summary_writer()
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_field_added_after_the_run_is_no_difference_at_its_default():
    # A config.json written before optim.sam_rho and train.grad_accum_steps existed: the run
    # trained as their defaults do (no SAM, no accumulation), so resuming it at those defaults
    # is the same run; any other value of a new field is a difference, as is a changed old one.
    from ml_practical import run_files
    from tests.conftest import tiny

    new = run_files.to_jsonable(tiny())
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in new.items()}
    del old["optim"]["sam_rho"], old["train"]["grad_accum_steps"]
    assert run_files.config_diff(old, new) == []
    changed = run_files.to_jsonable(tiny(**{"optim.sam_rho": 0.05}))
    assert run_files.config_diff(old, changed) == ["  optim.sam_rho: '<absent>' -> 0.05"]
    lr = run_files.to_jsonable(tiny(**{"optim.learning_rate": 0.5}))
    assert [line.split(":")[0] for line in run_files.config_diff(old, lr)] == [
        "  optim.learning_rate"]
    # A field the new config dropped is still a difference (nothing to compare it with).
    extra = {**old, "optim": {**old["optim"], "retired_field": 1}}
    assert run_files.config_diff(extra, new) == ["  optim.retired_field: 1 -> '<absent>'"]
