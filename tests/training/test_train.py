"""Training: run directory, load_run, exact resume after SIGKILL, NaN guard, overwrite refusal, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from capsprobe.data import load_dataset
from capsprobe.models import adapt
from capsprobe.training.loop import NonFiniteLossError, RunExistsError, evaluate, fit
from capsprobe.training.runs import RunConfig, RunError, load_checkpoint, load_run

TINY_CAPS = {"conv_channels": 16, "primary_types": 4}
TINY = RunConfig(model="capsnet_small", epochs=1, batch_size=16, limit=48, model_kwargs=TINY_CAPS)
RUN_FILES = {"config.json", "model.safetensors", "history.csv", "metrics.json", "checkpoint", "complete.json", ".capsprobe"}


def _no_temp_files(path: Path) -> bool:
    return not [p for p in path.rglob("*") if p.name.endswith(".tmp")]


def test_one_epoch_writes_every_file_and_load_run_reproduces(tmp_path):
    out = fit(TINY, tmp_path / "run", progress=False)
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert (out / "checkpoint" / "state.safetensors").is_file() and _no_temp_files(out)
    stored = json.loads((out / "config.json").read_text())
    assert stored["config"]["model_kwargs"] == TINY_CAPS and stored["versions"]["torch"] == torch.__version__
    run = load_run(out)
    assert run.config == TINY and len(run.history) == 1 and "val_accuracy" in run.history[0]
    assert 0 <= run.metrics["test_accuracy"] <= 1 and run.metrics["test_images"] == 48

    # the rebuilt model gives the trained model's outputs, bit for bit
    splits = load_dataset("mnist-sample", limit=48)
    x = splits.test.float_images()[:8]
    torch.manual_seed(TINY.seed)
    again = load_run(out)
    with torch.no_grad():
        a, b = adapt(run.model).outputs(x), adapt(again.model).outputs(x)
    assert torch.equal(a.representation, b.representation)
    state = load_file(out / "model.safetensors")
    assert all(torch.equal(state[k], v) for k, v in run.model.state_dict().items())
    # the recorded test accuracy is that of the clean test images
    assert evaluate(run.model, splits.test)["accuracy"] == pytest.approx(run.metrics["test_accuracy"])


def test_convnet_trains_with_cross_entropy(tmp_path):
    cfg = RunConfig(model="resnet18", epochs=1, batch_size=16, limit=32)
    run = load_run(fit(cfg, tmp_path / "r", progress=False))
    assert float(run.history[0]["train_loss"]) > 0.5  # cross entropy over 10 classes, untrained


_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from capsprobe.training.runs import RunConfig
    from capsprobe.training.loop import fit
    cfg = RunConfig(model="capsnet_small", epochs=3, batch_size=16, limit=48,
                    model_kwargs={"conv_channels": 16, "primary_types": 4})
    out, mode = sys.argv[1], sys.argv[2]
    def die(epoch, batch):
        if epoch == 1 and batch == 1:  # mid-epoch 2, after the checkpoint of epoch 1
            os.kill(os.getpid(), signal.SIGKILL)
    fit(cfg, out, progress=False, resume=(mode == "resume"), on_batch=die if mode == "die" else None)
    """
)


def _start_script(out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out), mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run_script(out: Path, mode: str) -> subprocess.CompletedProcess:
    proc = _start_script(out, mode)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    straight = _start_script(tmp_path / "b", "plain")  # one thread each: the uninterrupted run beside the killed one
    killed = _run_script(tmp_path / "a", "die")
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "a" / "model.safetensors").exists()
    assert load_checkpoint(tmp_path / "a").epoch == 1 and _no_temp_files(tmp_path / "a")
    resumed = _run_script(tmp_path / "a", "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert straight.wait() == 0, straight.communicate()[1]

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ha, hb = (load_run(tmp_path / p).history for p in "ab")
    drop = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]  # noqa: E731
    assert len(ha) == 3 and drop(ha) == drop(hb)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = fit(TINY, tmp_path / "run", progress=False)
    before = (out / "checkpoint" / "state.safetensors").read_bytes()
    weights = (out / "model.safetensors").read_bytes()
    import capsprobe.training.objectives as classify_mod

    real = classify_mod.capsule_loss_of  # the classify task's loss asks for it at every step
    monkeypatch.setattr(classify_mod, "capsule_loss_of",
                        lambda model: (lambda *a, **k: real(model)(*a, **k) * float("nan")))
    with pytest.raises(NonFiniteLossError, match="non-finite loss in epoch 2"):
        fit(RunConfig(**{**TINY.to_dict(), "epochs": 2}), out, resume=True, progress=False)
    assert (out / "checkpoint" / "state.safetensors").read_bytes() == before
    assert (out / "model.safetensors").read_bytes() == weights
    assert load_checkpoint(out).epoch == 1


def test_existing_run_is_not_overwritten_without_force(tmp_path):
    out = fit(TINY, tmp_path / "run", progress=False)
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match="`force`"):
        fit(RunConfig(**{**TINY.to_dict(), "seed": 1}), out, progress=False)
    assert (out / "model.safetensors").read_bytes() == weights
    fit(RunConfig(**{**TINY.to_dict(), "seed": 1}), out, force=True, progress=False)
    assert (out / "model.safetensors").read_bytes() != weights
    assert load_run(out).config.seed == 1


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(RunExistsError, match="not a capsprobe run"):
        fit(TINY, tmp_path, force=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_resume_refuses_a_different_config(tmp_path):
    out = fit(TINY, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="differs in \\['lr'\\]"):
        fit(RunConfig(**{**TINY.to_dict(), "lr": 0.1}), out, resume=True, progress=False)


def test_load_run_errors_name_the_file(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="config.json is unreadable"):
        load_run(tmp_path / "bad")


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run_directory(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "capsprobe", "train", "--model", "capsnet_small", "--limit", "64", "--epochs", "2", "--batch-size", "16",
        "--device", "cpu", "--no-progress", "--out", str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == RUN_FILES and _no_temp_files(out)
    run = load_run(out)
    assert run.metrics["world_size"] == 2 and len(run.history) == 2
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


def test_target_accuracy_stops_at_the_first_epoch_that_reaches_it(tmp_path, caplog):
    from dataclasses import replace

    reach = replace(TINY, epochs=3, target_accuracy=1e-6)  # any trained model reaches it after epoch 1
    run = load_run(fit(reach, tmp_path / "reach", progress=False))
    assert len(run.history) == 1 and run.metrics["epochs"] == 1 and run.metrics["max_epochs"] == 3
    assert run.metrics["reached_target"] is True
    assert fit(reach, tmp_path / "reach", resume=True, progress=False)  # complete: nothing to train
    assert len(load_run(tmp_path / "reach").history) == 1

    never = replace(TINY, epochs=2, target_accuracy=1.0)  # 48 digits after 1-2 epochs: never 100%
    run = load_run(fit(never, tmp_path / "never", progress=False))
    assert len(run.history) == 2 and run.metrics["reached_target"] is False  # reported, not hidden
    more = replace(never, epochs=3)  # a higher maximum resumes the unmatched run
    assert len(load_run(fit(more, tmp_path / "never", resume=True, progress=False)).history) == 3


def test_val_every_stops_within_the_epoch_and_otherwise_changes_nothing(tmp_path):
    """Mid-epoch validation: a run that reaches the target stops at that step (recorded, complete, not retrained on
    resume); a run that never reaches it trains bit for bit as without the extra validations (the model goes back
    to train mode and the data order's RNG is untouched)."""
    from dataclasses import replace

    from capsprobe.training.runs import ConfigError, completion_problem

    reach = replace(TINY, epochs=3, target_accuracy=1e-6, val_every=1)
    out = fit(reach, tmp_path / "reach", progress=False)
    run = load_run(out)
    assert len(run.history) == 1 and int(run.history[0]["steps"]) == 1 and run.metrics["steps"] == 1
    assert run.metrics["reached_target"] is True and completion_problem(out, reach) is None
    assert fit(reach, out, resume=True, progress=False) and len(load_run(out).history) == 1

    never = replace(TINY, epochs=2, target_accuracy=1.0)  # never reached: every mid-epoch check fails
    plain = load_file(str(fit(never, tmp_path / "plain", progress=False) / "model.safetensors"))
    checked_run = fit(replace(never, val_every=1), tmp_path / "checked", progress=False)
    checked = load_file(str(checked_run / "model.safetensors"))
    assert plain.keys() == checked.keys() and all(torch.equal(plain[k], checked[k]) for k in plain)
    steps = [int(r["steps"]) for r in load_run(checked_run).history]
    assert len(steps) == 2 and steps[0] == steps[1] > 1  # whole epochs

    with pytest.raises(ConfigError, match="val_every"):
        RunConfig(val_every=5)  # nothing to stop at
    with pytest.raises(ConfigError, match="val_every"):
        RunConfig(target_accuracy=0.9, val_every=0)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_target_accuracy_must_be_a_fraction(bad):
    from capsprobe.training.runs import ConfigError

    with pytest.raises(ConfigError, match="target_accuracy"):
        RunConfig(target_accuracy=bad)


def test_channels_last_trains_the_same_model_and_compile_wraps_the_objective(tmp_path, monkeypatch):
    """channels_last changes the memory format, not the result (same weights to rounding after an epoch);
    --compile hands the whole objective to torch.compile (stubbed here: compiling takes minutes on 2 cores)."""
    from dataclasses import replace

    import capsprobe.training.loop as train_mod

    base = load_run(fit(TINY, tmp_path / "base", progress=False))
    nhwc = load_run(fit(replace(TINY, channels_last=True), tmp_path / "nhwc", progress=False))
    for (name, a), (_, b) in zip(base.model.state_dict().items(), nhwc.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    seen = []

    def fake_compile(module, *args, **kwargs):
        seen.append(module)
        return module

    monkeypatch.setattr(train_mod.torch, "compile", fake_compile)
    fit(replace(TINY, compile=True), tmp_path / "compiled", progress=False)
    assert len(seen) == 1 and isinstance(seen[0], train_mod.Objective)
    fit(TINY, tmp_path / "plain", progress=False)
    assert len(seen) == 1  # off by default
    obj = train_mod.Objective(base.model, channels_last=True)
    assert base.model.conv1.weight.is_contiguous(memory_format=torch.channels_last) and obj.channels_last
    with pytest.raises(Exception, match="channels_last"):
        RunConfig(channels_last="yes")
