"""No hidden device-to-host sync in a training step: the batch pipeline (order, crops, shift augmentation) and one
forward and backward of the objective run on the meta device, where any ``.item()``, ``int()``, ``float()``,
``bool()`` or ``.tolist()`` of a tensor raises (a CUDA sync made visible without a GPU; on CUDA
``torch.cuda.set_sync_debug_mode("error")`` would say the same)."""

from __future__ import annotations

import pytest
import torch

from capsprobe.data import ImageSplit, iterate_batches, shift_images
from capsprobe.models import create_model
from capsprobe.training.loop import Objective

META = torch.device("meta")


def test_a_value_read_on_the_meta_device_raises():
    """The instrument itself: reading a meta tensor's value fails, so a step that passes read none."""
    with pytest.raises(RuntimeError, match="meta"):
        int(torch.ones(2, device=META).abs().max())


@pytest.mark.parametrize("resident", [False, True])
def test_the_shift_augmented_batches_read_no_value_back(resident):
    split = ImageSplit(torch.randint(0, 256, (20, 1, 12, 12), dtype=torch.uint8), torch.arange(20) % 10)
    batches = list(iterate_batches(split, 8, device=META, shuffle=True, max_shift=2, resident=resident))
    assert [tuple(x.shape) for x, _ in batches] == [(8, 1, 12, 12), (8, 1, 12, 12), (4, 1, 12, 12)]
    assert all(x.device == META and x.dtype == torch.float32 for x, _ in batches)


def test_shift_images_reads_no_value_back_and_takes_shifts_larger_than_the_image():
    out = shift_images(torch.rand(3, 2, 5, 5, device=META), torch.tensor([[1, -2], [0, 0], [9, 3]], device=META))
    assert out.shape == (3, 2, 5, 5)
    img = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5).repeat(2, 1, 1, 1)
    assert not shift_images(img, torch.tensor([[9, 0], [0, -7]])).any()  # wholly out of the frame: all fill


@pytest.mark.parametrize("name, options, side", [
    ("capsnet_small", dict(conv_channels=16, primary_types=4), 28),
    ("capsnet_em_small", dict(conv_channels=8, primary_types=2, caps1_types=2, caps2_types=2), 32),
    ("efficient_capsnet", {}, 28),
])
def test_one_objective_step_reads_no_value_back(name, options, side):
    """Forward (routing, margin or spread loss, masked reconstruction) and backward with every tensor on meta."""
    with META:
        model = create_model(name, in_chans=1, num_classes=10, img_size=side, **options)
    images = torch.rand(4, 1, side, side, device=META)
    labels = torch.randint(0, 10, (4,), device=META)
    loss, scores = Objective(model).train()(images, labels)
    loss.backward()
    assert loss.shape == () and scores.shape == (4, 10)
    assert all(p.grad is not None and p.grad.device == META for p in model.parameters() if p.requires_grad)
