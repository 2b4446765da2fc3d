"""Worst-case spatial transformations (capsprobe.transforms.worst): known answers on toys, determinism, the probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from capsprobe.errors import InvalidInputError
from capsprobe.transforms import get_transform, rotate, translate
from capsprobe.transforms.worst import Against, margins, spatial_grid, spatial_grid_candidates, worst_of, worst_of_k

H = W = 28
CX = (W - 1) / 2


def _blob(n: int = 3, sigma: float = 2.0) -> torch.Tensor:
    """Round Gaussian blobs at the image centre: rotation about the centre leaves their centroid where it is."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    blob = torch.exp(-((x - CX) ** 2 + (y - CX) ** 2) / (2 * sigma**2))
    return blob.expand(n, 1, H, W).clone()


def _centroid_x(images: torch.Tensor) -> torch.Tensor:
    w = images.flatten(1)
    xs = torch.arange(W, dtype=images.dtype, device=images.device).repeat(H)
    return (w * xs).sum(1) / w.sum(1)


def _leftness(images: torch.Tensor) -> torch.Tensor:
    """Class 0's score is (cx + 1) - centroid x, class 1's is 0: the margin of class 0 falls as the ink moves right."""
    s0 = CX + 1 - _centroid_x(images)
    return torch.stack([s0, torch.zeros_like(s0)], 1)


def test_margins_are_true_minus_the_best_other():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.4, 0.9]])
    assert torch.allclose(margins(scores, torch.tensor([1, 0])), torch.tensor([0.5, -0.4]))


def test_the_grid_is_engstroms_775_warps_with_the_identity_first():
    grid = spatial_grid_candidates(1.0)
    assert grid.shape == (31 * 5 * 5, 3)
    assert grid[0].tolist() == [0, 0, 0] and (grid[1:] != 0).any(1).all()
    assert sorted(set(grid[:, 0].tolist())) == [float(a) for a in range(-30, 31, 2)]
    assert sorted(set(grid[:, 1].tolist())) == [-3.0, -1.5, 0.0, 1.5, 3.0] == sorted(set(grid[:, 2].tolist()))
    assert spatial_grid_candidates(0.5)[:, 0].abs().max() == 15


@pytest.mark.parametrize("strength", [0.25, 1.0])
def test_the_grid_finds_the_known_worst_shift(strength):
    """The margin falls linearly with the shift to the right: the worst warp is the largest shift right, whatever the
    angle; at strength 1 (3 px) the blob is misclassified, at 0.25 (0.75 px) it is not."""
    images, labels = _blob(), torch.zeros(3, dtype=torch.long)
    out = spatial_grid(images, strength, against=Against(labels, _leftness))
    assert out.params is not None
    assert torch.allclose(out.params["shift_x"], torch.full((3,), 3.0 * strength, dtype=torch.float64))
    assert torch.allclose(out.params["margin"], torch.full((3,), 1 - 3.0 * strength, dtype=torch.float64), atol=5e-3)  # bilinear
    assert (margins(_leftness(out.images), labels) < 0).all().item() is (strength == 1.0)
    # the image returned is the winner's warp in the suite's conventions: the same as translating x by 3a
    moved = translate(images, 3.0 * strength).images
    assert torch.allclose(_centroid_x(out.images), _centroid_x(moved), atol=5e-3)


def test_an_invariant_model_is_not_moved():
    """A model whose scores no warp of the grid changes (it sees only whether there is ink): every candidate ties,
    and the attack keeps the identity."""

    def has_ink(images):
        ink = (images.flatten(1).amax(1) > 0.01).float()
        return torch.stack([ink, torch.full_like(ink, 0.5)], 1)

    images = _blob(4)
    out = spatial_grid(images, 1.0, against=Against(torch.zeros(4, dtype=torch.long), has_ink))
    assert out.params is not None
    assert (out.params["angle"] == 0).all() and (out.params["shift_x"] == 0).all() and (out.params["shift_y"] == 0).all()
    assert torch.equal(out.images, images)
    assert torch.allclose(out.params["margin"], torch.full((4,), 0.5, dtype=torch.float64))


def test_worst_of_k_takes_the_worst_of_its_seeded_draws():
    images, labels = _blob(4), torch.zeros(4, dtype=torch.long)
    seeds = torch.tensor([11, 12, 13, 14])
    out = worst_of_k(images, 10, seeds, against=Against(labels, _leftness))
    again = worst_of_k(images, 10, seeds, against=Against(labels, _leftness))
    assert torch.equal(out.images, again.images)  # deterministic given the seeds
    halves = [worst_of_k(images[i:i + 2], 10, seeds[i:i + 2], against=Against(labels[:2], _leftness)) for i in (0, 2)]
    assert torch.equal(torch.cat([h.images for h in halves]), out.images)  # per-image seeds: batching does not matter
    for i, s in enumerate(seeds.tolist()):
        draws = (2 * torch.rand(10, 3, generator=torch.Generator().manual_seed(s), dtype=torch.float64) - 1)
        assert out.params is not None
        assert out.params["shift_x"][i] == (draws[:, 1] * 3).max()  # the largest shift right of its own 10 draws
        assert out.params["angle"].abs().max() <= 30 and out.params["shift_y"].abs().max() <= 3
    other = worst_of_k(images, 10, seeds + 1, against=Against(labels, _leftness))
    assert not torch.equal(other.params["shift_x"], out.params["shift_x"])


def test_chunking_does_not_change_the_winner():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 10))
    images, labels = torch.rand(5, 1, H, W), torch.randint(0, 10, (5,))
    grid = spatial_grid_candidates(1.0)
    with torch.no_grad():
        whole = worst_of(images, labels, net, grid, chunk_images=10_000)
        small = worst_of(images, labels, net, grid, chunk_images=7)
        assert torch.equal(whole.params["angle"], small.params["angle"])
        assert torch.equal(whole.images, small.images)
        # the winner is the minimum over every candidate, checked one warp at a time
        for i in range(5):
            best = min(
                float(margins(net(rotate_shift(images[i:i + 1], *c.tolist())), labels[i:i + 1])) for c in grid[::37])
            assert float(whole.params["margin"][i]) <= best + 1e-6


def rotate_shift(images, angle, dx, dy):
    """Rotation then shift, through the suite's own rotate and a matrix (an independent path to the same warp)."""
    from capsprobe.transforms import apply_matrix

    rot = rotate(images, angle).matrix
    shift = torch.eye(3).expand_as(rot).clone()
    shift[:, 0, 2], shift[:, 1, 2] = dx, dy
    return apply_matrix(images, shift @ rot)


def test_worst_cases_need_the_model_and_check_their_magnitude():
    t = get_transform("spatial-grid")
    with pytest.raises(InvalidInputError, match="worst case against a model"):
        t(_blob(), 1.0)
    with pytest.raises(InvalidInputError, match="outside"):
        t.validate(2)
    with pytest.raises(InvalidInputError, match="whole number"):
        get_transform("worst-of-k").validate(2.5)
    ident = t(_blob(), 0)  # the identity needs no model
    assert torch.equal(ident.images, _blob())


def test_the_probe_records_the_winning_warp_and_bounds_the_suite():
    from capsprobe.data import load_dataset
    from capsprobe.probe import run_probe

    tiny_split = load_dataset("mnist-sample", limit=24).test
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(64, 10)).eval()
    from capsprobe.models import ModelAdapter

    subject = ModelAdapter(net, representation=lambda m, x: m[:4](x))
    result = run_probe([subject], tiny_split, ["spatial-grid", "worst-of-k", "rotate"],
                       {"spatial-grid": [1.0], "worst-of-k": [10], "rotate": [-30, 30]}, n_boot=20, progress=False)
    img = result.images
    acc = result.metrics[result.metrics["metric"] == "accuracy"].set_index(["transform", "magnitude"])["value"]
    assert acc[("spatial-grid", "1")] <= min(acc[("rotate", "30")], acc[("rotate", "-30")], acc[("spatial-grid", "0")])
    grid = img[(img["transform"] == "spatial-grid") & (img["magnitude"] == "1")]
    assert grid["worst_angle"].between(-30, 30).all() and grid["worst_shift_x"].isin([-3, -1.5, 0, 1.5, 3]).all()
    # misclassified under the attack exactly when the winner's margin is negative
    assert ((grid["prediction"] != grid["label"]) == (grid["worst_margin"] < 0)).all()
    assert img.loc[img["transform"] == "rotate", "worst_angle"].isna().all()
    assert np.isfinite(grid["worst_margin"]).all()
