"""Many runs at once: worker processes (a GPU each, round-robin, or a share of the threads), finished runs reused,
errors surfaced, and a Slurm array job through submitit's local executor."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from capsprobe.errors import CapsprobeError, InvalidInputError
from capsprobe.training import RunConfig, fit
from capsprobe.training.launch import SlurmOptions, _visible_gpus, _worker_init, train_many

TINY = dict(model="capsnet_small", model_kwargs={"conv_channels": 8, "primary_types": 2}, epochs=1, batch_size=16,
            limit=48, device="cpu")


def _weights(run):
    return load_file(str(next(run.glob("*.safetensors"))))


def _items(root, seeds=(0, 1)):
    return [(RunConfig(seed=s, **TINY), root / f"caps-seed{s}") for s in seeds]


def test_two_workers_train_the_runs_one_process_would_and_reuse_them(tmp_path):
    parallel = train_many(_items(tmp_path / "par"), jobs=2)
    assert parallel == [tmp_path / "par" / "caps-seed0", tmp_path / "par" / "caps-seed1"]
    serial = [fit(config, out, progress=False) for config, out in _items(tmp_path / "ser")]
    for a, b in zip(parallel, serial):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        for k in wa:  # the same run: same seed, same data order; threads may reorder a sum's last bits
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    stamps = [os.stat(next(p.glob("*.safetensors"))).st_mtime_ns for p in parallel]
    assert train_many(_items(tmp_path / "par"), jobs=2) == parallel  # finished: reused, not retrained
    assert [os.stat(next(p.glob("*.safetensors"))).st_mtime_ns for p in parallel] == stamps


def test_finished_runs_start_no_worker_and_a_changed_config_is_not_reused(tmp_path, monkeypatch):
    """A finished run is reused in this process (no worker, no data loaded); one whose config changed is not
    finished, so fit() sees it and refuses it as before."""
    import capsprobe.training.launch as launch
    from capsprobe.training.loop import is_finished

    items = _items(tmp_path)
    done = train_many(items, jobs=1)
    assert all(is_finished(c, o) for c, o in items)

    def no_worker(*args, **kwargs):
        raise AssertionError("a worker was started for finished runs")

    monkeypatch.setattr(launch, "ProcessPoolExecutor", no_worker)
    monkeypatch.setattr(launch, "fit", no_worker)
    assert train_many(items, jobs=2) == done
    assert train_many(items, jobs=1) == done
    changed = replace(items[0][0], lr=items[0][0].lr * 2)
    assert not is_finished(changed, items[0][1])
    assert not is_finished(items[0][0], tmp_path / "missing")


def test_a_failing_run_is_raised_not_swallowed(tmp_path):
    (tmp_path / "bad").write_text("not a run folder")
    items = [(RunConfig(seed=5, **TINY), tmp_path / "bad")] + _items(tmp_path)
    with pytest.raises(CapsprobeError, match="bad"):  # the worker's own error, carried across the process boundary
        train_many(items, jobs=2)


def test_workers_get_gpus_round_robin_and_a_share_of_the_threads(monkeypatch):
    import multiprocessing

    from capsprobe.training import launch

    monkeypatch.setattr(launch, "_OWN_GPU", False)  # _worker_init sets it in this process; restored afterwards
    slots = multiprocessing.get_context("spawn").Queue()
    for i in range(3):
        slots.put(i)
    threads = torch.get_num_threads()
    seen = []
    try:
        for _ in range(3):
            _worker_init(slots, ["3", "5"], 1)
            seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    assert seen == ["3", "5", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert _visible_gpus() == ["2", "7"]  # only the GPUs this process was given are handed on


def test_bad_launch_options_are_one_line_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="at least 1"):
        train_many(_items(tmp_path), jobs=0)
    with pytest.raises(InvalidInputError, match="unknown launcher 'pbs'"):
        train_many(_items(tmp_path), launcher="pbs")


def test_a_slurm_array_job_through_submitits_local_executor(tmp_path):
    pytest.importorskip("submitit")
    options = SlurmOptions(cluster="local", log_dir=str(tmp_path / "logs"), time_min=10, gpus=0, cpus=1)
    runs = train_many(_items(tmp_path / "runs"), launcher="slurm", slurm=options)
    assert [p.name for p in runs] == ["caps-seed0", "caps-seed1"]
    assert all((p / "config.json").is_file() for p in runs)
    assert any((tmp_path / "logs").iterdir())  # submitit's per-task logs


def test_a_worker_process_tunes_the_allocator_as_the_command_line_does(monkeypatch, tmp_path):
    """Workers (local or Slurm tasks) are fresh interpreters that never ran the CLI's callback; each run tunes glibc's
    allocator itself before it trains."""
    from capsprobe.training import launch

    calls = []
    monkeypatch.setattr(launch, "tune_cpu_allocator", lambda: calls.append("tune") or True)
    monkeypatch.setattr(launch, "fit", lambda config, out, **kw: calls.append("fit") or out)
    assert launch._fit_one(RunConfig(seed=0, **TINY), str(tmp_path)) == str(tmp_path)
    assert calls == ["tune", "fit"]


def test_each_worker_trains_on_its_own_gpu_and_a_named_gpu_is_honoured(monkeypatch, tmp_path):
    """Workers see one GPU each (CUDA_VISIBLE_DEVICES), so inside a worker that GPU is cuda:0: a run asking for
    ``cuda:1`` trains there on the worker's GPU, which is visible GPU 1, not on a missing or another worker's device.
    The pool runs in this process (a fresh worker per run); fit is a recorder."""
    from concurrent.futures import Future

    from capsprobe.training import launch

    class InlinePool:
        def __init__(self, max_workers, mp_context, initializer, initargs):
            self.start = lambda: initializer(*initargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            before = os.environ.get("CUDA_VISIBLE_DEVICES")
            self.start()
            future: Future = Future()
            try:
                future.set_result(fn(*args))
            finally:
                os.environ["CUDA_VISIBLE_DEVICES"] = before  # type: ignore[assignment]
            return future

    seen = []
    monkeypatch.setattr(launch, "_OWN_GPU", False)  # the in-process "workers" set it; restored afterwards
    monkeypatch.setattr(launch, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(launch, "tune_cpu_allocator", lambda: True)
    monkeypatch.setattr(launch, "fit", lambda config, out, **kw: seen.append(
        (os.environ["CUDA_VISIBLE_DEVICES"], config.device)) or out)
    threads = torch.get_num_threads()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # this process's GPUs: cuda:0, cuda:1, cuda:2 here
    try:
        items = [(RunConfig(seed=s, **{**TINY, "device": "auto"}), tmp_path / f"auto{s}") for s in range(3)]
        launch.train_many(items, jobs=3)
        assert seen == [("4", "auto"), ("6", "auto"), ("7", "auto")]  # auto: cuda:0 in each worker, its own GPU
        seen.clear()
        items = [(RunConfig(seed=s, **{**TINY, "device": "cuda:1"}), tmp_path / f"one{s}") for s in range(2)]
        launch.train_many(items, jobs=2)
        assert seen == [("6", "cuda:0"), ("6", "cuda:0")]  # visible GPU 1 is "6", cuda:0 inside the worker
        seen.clear()
        items = [(RunConfig(seed=0, **{**TINY, "device": "cuda:5"}), tmp_path / "x"), items[0]]
        with pytest.raises(InvalidInputError, match="cuda:5"):
            launch.train_many(items, jobs=2)
    finally:
        torch.set_num_threads(threads)


def test_allow_device_change_reaches_every_run_of_an_experiment(tmp_path, monkeypatch):
    """``run --allow-device-change`` is passed down to each run's ``fit`` (the flag the refusal names), and a run
    without it resumes only on its own kind of device (``allow_device_change=False``)."""
    from typer.testing import CliRunner

    import capsprobe.pipeline as pipeline
    import capsprobe.training.launch as launch
    from capsprobe.cli import app

    seen = []
    monkeypatch.setattr(launch, "fit", lambda config, out, **kw: seen.append(kw["allow_device_change"]) or out)
    train_many(_items(tmp_path), allow_device_change=True)
    train_many(_items(tmp_path, seeds=(2,)))
    assert seen == [True, True, False]
    asked = {}
    monkeypatch.setattr(pipeline, "run_experiment", lambda *a, **kw: asked.update(kw) or tmp_path / "report.html")
    result = CliRunner().invoke(app, ["run", "experiments/demo.toml", "--size", "tiny", "--allow-device-change"])
    assert result.exit_code == 0, result.output
    assert asked["allow_device_change"] is True
