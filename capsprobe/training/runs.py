"""The run directory: configuration, weights, history and checkpoints, written atomically.

A run directory holds::

    config.json          {"config": RunConfig, "input": {in_chans, img_size, num_classes}, "versions": {...},
                          "device_record": {device, device_name, versions, autocast, TF32}}
    model.safetensors    final weights (safetensors: nothing is ever unpickled)
    history.csv          one row per finished epoch
    metrics.json         final validation and test figures, and the device record of the last session
    checkpoint/state.safetensors   weights + optimiser state + epoch + history (+ the device record), for ``--resume``

Every file is written to a temporary name in the same folder and renamed over the target, so an
interrupted command never leaves a half-written file: a reader sees the old file or the new one.

Provenance: each training session records where and in what precision it computes
(:func:`capsprobe.runtime.device_record`) in ``config.json``, in every checkpoint and in ``metrics.json``; a run is
resumed only on the same kind of device in the same precision (:func:`device_change`), unless asked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..errors import CapsprobeError, InvalidInputError, option
from ..models import check_model_kwargs, create_model, unwrap
from ..runtime import (
    MARKER,
    atomic_write_bytes,
    atomic_write_text,
    check_device,
    is_capsprobe_folder,
    library_versions,
    write_marker,
)

__all__ = [
    "AUGMENTS",
    "COMPLETE",
    "MARKER",
    "Checkpoint",
    "ConfigError",
    "Run",
    "RunConfig",
    "RunError",
    "RunExistsError",
    "library_versions",
    "check_plain_name",
    "completion_problem",
    "config_digest",
    "config_changes",
    "device_change",
    "is_finished",
    "load_checkpoint",
    "load_run",
    "prepare_run_dir",
    "read_config",
    "run_name",
    "read_metrics",
    "save_checkpoint",
    "save_weights",
    "start_run_dir",
    "with_overrides",
    "write_completion",
    "write_history",
    "write_metrics",
]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
HISTORY = "history.csv"
METRICS = "metrics.json"
CHECKPOINT = Path("checkpoint") / "state.safetensors"
COMPLETE = "complete.json"  # written last: the run is whole


class RunError(CapsprobeError):
    """A run directory that is missing, incomplete or unreadable."""


class RunExistsError(RunError):
    """The output folder already holds a run, and neither resume nor force was asked for."""


class ConfigError(InvalidInputError):
    """A configuration value of the wrong type or out of range; ``field`` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field} {message}")


_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_plain_name(name: Any, what: str) -> str:
    """``name`` when it is a plain file name (letters, digits, ``_ . + -``; no separator, no ``..``), else
    :class:`ConfigError` naming ``what``."""
    if not isinstance(name, str) or not _PLAIN.fullmatch(name) or ".." in name:
        raise ConfigError(what, f"must be a plain name (letters, digits, _ . + -; no / or ..), got {name!r}")
    return name


def _check_number(name: str, value: Any, kind: type, low: float | None = None, *, above: bool = False,
                  below: float | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok_type = isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
    if not ok_type:
        raise ConfigError(name, f"must be {'a number' if kind is float else 'an integer'}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(name, f"must be finite, got {value!r}")
    if low is not None and (value <= low if above else value < low):
        raise ConfigError(name, f"must be {'>' if above else '>='} {low:g}, got {value!r}")
    if below is not None and value >= below:
        raise ConfigError(name, f"must be < {below:g}, got {value!r}")


MAX_EPOCHS = 100_000  # upper bounds of a run's sizes: far past any real run, far below a typo's hang
MAX_BATCH = 65_536
MAX_SHIFT = 256
# training-only augmentations after the shift (:func:`capsprobe.training.loop.augment_batch`): none; rotate, a uniform
# angle in [-180, 180) per image (the full circle: the upside-down test turns by 180); affine, the suite's affine warp
# at strength 1. The augmentation control of issue 48: learned invariance beside built-in equivariance.
AUGMENTS = ("none", "rotate", "affine")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (frozen; stored in ``config.json``)."""

    model: str = "capsnet"  # capsnet, capsnet_small, baseline_cnn or any timm convnet
    dataset: str = "mnist-sample"  # see `capsprobe list`
    epochs: int = 10  # with target_accuracy: the most epochs
    batch_size: int = 128
    lr: float = 1e-3  # Adam, as in the paper's official code
    lr_decay: float = 0.96  # exponential decay of the learning rate per epoch
    weight_decay: float = 0.0
    seed: int = 0  # weights, data order, augmentation and dropout
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:1, ...
    amp: bool = True  # autocast on CUDA (bf16 where supported, else fp16 + loss scaling); off on CPU
    max_shift: int = 2  # the paper's augmentation: random integer shift up to this many px (0 = off)
    augment: str = "none"  # after the shift, training images only: none, rotate (full circle) or affine (AUGMENTS)
    recon_weight: float = 0.0005  # CapsNet: weight of the reconstruction loss (sum of squared errors)
    val_fraction: float = 0.1  # held out from the training data for validation
    limit: int | None = None  # keep at most this many images per split (quick runs, tests)
    data_root: str | None = None  # torchvision data folder; None = capsprobe's cache folder
    download: bool = True  # let torchvision download a missing data set
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_iters": 1}
    task: str = "classify"  # classify, or multimnist: two overlapping digits per 36x36 image (paper section 6)
    target_accuracy: float | None = None  # stop after the first epoch whose validation accuracy reaches this
    val_every: int | None = None  # with target_accuracy: also validate every this many steps, and stop there
    channels_last: bool = False  # NHWC weights and inputs for the convolutions (faster on CUDA tensor cores)
    compile: bool = False  # torch.compile the training objective (model and loss); minutes of compilation first
    label: str | None = None  # the variant's name in run folders and tables (an ablation's "no-routing"); None: model

    @property
    def variant(self) -> str:
        """What tables call this run's model: its ``label``, else the model name."""
        return self.label or self.model

    def __post_init__(self):
        """Every field checked for type and range (a config is data: from the CLI, an experiment file or a run's
        config.json); model options pass the model family's allowlist."""

        check_plain_name(self.model, "model")
        if self.label is not None:
            check_plain_name(self.label, "label")
        for name in ("dataset", "task", "device"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"must be a string, got {getattr(self, name)!r}")
        for name in ("amp", "download", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        try:
            check_device(self.device)
        except InvalidInputError as exc:
            raise ConfigError("device", str(exc)) from None
        # upper bounds far beyond any real run: a typo (10**7) is refused at once, not left to hang or exhaust memory
        _check_number("epochs", self.epochs, int, 1, below=MAX_EPOCHS + 1)
        _check_number("batch_size", self.batch_size, int, 1, below=MAX_BATCH + 1)
        _check_number("seed", self.seed, int, 0, below=2**31)  # torch's generators, epoch_seed's arithmetic
        _check_number("max_shift", self.max_shift, int, 0, below=MAX_SHIFT + 1)
        if not isinstance(self.augment, str) or self.augment not in AUGMENTS:
            raise ConfigError("augment", f"must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        _check_number("limit", self.limit, int, 1, optional=True)
        _check_number("lr", self.lr, float, 0, above=True)
        _check_number("lr_decay", self.lr_decay, float, 0, above=True)
        _check_number("weight_decay", self.weight_decay, float, 0)
        _check_number("recon_weight", self.recon_weight, float, 0)
        _check_number("val_fraction", self.val_fraction, float, 0, above=True, below=1)
        _check_number("target_accuracy", self.target_accuracy, float, 0, above=True, optional=True)
        if self.target_accuracy is not None and self.target_accuracy > 1:
            raise ConfigError("target_accuracy", f"must be at most 1 (a fraction), got {self.target_accuracy!r}")
        _check_number("val_every", self.val_every, int, 1, optional=True)
        if self.val_every is not None and self.target_accuracy is None:
            raise ConfigError("val_every", "validates to stop at target_accuracy, which is not set")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError("data_root", f"must be a path, got {self.data_root!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError("model_kwargs", f"must be a table of options, got {self.model_kwargs!r}")
        check_model_kwargs(self.model, self.model_kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunError(f"config has unknown keys {unknown}")
        return cls(**data)


def with_overrides(config: RunConfig, **changes: Any) -> RunConfig:
    """``config`` with the non-None ``changes`` applied."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def run_name(model: str, seed: int, dataset: str | None = None) -> str:
    """The one way runs are named: ``<model>[-<dataset>]-seed<N>`` (experiments leave the data set out: their folder
    names it)."""
    return f"{model}-" + (f"{dataset}-" if dataset else "") + f"seed{int(seed)}"


# --- the run folder while fit() writes it, in the order it does -------------------------------------------------

# keys that may change when a run is resumed: they do not change what is computed
_RESUMABLE_CHANGES = {"epochs", "device", "data_root", "download", "channels_last", "compile", "label"}


def prepare_run_dir(config: RunConfig, out: Path, resume: bool, force: bool) -> tuple[Path, bool]:
    """Check the output folder (the caller holds its lock). Returns the folder to write into (``out``, or for
    ``force`` a fresh sibling that replaces ``out`` only once the new run is whole) and whether a checkpoint is there
    to resume from.

    Raises:
        RunExistsError: ``out`` is a file, holds something not written by capsprobe (even with ``resume`` or
            ``force``), or holds a run and neither ``resume`` nor ``force`` is set.
        RunError: ``resume`` of a run whose config differs (:func:`config_changes`).
    """
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"{out} exists and is not a folder")
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and (resume or force) and not is_capsprobe_folder(out, "run"):
        raise RunExistsError(f"{out} is not a capsprobe run directory (not written by capsprobe); refusing to write "
                             f"into it or replace it, even with {option('force')}")
    if occupied and resume:
        if (out / CONFIG).is_file():
            stored, _ = read_config(out)
            diff = config_changes(stored, config)
            if diff:
                raise RunError(f"cannot resume {out}: its config differs in {sorted(diff)}; set {option('force')} to start over")
        return out, (out / CHECKPOINT).is_file()
    if occupied and not force:
        raise RunExistsError(f"{out} already exists and is not empty; set {option('resume')} to continue it or "
                             f"{option('force')} to replace it")
    work = out.parent / f".{out.name}.new" if occupied else out
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work, False


def config_changes(stored: RunConfig, config: RunConfig) -> set[str]:
    """The keys in which ``config`` differs from a run's ``stored`` config, leaving out those a resumed run may
    change (epochs, device, data root...): what makes :func:`~capsprobe.training.fit` refuse to resume."""
    old = stored.to_dict()
    return {k for k, v in config.to_dict().items() if k not in _RESUMABLE_CHANGES and old.get(k) != v}


def start_run_dir(run_dir: str | Path, config: RunConfig, input_spec: dict[str, Any], world_size: int = 1,
                  device_record: dict[str, Any] | None = None) -> None:
    """Open ``run_dir`` for writing: its completion record removed (until it is written again, the run is, and says it
    is, incomplete), capsprobe's marker, and ``config.json`` (the config, the input, the seed, the library versions,
    the number of processes, and where and in what precision this session trains: ``device_record``)."""
    path = Path(run_dir)
    (path / COMPLETE).unlink(missing_ok=True)
    write_marker(path, "run")
    atomic_write_text(path / CONFIG, _json({"config": config.to_dict(), "input": input_spec, "seed": config.seed,
                                            "versions": library_versions(), "world_size": world_size,
                                            "device_record": device_record}))


def _precision(record: dict[str, Any]) -> str:
    autocast = record.get("autocast")
    return f"{autocast} autocast" if autocast else "float32"


def device_change(stored: dict[str, Any] | None, current: dict[str, Any], out: str | Path) -> str | None:
    """Why the run in ``out``, whose checkpoint was trained as ``stored`` says (a
    :func:`~capsprobe.runtime.device_record`), should not go on as ``current``: another kind of device or another
    autocast dtype (float32 epochs after bf16 ones would change what the run computes, silently). None when both
    agree, or when nothing was stored (a run of an older capsprobe). Another card of the same kind is no change."""
    if not isinstance(stored, dict):
        return None
    old = (stored.get("device_type"), _precision(stored))
    new = (current.get("device_type"), _precision(current))
    if old == new:
        return None
    return (f"cannot resume {out}: its epochs so far ran on {old[0]} in {old[1]}, this one would run on {new[0]} in "
            f"{new[1]}; set {option('allow_device_change')} to mix them, or {option('force')} to start over")


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (final validation and test figures, throughput), atomically."""
    return atomic_write_text(Path(run_dir) / METRICS, _json(metrics))


def is_finished(config: RunConfig, out: str | Path) -> bool:
    """True when ``out`` holds a whole run of ``config`` (its config agrees and its completion record checks out):
    one that ``fit(config, out, resume=True)`` returns at once, so a launcher need not start a worker for it."""
    out = Path(out)
    if not (out / CONFIG).is_file():
        return False
    try:
        stored, _ = read_config(out)
    except RunError:
        return False
    return not config_changes(stored, config) and completion_problem(out, config) is None


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


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
    """Write one CSV row per epoch, atomically; the columns are every row's keys in first-seen order (a run resumed
    under a newer capsprobe gains columns its older rows leave blank)."""
    buf = io.StringIO()
    if history:
        fields = list(dict.fromkeys(k for row in history for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
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
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for idx, values in json.loads(meta["optim_scalars"]).items():
            state.setdefault(int(idx), {}).update(values)
        checkpoint = Checkpoint(
            epoch=int(meta["epoch"]),
            history=json.loads(meta["history"]),
            model_state=model_state,
            optimizer_state={"state": state, "param_groups": json.loads(meta["param_groups"])},
            extra=json.loads(meta["extra"]),
        )
    except Exception as exc:  # noqa: BLE001 - any parse failure is an unreadable checkpoint
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"checkpoint {path} is unreadable: {reason}") from None
    # written after a whole epoch, with one history row per epoch: anything else was not written by fit
    history = checkpoint.history
    if checkpoint.epoch < 1 or not isinstance(history, list) or not all(isinstance(r, dict) for r in history) \
            or len(history) != checkpoint.epoch or not isinstance(checkpoint.extra, dict):
        rows = len(history) if isinstance(history, list) else "no"
        raise RunError(f"checkpoint {path} is inconsistent: epoch {checkpoint.epoch} with {rows} history rows; start "
                       f"over with {option('force')}")
    return checkpoint


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: malformed JSON or bytes that are not UTF-8
        raise RunError(f"{path} is unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is malformed: expected a JSON object, got {type(data).__name__}")
    return data


def _read_history(path: Path) -> list[dict[str, str]]:
    """``history.csv``'s rows (none when the file is missing).

    Raises:
        RunError: the file is not UTF-8 CSV.
    """
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, ValueError, csv.Error) as exc:  # ValueError: bytes that are not UTF-8
        raise RunError(f"{path} is unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None


def read_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run's :class:`RunConfig` and its input description ``{in_chans, img_size, num_classes}``.

    Raises:
        RunError: the file is missing or malformed, or a value is of the wrong type or out of range (the message
            names the file and the field).
    """
    path = Path(run_dir) / CONFIG
    data = _read_json(path)
    try:
        config, input_spec = RunConfig.from_dict(data["config"]), dict(data["input"])
    except InvalidInputError as exc:
        raise RunError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{path} is malformed: {exc}") from None
    for key in ("in_chans", "img_size", "num_classes"):
        value = input_spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RunError(f"{path}: input {key} must be a positive integer, got {value!r}")
    return config, input_spec


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


def write_completion(run_dir: str | Path, epochs: int, reached: bool | None = None) -> Path:
    """Write ``complete.json`` last: the epochs trained, the SHA-256 of the weights it vouches for, and for a run
    with a target accuracy whether it reached it."""
    path = Path(run_dir)
    digest = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    record: dict[str, Any] = {"epochs": int(epochs), "weights_sha256": digest, "config_sha256": config_digest(path)}
    if reached is not None:
        record["reached_target"] = bool(reached)
    return atomic_write_text(path / COMPLETE, json.dumps(record) + "\n")


def config_digest(run_dir: str | Path) -> str | None:
    """SHA-256 of ``config.json``'s config and input (canonical JSON), which the completion record vouches for, so
    a hand-edited ``data_root``, dataset or input size is refused; None when the file is unreadable."""
    try:
        data = json.loads((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
        text = json.dumps({"config": data["config"], "input": data["input"]}, sort_keys=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def completion_problem(run_dir: str | Path, config: RunConfig, weights: bytes | None = None) -> str | None:
    """Why the run in ``run_dir`` is not complete and consistent, or None when it is.

    Complete means: the completion record exists, its epochs are the config's (with a target accuracy: the epoch
    that reached it, or the most epochs), ``model.safetensors`` is the file it vouches for, ``metrics.json`` exists
    and ``history.csv`` has one row per epoch.
    """
    path = Path(run_dir)
    if not (path / COMPLETE).is_file():
        return "its completion record is missing"
    try:
        record = json.loads((path / COMPLETE).read_text(encoding="utf-8"))
        epochs, digest = int(record["epochs"]), str(record["weights_sha256"])
        reached = bool(record.get("reached_target", False))
    except (OSError, ValueError, KeyError, TypeError):
        return f"{COMPLETE} is unreadable"
    stopped_early = config.target_accuracy is not None and reached and epochs <= config.epochs
    if epochs != config.epochs and not stopped_early:
        return f"trained {epochs} of {config.epochs} epochs"
    if weights is None:
        if not (path / WEIGHTS).is_file():
            return f"{WEIGHTS} is missing"
        weights = (path / WEIGHTS).read_bytes()
    if hashlib.sha256(weights).hexdigest() != digest:
        return f"{WEIGHTS} does not match its completion record"
    if not (path / METRICS).is_file():
        return f"{METRICS} is missing"
    try:
        rows = len(_read_history(path / HISTORY))
    except RunError:
        return f"{HISTORY} is unreadable"
    if rows != epochs:
        return f"{HISTORY} has {rows} rows for {epochs} epochs"
    vouched = record.get("config_sha256")
    if vouched is not None and vouched != config_digest(path):
        return (f"{CONFIG} was changed after training (its config or input, e.g. data_root, is not the one the "
                "completion record vouches for)")
    return None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained model from its run directory alone (config.json + model.safetensors).

    Only a run committed as a whole is loaded: see :func:`completion_problem`.

    Raises:
        RunError: the folder is missing a file, a file is unreadable, or the run is incomplete or its parts
            disagree (the message says which, and how to finish it).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"run directory {path} does not exist")
    config, input_spec = read_config(path)
    weights = path / WEIGHTS
    data = weights.read_bytes() if weights.is_file() else None
    problem = completion_problem(path, config, data)
    if problem is not None and problem.startswith(f"{CONFIG} was changed"):
        raise RunError(f"{path}: {problem}; put back the config it was trained with, or train it again with "
                       f"{option('force')}")
    if problem is not None:
        raise RunError(f"{path} is incomplete ({problem}): finish it with {option('resume')} (it rebuilds what is "
                       f"missing from the checkpoint), or start over with {option('force')}")
    try:
        state = st_load(data)  # type: ignore[arg-type]  # None was refused above
    except Exception as exc:  # noqa: BLE001
        raise RunError(f"{weights} is unreadable: {exc}") from None
    model = build_model(config, input_spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{weights} does not fit model {config.model}: {str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    history = _read_history(path / HISTORY)
    metrics = _read_json(path / METRICS) if (path / METRICS).is_file() else {}
    return Run(path=path, model=model, config=config, input=input_spec, history=history, metrics=metrics)
