"""CLI: invoke the commands, check the results with the library."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.training.runs import load_run

runner = CliRunner()
TINY = ["--model", "capsnet_small", "--limit", "32", "--epochs", "1", "--batch-size", "16", "--no-progress"]


def test_train_writes_a_loadable_run_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "test accuracy" in result.output
    run = load_run(out)
    assert run.config.model == "capsnet_small" and run.config.limit == 32 and run.config.epochs == 1
    weights = (out / "model.safetensors").read_bytes()

    again = runner.invoke(app, ["train", *TINY, "--out", str(out)])
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [
        f"error: {out} already exists and is not empty; set --resume to continue it or --force to replace it"]
    assert (out / "model.safetensors").read_bytes() == weights


def test_resume_keeps_the_stored_options_and_extends_epochs(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = load_run(out)
    assert run.config.model == "capsnet_small" and run.config.epochs == 2 and len(run.history) == 2


def test_num_iters_reaches_the_model(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--num-iters", "1", "--out", str(out)]).exit_code == 0
    assert load_run(out).model.num_iters == 1


def test_model_options_recon_weight_and_label_reach_the_run(tmp_path, monkeypatch):
    """``--option KEY=VALUE`` (TOML values, bare strings) builds the ablation's variants from the command line; the
    label names the default run folder and the ``model`` column of a probe."""
    monkeypatch.chdir(tmp_path)
    args = ["train", *TINY, "--option", "routing=none", "-o", "squash=false", "-o", "primary_types=2",
            "--recon-weight", "0", "--label", "linear-caps"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "runs" / "linear-caps-mnist-sample-seed0")
    assert run.config.model_kwargs == {"routing": "none", "squash": False, "primary_types": 2}
    assert run.config.recon_weight == 0 and run.config.variant == "linear-caps"
    assert run.model.digits.routing == "none" and run.model.primary.squash is False
    from capsprobe.probe import as_subject

    assert as_subject(run).ident()["model"] == "linear-caps"
    bad = runner.invoke(app, ["train", *TINY, "--option", "routing", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "KEY=VALUE" in bad.output
    unknown = runner.invoke(app, ["train", *TINY, "-o", "routing=em", "--out", str(tmp_path / "y")])
    assert unknown.exit_code == 1 and "unknown routing 'em'; known: attention, dynamic, none" in unknown.output
    assert not (tmp_path / "y").exists()


def test_unknown_model_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "resnt18", "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'resnt18'") and "resnet18" in lines[0]
    assert not out.exists()


def test_offline_dataset_error(tmp_path):
    result = runner.invoke(
        app, ["train", "--dataset", "mnist", "--data-root", str(tmp_path), "--no-download", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert "--data-root" in result.output and "mnist-sample" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_list_shows_models_and_datasets():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for word in ("capsnet", "capsnet_small", "baseline_cnn", "mnist-sample", "fashion-mnist", "svhn"):
        assert word in result.output


def test_bench_prints_a_table():
    result = runner.invoke(app, ["bench", "--model", "capsnet_small", "--batch-size", "8", "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    row = [line for line in result.output.splitlines() if line.startswith("| capsnet_small")]
    assert len(row) == 1 and "2,117,072" in row[0]
    assert row[0].rstrip(" |").endswith("%")  # the non-convolution share of a CapsNet training step


def test_bench_kernels_both_prints_the_speed_up_and_a_bad_value_is_a_usage_error():
    result = runner.invoke(app, ["bench", "--model", "capsnet_small", "--batch-size", "4", "--steps", "1",
                                 "--device", "cpu", "--kernels", "both"])
    assert result.exit_code == 0, result.output
    assert "eager train img/s | speed-up" in result.output
    row = [line for line in result.output.splitlines() if line.startswith("| capsnet_small")]
    assert len(row) == 1 and "| both |" in row[0] and row[0].rstrip(" |").endswith("x")
    bad = runner.invoke(app, ["bench", "--kernels", "fused"])
    assert bad.exit_code == 2 and "'fused' is not one of 'fast', 'eager', 'both'" in bad.output


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "capsprobe", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "bench" in proc.stdout


def test_resume_without_out_uses_the_default_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["train", *TINY]).exit_code == 0
    default = tmp_path / "runs" / "capsnet_small-mnist-sample-seed0"
    result = runner.invoke(app, ["train", "--model", "capsnet_small", "--resume", "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    run = load_run(default)
    assert run.config.limit == 32 and len(run.history) == 2
