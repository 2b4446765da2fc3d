"""Novel viewpoints: smallNORB (Hinton, Sabour & Frosst 2018, section 5.1) and an in-plane analogue on MNIST.

Every data set here gives splits whose images carry a pose label (``ImageSplit.poses``) and, for the protocol's
data sets, a ``familiar`` flag: training and validation images all have familiar viewpoints, the test split has
familiar and novel ones, and the ``viewpoint`` task (:mod:`capsprobe.tasks.viewpoint`) scores each part.

smallNORB (LeCun, Huang & Bottou 2004): 5 categories of toys, 10 instances each (5 for training, 5 for testing), each
photographed at 9 elevations (30 to 70 degrees), 18 azimuths (0 to 340 degrees) and 6 lightings, as stereo pairs of
96x96 images; 24,300 pairs per set. The official binary files (:func:`read_norb`) go under
``<data root>/smallnorb/`` (gzipped or not) and are downloaded from NYU when missing and ``download`` is on.
Preprocessing, as the paper: downsampled to 48x48 (2x2 means), random 32x32 crops in training, the centre crop for
validation and test; of each stereo pair only the first (left) image is used, one channel. The paper's
per-image standardisation and random brightness and contrast are left out: images stay in [0, 1] like every other
data set here, so the transformation suite reads them the same way.

- ``smallnorb``: every viewpoint, the official training and test sets;
- ``smallnorb-azimuth``: trains on azimuths 300 to 40 degrees (``info`` azimuth in {30, 32, 34, 0, 2, 4}); tests on
  every test image, those azimuths being familiar and the other 12 novel;
- ``smallnorb-elevation``: trains on elevations 30 to 40 degrees (``info`` elevation 0 to 2), tests on all, 3 to 8
  being novel;
- ``synthnorb``, ``synthnorb-azimuth``, ``synthnorb-elevation``: the same three on synthNORB, rendered here in
  smallNORB's design and file format (:mod:`capsprobe.data.synthnorb`), generated under ``<data root>/synthnorb`` on
  first use.

The validation split is carved, as for every data set, from the training images, i.e. from the training instances
at familiar viewpoints: matched stopping never sees the novel test images (nor any test instance).

The in-plane analogue (``mnist-viewpoint``, ``fashion-mnist-viewpoint``, and ``mnist-sample-viewpoint`` offline):
every training image is rotated by a fixed angle drawn uniformly in [-30, 30] degrees and scaled by a factor drawn
in [0.9, 1.1]; every test image appears twice, once at a familiar pose drawn the same way and once at a novel one,
rotated by 30 to 180 degrees either way (scale as before). On all ten digits the novel range holds label-changing
rotations (a 6 turned half way is a 9), a floor every model shares (reports/viewpoint) that hides
differences: ``mnist-no69-viewpoint`` (and ``mnist-sample-no69-viewpoint``) draws the same poses on the eight digits
that keep their identity under rotation (:mod:`capsprobe.data.subsets`), issue 49's fair analogue.
Poses are drawn once, with a fixed seed, so every run and
model sees the same images. What it stands in for, and what not: an in-plane rotation is a known 2-D warp of the
same pixels, so a model may learn it from the training range's variation and a convnet may extrapolate it; a novel
azimuth or elevation of a 3-D object shows surfaces never seen and changes the shading. The analogue tests the
extrapolation of a viewpoint change, not 3-D viewpoint generalisation; its numbers are not smallNORB's.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import option
from .datasets import _REGISTRY, DatasetSpec, DatasetUnavailableError, ImageSplit, Loader, get_spec, register_dataset
from .norb import NORB_FILES, NORB_MAGIC, NorbFormatError, read_norb, write_norb

__all__ = [
    "AZIMUTH_FAMILIAR",
    "ELEVATION_FAMILIAR",
    "INPLANE_FAMILIAR_DEGREES",
    "NORB_FILES",
    "NORB_MAGIC",
    "NorbFormatError",
    "read_norb",
    "rotate_scale",
    "smallnorb_files",
    "write_norb",
]

_log = logging.getLogger(__name__)

NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
POSE_NAMES = {"smallnorb": ("instance", "elevation", "azimuth", "lighting"), "inplane": ("angle", "scale")}
AZIMUTH_FAMILIAR = (30, 32, 34, 0, 2, 4)  # info azimuth x 10 degrees: 300 to 40
ELEVATION_FAMILIAR = (0, 1, 2)  # 30 to 40 degrees
INPLANE_FAMILIAR_DEGREES = 30.0
INPLANE_SCALES = (0.9, 1.1)
INPLANE_SEED = 20180430


def smallnorb_files(root: Path, download: bool) -> dict[str, dict[str, Path]]:
    """``{"train"|"test": {"dat"|"cat"|"info": path}}`` under ``root/smallnorb``, downloading missing files when
    ``download`` is on.

    Raises:
        DatasetUnavailableError: a file is missing and cannot be had.
    """
    folder = Path(root) / "smallnorb"
    found: dict[str, dict[str, Path]] = {}
    for split, stem in NORB_FILES.items():
        found[split] = {}
        for part in ("dat", "cat", "info"):
            name = f"{stem}-{part}.mat"
            path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if path is None and download:
                path = _download(NORB_URL + name + ".gz", folder / f"{name}.gz")
            if path is None:
                raise DatasetUnavailableError(
                    f"smallNORB file {name}(.gz) is not under {folder}"
                    f"{'' if download else ' (download is off)'}; put the official files there or set "
                    f"{option('data_root')} to a folder holding smallnorb/")
            found[split][part] = path
    return found


def _download(url: str, dest: Path) -> Path | None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
        return dest
    except OSError as exc:
        _log.warning("could not download %s: %s", url, exc)
        Path(tmp).unlink(missing_ok=True)
        return None


def _norb_split(files: dict[str, Path]) -> ImageSplit:
    dat, cat, info = (read_norb(files[k]) for k in ("dat", "cat", "info"))
    if dat.dtype != np.uint8 or dat.ndim != 4 or dat.shape[1] != 2:
        raise NorbFormatError(f"{files['dat']}: expected uint8 (N, 2, H, W) stereo pairs, got {dat.dtype} {dat.shape}")
    n = dat.shape[0]
    cat = cat.reshape(-1)
    if cat.dtype != np.int32 or cat.shape != (n,):
        raise NorbFormatError(f"{files['cat']}: expected int32 ({n},) categories, got {cat.dtype} {cat.shape}")
    if info.dtype != np.int32 or info.shape != (n, 4):
        raise NorbFormatError(f"{files['info']}: expected int32 ({n}, 4) info, got {info.dtype} {info.shape}")
    if cat.min(initial=0) < 0 or cat.max(initial=0) > 4:
        raise NorbFormatError(f"{files['cat']}: categories outside 0-4")
    if dat.shape[-1] % 2 or dat.shape[-2] % 2:
        raise NorbFormatError(f"{files['dat']}: images {dat.shape[-2:]} cannot be halved")
    left = torch.from_numpy(dat[:, :1])  # the first image of each stereo pair
    small = torch.cat([F.avg_pool2d(left[i:i + 2048].float(), 2).round().clamp(0, 255).to(torch.uint8)
                       for i in range(0, n, 2048)]) if n else left[:, :, ::2, ::2]  # 96 -> 48: 2x2 means, in chunks
    return ImageSplit(small.contiguous(), torch.from_numpy(cat.astype(np.int64)),
                      poses=torch.from_numpy(info.astype(np.float32)), crop=round(small.shape[-1] * 2 / 3))


def _smallnorb(familiar_on: str | None, find: Callable[[Path, bool], dict[str, dict[str, Path]]] | None = None
               ) -> Loader:
    """smallNORB's loader (or, with ``find``, that of files in its format found elsewhere: synthNORB's)."""
    column, values = {"azimuth": (2, AZIMUTH_FAMILIAR), "elevation": (1, ELEVATION_FAMILIAR)}.get(
        familiar_on or "", (None, ()))

    def load(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
        files = (find or smallnorb_files)(root, download)
        train, test = _norb_split(files["train"]), _norb_split(files["test"])
        if column is None:
            return train, test
        flag = {name: torch.isin(s.poses[:, column].long(), torch.tensor(values))  # type: ignore[index]
                for name, s in (("train", train), ("test", test))}
        familiar_train = train.subset(torch.nonzero(flag["train"]).squeeze(1))
        if len(train) and not len(familiar_train):
            raise DatasetUnavailableError(f"{'synthNORB' if find else 'smallNORB'}: no training image at a familiar {familiar_on} "
                                          f"({', '.join(map(str, values))} in the info file's column {column})")
        return (ImageSplit(familiar_train.images, familiar_train.labels, familiar_train.poses,
                           torch.ones(len(familiar_train), dtype=torch.bool), familiar_train.crop),
                ImageSplit(test.images, test.labels, test.poses, flag["test"], test.crop))

    return load


# --- the in-plane analogue ---------------------------------------------------------------------------------


def rotate_scale(images: torch.Tensor, degrees: torch.Tensor, scales: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Rotate every image by its angle (degrees, counter-clockwise as displayed) and scale it by its factor about
    the image centre (bilinear, zero fill). uint8 in, uint8 out."""
    out = torch.empty_like(images)
    for start in range(0, len(images), chunk):
        sl = slice(start, start + chunk)
        x = images[sl].float()
        t = torch.deg2rad(degrees[sl].double())
        c, s = torch.cos(t), torch.sin(t)
        inv = 1.0 / scales[sl].double()
        # affine_grid maps each output point to the input point it samples (x right, y down): [[c, -s], [s, c]] / scale
        # turns the content counter-clockwise on screen and enlarges it by the scale
        zero = torch.zeros_like(c)
        theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1) * inv.view(-1, 1, 1)
        grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
        out[sl] = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).round().clamp(
            0, 255).to(torch.uint8)
    return out


def _inplane_poses(n: int, novel: bool, generator: torch.Generator) -> torch.Tensor:
    lim = INPLANE_FAMILIAR_DEGREES
    if novel:
        size = lim + torch.rand(n, generator=generator, dtype=torch.float64) * (180.0 - lim)
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
        angle = size * sign
    else:
        angle = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * lim
    lo, hi = INPLANE_SCALES
    scale = lo + torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo)
    return torch.stack([angle, scale], 1).float()


def _inplane(base: str) -> Loader:
    def load(root: Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
        train, test = _REGISTRY[base][1](root, download)
        gen = torch.Generator().manual_seed(INPLANE_SEED)
        tp = _inplane_poses(len(train), False, gen)
        fam, nov = _inplane_poses(len(test), False, gen), _inplane_poses(len(test), True, gen)
        images = torch.cat([rotate_scale(test.images, fam[:, 0], fam[:, 1]),
                            rotate_scale(test.images, nov[:, 0], nov[:, 1])])
        flag = torch.cat([torch.ones(len(test), dtype=torch.bool), torch.zeros(len(test), dtype=torch.bool)])
        return (ImageSplit(rotate_scale(train.images, tp[:, 0], tp[:, 1]), train.labels, tp,
                           torch.ones(len(train), dtype=torch.bool)),
                ImageSplit(images, torch.cat([test.labels, test.labels]), torch.cat([fam, nov]), flag))

    return load


register_dataset(DatasetSpec("smallnorb", 1, 32, 5, "smallNORB, every viewpoint; 32x32 crops of 48x48 (files under "
                             "<data root>/smallnorb)"), _smallnorb(None))
register_dataset(DatasetSpec("smallnorb-azimuth", 1, 32, 5, "smallNORB novel azimuths: trained on 300-40 degrees, "
                             "tested on all (Hinton et al. 2018)"), _smallnorb("azimuth"))
register_dataset(DatasetSpec("smallnorb-elevation", 1, 32, 5, "smallNORB novel elevations: trained on 30-40 "
                             "degrees, tested on all"), _smallnorb("elevation"))


def _synthnorb_files(root: Path, download: bool) -> dict[str, dict[str, Path]]:
    from .synthnorb import synthnorb_files  # rendered here, on first use (download plays no part)

    return synthnorb_files(root)


register_dataset(DatasetSpec("synthnorb", 1, 32, 5, "synthNORB (rendered here, smallNORB's design and files), every "
                             "viewpoint; generated under <data root>/synthnorb on first use"), _smallnorb(None, _synthnorb_files))
register_dataset(DatasetSpec("synthnorb-azimuth", 1, 32, 5, "synthNORB novel azimuths: trained on 300-40 degrees, "
                             "tested on all"), _smallnorb("azimuth", _synthnorb_files))
register_dataset(DatasetSpec("synthnorb-elevation", 1, 32, 5, "synthNORB novel elevations: trained on 30-40 degrees, "
                             "tested on all"), _smallnorb("elevation", _synthnorb_files))
for _base, _what in (("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST"), ("mnist-sample", "the embedded sample"),
                     ("mnist-no69", "MNIST without 6 and 9"), ("mnist-sample-no69", "the embedded sample without 6 and 9")):
    register_dataset(DatasetSpec(f"{_base}-viewpoint", 1, 28, get_spec(_base).num_classes, f"{_what}, in-plane novel "
                                 "viewpoints: trained rotated within +-30 degrees, tested within and beyond"),
                     _inplane(_base))
