"""Reliability: runs committed as a whole, finite or nothing, --force only on capsprobe's folders, configs are data,
one writer at a time, every bad input one line (the bad-input table), and the kill matrix (SIGKILL at chosen moments).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.errors import CapsprobeError
from capsprobe.runtime import BusyError, folder_lock
from capsprobe.training.loop import fit
from capsprobe.training.runs import COMPLETE, MARKER, RunConfig, RunError, load_run

runner = CliRunner()
TINY = dict(model="capsnet_small", epochs=1, batch_size=16, limit=32)  # the same run as TINY_ARGS on the CLI
TINY_ARGS = ["--model", "capsnet_small", "--epochs", "1", "--limit", "32", "--batch-size", "16", "--no-progress"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# `done`: the finished tiny run of TINY, trained once per session (tests/conftest.py); the tests copy it


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --- a run is committed as a whole ----------------------------------------------------------------------------


def test_a_finished_run_has_its_marker_and_completion_record_last(done):
    record = json.loads((done / COMPLETE).read_text())
    assert record["epochs"] == 1 and len(record["weights_sha256"]) == 64
    assert json.loads((done / MARKER).read_text())["kind"] == "run"
    names = [p.name for p in done.iterdir()]
    assert not [n for n in names if n.endswith(".tmp")]


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / COMPLETE).unlink(), "incomplete"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-8] + b"\0" * 8),
     "model.safetensors does not match"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"epochs": 1', '"epochs": 3')),
     "trained 1 of 3 epochs"),
])
def test_perturb_refuses_a_run_that_is_incomplete_or_disagrees(done, tmp_path, damage, fragment):
    run = _copy(done, tmp_path / "run")
    damage(run)
    with pytest.raises(RunError, match=fragment) as info:
        load_run(run)
    assert "`resume`" in str(info.value) or "`force`" in str(info.value)
    result = runner.invoke(app, ["perturb", "-t", "flip", str(run), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "--resume" in result.output
    assert not (tmp_path / "rep").exists()


def test_resume_finishes_a_run_killed_after_its_last_checkpoint(done, tmp_path):
    run = _copy(done, tmp_path / "run")
    for name in (COMPLETE, "metrics.json", "model.safetensors"):
        (run / name).unlink()
    (run / "history.csv").write_text("epoch\n")  # the last row lost
    fit(RunConfig(**TINY), run, resume=True, progress=False)
    again = load_run(run)
    assert len(again.history) == 1 and again.metrics["test_accuracy"] == json.loads(
        (done / "metrics.json").read_text())["test_accuracy"]
    assert (run / "model.safetensors").read_bytes() == (done / "model.safetensors").read_bytes()


# --- finite or nothing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("lr", float("inf")), ("lr", 0.0), ("lr_decay", float("inf")),
                                          ("lr_decay", -1.0), ("batch_size", 0), ("epochs", 0),
                                          ("val_fraction", 1.5), ("lr", "fast"), ("seed", 1.5)])
def test_config_values_are_checked_by_field(field, value):
    with pytest.raises(CapsprobeError, match=field):
        RunConfig(**{**TINY, field: value})


def test_diverged_weights_never_reach_a_checkpoint(tmp_path, monkeypatch):
    import torch

    import capsprobe.training.loop as train_mod

    real_step = train_mod.train_step
    steps = []

    def poisoned(objective, optimizer, *args, **kwargs):
        out = real_step(objective, optimizer, *args, **kwargs)
        steps.append(1)
        if len(steps) == 2:  # the epoch's last step: its loss was finite, the weights it leaves are not
            with torch.no_grad():
                next(iter(objective.parameters())).fill_(float("nan"))
        return out

    monkeypatch.setattr(train_mod, "train_step", poisoned)
    with pytest.raises(train_mod.NonFiniteLossError, match="not finite"):
        fit(RunConfig(**TINY), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "model.safetensors").exists()


# --- --force only replaces what capsprobe wrote -----------------------------------------------------------------


def test_force_refuses_foreign_folders(tmp_path, done):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = runner.invoke(app, ["perturb", "-t", "flip", str(done), "--out", str(precious), "--force", "--limit", "8"])
    assert result.exit_code == 1 and "not written by capsprobe" in result.output
    result = runner.invoke(app, ["train", *TINY_ARGS, "--out", str(precious), "--force"])
    assert result.exit_code == 1 and "not written by capsprobe" in result.output
    assert (precious / "thesis.tex").read_text() == "years of work"


# --- configs are data ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, fragment", [
    ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path"),
    ({"pretrained": True}, "pretrained"),
    ({"num_iters": 2, "pretrained_cfg_overlay": {"file": "/x.pth"}}, "pretrained_cfg_overlay"),
])
def test_model_options_from_a_config_pass_an_allowlist(done, tmp_path, kwargs, fragment):
    run = _copy(done, tmp_path / "run")
    data = json.loads((run / "config.json").read_text())
    data["config"]["model_kwargs"] = kwargs
    (run / "config.json").write_text(json.dumps(data))
    with pytest.raises(CapsprobeError, match=fragment):
        load_run(run)


def test_experiment_names_are_plain(tmp_path):
    from capsprobe.experiment import ExperimentError, load_experiment

    path = tmp_path / "x.toml"
    path.write_text('name = "../../../x"\n[data]\ndataset = "mnist"\n[sizes.quick]\n'
                    'models = [{ model = "capsnet", epochs = 1 }]\n')
    with pytest.raises(ExperimentError, match="plain name"):
        load_experiment(path, "quick")


# --- one writer at a time -------------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once(tmp_path, done):
    target = tmp_path / "run"
    with folder_lock(target):
        with pytest.raises(BusyError, match="another capsprobe command"):
            with folder_lock(target):
                pass
        result = runner.invoke(app, ["train", *TINY_ARGS, "--out", str(target)])
        assert result.exit_code == 1 and "another capsprobe command" in result.output
    with folder_lock(target):  # released
        pass


# --- the bad-input table --------------------------------------------------------------------------------------------


def _bad_inputs(tmp: Path, done: Path) -> list[tuple[str, list[str], str]]:
    a_file = tmp / "a-file"
    a_file.write_text("x")
    wrong_type = _copy(done, tmp / "wrong-type")
    data = json.loads((wrong_type / "config.json").read_text())
    data["config"]["batch_size"] = "many"
    (wrong_type / "config.json").write_text(json.dumps(data))
    rep = tmp / "rep-truncated"
    rep.mkdir()
    (rep / "summary.csv").write_text("model,run,seed,transform,kind,magnitude,magnitude_value,metric,value\n1,2")
    (rep / "manifest.json").write_text("{}")
    (rep / "results.parquet").write_bytes(b"")
    marker = '{"kind": "report"}\n'  # capsprobe's report marker: the folders below are read, then refused
    (rep / ".capsprobe").write_text(marker)
    rep_list = tmp / "rep-list"
    rep_list.mkdir()
    for name in ("summary.csv", "results.parquet"):
        (rep_list / name).write_bytes((rep / name).read_bytes())
    (rep_list / "manifest.json").write_text("[]")
    (rep_list / ".capsprobe").write_text(marker)
    empty = tmp / "rep-empty"
    empty.mkdir()
    (empty / ".capsprobe").write_text(marker)
    unmarked = tmp / "rep-unmarked"
    unmarked.mkdir()
    (unmarked / "summary.csv").write_bytes((rep / "summary.csv").read_bytes())
    toml0 = tmp / "zero.toml"
    toml0.write_text('name = "zero"\n[data]\ndataset = "mnist-sample"\n[train]\nbatch_size = 0\n[sizes.tiny]\n'
                     'models = [{ model = "capsnet_small", epochs = 1 }]\n')
    split = tmp / "split.toml"
    split.write_text('name = "split"\n[data]\ndataset = "mnist-sample"\n[probe]\nsplit = "train"\n[sizes.tiny]\n'
                     'models = [{ model = "capsnet_small", epochs = 1 }]\n')
    return [
        ("jigsaw inf", ["perturb", "-t", "jigsaw", "-m", "jigsaw=inf", str(done)], "jigsaw magnitude"),
        ("rotate nan", ["perturb", "-t", "rotate", "-m", "nan", str(done)], "rotate magnitude"),
        ("vit model", ["train", "--model", "vit_tiny_patch16_224", "--epochs", "1", "--limit", "16",
                       "--out", str(tmp / "v")], "vit_tiny_patch16_224"),
        ("num-iters on resnet", ["train", "--model", "resnet18", "--num-iters", "2", "--out", str(tmp / "r")],
         "num_iters"),
        ("out is a file", ["train", *TINY_ARGS, "--out", str(a_file)], "not a folder"),
        ("lr inf", ["train", *TINY_ARGS, "--lr", "inf", "--out", str(tmp / "l")], "lr"),
        ("lr-decay inf", ["train", *TINY_ARGS, "--lr-decay", "inf", "--out", str(tmp / "l2")], "lr_decay"),
        ("config wrong type", ["perturb", "-t", "flip", str(wrong_type)], "batch_size"),
        ("truncated summary", ["report", str(rep)], "summary.csv"),
        ("manifest a list", ["report", str(rep_list)], "manifest.json"),
        ("experiment batch_size 0", ["run", str(toml0), "--size", "tiny"], "batch_size"),
        ("experiment split", ["run", str(split), "--size", "tiny"], "split"),
        ("unknown experiment size", ["run", str(split), "--size", "huge"], "no size"),
        ("missing run", ["perturb", str(tmp / "nope")], "does not exist"),
        ("empty report folder", ["report", str(empty)], "missing"),
        ("a folder perturb did not write", ["report", str(unmarked)], "was not written by `capsprobe perturb`"),
    ]


def test_bad_input_table(tmp_path, done, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, args, fragment in _bad_inputs(tmp_path, done):
        before = _snapshot(tmp_path)
        result = runner.invoke(app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1, (name, result.output, result.exception)
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (name, result.output)
        after = _snapshot(tmp_path)
        assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
            k: v for k, v in before.items() if not k.endswith(".lock")}, name  # nothing written or changed


def test_usage_errors_keep_click_status_2():
    assert runner.invoke(app, ["train", "--epochs", "0"]).exit_code == 2
    assert runner.invoke(app, ["perturb", "--no-such-option"]).exit_code == 2


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, done):
    import errno

    import pandas as pd

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "rep"
    result = runner.invoke(app, ["perturb", "-t", "flip", str(done), "--limit", "8", "--bootstrap", "10",
                                 "--no-progress", "--out", str(out)])
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


# --- the kill matrix ----------------------------------------------------------------------------------------------

KILL = textwrap.dedent("""
    import os, signal, sys
    import capsprobe.{module} as target
    real = target.{function}
    calls = []
    def killer(*args, **kwargs):
        out = real(*args, **kwargs) if {after} else None
        calls.append(1)
        if len(calls) >= {nth}:
            os.kill(os.getpid(), signal.SIGKILL)
        return out if {after} else real(*args, **kwargs)
    setattr(target, "{function}", killer)
    from capsprobe.cli import main
    sys.argv = ["capsprobe"] + sys.argv[1:]
    main()
""")


def _killed(tmp: Path, module: str, function: str, args: list[str], nth: int = 1, after: bool = True) -> int:
    script = KILL.format(module=module, function=function, nth=nth, after=after)
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode


MOMENTS = [
    # (name, module, function patched, nth call, kill after the call returned)
    ("after the last checkpoint", "training.loop", "save_checkpoint", 1, True),
    ("between weights and metrics", "training.loop", "save_weights", 1, True),
    ("before the completion record", "training.loop", "write_completion", 1, False),
]


@pytest.mark.parametrize("moment, module, function, nth, after", MOMENTS, ids=[m[0] for m in MOMENTS])
def test_kill_matrix_training(tmp_path, done, moment, module, function, nth, after):
    out = tmp_path / "run"
    code = _killed(tmp_path, module, function, ["train", *TINY_ARGS, "--out", str(out)], nth, after)
    assert code == -signal.SIGKILL
    with pytest.raises(RunError, match="incomplete|missing"):
        load_run(out)  # refused, never probed half-finished
    result = runner.invoke(app, ["train", *TINY_ARGS, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    run = load_run(out)
    assert len(run.history) == 1 and run.metrics["epochs"] == 1
    assert (out / "model.safetensors").read_bytes() == (done / "model.safetensors").read_bytes()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_kill_matrix_force_keeps_the_old_run(tmp_path, done):
    out = _copy(done, tmp_path / "run")
    before = _snapshot(out)
    code = _killed(tmp_path, "training.loop", "save_checkpoint", ["train", *TINY_ARGS, "--seed", "1", "--out", str(out),
                                                          "--force"])
    assert code == -signal.SIGKILL
    assert _snapshot(out) == before  # the old run is intact until the new one exists
    load_run(out)
    result = runner.invoke(app, ["train", *TINY_ARGS, "--seed", "1", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert load_run(out).config.seed == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["run"]  # leftovers gone


def test_kill_matrix_report(tmp_path, done):
    out = tmp_path / "rep"
    assert runner.invoke(app, ["perturb", "-t", "flip", str(done), "--limit", "8", "--bootstrap", "10",
                               "--no-progress", "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    before = _snapshot(out)
    code = _killed(tmp_path, "report.suite", "_png", ["report", str(out)], nth=2)
    assert code == -signal.SIGKILL
    assert _snapshot(out) == before  # the folder is the old report, whole
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["rep"]  # no stale temps
