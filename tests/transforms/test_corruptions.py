"""MNIST-C's 15 corruptions as suite transformations: the ``mnist-c`` group, the range, the digit's ink, per-image
seeding, and the mean pixel change against the reference generator's (tests/transforms/mnistc_reference.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from kornia.filters import gaussian_blur2d

from capsprobe.data.datasets import _mnist_sample_arrays
from capsprobe.probe import ProbePlan
from capsprobe.transforms import TRANSFORMS, get_transform, resolve
from capsprobe.transforms.functional import apply_matrix

NAMES = ("mnistc-shot-noise", "mnistc-impulse-noise", "mnistc-glass-blur", "mnistc-motion-blur", "mnistc-shear",
         "mnistc-scale", "mnistc-rotate", "mnistc-brightness", "mnistc-translate", "mnistc-stripe", "mnistc-fog",
         "mnistc-spatter", "mnistc-dotted-line", "mnistc-zigzag", "mnistc-canny-edges")
REFERENCE = {row["corruption"]: row for row in csv.DictReader(
    line for line in (Path(__file__).parent / "mnistc_reference.csv").read_text().splitlines()
    if not line.startswith("#"))}
# the share of digits whose corrupted image is nearest its own clean digit (of 250): a one-sided motion trail and an
# edge map keep less of the stroke's shape than noise does; chance is 1/250
IDENTIFIED = {"mnistc-motion-blur": 0.4, "mnistc-canny-edges": 0.5}


@pytest.fixture(scope="module")
def digits():
    x, _ = _mnist_sample_arrays()
    return torch.from_numpy(x[::20].reshape(-1, 1, 28, 28).copy()).float() / 255  # 250 digits, 25 per class


@pytest.fixture(scope="module")
def corrupted(digits):
    seeds = torch.arange(len(digits)) + 7
    return {name: get_transform(name)(digits, "mnist-c", seeds) for name in NAMES}


def test_mnist_c_expands_to_the_15_corruptions_each_with_its_identity():
    assert [t.name for t in resolve(["mnist-c"])] == list(NAMES)
    plan = ProbePlan.from_options(["mnist-c"])
    assert plan.magnitudes == {name: ("none", "mnist-c") for name in NAMES} and plan.conditions == 30
    assert all(TRANSFORMS[n].kind_at("mnist-c") == "nuisance" for n in NAMES)  # the paper's human check: all keep the label
    assert [t.name for t in resolve(["mnist-c", "mnistc-fog", "rotate"])] == [*NAMES, "rotate"]


@pytest.mark.parametrize("name", NAMES)
def test_corruption_range_and_reference_mean_change(name, digits, corrupted):
    out = corrupted[name].images
    assert out.shape == digits.shape and out.dtype == digits.dtype
    assert out.min() >= 0 and out.max() <= 1
    stored = torch.floor(out * 255) / 255  # MNIST-C stores uint8, as the reference numbers do
    change = (stored - digits).abs().mean().item()
    ref = float(REFERENCE[name.removeprefix("mnistc-").replace("-", "_")]["mean_change_250"])
    assert change == pytest.approx(ref, rel=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_corruption_keeps_the_digits_ink(name, digits, corrupted):
    out = corrupted[name]
    clean = apply_matrix(digits, out.matrix) if out.matrix is not None else digits  # geometric: the digit moved

    def feature(a):  # the centre columns, smoothed, centred, unit length
        a = gaussian_blur2d(a, (7, 7), (1.5, 1.5))[..., 7:21].flatten(1)
        a = a - a.mean(1, keepdim=True)
        return a / a.norm(dim=1, keepdim=True)

    nearest = (feature(out.images) @ feature(clean).T).argmax(1)
    assert (nearest == torch.arange(len(digits))).float().mean() >= IDENTIFIED.get(name, 0.9)
    if name == "mnistc-stripe":  # the centre half is untouched
        assert torch.equal(out.images[..., 7:21], digits[..., 7:21])
    if name in ("mnistc-shear", "mnistc-scale", "mnistc-rotate", "mnistc-translate"):
        torch.testing.assert_close(out.images, clean.clamp(0, 1))


@pytest.mark.parametrize("name", NAMES)
def test_corruption_is_seeded_per_image(name, digits):
    x, seeds = digits[:12], torch.arange(12) + 100
    t = get_transform(name)
    whole = t(x, "mnist-c", seeds).images
    assert torch.equal(whole, t(x, "mnist-c", seeds).images)  # the same seeds: the same bytes
    assert torch.equal(whole[4:9], t(x[4:9], "mnist-c", seeds[4:9]).images)  # batching changes nothing
    assert torch.equal(t(x, "none", seeds).images, x)
    if name not in ("mnistc-brightness", "mnistc-stripe", "mnistc-scale", "mnistc-canny-edges"):  # the random ones
        assert not torch.equal(whole, t(x, "mnist-c", seeds + 1).images)
