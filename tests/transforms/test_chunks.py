"""Worst cases score their warped images in chunks sized from the model's memory, not by a fixed image count: a
fixed 4,096 images a call is about 200 GiB for the paper's EM model and 25-30 GiB for CapsNet on 40-pixel canvases.

The footprint is measured on one and two images (:func:`~capsprobe.transforms.worst.footprint`: the peak bytes of the
tensors alive while one block is warped and scored); for the paper's models on the meta device, where tensors have
shapes and no values: computed, not run (the same bytes as on the CPU, in a third of the time)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from capsprobe.models import adapt, create_model
from capsprobe.transforms.worst import (
    CHUNK_BYTES,
    Against,
    activation_bytes,
    footprint,
    images_per_chunk,
    spatial_grid,
    spatial_grid_candidates,
    worst_of,
)

MiB = 2**20


META = torch.device("meta")


def _scorer(name: str, side: int, classes: int, **options):
    with META:
        model = create_model(name, in_chans=1, num_classes=classes, img_size=side, **options).eval()
    adapter = adapt(model)
    return lambda x: adapter.outputs(x).scores


def test_the_meter_counts_live_tensors_once_and_frees_them():
    def two_then_one(x):
        a = x * 2  # 4 MiB
        b = a.view(-1)  # a view: no new storage
        c = b + 1  # 4 MiB more: 8 MiB alive
        del a, b
        return c.sum()

    peak = activation_bytes(two_then_one, torch.ones(MiB))
    assert peak == 8 * MiB  # two 4 MiB float32 tensors at most (the first is gone before the sum)


@pytest.mark.parametrize("name, side, classes, options, votes", [
    # the paper's EM model (A=B=C=D=32) on 32x32: ConvCaps1's votes, 6x6 positions x 32 parents x 288 children x 16
    ("capsnet_em", 32, 5, {}, 6 * 6 * 32 * 288 * 16 * 4),
    # the paper's CapsNet on the 40x40 affNIST canvas: u_hat, 32 x 12 x 12 primary capsules x 10 classes x 16
    ("capsnet", 40, 10, {}, 32 * 12 * 12 * 10 * 16 * 4),
])
def test_the_paper_models_chunks_stay_under_the_budget(name, side, classes, options, votes):
    scores = _scorer(name, side, classes, **options)
    images, labels = torch.rand(2, 1, side, side, device=META), torch.zeros(2, dtype=torch.long, device=META)
    with torch.inference_mode():
        size = footprint(images, labels, scores)
        fixed, per_image, chunk = size.fixed, size.per_image, size.images(CHUNK_BYTES)
        three = activation_bytes(scores, torch.rand(3, 1, side, side, device=META))
    assert per_image >= votes  # the largest tensor the architecture must hold per image is counted
    assert three <= 1.1 * (fixed + 3 * per_image)  # the straight line through one and two images holds at three
    assert 1 <= chunk < 4096 and fixed + chunk * per_image <= CHUNK_BYTES
    assert 4096 * per_image > 20 * CHUNK_BYTES  # what the fixed 4,096 images a call asked for
    print(f"{name} at {side} px: {per_image / MiB:.1f} MiB an image + {fixed / MiB:.1f} MiB, "
          f"{chunk} images a chunk in 1 GiB (4096 would take {4096 * per_image / 2**30:.0f} GiB)")


def test_a_small_model_gets_a_big_chunk():
    scores = _scorer("capsnet_small", 28, 10, conv_channels=16, primary_types=4)
    images, labels = torch.rand(2, 1, 28, 28, device=META), torch.zeros(2, dtype=torch.long, device=META)
    with torch.inference_mode():
        assert images_per_chunk(images, labels, scores, CHUNK_BYTES) > 1000


def test_every_call_keeps_to_the_budget_and_the_result_is_the_same_whatever_the_chunk():
    """A budget of a few images: every scoring call (images split too, when the batch alone is over it) stays under
    it, and the winners are those of one call for everything."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, 10))
    images, labels = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    grid = spatial_grid_candidates(1.0)[:20]
    calls: list[int] = []

    def scores(x):
        calls.append(x.shape[0])
        return net(x)

    with torch.no_grad():
        size = footprint(images, labels, scores)
        budget = size.fixed + 4 * size.per_image  # four warped images a call: fewer than the batch's six
        assert images_per_chunk(images, labels, scores, budget) == 4
        whole = worst_of(images, labels, net, grid, chunk_images=10_000)
        calls.clear()
        small = worst_of(images, labels, scores, grid, chunk_bytes=budget)
        assert calls[:2] == [1, 2]  # the footprint's own calls
        assert calls[2:] == [4] * 20 + [2] * 20  # images 0-3, then 4-5, a candidate at a time: all 6 x 20 warps
        peak = activation_bytes(lambda: worst_of(images, labels, net, grid[:4], chunk_images=4))
        assert peak <= budget + images.numel() * 4 + 2 * MiB  # the winners' warp and the bookkeeping on top
        for key in ("angle", "shift_x", "shift_y"):
            assert torch.equal(whole.params[key], small.params[key])
        torch.testing.assert_close(whole.params["margin"], small.params["margin"])  # a matmul's sum order per batch
        assert torch.equal(whole.images, small.images)
        calls.clear()  # the spatial worst case keeps to the budget it is given
        spatial = spatial_grid(images[:1], 0.5, against=Against(labels[:1], scores, chunk_bytes=size.fixed + 400 *
                                                                size.per_image))
        assert calls == [1, 2, 400, 375]
        assert torch.equal(spatial.params["angle"], worst_of(images[:1], labels[:1], net, spatial_grid_candidates(0.5),
                                                             chunk_images=10_000).params["angle"])
