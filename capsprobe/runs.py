"""The run directory: configuration, weights, history and checkpoints, written atomically.

A run directory holds::

    config.json          {"config": RunConfig, "input": {in_chans, img_size, num_classes}, "versions": {...}}
    model.safetensors    final weights (safetensors: nothing is ever unpickled)
    history.csv          one row per finished epoch
    metrics.json         final validation and test figures
    checkpoint/state.safetensors   weights + optimiser state + epoch + history, for ``--resume``

Every file is written to a temporary name in the same folder and renamed over the target, so an
interrupted command never leaves a half-written file: a reader sees the old file or the new one.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .errors import CapsprobeError, option
from .models import create_model, unwrap
from .runtime import atomic_write_bytes, atomic_write_text

__all__ = [
    "Checkpoint",
    "Run",
    "RunConfig",
    "RunError",
    "library_versions",
    "load_checkpoint",
    "load_run",
    "read_config",
    "run_name",
    "read_metrics",
    "save_checkpoint",
    "save_weights",
    "write_history",
]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
HISTORY = "history.csv"
METRICS = "metrics.json"
CHECKPOINT = Path("checkpoint") / "state.safetensors"


class RunError(CapsprobeError):
    """A run directory that is missing, incomplete or unreadable."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (frozen; stored in ``config.json``)."""

    model: str = "capsnet"  # capsnet, capsnet_small, baseline_cnn or any timm convnet
    dataset: str = "mnist-sample"  # see `capsprobe list`
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # Adam, as in the paper's official code
    lr_decay: float = 0.96  # exponential decay of the learning rate per epoch
    weight_decay: float = 0.0
    seed: int = 0  # weights, data order, augmentation and dropout
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:1, ...
    amp: bool = True  # autocast on CUDA (bf16 where supported, else fp16 + loss scaling); off on CPU
    max_shift: int = 2  # the paper's augmentation: random integer shift up to this many px (0 = off)
    recon_weight: float = 0.0005  # CapsNet: weight of the reconstruction loss (sum of squared errors)
    val_fraction: float = 0.1  # held out from the training data for validation
    limit: int | None = None  # keep at most this many images per split (quick runs, tests)
    data_root: str | None = None  # torchvision data folder; None = capsprobe's cache folder
    download: bool = True  # let torchvision download a missing data set
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_iters": 1}
    task: str = "classify"  # classify, or multimnist: two overlapping digits per 36x36 image (paper section 6)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunError(f"config has unknown keys {unknown}")
        return cls(**data)


def run_name(model: str, seed: int, dataset: str | None = None) -> str:
    """The one way runs are named: ``<model>[-<dataset>]-seed<N>`` (experiments leave the data set out: their folder
    names it)."""
    return f"{model}-" + (f"{dataset}-" if dataset else "") + f"seed{int(seed)}"


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a result."""
    import kornia
    import numpy
    import timm

    from . import __version__

    return {
        "capsprobe": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "kornia": kornia.__version__,
        "numpy": numpy.__version__,
    }


# --- weights and history --------------------------------------------------------------------------------------


def _tensors_for_saving(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()  # safetensors refuses tensors that share memory (tied weights)
        seen.add(ptr)
        out[key] = t
    return out


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Save the model's state dict (unwrapped from DDP) as safetensors, atomically."""
    return atomic_write_bytes(path, st_save(_tensors_for_saving(unwrap(model).state_dict())))


def write_history(path: str | Path, history: list[dict[str, Any]]) -> Path:
    """Write one CSV row per epoch, atomically."""
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    return atomic_write_text(path, buf.getvalue())


# --- checkpoints ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint restores: finished epochs, their history, and the state dicts."""

    epoch: int
    history: list[dict[str, Any]]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    extra: dict[str, Any]


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights, optimiser state, epoch and history as one safetensors file (one atomic rename).

    Keeping all of it in one file means a kill at any moment leaves either the previous checkpoint or
    this one, never weights of one epoch beside the history of another.
    """
    tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    metadata = {
        "epoch": str(epoch),
        "history": json.dumps(history),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "extra": json.dumps(extra or {}),
    }
    return atomic_write_bytes(Path(run_dir) / CHECKPOINT, st_save(_tensors_for_saving(tensors), metadata=metadata))


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``checkpoint/state.safetensors`` of a run directory."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunError(f"no checkpoint to resume from: {path} is missing")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 header size, then JSON header
        meta = json.loads(data[8 : 8 + header_len])["__metadata__"]
    except Exception as exc:  # noqa: BLE001 - any parse failure is an unreadable checkpoint
        raise RunError(f"checkpoint {path} is unreadable: {exc}") from None
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in json.loads(meta["optim_scalars"]).items():
        state.setdefault(int(idx), {}).update(values)
    return Checkpoint(
        epoch=int(meta["epoch"]),
        history=json.loads(meta["history"]),
        model_state=model_state,
        optimizer_state={"state": state, "param_groups": json.loads(meta["param_groups"])},
        extra=json.loads(meta["extra"]),
    )


# --- reading a run --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A loaded run: the model in eval mode, its config and what training recorded."""

    path: Path
    model: nn.Module
    config: RunConfig
    input: dict[str, Any]
    history: list[dict[str, str]]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunError(f"{path} is missing: is {path.parent} a capsprobe run directory?")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is unreadable: {exc}") from None


def read_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run's :class:`RunConfig` and its input description ``{in_chans, img_size, num_classes}``."""
    data = _read_json(Path(run_dir) / CONFIG)
    try:
        return RunConfig.from_dict(data["config"]), dict(data["input"])
    except (KeyError, TypeError) as exc:
        raise RunError(f"{Path(run_dir) / CONFIG} is malformed: {exc}") from None


def build_model(config: RunConfig, input_spec: dict[str, Any]) -> nn.Module:
    """The randomly initialised model a run trains."""
    return create_model(
        config.model,
        in_chans=input_spec["in_chans"],
        num_classes=input_spec["num_classes"],
        img_size=input_spec["img_size"],
        **config.model_kwargs,
    )


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``metrics.json`` (test accuracy, throughput...)."""
    return _read_json(Path(run_dir) / METRICS)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained model from its run directory alone (config.json + model.safetensors).

    Raises:
        RunError: the folder is missing a file, or a file is unreadable.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"run directory {path} does not exist")
    config, input_spec = read_config(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise RunError(f"{weights} is missing: the run has not finished (resume it with {option('resume')})")
    try:
        state = st_load(weights.read_bytes())
    except Exception as exc:  # noqa: BLE001
        raise RunError(f"{weights} is unreadable: {exc}") from None
    model = build_model(config, input_spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{weights} does not fit model {config.model}: {str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    history: list[dict[str, str]] = []
    if (path / HISTORY).is_file():
        with open(path / HISTORY, newline="") as fh:
            history = list(csv.DictReader(fh))
    metrics = _read_json(path / METRICS) if (path / METRICS).is_file() else {}
    return Run(path=path, model=model, config=config, input=input_spec, history=history, metrics=metrics)
