"""Precision and provenance: which autocast dtype a card trains in, no CUDA query at import, every native model trains
under bf16 and fp16 autocast (on CPU, through the loop's own step), a run and a report record their device and
precision, and a run is resumed only on the same kind of device in the same precision."""

from __future__ import annotations

import copy
import importlib
import json
import os
import pkgutil
import select
import shutil
import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.data import load_dataset
from capsprobe.models import ModelAdapter, create_model, family_classes, native_models
from capsprobe.probe import Subject, run_probe
from capsprobe.runtime import AUTOCAST_CPU_ENV, autocast_dtype
from capsprobe.training.loop import Objective, fit, train_step
from capsprobe.training.runs import CHECKPOINT, RunConfig, RunError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small gain nothing from a second thread, and lose much to it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RECORD_KEYS = {"device", "device_type", "device_name", "compute_capability", "torch", "cuda", "cudnn", "autocast",
               "tf32_matmul", "tf32_cudnn"}
CPU = torch.device("cpu")


# --- which dtype a card trains in -------------------------------------------------------------------------------


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((6, 1), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bf16_only_on_a_card_that_computes_it_natively(monkeypatch, capability, expected):
    """Before: torch.cuda.is_bf16_supported() (which counts emulated bf16) chose bf16 on a pre-Ampere card."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
                        or capability >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert autocast_dtype(torch.device("cuda:0"), True) == expected
    assert autocast_dtype(torch.device("cuda:0"), False) is None


def test_autocast_is_off_on_cpu_unless_a_test_asks(monkeypatch):
    monkeypatch.delenv(AUTOCAST_CPU_ENV, raising=False)
    assert autocast_dtype(CPU, True) is None
    monkeypatch.setenv(AUTOCAST_CPU_ENV, "fp16")
    assert autocast_dtype(CPU, True) == torch.float16 and autocast_dtype(CPU, False) is None
    monkeypatch.setenv(AUTOCAST_CPU_ENV, "fp8")
    with pytest.raises(Exception, match="bf16 or fp16"):
        autocast_dtype(CPU, True)


def test_importing_every_module_asks_nothing_of_cuda():
    """capsprobe and every submodule imported afresh with torch.cuda's queries made to raise. In a forked child: the
    libraries are loaded already (a fresh interpreter would spend seconds on them), capsprobe's own modules are
    dropped from ``sys.modules`` and imported again, so their import-time code runs again."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report in one line on the pipe, never return into pytest
        try:
            warnings.simplefilter("ignore")  # timm warns that the models register again
            torch.set_num_threads(1)

            def refuse(*args, **kwargs):
                raise RuntimeError("CUDA queried at import")

            for name in ("is_available", "device_count", "get_device_properties", "get_device_capability",
                         "is_bf16_supported", "current_device", "get_device_name", "init"):
                setattr(torch.cuda, name, refuse)
            for name in [n for n in sys.modules if n == "capsprobe" or n.startswith("capsprobe.")]:
                del sys.modules[name]
            package = importlib.import_module("capsprobe")
            names = [m.name for m in pkgutil.walk_packages(package.__path__, "capsprobe.")]
            for name in names:
                importlib.import_module(name)
            message = f"imported {len(names)}"
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent reports it
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while select.select([read], [], [], 120)[0] and (chunk := os.read(read, 65536)):
        chunks.append(chunk)
    os.close(read)
    if not chunks:  # two minutes without a word: the child hangs
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    assert message.startswith("imported"), message
    assert int(message.split()[1]) > 40


# --- the autocast training matrix -------------------------------------------------------------------------------

# per family (by class, so a family registered later trains at its defaults): the tiniest options
_TINY = {
    "BackboneHeadNet": dict(planes=4, blocks=(1, 1, 1), caps_types=2, pose_dim=4, out_dim=4),
    "BaselineCNN": dict(channels=(4, 4, 4), hidden=(8, 8)),
    "CapsNet": dict(conv_channels=8, primary_types=2, decoder_hidden=(8, 8)),
    "EMCapsNet": dict(conv_channels=4, primary_types=2, caps1_types=2, caps2_types=2),
    "EfficientCapsNet": dict(channels=(4, 4, 4, 8), primary_caps=4, decoder_hidden=(8, 8)),
    "GCNN": dict(fields=(2, 2), hidden=8),
}


def _tiny_model(name: str) -> nn.Module:
    options = dict(_TINY.get(family_classes()[name].__name__, {}))
    if name == "backbone_head_em":
        options["pose_dim"] = 16  # 4x4 pose matrices
    return create_model(name, in_chans=1, num_classes=10, img_size=28, **options)


@pytest.mark.parametrize("name", native_models())
def test_every_native_model_trains_under_bf16_and_fp16_autocast(monkeypatch, name):
    """A step of the loop's own train_step under CPU autocast (the dtype from autocast_dtype, as fit takes it; fp16
    with the gradient scaler), with and without channels_last: the loss is finite and the weights move."""
    torch.manual_seed(0)
    initial = _tiny_model(name)
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    for mode in ("bf16", "fp16"):
        monkeypatch.setenv(AUTOCAST_CPU_ENV, mode)
        dtype = autocast_dtype(CPU, True)
        assert dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
        for channels_last in (False, True):
            model = copy.deepcopy(initial)
            objective = Objective(model, task="classify", channels_last=channels_last).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
            # one step; fp16 up to 6: the scaler skips the steps whose scaled gradients overflow (its scale starts
            # at 2 ** 16 and halves at each), as on CUDA
            for _ in range(6 if dtype == torch.float16 else 1):
                loss, scores = train_step(objective, optimizer, scaler, images, labels, CPU, dtype)
                assert torch.isfinite(loss) and scores.shape == (4, 10), (mode, channels_last)
                moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), initial.parameters())]
                if any(moved):
                    break
            assert sum(moved) >= len(moved) // 2 and all(torch.isfinite(p).all() for p in model.parameters()), \
                (mode, channels_last)


# --- provenance and resume --------------------------------------------------------------------------------------

TINY = dict(model="capsnet_small", model_kwargs={"conv_channels": 8, "primary_types": 2}, epochs=1, batch_size=16,
            limit=32, device="cpu")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """A finished one-epoch run trained under CPU autocast bf16 (never modified: tests copy it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(AUTOCAST_CPU_ENV, "bf16")
        return fit(RunConfig(**TINY), tmp_path_factory.mktemp("bf16") / "run", progress=False)


def test_a_run_records_its_device_and_precision(bf16_run):
    """Before: metrics.json had only "device": "cpu", and config.json nothing of the device or the precision."""
    for name in ("metrics.json", "config.json"):
        record = json.loads((bf16_run / name).read_text())["device_record"]
        assert set(record) == RECORD_KEYS, name
        assert record["device"] == "cpu" and record["autocast"] == "bfloat16" and record["device_name"]
        assert record["torch"] == torch.__version__ and record["tf32_matmul"] is False


def _set_stored_record(run: Path, **changes) -> None:
    """Fake where the checkpoint was trained (what a GPU would have written), keeping its tensors."""
    path = run / CHECKPOINT
    data = path.read_bytes()
    meta = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    extra = json.loads(meta["extra"])
    extra["device_record"].update(changes)
    meta["extra"] = json.dumps(extra)
    path.write_bytes(st_save(st_load(data), metadata=meta))


def test_resume_in_another_precision_or_on_another_device_is_refused(bf16_run, tmp_path, monkeypatch):
    """Before: the run resumed silently, its second epoch in float32 after a first in bf16."""
    run = shutil.copytree(bf16_run, tmp_path / "run")
    monkeypatch.delenv(AUTOCAST_CPU_ENV, raising=False)  # this session: float32
    config = RunConfig(**{**TINY, "epochs": 2})
    before = (run / CHECKPOINT).read_bytes()
    with pytest.raises(RunError, match="bfloat16") as info:
        fit(config, run, resume=True, progress=False)
    assert "\n" not in str(info.value) and "allow_device_change" in str(info.value)
    assert (run / CHECKPOINT).read_bytes() == before
    # the CLI: one line, and its own flag
    result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--allow-device-change" in result.output
    # a stored record from a GPU in this run's precision: the device type alone is refused
    monkeypatch.setenv(AUTOCAST_CPU_ENV, "bf16")
    _set_stored_record(run, device="cuda:0", device_type="cuda", device_name="NVIDIA A100-SXM4-80GB")
    with pytest.raises(RunError, match="cuda"):
        fit(config, run, resume=True, progress=False)
    # asked for explicitly, the run goes on, and its record says where the last epochs ran
    fit(config, run, resume=True, allow_device_change=True, progress=False)
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert json.loads((run / "metrics.json").read_text())["device_record"]["device_type"] == "cpu"


def test_an_experiments_runs_and_report_record_their_device(tiny_experiment):
    """The demo experiment the report tests share (built once per session): each of its runs and its report's
    manifest.json (what perturb wrote through the pipeline) carry the record; the probe's says float32."""
    folder, _ = tiny_experiment("demo")
    manifest = json.loads((folder / "reports" / "demo" / "manifest.json").read_text())
    assert set(manifest["device_record"]) == RECORD_KEYS and manifest["device_record"]["autocast"] is None
    runs = sorted(folder.glob("runs/**/metrics.json"))
    assert len(runs) == 2
    for path in runs:
        assert set(json.loads(path.read_text())["device_record"]) == RECORD_KEYS, path


def test_perturb_takes_autocast_only_when_asked_and_records_it(bf16_run, tmp_path, monkeypatch):
    monkeypatch.setenv(AUTOCAST_CPU_ENV, "bf16")  # CPU autocast, for the test
    for flag, expected in (("--no-amp", None), ("--amp", "bfloat16")):
        out = tmp_path / flag
        result = CliRunner().invoke(app, ["perturb", str(bf16_run), "-t", "flip", "--limit", "8", "--bootstrap", "10",
                                          "--device", "cpu", "--no-progress", flag, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "manifest.json").read_text())["device_record"]["autocast"] == expected


# --- the probe computes in float32 and says so ------------------------------------------------------------------


class _Spy(nn.Module):
    """A tiny classifier that notes the TF32 flags and the autocast state it runs under."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        self.seen: set[tuple[bool, bool, bool]] = set()

    def forward(self, x):
        self.seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                       torch.is_autocast_enabled("cpu")))
        return self.net(x)


def test_the_probe_runs_in_float32_with_tf32_off_and_records_it(monkeypatch):
    """Before: the probe's default was autocast (bf16 on CUDA) with cuDNN's TF32 on, and its manifest recorded
    neither."""
    split = load_dataset("mnist-sample", limit=8).test
    monkeypatch.setenv(AUTOCAST_CPU_ENV, "bf16")  # would put the probe under autocast, were its default amp
    spy = _Spy()
    subject = Subject("spy", ModelAdapter(spy, representation=lambda m, x: m.net[:3](x)))
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # what a user may have set
    try:
        result = run_probe([subject], split, ["flip"], bootstrap=10, progress=False)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored
        assert spy.seen == {(False, False, False)}
        record = result.manifest["device_record"]
        assert set(record) == RECORD_KEYS and record["autocast"] is None and record["device_type"] == "cpu"
        # autocast only when asked for, and then recorded
        spy.seen.clear()
        result = run_probe([subject], split, ["flip"], bootstrap=10, progress=False, amp=True)
        assert spy.seen == {(False, False, True)} and result.manifest["device_record"]["autocast"] == "bfloat16"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
