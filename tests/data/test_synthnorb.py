"""synthNORB: rendered 3-D objects in smallNORB's design (issue 49). Renders here are tiny (16-24 px), so the
whole file takes about a second."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from capsprobe.data import load_dataset
from capsprobe.data import synthnorb as S
from capsprobe.data.viewpoints import AZIMUTH_FAMILIAR, ELEVATION_FAMILIAR
from capsprobe.errors import InvalidInputError

SIDE = 24


@pytest.mark.parametrize("category", range(5))
def test_half_a_turn_is_another_image_and_no_mirror_of_it(category):
    """An azimuth is a turn in depth: the view half a turn away differs from the view, and from the view's mirror
    image (which it would equal for an object symmetric under the half turn, a 2-D flip)."""
    a, b = S.render(category, 4, [40, 220], [40, 40], [0, 0], SIDE)
    assert (a > 0).any() and (b > 0).any()
    assert (a - b).abs().mean() > 0.01
    assert (b - a.flip(-1)).abs().mean() > 0.005


def test_neighbouring_azimuths_turn_the_object_in_depth():
    """Twenty degrees apart the silhouette changes (not only its shading) and no in-plane rotation explains it:
    the rendered area changes, which an in-plane rotation keeps."""
    views = S.render(3, 4, [0, 20, 40, 60, 80], [30] * 5, [0] * 5, 32)
    area = (views > 0).float().sum((1, 2))
    assert (area.max() - area.min()) / area.mean() > 0.1


def test_lighting_moves_the_shading_and_never_the_silhouette():
    views = S.render(0, 6, [100] * S.LIGHTINGS, [50] * S.LIGHTINGS, list(range(S.LIGHTINGS)), SIDE)
    masks = views > 0
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    assert min((views[0] - v).abs().max().item() for v in views[1:]) > 0.05
    with pytest.raises(InvalidInputError, match="lightings are 0-5"):
        S.render(0, 6, [0], [30], [6], SIDE)


def test_instances_differ_in_shape():
    a, b = S.render(1, 0, [40], [40], [0], SIDE), S.render(1, 5, [40], [40], [0], SIDE)
    assert not torch.equal(a > 0, b > 0)
    with pytest.raises(InvalidInputError, match="instances 0-9"):
        S.build_object(1, 10)


def test_a_repeated_view_renders_the_same_bytes():
    views = S.render(2, 7, [20, 80, 20], [35, 35, 35], [3, 1, 3], SIDE)
    assert torch.equal(views[0], views[2])
    again = S.render(2, 7, [20], [35], [3], SIDE)
    assert torch.equal(views[0], again[0])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A partial cache: one instance per split, 2 elevations x 3 azimuths (0, 60, 340 degrees)."""
    root = tmp_path_factory.mktemp("synthnorb")
    S.generate(root, instances={"train": (4,), "test": (0,)}, elevations=(0, 4), azimuths=(0, 3, 17))
    return root


def test_splits_follow_smallnorb(cache):
    """The cache holds smallNORB's files; the splits are smallNORB's: training instances only in training, the
    familiar azimuths (300-40 degrees) and elevations (30-40) as the novel-viewpoint variants train on; the manifest
    records each file's hash and that the set is partial."""
    folder = cache / "synthnorb"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == S.VERSION and manifest["complete"] is False
    assert all(hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
               for name, digest in manifest["files"].items()) and len(manifest["files"]) == 6

    splits = load_dataset("synthnorb", root=cache, val_fraction=0.25)
    train_instances = set(splits.train.poses[:, 0].long().tolist()) | set(splits.val.poses[:, 0].long().tolist())
    assert train_instances == {4} and set(splits.test.poses[:, 0].long().tolist()) == {0}
    assert splits.train.images.shape[1:] == (1, 48, 48) and splits.test.images.shape[1:] == (1, 32, 32)  # centre crop
    assert set(splits.test.labels.tolist()) == set(range(5))
    per_view = len(S.CATEGORIES) * S.LIGHTINGS
    assert len(splits.test) == per_view * 2 * 3

    azimuth = load_dataset("synthnorb-azimuth", root=cache, val_fraction=0.25)
    seen = torch.cat([azimuth.train.poses, azimuth.val.poses])
    assert set(seen[:, 2].long().tolist()) <= set(AZIMUTH_FAMILIAR) and set(seen[:, 2].long().tolist()) == {0, 34}
    novel = azimuth.test.poses[~azimuth.test.familiar, 2].long()
    assert set(novel.tolist()) == {6} and azimuth.test.familiar.sum() == per_view * 2 * 2

    elevation = load_dataset("synthnorb-elevation", root=cache, val_fraction=0.25)
    seen = torch.cat([elevation.train.poses, elevation.val.poses])
    assert set(seen[:, 1].long().tolist()) == {0} and set(seen[:, 1].long().tolist()) <= set(ELEVATION_FAMILIAR)
    assert set(elevation.test.poses[~elevation.test.familiar, 1].long().tolist()) == {4}


def test_the_files_hold_the_render_at_half_size(cache):
    """Each rendered pixel fills 2x2 of the file, so the reader's 2x2 means give the render back exactly; both
    images of a stereo pair are the same (synthNORB is not stereo); smallNORB's info columns."""
    from capsprobe.data.viewpoints import read_norb

    folder = cache / "synthnorb"
    dat = read_norb(next(folder.glob("*training-dat.mat.gz")))
    info = read_norb(next(folder.glob("*training-info.mat.gz")))
    assert dat.shape == (5 * 6 * S.LIGHTINGS, 2, 96, 96) and np.array_equal(dat[:, 0], dat[:, 1])
    assert info[:, 0].tolist() == [4] * len(info) and set(info[:, 1]) == {0, 4} and set(info[:, 2]) == {0, 6, 34}
    animal = (read_norb(next(folder.glob("*training-cat.mat.gz"))) == 0).nonzero()[0]
    row = animal[(info[animal, 1] == 4) & (info[animal, 2] == 6)]
    assert len(row) == S.LIGHTINGS
    render = S.render(0, 4, [60] * len(row), [50] * len(row), info[row, 3], 48)  # info azimuth 6: 60 degrees
    expected = (render * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(dat[row, 0, ::2, ::2], expected) and np.array_equal(dat[row, 0, 1::2, 1::2], expected)
