"""Where things run and how they are written: devices, autocast, seeds, atomic files and folders.

One home for the conventions that training, the probe and the benchmark share:

- **Device**: ``auto`` is ``cuda:<local rank>`` when CUDA is present, else ``cpu``.
- **Autocast**: training on CUDA in bf16 where the card computes it natively (Ampere and later), else fp16 (with loss
  scaling); off on CPU. The probe computes in float32 with TF32 off (:func:`tf32_off`) unless asked for autocast.
- **Provenance**: every run and report records the device, its name, the library versions and the precision
  (:func:`device_record`); a run is resumed only on the same kind of device in the same precision.
- **Seeds**: per epoch ``((seed * 1000003) + epoch) * 1009 + rank`` (data order, augmentation, dropout);
  per probed image ``image_id + seed * 1000003`` (random transformations), so batching never changes a result.
- **Files**: every file is written to a temporary name in its folder and renamed over the target; a folder is
  built under a temporary name beside its destination and renamed into place, the old one removed only once the
  new one is there. A reader sees the old version or the new one, never a mixture.
- **Ownership**: every folder capsprobe writes (a run, a report) holds a marker file ``.capsprobe``; only such a
  folder is ever replaced.
- **Allocator**: the CLI, the benchmark and the training workers (``--jobs``, Slurm tasks) keep freed memory in
  glibc's heap rather than handing each large block back to the kernel (:func:`tune_cpu_allocator`): a CPU training
  step otherwise spends much of its time page-faulting fresh blocks of the size of the routing's vote tensors.
- **One writer**: a command that writes a folder holds an advisory lock (``.<name>.lock`` beside it) for as long as
  it writes; a second writer is refused at once. Holding the lock, it removes what killed writers left behind.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from ._version import __version__
from .errors import CapsprobeError, InvalidInputError, option

__all__ = [
    "library_versions",
    "BusyError",
    "MARKER",
    "AUTOCAST_CPU_ENV",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "autocast_context",
    "autocast_dtype",
    "check_device",
    "device_record",
    "epoch_seed",
    "folder_lock",
    "image_seeds",
    "is_capsprobe_folder",
    "replace_dir",
    "resolve_device",
    "tf32_off",
    "tune_cpu_allocator",
    "write_marker",
]


# --- the CPU allocator ------------------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
_TRIM_THRESHOLD = 2**30


def tune_cpu_allocator() -> bool:
    """Let glibc keep freed blocks for reuse: blocks up to 32 MiB come from the heap (not one fresh ``mmap`` each),
    and the heap is trimmed only above 1 GiB free. A routed capsule layer's training step allocates and frees
    tensors of tens of MiB dozens of times; served by ``mmap`` each one is page-faulted in anew. On 2 CPU cores this
    made a training step of the viewpoint experiment's EM model (batch 32) 1.12x faster (113 to 127 images/s;
    with :func:`~capsprobe.models.layers.thin_matmul`, 156 images/s).

    Process-wide, so only the command line, the benchmark and the worker processes that train runs call it, never an
    import. Set ``CAPSPROBE_MALLOC_TUNE=0`` to leave the allocator alone.

    Returns:
        Whether the setting was applied (glibc only; elsewhere a no-op).
    """
    if os.environ.get("CAPSPROBE_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))


# --- devices and precision --------------------------------------------------------------------------------------


SUPPORTED_DEVICES = ("cpu", "cuda")  # what capsprobe runs on (autocast, streams, memory records): not mps, meta, xla


def check_device(spec: str | torch.device) -> torch.device | None:
    """Check a device name without touching the device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (a config written
    here may run where CUDA is); the parsed device, None for ``auto``.

    Raises:
        InvalidInputError: not a device name, or a device type capsprobe does not run on (``meta``, ``mps``...).
    """
    if spec == "auto":
        return None
    parsed: torch.device | None = spec if isinstance(spec, torch.device) else None
    if parsed is None:
        try:
            parsed = torch.device(spec) if isinstance(spec, str) and spec.strip() == spec and spec else None
        except (RuntimeError, ValueError, TypeError):
            parsed = None
    if parsed is None:
        raise InvalidInputError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    device = parsed
    if device.type not in SUPPORTED_DEVICES:
        raise InvalidInputError(f"device {str(spec)!r} is not supported (capsprobe runs on cpu and cuda); set "
                                f"{option('device')} to auto, cpu, cuda or cuda:N")
    if device.type == "cpu" and device.index not in (None, 0):
        raise InvalidInputError(f"unknown device {str(spec)!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is present, else ``cpu``; otherwise ``torch.device(spec)``.

    Raises:
        InvalidInputError: an unknown or unsupported device (:func:`check_device`), or CUDA asked for where there is
            none.
    """
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = check_device(spec)
    assert device is not None  # "auto" was answered above
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {spec!r} asked for, but CUDA is not available here; set {option('device')} "
                                "to cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


AUTOCAST_CPU_ENV = "CAPSPROBE_AUTOCAST_CPU"  # tests only: bf16 or fp16 turns autocast on on CPU
_CPU_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype for ``device`` when ``amp`` is asked for: on CUDA bf16 where the card computes it natively
    (compute capability 8.0, Ampere, and later; ROCm), else fp16 (training adds loss scaling); None (off) on CPU.

    :func:`torch.cuda.is_bf16_supported` is not asked: by default it also counts bf16 that a pre-Ampere card only
    emulates, several times slower than fp16 with loss scaling. The card's capability is read here, when a command
    runs, never at import.

    For tests: ``CAPSPROBE_AUTOCAST_CPU=bf16`` (or ``fp16``) turns autocast on on CPU too, so the training loop's
    CUDA path (fp16 with the gradient scaler included) runs on a machine without a GPU. Nothing else sets it.

    Raises:
        InvalidInputError: ``CAPSPROBE_AUTOCAST_CPU`` is set to something other than bf16 or fp16.
    """
    if not amp:
        return None
    if device.type == "cpu":
        asked = os.environ.get(AUTOCAST_CPU_ENV, "")
        if asked and asked not in _CPU_AUTOCAST:
            raise InvalidInputError(f"{AUTOCAST_CPU_ENV}={asked!r} is not bf16 or fp16 (it is for tests; unset it)")
        return _CPU_AUTOCAST.get(asked)
    if device.type != "cuda":
        return None
    native = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    return torch.bfloat16 if native else torch.float16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@contextmanager
def tf32_off() -> Iterator[None]:
    """Float32 products and convolutions on CUDA in full float32 while inside: TF32 off for cuBLAS
    (``torch.backends.cuda.matmul.allow_tf32``) and cuDNN (``torch.backends.cudnn.allow_tf32``, on by default),
    the previous settings restored on the way out (TF32 keeps 10 of float32's 23 bits of mantissa, about three
    decimal digits). Also a decorator. Touches only the two flags: no CUDA query."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record(device: str | torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """What a run or a report records of where and in what precision it computed: ``device`` (``cuda:0``),
    ``device_type``, ``device_name`` (the GPU's name, or the CPU model), ``compute_capability`` (CUDA), the
    ``torch``, ``cuda`` and ``cudnn`` versions (the last two None on CPU), ``autocast`` (``bfloat16``, ``float16``,
    or None: float32) and whether TF32 is on for cuBLAS (``tf32_matmul``) and cuDNN (``tf32_cudnn``) now (False
    on CPU, which has none).

    Args:
        device: the device computed on.
        dtype: the autocast dtype in use (:func:`autocast_dtype`), None for float32.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "autocast": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "tf32_matmul": cuda and bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": cuda and bool(torch.backends.cudnn.allow_tf32),
    }


# --- seeds ------------------------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: data order, shift augmentation and dropout."""
    return (int(seed) * 1_000_003 + int(epoch)) * 1_009 + int(rank)


def image_seeds(seed: int, image_ids: Tensor) -> Tensor:
    """Per-image transformation seeds ``(B,)`` from a base seed and image ids ``(B,)``."""
    return image_ids.long() + int(seed) * 1_000_003


# --- atomic files and folders -----------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an old one only after the new one is complete."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``out``; on success it replaces ``out`` whole.

    Usage::

        with atomic_dir("reports/x") as tmp:
            (tmp / "a.csv").write_text(...)

    On an exception the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp creates 0700; the folder is meant to be read
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- ownership markers and the one-writer lock ------------------------------------------------------------------

MARKER = ".capsprobe"


class BusyError(CapsprobeError):
    """Another capsprobe command holds the folder's lock."""


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` as written by capsprobe (``kind``: ``run`` or ``report``)."""

    atomic_write_text(Path(folder) / MARKER, json.dumps({"kind": kind, "capsprobe": __version__}) + "\n")


def is_capsprobe_folder(folder: str | Path, kind: str) -> bool:
    """True when ``folder`` holds capsprobe's marker of ``kind``, or (written before markers existed) the JSON file a
    run (``config.json``) or a report (``manifest.json``) holds, with capsprobe's version in it."""
    folder = Path(folder)
    try:
        if (folder / MARKER).is_file():
            return json.loads((folder / MARKER).read_text()).get("kind") == kind
        legacy = folder / ("config.json" if kind == "run" else "manifest.json")
        data = json.loads(legacy.read_text()) if legacy.is_file() else None
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(data, dict) and "capsprobe" in (data.get("versions") or {})


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clean_stale(out: Path) -> None:
    """What killed writers of ``out`` left: temporary siblings and files; a folder moved aside and not put back."""
    parent, name = out.parent, out.name
    olds = sorted(parent.glob(f".{name}.old-*"))
    if not out.exists() and olds:
        olds.pop().rename(out)  # killed between the two renames of a replacement: the old folder comes back
    for path in [*olds, *parent.glob(f".{name}.tmp-*"), *parent.glob(f".{name}.*.tmp"), parent / f".{name}.new"]:
        if path.exists():
            _remove(path)
    if out.is_dir():
        for path in [*out.rglob(".*.tmp"), *out.glob(".*.tmp-*"), *out.glob(".*.old-*")]:
            _remove(path)


@contextmanager
def folder_lock(out: str | Path) -> Iterator[Path]:
    """Hold the advisory lock of the folder ``out`` (``.<name>.lock`` beside it) while writing it.

    On entry, the stale leftovers of killed writers of ``out`` are removed (no live writer can own them: the lock
    is ours). The lock file is removed on release (a killed holder leaves an unlocked file that the next writer
    takes over); after locking, the file is checked to still be the one at the path, so two writers never hold
    two different files.

    Raises:
        BusyError: another process holds the lock; nothing is waited for.
    """
    import fcntl  # lazy: POSIX only, asked for when a folder is locked

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    while True:
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise BusyError(f"another capsprobe command is writing {out} (lock {lock}); wait for it to finish") from None
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # the holder we waited on removed the file as we opened it: lock the new one
    try:
        _clean_stale(out)
        yield out
    finally:
        lock.unlink(missing_ok=True)  # while still holding it, so nobody else locks the file being removed
        fh.close()


def library_versions() -> dict[str, str]:
    """The versions of Python, capsprobe and the libraries that shape a result: a run's record and a probe's manifest
    (the report's first lines print torch, kornia and timm) carry the same keys."""
    import kornia  # lazy: the runtime layer stays light for the command line
    import numpy
    import timm

    return {"capsprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "kornia": kornia.__version__, "numpy": numpy.__version__}

