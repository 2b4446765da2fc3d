"""MNIST-C (Mu & Gilmer 2019, arXiv:1906.02337): the 15 corruptions of the benchmark, each at the one severity the
benchmark uses, as suite transformations in torch/kornia.

Definitions follow the paper and its generator (google-research/mnist-c, ``corruptions.py``, whose default severities
make the benchmark); the code is written anew: batched, on the images' device, and seeded per image like every
random transformation of the suite (``seed`` an int for the batch, or ``(B,)`` per-image seeds: random draws come
from one CPU generator per image, so batching never changes a result). Each function takes ``(B, C, H, W)`` images in
[0, 1] and the magnitude ``mnist-c`` (the benchmark's severity) or ``none`` (the identity, exact) and returns
images in [0, 1].

Convention:
    - Geometric corruptions (shear, scale, rotate, translate) are about the canvas centre ``((W-1)/2, (H-1)/2)``,
      bilinear with zero fill, and return their input -> output pixel matrix; the sign of shear, rotate and of each
      axis of translate is drawn per image.
    - Every corruption keeps the label (the paper checks each against human readers): all are *nuisances*.
"""

from __future__ import annotations

import math

import torch
from kornia.filters import canny, gaussian_blur2d
from torch import Tensor

from ..errors import InvalidInputError
from .functional import Seed, Transformed, _check_images, _eye, _generators, apply_matrix

__all__ = ["CORRUPTIONS", "MNISTC", "MNISTC_NAMES"]

MNISTC = ("none", "mnist-c")  # the magnitudes: the identity and the benchmark's severity


def _check(images: Tensor, magnitude: str, name: str) -> bool:
    """True when ``magnitude`` asks for the corruption, False for the identity."""
    _check_images(images)
    if magnitude not in MNISTC:
        raise InvalidInputError(f"{name} takes one of {', '.join(MNISTC)}, got {magnitude!r}")
    return magnitude != "none"


def _draw(seed: Seed, b: int, fn) -> Tensor:
    """``fn(generator)`` per image, stacked ``(B, ...)`` (CPU)."""
    return torch.stack([fn(g) for g in _generators(seed, b)])


def _uniform(seed: Seed, b: int, *shape: int) -> Tensor:
    return _draw(seed, b, lambda g: torch.rand(shape, generator=g, dtype=torch.float64))


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur ``(B, C, H, W)`` truncated at 4 sigma, edges replicated (scikit-image's ``gaussian``)."""
    k = 2 * int(4 * sigma + 0.5) + 1
    return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")


def _sign(seed: Seed, b: int, n: int = 1) -> Tensor:
    return torch.where(_uniform(seed, b, n) < 0.5, -1.0, 1.0).double()  # (B, n)


def _warp_back(images: Tensor, back: Tensor) -> Transformed:
    """Warp by the output -> input maps ``back (B, 2, 2)`` about the centre (the reference's inverse maps)."""
    b, _, h, w = images.shape
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    inv = torch.zeros(b, 3, 3, dtype=torch.float64)
    inv[:, :2, :2] = back
    inv[:, :2, 2] = c - back @ c
    inv[:, 2, 2] = 1
    matrix = torch.linalg.inv(inv).float().to(images.device)  # input -> output, the suite's convention
    return Transformed(apply_matrix(images, matrix).clamp(0, 1), matrix)


# --- noise ------------------------------------------------------------------------------------------------------


def shot_noise(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Poisson photon noise: ``Poisson(3 x) / 3`` per pixel (severity 5 of 5: 3 photons at full ink)."""
    if not _check(images, magnitude, "mnistc-shot-noise"):
        return Transformed(images.clone())
    rate = images.detach().float().cpu() * 3.0
    out = torch.stack([torch.poisson(r, generator=g) for r, g in zip(rate, _generators(seed, len(rate)))]) / 3.0
    return Transformed(out.clamp(0, 1).to(images.device))


def impulse_noise(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Salt and pepper: 17% of the pixels (severity 4) set to 0 or 1, even odds."""
    if not _check(images, magnitude, "mnistc-impulse-noise"):
        return Transformed(images.clone())
    u = _uniform(seed, images.shape[0], 2, *images.shape[1:]).to(images.device)
    hit, salt = u[:, 0] < 0.17, u[:, 1] < 0.5
    out = torch.where(hit, salt.to(images.dtype), images)
    return Transformed(out.clamp(0, 1))


# --- blurs ------------------------------------------------------------------------------------------------------


def glass_blur(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Blur (sigma 0.7), quantise to 8 bits, then two passes of local pixel swaps, then blur again (severity 1).

    Each pass visits the pixels from the bottom-right corner inwards (rows and columns ``size - 1`` down to 2), and
    with even odds swaps the pixel with its neighbour up, left or up-left (offsets in {-1, 0} per axis)."""
    if not _check(images, magnitude, "mnistc-glass-blur"):
        return Transformed(images.clone())
    b, c, h, w = images.shape
    x = torch.floor(_blur(images.float(), 0.7).clamp(0, 1) * 255) / 255
    steps = [(i, j) for _ in range(2) for i in range(h - 1, 1, -1) for j in range(w - 1, 1, -1)]
    u = _uniform(seed, b, len(steps), 3)  # (B, S, 3): swap?, dx, dy
    swap = u[..., 0] < 0.5
    dx = torch.where(swap, torch.floor(u[..., 1] * 2).long() - 1, 0)
    dy = torch.where(swap, torch.floor(u[..., 2] * 2).long() - 1, 0)
    flat = x.reshape(b, c, h * w).clone()
    here = torch.tensor([i * w + j for i, j in steps])
    there = (here + dy * w + dx).to(images.device)  # (B, S)
    here = here.to(images.device)
    rows = torch.arange(b, device=images.device)
    for s in range(len(steps)):
        p, q = here[s].expand(b), there[:, s]
        a, v = flat[rows, :, p].clone(), flat[rows, :, q].clone()
        flat[rows, :, p], flat[rows, :, q] = v, a
    out = _blur(flat.reshape(b, c, h, w), 0.7).clamp(0, 1)
    return Transformed(out.to(images.dtype))


def motion_blur(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """ImageMagick's one-sided motion blur (radius 10, sigma 3, severity 1) at an angle drawn in [-45, 45] degrees.

    Each output pixel is the weighted sum of the 21 pixels ``i`` steps along the angle (``i = 0..20``, offsets
    rounded to whole pixels, edges replicated), weights ``exp(-i^2 / 18)`` normalised; quantised to 8 bits."""
    if not _check(images, magnitude, "mnistc-motion-blur"):
        return Transformed(images.clone())
    b, c, h, w = images.shape
    angle = torch.deg2rad(_uniform(seed, b, 1)[:, 0] * 90 - 45)  # (B,)
    steps = torch.arange(21, dtype=torch.float64)
    weights = torch.exp(-(steps**2) / 18)
    weights = (weights / weights.sum()).to(device=images.device, dtype=torch.float32)
    off_x = torch.ceil(steps[None] * torch.cos(angle)[:, None] - 0.5).long().to(images.device)  # (B, 21)
    off_y = torch.ceil(steps[None] * torch.sin(angle)[:, None] - 0.5).long().to(images.device)
    ys = torch.arange(h, device=images.device)[None, :, None]
    xs = torch.arange(w, device=images.device)[None, None, :]
    flat = images.float().reshape(b, c, h * w)
    out = torch.zeros_like(flat)
    for i in range(21):
        idx = ((ys + off_y[:, i, None, None]).clamp(0, h - 1) * w
               + (xs + off_x[:, i, None, None]).clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
        out += weights[i] * flat.gather(2, idx)
    out = torch.round(out.clamp(0, 1) * 255) / 255
    return Transformed(out.reshape(b, c, h, w).to(images.dtype))


# --- geometry ---------------------------------------------------------------------------------------------------


def shear(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Shear by +-0.4 rad (sign drawn per image; severity 2): an output pixel reads the input at
    ``(x - sin(k) (y - cy), cy + cos(k) (y - cy))``."""
    if not _check(images, magnitude, "mnistc-shear"):
        return Transformed(images.clone(), _eye(images))
    k = 0.4 * _sign(seed, images.shape[0])[:, 0]
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    back = torch.stack([torch.stack([one, -torch.sin(k)], -1), torch.stack([zero, torch.cos(k)], -1)], -2)
    return _warp_back(images, back)


def scale(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Shrink to 0.7 of the size about the centre (severity 3)."""
    if not _check(images, magnitude, "mnistc-scale"):
        return Transformed(images.clone(), _eye(images))
    back = torch.eye(2, dtype=torch.float64).expand(images.shape[0], 2, 2) / 0.7
    return _warp_back(images, back)


def rotate(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Rotate by 0.4 rad (about 23 degrees), the direction drawn per image (severity 2)."""
    if not _check(images, magnitude, "mnistc-rotate"):
        return Transformed(images.clone(), _eye(images))
    r = 0.4 * _sign(seed, images.shape[0])[:, 0]
    c, s = torch.cos(r), torch.sin(r)
    back = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return _warp_back(images, back)


def translate(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Shift by 3 px along each axis, each sign drawn per image (severity 3), zero fill."""
    if not _check(images, magnitude, "mnistc-translate"):
        return Transformed(images.clone(), _eye(images))
    shift = 3 * _sign(seed, images.shape[0], 2).to(images.device)
    m = _eye(images)
    m[:, :2, 2] = shift.float()
    return Transformed(apply_matrix(images, m).clamp(0, 1), m)


# --- photometric ------------------------------------------------------------------------------------------------


def brightness(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Raise HSV value by 0.5 (severity 5); for grey images that is ``min(x + 0.5, 1)``. Deterministic."""
    if not _check(images, magnitude, "mnistc-brightness"):
        return Transformed(images.clone())
    return Transformed((images + 0.5).clamp(0, 1))


def stripe(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Invert the outer quarter columns on each side (7 of 28 px each); the centre is untouched. Deterministic."""
    if not _check(images, magnitude, "mnistc-stripe"):
        return Transformed(images.clone())
    w = images.shape[-1]
    q = w // 4
    out = images.clone()
    out[..., :q] = 1 - images[..., :q]
    out[..., w - q:] = 1 - images[..., w - q:]
    return Transformed(out.clamp(0, 1))


def _plasma(gens: list[torch.Generator], size: int, decay: float) -> Tensor:
    """Diamond-square plasma fractals ``(B, size, size)`` in [0, 1] (wrapping at the edges; ``size`` a power of 2):
    each level's new points are the mean of their four neighbours plus noise ``U(-1, 1) * wibble^2``, ``wibble``
    starting at 100 and divided by ``decay`` per level; then each map is scaled to span [0, 1]."""
    b = len(gens)
    u = torch.stack([torch.rand(size * size, generator=g) for g in gens]) * 2 - 1
    m = torch.zeros(b, size, size)
    step, wibble, used = size, 100.0, 0

    def noisy(mean: Tensor) -> Tensor:
        nonlocal used
        n = mean[0].numel()
        out = mean / 4 + wibble * wibble * u[:, used:used + n].reshape(mean.shape)
        used += n
        return out

    while step >= 2:
        half = step // 2
        corner = m[:, ::step, ::step]
        acc = corner + corner.roll(-1, 1)
        m[:, half::step, half::step] = noisy(acc + acc.roll(-1, 2))
        centre, corner = m[:, half::step, half::step], m[:, ::step, ::step]
        m[:, ::step, half::step] = noisy(centre + centre.roll(1, 1) + corner + corner.roll(-1, 2))
        m[:, half::step, ::step] = noisy(centre + centre.roll(1, 2) + corner + corner.roll(-1, 1))
        step, wibble = half, wibble / decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Add 3 times a plasma fractal (decay 1.4; severity 5), the top-left crop of a 256 px map, then rescale by
    ``max / (max + 3)`` (``max`` the image's brightest pixel)."""
    if not _check(images, magnitude, "mnistc-fog"):
        return Transformed(images.clone())
    b, c, h, w = images.shape
    size = max(256, 1 << (max(h, w) - 1).bit_length())
    gens = _generators(seed, b)
    # in chunks of 256 maps, so 10,000 full-size maps never sit in memory at once
    maps = torch.cat([_plasma(gens[i:i + 256], size, 1.4)[:, :h, :w] for i in range(0, b, 256)])
    x = images.float()
    top = x.amax((1, 2, 3), keepdim=True)
    out = (x + 3 * maps[:, None].to(device=images.device, dtype=torch.float32)) * top / (top + 3)
    return Transformed(out.clamp(0, 1).to(images.dtype))


def spatter(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Mud drops (severity 4): a normal(0.65, 0.3) layer blurred (sigma 1) and kept above 0.65 marks the drops; the
    mask blurred (sigma 1.5) and kept from 0.8 mixes in grey 63/255 where it lies."""
    if not _check(images, magnitude, "mnistc-spatter"):
        return Transformed(images.clone())
    b, c, h, w = images.shape
    liquid = _draw(seed, b, lambda g: torch.randn((1, h, w), generator=g) * 0.3 + 0.65).to(images.device)
    liquid = _blur(liquid, 1.0)
    mask = _blur((liquid > 0.65).float(), 1.5)
    mask = torch.where(mask < 0.8, 0.0, mask)
    out = images.float() * (1 - mask) + 63 / 255 * mask
    return Transformed(out.clamp(0, 1).to(images.dtype))


# --- lines ------------------------------------------------------------------------------------------------------


def _lines(c0: Tensor, r0: Tensor, c1: Tensor, r1: Tensor, h: int, w: int) -> Tensor:
    """``(B, h, w)`` anti-aliased segments from ``(c0, r0)`` to ``(c1, r1)`` (each ``(B,)``): intensity
    ``1 + log(1 - d / 2.3)`` at vertical distance ``d`` from the line, kept between columns ``floor(c0)`` and
    ``ceil(c1)`` (exclusive); a vertical segment (``c1 == c0``) draws nothing."""
    cc = torch.arange(w, dtype=torch.float64)[None, None, :]
    rr = torch.arange(h, dtype=torch.float64)[None, :, None]
    same = c1 == c0
    slope = (r1 - r0) / torch.where(same, 1.0, c1 - c0)
    f = slope[:, None, None] * (cc - c0[:, None, None]) + r0[:, None, None]
    d = (rr - f).abs().clamp(0, 2.3 - 1e-10)
    line = (torch.log(1 - d / 2.3) + 1).clamp(0, 1)
    keep = (cc >= torch.floor(c0)[:, None, None]) & (cc < torch.ceil(c1)[:, None, None]) & ~same[:, None, None]
    return torch.where(keep, line, 0.0)


def _add_lines(images: Tensor, lines: Tensor) -> Tensor:
    return (images.float() + lines[:, None].to(device=images.device, dtype=torch.float32)).clamp(0, 1)


def dotted_line(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """A dashed line across the image (2 px dashes, 2 px gaps, starting with a gap), from the left edge at a row
    drawn in ``[0, H - 2]`` to the right edge at another."""
    if not _check(images, magnitude, "mnistc-dotted-line"):
        return Transformed(images.clone())
    b, _, h, w = images.shape
    rows = torch.floor(_uniform(seed, b, 2) * (h - 1))
    zero = torch.zeros(b, dtype=torch.float64)
    line = _lines(zero, rows[:, 0], zero + (w - 1), rows[:, 1], h, w)
    gaps = (torch.arange(w) // 2) % 2 == 0  # columns 0-1, 4-5, ...
    line[:, :, gaps] = 0
    return Transformed(_add_lines(images, line).to(images.dtype))


def zigzag(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """A zigzag (teeth 2 px long and 2 px high) from column 2 to column ``W - 3``, starting at a row drawn in
    ``[0, H - 2]`` and ending up to 5 rows away, drawn as line segments."""
    if not _check(images, magnitude, "mnistc-zigzag"):
        return Transformed(images.clone())
    b, _, h, w = images.shape
    u = _uniform(seed, b, 2)
    a = tb = 2.0
    c0, c1 = 2, w - 3
    segments = []
    for k in range(b):
        r0 = math.floor(float(u[k, 0]) * (h - 1))
        r1 = r0 + math.floor(float(u[k, 1]) * 10) - 5
        theta = math.atan((r1 - r0) / (c1 - c0))
        d = (c1 - c0) / math.cos(theta)
        points = [(0.0, 0.0)]
        r_i = 0.0
        for i in range(int((d - a) // (2 * a)) + 1):
            r_i = (-1) ** i * tb
            points.append(((2 * i + 1) * a, r_i))
        end = 2 * a * (d // (2 * a))
        if d != end:
            points.append((d, r_i / (2 * (d - end))))
        ct, st = math.cos(theta), math.sin(theta)
        pts = [(ct * x - st * y + c0, st * x + ct * y + r0) for x, y in points]
        segments.append([(*p, *q) for p, q in zip(pts, pts[1:])])
    most = max(len(s) for s in segments)
    x = images.float()
    for i in range(most):
        seg = torch.tensor([s[i] if i < len(s) else (0.0, 0.0, 0.0, 0.0) for s in segments], dtype=torch.float64)
        x = _add_lines(x, _lines(seg[:, 0], seg[:, 1], seg[:, 2], seg[:, 3], h, w))
    return Transformed(x.to(images.dtype))


def canny_edges(images: Tensor, magnitude: str = "mnist-c", seed: Seed = 0) -> Transformed:
    """Canny's edge map (sigma 1, hysteresis thresholds 0.1 and 0.2 on the gradient magnitude) in place of the
    image: 1 on edges, 0 elsewhere. Deterministic."""
    if not _check(images, magnitude, "mnistc-canny-edges"):
        return Transformed(images.clone())
    gray = images.float().mean(1, keepdim=True)
    _, edges = canny(gray, low_threshold=0.1, high_threshold=0.2, kernel_size=(9, 9), sigma=(1.0, 1.0))
    return Transformed(edges.expand_as(images).to(images.dtype).clone())


CORRUPTIONS = {
    "mnistc-shot-noise": shot_noise,
    "mnistc-impulse-noise": impulse_noise,
    "mnistc-glass-blur": glass_blur,
    "mnistc-motion-blur": motion_blur,
    "mnistc-shear": shear,
    "mnistc-scale": scale,
    "mnistc-rotate": rotate,
    "mnistc-brightness": brightness,
    "mnistc-translate": translate,
    "mnistc-stripe": stripe,
    "mnistc-fog": fog,
    "mnistc-spatter": spatter,
    "mnistc-dotted-line": dotted_line,
    "mnistc-zigzag": zigzag,
    "mnistc-canny-edges": canny_edges,
}
MNISTC_NAMES = tuple(CORRUPTIONS)
GEOMETRIC = ("mnistc-shear", "mnistc-scale", "mnistc-rotate", "mnistc-translate")
