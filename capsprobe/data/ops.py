"""Operations on image batches: integer shifts with zero fill, placing digits on a larger canvas, ink boxes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidInputError

__all__ = [
    "box_overlap",
    "crop_images",
    "random_crops",
    "ink_boxes",
    "place_on_canvas",
    "random_shifts",
    "shift_images",
]

# --- batches and augmentation ------------------------------------------------------------------------------


def random_crops(n: int, size: tuple[int, int] | torch.Size, crop: int, generator: torch.Generator) -> Tensor:
    """Top-left corners ``(n, 2)`` (row, column) of uniformly random ``crop x crop`` windows of ``size`` images."""
    h, w = int(size[0]), int(size[1])
    if not 1 <= crop <= min(h, w):
        raise InvalidInputError(f"crop {crop} does not fit {h}x{w} images")
    rows = torch.randint(0, h - crop + 1, (n,), generator=generator)
    cols = torch.randint(0, w - crop + 1, (n,), generator=generator)
    return torch.stack([rows, cols], 1)


def crop_images(images: Tensor, corners: Tensor, crop: int) -> Tensor:
    """The ``crop x crop`` window of every image at its own top-left corner ``corners[b] = (row, column)``."""
    if images.dim() != 4 or corners.shape != (images.shape[0], 2):
        raise InvalidInputError(f"expected images (B, C, H, W) and corners (B, 2), got {tuple(images.shape)}, "
                                f"{tuple(corners.shape)}")
    offsets = torch.arange(crop, device=images.device)
    rows = (corners[:, 0:1].to(images.device) + offsets).view(-1, 1, crop, 1)  # (B, 1, crop, 1)
    cols = (corners[:, 1:2].to(images.device) + offsets).view(-1, 1, 1, crop)  # (B, 1, 1, crop)
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    chans = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return images[batch, chans, rows, cols]


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
    # the source pixel of every output pixel, clamped into the frame and masked where it falls outside: no padding
    # sized by the largest shift, so nothing is read back to the host (a training step stays free of syncs)
    rows = torch.arange(h, device=images.device)[None] - shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=images.device)[None] - shifts[:, 1:]  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, H, W)
    b = torch.arange(batch, device=images.device)[:, None, None]
    out = images[b, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # (B, H, W, C)
    out = torch.where(inside[..., None], out, torch.zeros((), dtype=images.dtype, device=images.device))
    return out.permute(0, 3, 1, 2).contiguous()


def random_shifts(batch: int, max_shift: int, generator: torch.Generator) -> Tensor:
    """Uniform integer offsets in ``[-max_shift, max_shift]``, ``(B, 2)`` as ``(dy, dx)``."""
    return torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator)


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
    about 73% on the embedded sample (``tests/data/test_data.py`` checks the range).
    """
    a, b = ink_boxes(parts[:, 0]), ink_boxes(parts[:, 1])
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]) + 1).clamp(min=0)
    area = lambda q: ((q[:, 2] - q[:, 0] + 1).clamp(min=0) * (q[:, 3] - q[:, 1] + 1).clamp(min=0))  # noqa: E731
    return (iw * ih).float() / torch.minimum(area(a), area(b)).clamp(min=1).float()
