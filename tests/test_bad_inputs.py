"""Bad inputs give one line (the reliability audit, issue 46 item 4): every case of the table below is a malformed
file, a hostile option value or a misused Python API, and each must end in capsprobe's own one-line error (the CLI:
``error: ...`` and exit status 1; usage errors stay click's, status 2), with nothing written or changed outside
what the command names, nothing created where it was not asked, and no traceback.

The cases are cheap: they read malformed files and check options, and none trains (the one run they read is the
session's finished tiny run ``done``, copied per case with its large files hard-linked)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.errors import CapsprobeError

runner = CliRunner()
PERTURB = ["perturb", "-t", "flip", "--limit", "8", "--bootstrap", "10", "--no-progress"]
TRAIN = ["train", "--model", "capsnet_small", "--epochs", "1", "--limit", "32", "--batch-size", "16", "--no-progress"]
LARGE = ("model.safetensors", "checkpoint/state.safetensors")  # hard-linked into copies: never written through


def _run_copy(done: Path, dst: Path) -> Path:
    """A copy of the finished run whose large files are hard links (a case that changes one unlinks it first)."""
    for src in done.rglob("*"):
        target = dst / src.relative_to(done)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if str(src.relative_to(done)) in LARGE:
            os.link(src, target)
        else:
            shutil.copy2(src, target)
    return dst


def _write(path: Path, data: bytes | str) -> None:
    path.unlink(missing_ok=True)  # a hard link is replaced, never written through
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    _write(path, json.dumps(data))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def _dirs(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir()}


# --- runs with a malformed or tampered file ------------------------------------------------------------------------

def _config(change):
    return lambda run: _edit_json(run / "config.json", change)


RUN_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "config not utf-8": (lambda r: _write(r / "config.json", b'{"config": "\xff\xfe"}'), "config.json"),
    "config not json": (lambda r: _write(r / "config.json", "{"), "config.json"),
    "config a list": (lambda r: _write(r / "config.json", "[]"), "config.json"),
    "config without config": (_config(lambda d: d.pop("config")), "config.json"),
    "config's config a list": (_config(lambda d: d.update(config=[])), "config.json"),
    "config's input a list": (_config(lambda d: d.update(input=[1])), "config.json"),
    "input img_size a string": (_config(lambda d: d["input"].update(img_size="28")), "img_size"),
    "input img_size huge": (_config(lambda d: d["input"].update(img_size=10**9)), "config.json was changed"),
    "data_root changed": (_config(lambda d: d["config"].update(data_root="/tmp/elsewhere")), "config.json"),
    "download changed": (_config(lambda d: d["config"].update(download=False)), "config.json"),
    "dataset changed": (_config(lambda d: d["config"].update(dataset="fashion-mnist")), "config.json"),
    "device meta in config": (_config(lambda d: d["config"].update(device="meta")), "device"),
    "num_iters huge in config": (_config(lambda d: d["config"].update(model_kwargs={"num_iters": 10**7})),
                                 "num_iters"),
    "num_iters a string in config": (_config(lambda d: d["config"].update(model_kwargs={"num_iters": "3"})),
                                     "num_iters"),
    "epochs huge in config": (_config(lambda d: d["config"].update(epochs=10**12)), "epochs"),
    "seed huge in config": (_config(lambda d: d["config"].update(seed=10**23)), "seed"),
    "batch_size huge in config": (_config(lambda d: d["config"].update(batch_size=10**12)), "batch_size"),
    "max_shift huge in config": (_config(lambda d: d["config"].update(max_shift=10**6)), "max_shift"),
    "metrics not utf-8": (lambda r: _write(r / "metrics.json", b"\xff\xfe{}"), "metrics.json"),
    "metrics a list": (lambda r: _write(r / "metrics.json", "[1, 2]"), "metrics.json"),
    "history not utf-8": (lambda r: _write(r / "history.csv", b"epoch,loss\n\xff\xfe,1\n"), "history.csv"),
    "completion not utf-8": (lambda r: _write(r / "complete.json", b"\xff"), "complete.json"),
    "completion a list": (lambda r: _write(r / "complete.json", "[]"), "complete.json"),
    "completion epochs text": (lambda r: _edit_json(r / "complete.json", lambda d: d.update(epochs="one")),
                               "complete.json"),
    "weights truncated": (lambda r: _write(r / "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"),
                          "model.safetensors"),
    "marker not utf-8": (lambda r: _write(r / ".capsprobe", b"\xff"), None),  # read only as ownership: still loads
    "run is an empty folder": (lambda r: [shutil.rmtree(r), r.mkdir()], "config.json"),
    "run is a file": (lambda r: [shutil.rmtree(r), r.write_text("x")], "run"),
}


@pytest.mark.parametrize("case", [k for k, (_, f) in RUN_DAMAGE.items() if f is not None])
def test_a_damaged_run_is_refused_in_one_line(done, tmp_path, monkeypatch, case):
    damage, fragment = RUN_DAMAGE[case]
    run = _run_copy(done, tmp_path / "run")
    damage(run)
    monkeypatch.chdir(tmp_path)
    _one_line(tmp_path, [*PERTURB, str(run), "--out", str(tmp_path / "rep")], fragment)
    assert not (tmp_path / "rep").exists()


# --- options with hostile values: refused before anything runs ----------------------------------------------------

def _option_cases(tmp: Path, run: Path) -> list[tuple[str, list[str], str]]:
    rep = str(tmp / "rep")
    return [
        ("perturb device meta", [*PERTURB, str(run), "--device", "meta", "--out", rep], "meta"),
        ("perturb device mps", [*PERTURB, str(run), "--device", "mps", "--out", rep], "mps"),
        ("perturb device xla", [*PERTURB, str(run), "--device", "xla", "--out", rep], "xla"),
        ("perturb device nonsense", [*PERTURB, str(run), "--device", "gpu!", "--out", rep], "device"),
        ("perturb device cuda:-1", [*PERTURB, str(run), "--device", "cuda:-1", "--out", rep], "cuda"),
        ("perturb device empty", [*PERTURB, str(run), "--device", "", "--out", rep], "device"),
        ("perturb unknown dataset", [*PERTURB, str(run), "--dataset", "imagenet", "--out", rep], "imagenet"),
        ("perturb other shapes", [*PERTURB, str(run), "--dataset", "cifar10", "--out", rep], "cifar10"),
        ("perturb magnitude overflow", [*PERTURB, str(run), "-m", "flip=1e400", "--out", rep], "flip"),
        ("perturb rotate overflow", ["perturb", "-t", "rotate", "-m", "1e400", "--no-progress", str(run), "--out", rep],
         "rotate"),
        ("perturb eps above 1", [*PERTURB, str(run), "--attack", "fgsm", "--eps", "2", "--out", rep], "fgsm"),
        ("perturb eps nan", [*PERTURB, str(run), "--attack", "fgsm", "--eps", "nan", "--out", rep], "fgsm"),
        ("perturb a run twice", [*PERTURB, str(run), str(run), "--out", rep], "different names"),
        ("perturb missing surrogate", [*PERTURB, str(run), "--surrogate", str(tmp / "nope"), "--out", rep],
         "does not exist"),
        ("perturb unknown reference", [*PERTURB, str(run), "--reference", "vgg", "--out", rep], "vgg"),
        ("perturb out is a file", [*PERTURB, str(run), "--out", str(tmp / "a-file")], "not a folder"),
        ("perturb out is the run", [*PERTURB, str(run), "--out", str(run), "--force"], "not written by capsprobe"),
        ("perturb no-download elsewhere", [*PERTURB, str(run), "--dataset", "mnist", "--data-root",
                                           str(tmp / "nodata"), "--no-download", "--out", rep], "mnist"),
        ("train device meta", [*TRAIN, "--device", "meta", "--out", str(tmp / "t")], "meta"),
        ("train device mps", [*TRAIN, "--device", "mps", "--out", str(tmp / "t")], "mps"),
        ("train device vulkan", [*TRAIN, "--device", "vulkan", "--out", str(tmp / "t")], "vulkan"),
        ("train option num_iters huge", [*TRAIN, "-o", f"num_iters={10**7}", "--out", str(tmp / "t")], "num_iters"),
        ("train option num_iters zero", [*TRAIN, "-o", "num_iters=0", "--out", str(tmp / "t")], "num_iters"),
        ("train option num_iters float", [*TRAIN, "-o", "num_iters=2.5", "--out", str(tmp / "t")], "num_iters"),
        ("train option conv_channels negative", [*TRAIN, "-o", "conv_channels=-4", "--out", str(tmp / "t")],
         "conv_channels"),
        ("train option conv_channels huge", [*TRAIN, "-o", f"conv_channels={10**9}", "--out", str(tmp / "t")],
         "conv_channels"),
        ("train option kernel_size huge", [*TRAIN, "-o", "kernel_size=1000", "--out", str(tmp / "t")],
         "kernel_size"),
        ("train recon-weight inf", [*TRAIN, "--recon-weight", "inf", "--out", str(tmp / "t")], "recon_weight"),
        ("train val-every without target", [*TRAIN, "--val-every", "5", "--out", str(tmp / "t")], "val_every"),
        ("train label with a slash", [*TRAIN, "--label", "../x", "--out", str(tmp / "t")], "plain name"),
        ("train target above 1", [*TRAIN, "--target-accuracy", "2", "--out", str(tmp / "t")], "target_accuracy"),
        ("train no-download elsewhere", [*TRAIN, "--dataset", "mnist", "--data-root", str(tmp / "nodata"),
                                         "--no-download", "--out", str(tmp / "t")], "mnist"),
        ("train unknown dataset", [*TRAIN, "--dataset", "imagenet", "--out", str(tmp / "t")], "imagenet"),
        ("train out is a run's file", [*TRAIN, "--out", str(run / "config.json")], "not a folder"),
        ("bench device meta", ["bench", "--device", "meta", "--model", "capsnet_small"], "meta"),
        ("bench unknown model", ["bench", "--model", "nosuchnet", "--device", "cpu"], "nosuchnet"),
        ("demo device meta", ["demo", "--size", "tiny", "--device", "meta", "--out", rep], "meta"),
    ]


_CASE_IDS = [c[0] for c in _option_cases(Path("t"), Path("r"))]


@pytest.mark.parametrize("case", _CASE_IDS)
def test_a_hostile_option_is_refused_in_one_line(done, tmp_path, monkeypatch, case):
    run = _run_copy(done, tmp_path / "run")
    (tmp_path / "a-file").write_text("x")
    monkeypatch.chdir(tmp_path)
    _, args, fragment = next(c for c in _option_cases(tmp_path, run) if c[0] == case)
    _one_line(tmp_path, args, fragment)


def _one_line(tmp: Path, args: list[str], fragment: str) -> None:
    """Run the CLI: exit 1, one line ``error: ...`` holding ``fragment``; nothing under ``tmp`` written, changed or
    created (lock files aside)."""
    before, dirs = _snapshot(tmp), _dirs(tmp)
    result = runner.invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert _snapshot(tmp) == before
    assert _dirs(tmp) == dirs


@pytest.mark.parametrize("args", [
    ["calibrate", "--reps", str(10**15)],
    ["calibrate", "--images", str(10**12)],
    ["calibrate", "--power-images", str(10**12)],
    ["calibrate", "--family", str(10**12)],
    ["bench", "--steps", str(10**9)],
    ["bench", "--batch-size", str(10**9)],
    ["bench", "--profile", str(10**9)],
    ["perturb", "--bootstrap", str(10**9), "x"],
    ["perturb", "--attack-steps", str(10**7), "x"],
    ["perturb", "--batch-size", str(10**9), "x"],
    ["train", "--num-iters", str(10**7)],
    ["train", "--epochs", str(10**9)],
    ["train", "--batch-size", str(10**9)],
    ["train", "--max-shift", str(10**6)],
    ["train", "--seed", str(10**23)],
    ["train", "--seed", "-1"],
    ["run", "x.toml", "--time-min", "-5"],
    ["run", "x.toml", "--time-min", "0"],
    ["run", "x.toml", "--gpus-per-run", "-1"],
    ["run", "x.toml", "--cpus-per-run", "0"],
    ["run", "x.toml", "--jobs", str(10**6)],
    ["calibrate", "--reps", "1e15"],
    ["calibrate", "--reps", "10"],
    ["perturb", "--seed", "-1", "x"],
    ["perturb", "--eps", "0.1", "x"],
    ["train", "--epochs", "0"],
    ["train", "--resume", "--force"],
    ["train", "-o", "novalue"],
    ["run", "x.toml", "--jobs", "0"],
    ["bench", "--kernels", "slow"],
    # a choice outside its set (listed in --help) is the parser's to refuse
    ["perturb", "--split", "train", "x"],
    ["train", "--task", "segment"],
    ["demo", "--size", "huge"],
    ["run", "x.toml", "--launcher", "pbs"],
    ["report", "--formats", "png,docx", "x"],
    ["report"],
    ["perturb"],
])
def test_usage_errors_stay_click_status_2(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert list(tmp_path.iterdir()) == []


# --- experiment files ------------------------------------------------------------------------------------------------

EXPERIMENT = ('name = "x"\n[data]\ndataset = "mnist-sample"\n{extra}\n[sizes.tiny]\n'
              'models = [{{ model = "capsnet_small", epochs = 1{options} }}]\n')


@pytest.mark.parametrize("case, text, args, fragment", [
    ("not utf-8", b'name = "\xff"\n', [], "x.toml"),
    ("a folder", None, [], "x.toml"),
    ("num_iters huge", EXPERIMENT.format(extra="", options=f", options = {{ num_iters = {10**7} }}"), [], "num_iters"),
    ("bootstrap huge", EXPERIMENT.format(extra=f"[probe]\nbootstrap = {10**9}", options=""), [], "bootstrap"),
    ("attack steps huge", EXPERIMENT.format(extra=f"[probe]\nattack_steps = {10**8}", options=""), [], "attack_steps"),
    ("epochs huge", EXPERIMENT.format(extra="", options="").replace("epochs = 1", f"epochs = {10**9}"), [], "epochs"),
    ("device meta in train", EXPERIMENT.format(extra='[train]\ndevice = "meta"', options=""), [], "device"),
    ("device meta", EXPERIMENT.format(extra="", options=""), ["--device", "meta"], "meta"),
    ("slurm without sbatch", EXPERIMENT.format(extra="", options=""), ["--launcher", "slurm"], "sbatch"),
])
def test_a_bad_experiment_is_refused_in_one_line(tmp_path, monkeypatch, case, text, args, fragment):
    path = tmp_path / "x.toml"
    if text is None:
        path.mkdir()
    else:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.chdir(tmp_path)
    _one_line(tmp_path, ["run", str(path), "--size", "tiny", "--no-progress", *args], fragment)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


# --- report folders with a malformed file ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory, done):
    """A report folder perturb wrote (flip, 8 images), never modified by the tests (they copy it)."""
    out = tmp_path_factory.mktemp("report") / "rep"
    result = runner.invoke(app, [*PERTURB, str(done), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _manifest(change):
    return lambda rep: _edit_json(rep / "manifest.json", change)


def _csv(name: str, column: str, value: str):
    def damage(rep: Path) -> None:
        import pandas as pd

        frame = pd.read_csv(rep / name, dtype=str)
        frame.loc[0, column] = value
        _write(rep / name, frame.to_csv(index=False))
    return damage


def _npz(rep: Path, **arrays) -> None:
    (rep / "arrays").mkdir(exist_ok=True)
    for path in (rep / "arrays").glob("*.npz"):
        path.unlink()
    np.savez(rep / "arrays" / "reconstructions.npz", **arrays)


REPORT_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "manifest not utf-8": (lambda r: _write(r / "manifest.json", b'{"task": "\xff"}'), "manifest.json"),
    "manifest runs as strings": (_manifest(lambda d: d.update(runs=["a", "b"])), "manifest.json"),
    "manifest run without model": (_manifest(lambda d: d["runs"][0].pop("model")), "manifest.json"),
    "manifest runs a dict": (_manifest(lambda d: d.update(runs={"a": 1})), "manifest.json"),
    "manifest versions a list": (_manifest(lambda d: d.update(versions=["torch"])), "manifest.json"),
    "manifest experiment a list": (_manifest(lambda d: d.update(experiment=[1])), "manifest.json"),
    "manifest task a list": (_manifest(lambda d: d.update(task=["classify"])), "manifest.json"),
    "manifest images text": (_manifest(lambda d: d.update(images="many")), "manifest.json"),
    "manifest reference a list": (_manifest(lambda d: d.update(reference=[1])), "manifest.json"),
    "manifest timing a list": (_manifest(lambda d: d.update(timing=[1])), "manifest.json"),
    "summary not utf-8": (lambda r: _write(r / "summary.csv", (r / "summary.csv").read_bytes() + b"\xff\xfe,\n"),
                          "summary.csv"),
    "summary value nan": (_csv("summary.csv", "value", "nan"), "summary.csv"),
    "summary value text": (_csv("summary.csv", "value", "high"), "summary.csv"),
    "summary value inf": (_csv("summary.csv", "value", "inf"), "summary.csv"),
    "summary ci text": (_csv("summary.csv", "ci_low", "low"), "summary.csv"),
    "summary seed text": (_csv("summary.csv", "seed", "zero"), "summary.csv"),
    "summary magnitude_value text": (_csv("summary.csv", "magnitude_value", "big"), "summary.csv"),
    "overview not utf-8": (lambda r: _write(r / "overview.csv", b"run,transform\n\xff,\xfe\n"), "overview.csv"),
    "differences nan": (lambda r: _write(r / "differences.csv", "metric,a,b,difference\naccuracy,x,y,nan\n"),
                        "differences.csv"),
    "differences text": (lambda r: _write(r / "differences.csv", "metric,a,b,difference\naccuracy,x,y,big\n"),
                         "differences.csv"),
    "npz without keys": (lambda r: _npz(r, unrelated=np.zeros(3)), "reconstructions.npz"),
    "npz images wrong rank": (lambda r: _npz(r, images=np.zeros(3, np.uint8), labels=np.zeros(3)),
                              "reconstructions.npz"),
    "npz garbage": (lambda r: [(r / "arrays").mkdir(exist_ok=True),
                               _write(r / "arrays" / "reconstructions.npz", b"PK\x03\x04garbage")],
                    "reconstructions.npz"),
    "npz pickled": (lambda r: [(r / "arrays").mkdir(exist_ok=True), np.save(r / "arrays" / "x.npy", np.array([{}]),
                                                                                allow_pickle=True),
                               shutil.move(r / "arrays" / "x.npy", r / "arrays" / "reconstructions.npz")],
                    "reconstructions.npz"),
    "parquet garbage": (lambda r: _write(r / "results.parquet", b"PAR1garbage"), "results.parquet"),
    "marker not utf-8": (lambda r: _write(r / ".capsprobe", b"\xff"), "was not written"),
    "a symlinked file": (lambda r: [(r / "overview.csv").unlink(),
                                    (r / "overview.csv").symlink_to(r.parent / "elsewhere.csv")], "overview.csv"),
    "a symlinked folder": (lambda r: [shutil.rmtree(r / "arrays", ignore_errors=True),
                                      (r / "arrays").symlink_to(r.parent)], "arrays"),
}


@pytest.mark.parametrize("case", [k for k, (_, f) in REPORT_DAMAGE.items() if f is not None])
def test_a_damaged_report_is_refused_in_one_line(report, tmp_path, monkeypatch, case):
    damage, fragment = REPORT_DAMAGE[case]
    rep = tmp_path / "rep"
    shutil.copytree(report, rep)
    (tmp_path / "elsewhere.csv").write_text("run,transform\nx,y\n")
    damage(rep)
    monkeypatch.chdir(tmp_path)
    _one_line(tmp_path, ["report", str(rep)], fragment)
    if case not in ("parquet garbage",):
        _one_line(tmp_path, ["report", "--recompare", str(rep)], fragment)


@pytest.mark.parametrize("args, fragment", [
    (["report", "."], "was not written"),
    (["report", ".."], "was not written"),
    (["report", "/"], "was not written"),
    (["report", "nope"], "does not exist"),
    (["report", "a-file"], "not a folder"),
])
def test_report_paths_are_refused_in_one_line(report, tmp_path, monkeypatch, args, fragment):
    (tmp_path / "a-file").write_text("x")
    shutil.copytree(report, tmp_path / "rep")
    monkeypatch.chdir(tmp_path)
    _one_line(tmp_path, args, fragment)


def test_report_dot_renders_the_current_folder(report, tmp_path, monkeypatch):
    """``capsprobe report .`` from inside a report folder renders it (no recursion into its own temporary copy)."""
    rep = tmp_path / "rep"
    shutil.copytree(report, rep)
    monkeypatch.chdir(rep)
    result = runner.invoke(app, ["report", "."])
    assert result.exit_code == 0, (result.output, result.exception)
    assert (rep / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_a_report_killed_between_its_renames_comes_back(report, tmp_path, monkeypatch):
    """A kill between the two renames of a replacement leaves the old folder under its backup name: the next command
    puts it back instead of saying the folder does not exist."""
    old = tmp_path / f".rep.old-{os.getpid() + 1}"
    shutil.copytree(report, old)
    _write(old / "summary.csv", "model\n")  # malformed, so the restored folder is read and refused (no rendering)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", str(tmp_path / "rep")])
    assert result.exit_code == 1 and "summary.csv is malformed" in result.output, result.output
    assert (tmp_path / "rep" / "manifest.json").is_file() and not old.exists()


# --- a second writer is refused before any computing ----------------------------------------------------------------

def test_a_second_perturb_into_a_locked_folder_is_refused_before_loading(done, tmp_path, monkeypatch):
    import capsprobe.pipeline as pipeline
    from capsprobe.runtime import folder_lock

    def no_load(*args, **kwargs):
        raise AssertionError("the runs were loaded before the output lock was taken")

    monkeypatch.setattr(pipeline, "load_run", no_load)
    with folder_lock(tmp_path / "rep"):
        _one_line(tmp_path, [*PERTURB, str(done), "--out", str(tmp_path / "rep")], "another capsprobe command")


def test_a_second_run_into_a_locked_report_is_refused_before_training(tmp_path, monkeypatch):
    import capsprobe.pipeline as pipeline
    from capsprobe.runtime import folder_lock

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the report folder's lock was taken")

    monkeypatch.setattr(pipeline, "train_many", no_training)
    path = tmp_path / "x.toml"
    path.write_text(EXPERIMENT.format(extra="", options=""))
    monkeypatch.chdir(tmp_path)
    with folder_lock(tmp_path / "rep"):
        _one_line(tmp_path, ["run", str(path), "--size", "tiny", "--out", str(tmp_path / "rep"), "--no-progress"],
                  "another capsprobe command")


# --- perturb creates no folder it was not told to ----------------------------------------------------------------

def test_perturb_download_defaults_to_the_runs_setting_and_can_be_turned_off(done, tmp_path, monkeypatch):
    import capsprobe.pipeline as pipeline

    seen = {}

    def fake_load(name, root, download, **kwargs):
        seen.update(name=name, root=root, download=download)
        raise pipeline.RunError("stop here")

    monkeypatch.setattr(pipeline, "load_dataset", fake_load)
    run = _run_copy(done, tmp_path / "run")
    result = runner.invoke(app, [*PERTURB, str(run), "--no-download", "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1 and seen["download"] is False, result.output
    result = runner.invoke(app, [*PERTURB, str(run), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1 and seen["download"] is True, result.output  # the run's own setting (on)


def test_run_no_download_creates_no_data_folder(tmp_path, monkeypatch):
    """An experiment's ``[data] data_root`` is fetched into only with download on: ``run --no-download`` refuses a
    missing data set in one error line and creates nothing (no data folder, no run folder, no report)."""
    path = tmp_path / "x.toml"
    path.write_text(EXPERIMENT.format(extra="", options="").replace(
        'dataset = "mnist-sample"', 'dataset = "mnist"\ndata_root = "nodata"'))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(path), "--size", "tiny", "--no-download", "--out", "rep", "--runs-dir",
                                 "runs", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: mnist is not under nodata (download is off)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.toml"]


def test_art_keeps_its_files_in_capsprobes_cache_and_is_quiet(fake_art):
    """ART's ``art.config`` writes ``~/.art/config.json`` when imported: capsprobe imports it with its home in
    capsprobe's cache folder, and keeps its INFO lines off stderr. A stand-in ``art`` package records where its
    import looked (the real one is imported once per process; the fixture puts the loaded one back)."""
    import logging
    import sys

    home, cache = fake_art({
        "art/__init__.py": "",
        "art/config.py": ("import os\nHOME = os.path.expanduser('~')\nART_DATA_PATH = None\n"
                          "def set_data_path(path):\n    global ART_DATA_PATH\n    ART_DATA_PATH = path\n"),
        "art/attacks/__init__.py": "",
        "art/attacks/evasion.py": "FastGradientMethod = ProjectedGradientDescent = object\n",
        "art/estimators/__init__.py": "",
        "art/estimators/classification.py": "PyTorchClassifier = object\n",
    })
    from capsprobe.transforms.gradient import _art

    _art()
    config = sys.modules["art.config"]
    assert config.HOME == str(cache / "capsprobe" / "art")  # where ART put its ~/.art
    assert config.ART_DATA_PATH == str(cache / "capsprobe" / "art" / "data")
    assert os.environ["HOME"] == str(home) and list(home.iterdir()) == []
    assert logging.getLogger("art").getEffectiveLevel() >= logging.WARNING


# --- readers: malformed data files ----------------------------------------------------------------------------------

def _idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    import struct

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data)


def _mnist(root: Path, n: int = 4, side: int = 28, label: int = 3, images: bytes | None = None) -> None:
    raw = root / "MNIST" / "raw"
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", 0x803, (n, side, side),
             images if images is not None else bytes(n * side * side))
        _idx(raw / f"{split}-labels-idx1-ubyte", 0x801, (n,), bytes([label] * n))


def _norb(root: Path, n: int = 6, side: int = 96, cats=None, azimuth: int = 0, train_n: int | None = None) -> None:
    from capsprobe.data.viewpoints import NORB_FILES, write_norb

    folder = root / "smallnorb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, stem in NORB_FILES.items():
        m = n if split == "test" or train_n is None else train_n
        c = np.asarray(cats if cats is not None else np.arange(m) % 5, np.int32)[:m]
        write_norb(folder / f"{stem}-dat.mat", np.zeros((m, 2, side, side), np.uint8))
        write_norb(folder / f"{stem}-cat.mat", c)
        info = np.zeros((m, 4), np.int32)
        info[:, 2] = azimuth
        write_norb(folder / f"{stem}-info.mat", info)


READERS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "mnist garbage images": (lambda r: _mnist(r, images=b"\x07" * 10), "mnist", "MNIST"),
    "mnist wrong magic": (lambda r: [_mnist(r), _idx(r / "MNIST" / "raw" / "train-images-idx3-ubyte", 0x1234,
                                                      (4, 28, 28), bytes(4 * 784))], "mnist", "MNIST"),
    "mnist empty files": (lambda r: [_mnist(r)] + [_write(p, b"") for p in (r / "MNIST" / "raw").iterdir()],
                          "mnist", "MNIST"),
    "mnist labels out of range": (lambda r: _mnist(r, label=200), "mnist", "label"),
    "mnist images too small": (lambda r: _mnist(r, side=8), "mnist", "28"),
    "mnist no images": (lambda r: _mnist(r, n=0), "mnist", "MNIST|no images"),
    "mnist one image": (lambda r: _mnist(r, n=1), "mnist", "image"),
    "norb no image": (lambda r: _norb(r, n=0), "smallnorb", "no images"),
    "norb no familiar azimuth": (lambda r: _norb(r, azimuth=10), "smallnorb-azimuth", "familiar"),
    "norb one-image class": (lambda r: _norb(r, n=6, cats=[0, 0, 1, 1, 2, 3]), "smallnorb", None),
    "norb images too small": (lambda r: _norb(r, side=8), "smallnorb", "32"),
    "norb truncated gz": (lambda r: [_norb(r)] + [
        _write(p.with_name(p.name + ".gz"), gzip.compress(p.read_bytes())[:40]) or p.unlink()
        for p in (r / "smallnorb").glob("*-dat.mat")], "smallnorb", "smallnorb"),
    "norb not gzip": (lambda r: [_norb(r)] + [
        _write(p.with_name(p.name + ".gz"), b"not gzip at all") or p.unlink()
        for p in (r / "smallnorb").glob("*-cat.mat")], "smallnorb", "smallnorb"),
}


@pytest.mark.parametrize("case", list(READERS))
def test_a_malformed_data_file_is_one_line(tmp_path, case):
    from capsprobe.data import load_dataset

    build, dataset, fragment = READERS[case]
    root = tmp_path / "data"
    build(root)
    before = _snapshot(tmp_path)
    if fragment is None:  # a class with one image: loads, split without stratification
        splits = load_dataset(dataset, root, download=False)
        assert len(splits.train) + len(splits.val) == 6
        return
    with pytest.raises(CapsprobeError, match=fragment) as info:
        load_dataset(dataset, root, download=False)
    assert len(str(info.value).splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_a_truncated_gz_on_the_command_line_is_one_line_not_aborted(done, tmp_path, monkeypatch):
    root = tmp_path / "data"
    READERS["norb truncated gz"][0](root)
    run = _run_copy(done, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*PERTURB, str(run), "--dataset", "smallnorb", "--data-root", str(root),
                                 "--no-download", "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1 and "Aborted" not in result.output, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


# --- the Python API: a ModelAdapter whose callables answer the wrong thing ----------------------------------------

class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _good(m, x):
    logits = m(x)
    return {"scores": logits.softmax(-1), "representation": logits, "poses": logits[:, :, None].repeat(1, 1, 4)}


ADAPTER_CASES: dict[str, tuple[Callable, str]] = {
    "3 scores for 10 classes": (lambda m, x: {**_good(m, x), "scores": m(x)[:, :3].softmax(-1),
                                              "poses": torch.zeros(len(x), 3, 4)}, "scores"),
    "1-d scores": (lambda m, x: {**_good(m, x), "scores": m(x)[:, 0]}, "scores"),
    "batch mismatch": (lambda m, x: {**_good(m, x), "scores": m(x)[:-1].softmax(-1)}, "scores"),
    "representation batch mismatch": (lambda m, x: {**_good(m, x), "representation": m(x)[:1]}, "representation"),
    "scalar representation": (lambda m, x: {**_good(m, x), "representation": m(x).sum()}, "representation"),
    "numpy scores": (lambda m, x: {**_good(m, x), "scores": m(x).softmax(-1).detach().numpy()}, "scores"),
    "list representation": (lambda m, x: {**_good(m, x), "representation": [1, 2]}, "representation"),
    "poses 2-d": (lambda m, x: {**_good(m, x), "poses": m(x)}, "poses"),
    "poses wrong classes": (lambda m, x: {**_good(m, x), "poses": torch.zeros(len(x), 7, 4)}, "poses"),
    "poses wrong batch": (lambda m, x: {**_good(m, x), "poses": torch.zeros(1, 10, 4)}, "poses"),
    "logits wrong shape": (lambda m, x: {**_good(m, x), "logits": m(x)[:, :5]}, "logits"),
    "complex scores": (lambda m, x: {**_good(m, x), "scores": m(x).to(torch.complex64)}, "scores"),
}


def _split(n: int = 8):
    from capsprobe.data import ImageSplit

    g = torch.Generator().manual_seed(0)
    return ImageSplit(torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_a_model_adapter_answering_the_wrong_shape_is_one_line(case):
    from capsprobe import ModelAdapter, run_probe

    outputs, fragment = ADAPTER_CASES[case]
    adapter = ModelAdapter(_Net(), outputs=outputs, has_poses=True)
    with pytest.raises(CapsprobeError, match=fragment) as info:
        run_probe([adapter], _split(), ["flip"], n_boot=10, progress=False, device="cpu")
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("case, decode, fragment", [
    ("nan decoder", lambda m, poses, labels: torch.full((len(poses), 1, 28, 28), float("nan")), "not finite"),
    ("decoder wrong shape", lambda m, poses, labels: torch.zeros(len(poses), 28 * 28), "decode"),
    ("decoder wrong batch", lambda m, poses, labels: torch.zeros(1, 1, 28, 28), "decode"),
    ("decoder numpy", lambda m, poses, labels: np.zeros((len(poses), 1, 28, 28)), "decode"),
])
def test_a_model_adapter_decoder_answering_the_wrong_thing_is_one_line(case, decode, fragment):
    from capsprobe import ModelAdapter, run_probe

    adapter = ModelAdapter(_Net(), outputs=_good, has_poses=True, decode=decode)
    with pytest.raises(CapsprobeError, match=fragment) as info:
        run_probe([adapter], _split(), ["flip"], n_boot=10, progress=False, device="cpu")
    assert len(str(info.value).splitlines()) == 1


# --- a tampered checkpoint on --resume ------------------------------------------------------------------------------

def _tamper_epoch(epoch):
    def damage(run: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = run / "checkpoint" / "state.safetensors"
        data = path.read_bytes()
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        meta = dict(header["__metadata__"], epoch=str(epoch))
        tensors = load_file(str(path))
        path.unlink()
        save_file(tensors, str(path), metadata=meta)
        for name in ("complete.json", "model.safetensors", "metrics.json"):
            (run / name).unlink()
    return damage


@pytest.mark.parametrize("case, damage, fragment", [
    ("negative epoch", _tamper_epoch(-3), "epoch"),
    ("epoch past the run", _tamper_epoch(99), "epoch"),
    ("epoch text", _tamper_epoch("one"), "checkpoint"),
    ("garbage", lambda r: [_write(r / "checkpoint" / "state.safetensors", b"\x00" * 64),
                           (r / "complete.json").unlink()], "checkpoint"),
])
def test_a_tampered_checkpoint_is_refused_on_resume(done, tmp_path, monkeypatch, case, damage, fragment):
    run = _run_copy(done, tmp_path / "run")
    damage(run)
    monkeypatch.chdir(tmp_path)
    _one_line(tmp_path, [*TRAIN, "--out", str(run), "--resume"], fragment)


# --- Slurm: a failed task is one line, submitit's folder is beside the runs -----------------------------------------

def test_a_failed_slurm_task_is_one_line_and_its_logs_stay_beside_the_runs(tmp_path, monkeypatch):
    """submitit stands in (no cluster here): a task that raised is reported in one line naming its run, and
    submitit's folder is ``.slurm`` in the folder holding the runs, not ``./runs/.slurm`` in the working directory."""
    import contextlib
    import sys
    import types

    from capsprobe.training import RunConfig
    from capsprobe.training.launch import SlurmOptions, train_many
    from capsprobe.training.runs import RunError

    folders = []

    class Job:
        job_id = "42_0"

        def result(self):
            raise RuntimeError("Job 42_0 failed\nTraceback (most recent call last):\n  ...\nValueError: boom")

    class Executor:
        def __init__(self, folder, cluster=None):
            folders.append(Path(folder))
            self.cluster = cluster

        def update_parameters(self, **kwargs):
            pass

        def batch(self):
            return contextlib.nullcontext()

        def submit(self, fn, *args):
            return Job()

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=Executor))
    monkeypatch.chdir(tmp_path)
    items = [(RunConfig(model="capsnet_small", epochs=1), tmp_path / "runs" / "exp" / "caps-seed0")]
    with pytest.raises(RunError, match="caps-seed0.*ValueError: boom") as info:
        train_many(items, launcher="slurm", slurm=SlurmOptions(cluster="local"))
    assert len(str(info.value).splitlines()) == 1
    assert folders == [tmp_path / "runs" / "exp" / ".slurm"]
    assert not (tmp_path / "runs" / ".slurm").exists()
