"""synthNORB: a smallNORB-like data set rendered here, with its ground-truth poses (issue 49).

smallNORB (LeCun, Huang & Bottou 2004) cannot be downloaded on machines without internet, and it is the data set of
the capsule claim that matters most (Hinton, Sabour & Frosst 2018: novel *out-of-plane* viewpoints). synthNORB
follows its design, so its splits, the novel-viewpoint task and the preprocessing apply unchanged:

- 5 categories in smallNORB's order (0 four-legged animals, 1 human figures, 2 airplanes, 3 trucks, 4 cars), 10
  instances each that differ in shape and proportions (drawn per instance from a fixed seed), smallNORB's instance
  split (training instances 4, 6, 7, 8, 9; test instances 0, 1, 2, 3, 5);
- 18 azimuths (0 to 340 degrees by 20: ``info`` column 2 holds 0, 2, ..., 34, tens of degrees, as smallNORB), 9
  elevations (30 to 70 degrees by 5: ``info`` column 1 holds 0 to 8) and 6 lightings (column 3), the instance in
  column 0: 24,300 images per split, 96x96 grayscale, written as smallNORB's binary files (:func:`write_norb`),
  gzipped, under ``<data root>/synthnorb/``; the reader, the 96 -> 48 downsampling, the 32x32 crops and the
  familiar-viewpoint splits are the smallNORB ones (:mod:`capsprobe.data.viewpoints`). The second image of each
  stereo pair repeats the first (synthNORB is not stereo; the reader uses the first only).

Rendering (measured before choosing, 2026-12-07, 2 busy cores): pytorch3d has no wheel on the package index here;
pyrender 0.1.45 installs and renders headless through Mesa's EGL (llvmpipe), 38 ms per 96x96 image, but only where
the system has libEGL and Mesa (here a dependency of the Chromium the browser test installs; nothing promises it on
a user's machine or CI's), and a GL rasteriser's bytes depend on the driver. Chosen instead, with no system
dependency: a compact renderer in torch, sphere tracing (Hart 1996) of signed distance functions of primitives (ellipsoids,
capsules, rounded boxes, cylinders: the distance bounds of Quilez, iquilezles.org/articles/distfunctions), with a
perspective camera (36 degree field of view, 3.5 units from the object's centre) and Lambertian shading under one
directional lamp plus ambient light; each primitive has its own grey albedo. The object turns on a turntable by its
azimuth; the camera rises by the elevation; the lamps are fixed in the room, so turning the object moves its shading
as well as its outline. An azimuth therefore changes the image in depth (occlusion, foreshortening, shading), not
only in the plane: no 2-D warp maps one view to the next. No object is symmetric under a half turn (heads, tails,
cabs, a raised arm, tail fins).

Determinism: the same version of this module gives the same bytes on a machine (elementwise float32 arithmetic
only, no reductions whose order could change); the cache's ``manifest.json`` records every file's SHA-256 and the
generator's version, and a cache from another version is regenerated, never reused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from .norb import NORB_FILES, write_norb

__all__ = [
    "AZIMUTHS",
    "CATEGORIES",
    "ELEVATIONS",
    "LIGHTINGS",
    "SIZE",
    "TEST_INSTANCES",
    "TRAIN_INSTANCES",
    "VERSION",
    "Scene",
    "build_object",
    "contact_sheet",
    "generate",
    "render",
    "synthnorb_files",
]

_log = logging.getLogger(__name__)

VERSION = 1  # bump when a change alters any rendered byte: caches of other versions are regenerated
SEED = 20040627  # smallNORB's CVPR 2004
CATEGORIES = ("animal", "human", "airplane", "truck", "car")  # smallNORB's order
TRAIN_INSTANCES = (4, 6, 7, 8, 9)  # smallNORB's split
TEST_INSTANCES = (0, 1, 2, 3, 5)
AZIMUTHS = tuple(range(0, 360, 20))  # degrees; info column 2 holds azimuth / 10
ELEVATIONS = tuple(range(30, 75, 5))  # degrees; info column 1 holds (elevation - 30) / 5
LIGHTINGS = 6
SIZE = 96  # the files' side, as smallNORB's
FOV = 36.0  # degrees, full vertical field of view
DISTANCE = 3.5  # camera to the object's centre
BACKGROUND = 0.0
# the six lamps: (azimuth relative to the camera, elevation, in degrees; lamp intensity; ambient)
LAMPS = ((-50.0, 40.0, 0.85, 0.22), (50.0, 40.0, 0.85, 0.22), (0.0, 75.0, 0.75, 0.3),
         (-100.0, 15.0, 0.9, 0.18), (100.0, 15.0, 0.9, 0.18), (170.0, 50.0, 0.7, 0.35))
STEPS = 72  # sphere-tracing iterations at most
EPS = 1e-3


# --- scenes: objects as unions of primitives ----------------------------------------------------------------------


@dataclass
class Scene:
    """An object as a union of primitives, each with its grey albedo, in object coordinates (x forward, y up, z to
    the object's left, the ground at y = 0)."""

    ellipsoids: list[tuple[tuple[float, float, float], tuple[float, float, float], float]] = field(default_factory=list)
    capsules: list[tuple[tuple[float, float, float], tuple[float, float, float], float, float]] = field(
        default_factory=list)
    boxes: list[tuple[tuple[float, float, float], tuple[float, float, float], float, float]] = field(
        default_factory=list)
    wheels: list[tuple[tuple[float, float, float], float, float, float]] = field(default_factory=list)  # along z

    def ellipsoid(self, centre, radii, albedo=0.8) -> None:
        self.ellipsoids.append((tuple(centre), tuple(radii), albedo))

    def capsule(self, a, b, radius, albedo=0.8) -> None:
        self.capsules.append((tuple(a), tuple(b), radius, albedo))

    def box(self, centre, half, rounding=0.02, albedo=0.8) -> None:
        self.boxes.append((tuple(centre), tuple(half), rounding, albedo))

    def wheel(self, centre, radius, half_width, albedo=0.35) -> None:
        self.wheels.append((tuple(centre), radius, half_width, albedo))

    def tensors(self) -> dict[str, torch.Tensor]:
        f = torch.float32

        def t(rows, width):
            return torch.tensor(rows, dtype=f).reshape(-1, width)

        return {"ell": t([[*c, *r] for c, r, _ in self.ellipsoids], 6),
                "cap": t([[*a, *b, r] for a, b, r, _ in self.capsules], 7),
                "box": t([[*c, *h, r] for c, h, r, _ in self.boxes], 7),
                "whl": t([[*c, r, w] for c, r, w, _ in self.wheels], 5),
                "albedo": torch.tensor([a for *_, a in self.ellipsoids] + [a for *_, a in self.capsules]
                                       + [a for *_, a in self.boxes] + [a for *_, a in self.wheels], dtype=f)}


def _animal(u: Callable[[float, float], float]) -> Scene:
    s = Scene()
    length, height, width = u(0.5, 0.75), u(0.2, 0.3), u(0.16, 0.24)
    legs = u(0.3, 0.55)
    y = legs + 0.6 * height
    s.ellipsoid((0, y, 0), (length, height, width), 0.75)
    leg_r = u(0.05, 0.085)
    for fx in (0.72, -0.72):
        for fz in (0.65, -0.65):
            top = (fx * length, y - 0.3 * height, fz * width)
            s.capsule(top, (fx * length * u(1.0, 1.15), leg_r, fz * width), leg_r, 0.65)
    neck_angle, neck = math.radians(u(25, 65)), u(0.2, 0.45)
    base = (0.8 * length, y + 0.3 * height, 0)
    tip = (base[0] + neck * math.cos(neck_angle), base[1] + neck * math.sin(neck_angle), 0)
    s.capsule(base, tip, u(0.07, 0.11), 0.7)
    head = u(0.13, 0.2)
    s.ellipsoid((tip[0] + 0.5 * head, tip[1], 0), (head * 1.3, head * 0.75, head * 0.7), 0.85)
    ear = u(0.04, 0.08)
    s.capsule((tip[0], tip[1] + 0.5 * head, 0.4 * head), (tip[0] - 0.3 * head, tip[1] + 0.6 * head + ear,
                                                           0.55 * head), 0.03, 0.6)
    tail = u(0.25, 0.55)
    lift = u(-0.2, 0.35)
    s.capsule((-length, y + 0.2 * height, 0), (-length - tail, y + lift, u(-0.1, 0.1)), u(0.025, 0.05), 0.55)
    return s


def _human(u: Callable[[float, float], float]) -> Scene:
    s = Scene()
    legs, torso, shoulders = u(0.65, 0.85), u(0.45, 0.6), u(0.17, 0.26)
    hips = u(0.08, 0.13)
    stride = u(0.0, 0.15)
    for side, sx in ((1, stride), (-1, -stride)):
        s.capsule((0, legs, side * hips), (sx, 0.09, side * hips), u(0.055, 0.075), 0.5)
        s.box((sx + 0.08, 0.04, side * hips), (0.12, 0.04, 0.05), 0.02, 0.3)  # feet point forward
    chest = legs + torso
    s.capsule((0, legs + 0.05, 0), (0, chest - 0.05, 0), u(0.13, 0.18), 0.7)
    s.ellipsoid((0, chest, 0), (0.12, 0.07, shoulders), 0.7)
    head = u(0.1, 0.13)
    s.ellipsoid((0, chest + 0.1 + head, 0), (head, head * 1.15, head * 0.95), 0.9)
    s.ellipsoid((head * 0.95, chest + 0.1 + head, 0), (0.03, 0.025, 0.02), 0.9)  # nose: the face is forward
    arm = u(0.5, 0.62)
    s.capsule((0, chest, -shoulders), (u(-0.05, 0.1), chest - arm, -shoulders - 0.06), 0.045, 0.6)  # right: hangs
    raise_ = math.radians(u(40, 150))  # left arm raised forward and up
    s.capsule((0, chest, shoulders), (arm * math.sin(raise_), chest - arm * math.cos(raise_), shoulders + 0.05),
              0.045, 0.6)
    return s


def _airplane(u: Callable[[float, float], float]) -> Scene:
    s = Scene()
    length, radius = u(0.75, 1.0), u(0.08, 0.12)
    y = u(0.35, 0.5)
    s.capsule((-length, y, 0), (length * 0.85, y, 0), radius, 0.8)
    s.ellipsoid((length * 0.85, y, 0), (radius * u(2.0, 3.0), radius, radius), 0.6)  # nose
    span, chord = u(0.6, 0.95), u(0.16, 0.26)
    sweep = u(0.0, 0.2)
    wing_x = u(0.0, 0.25)
    s.box((wing_x - sweep / 2, y - 0.3 * radius, 0), (chord, 0.018, span), 0.01, 0.9)
    fin = u(0.18, 0.3)
    s.box((-length + 0.08, y + radius + fin / 2, 0), (0.1, fin / 2, 0.015), 0.01, 0.55)
    s.box((-length + 0.06, y + 0.2 * radius, 0), (0.08, 0.015, u(0.2, 0.32)), 0.01, 0.85)
    s.capsule((wing_x, y, 0), (wing_x, 0.0, 0), 0.02, 0.4)  # the stand
    if u(0, 1) > 0.5:  # engines under the wings on some instances
        for z in (0.45, -0.45):
            s.capsule((wing_x + 0.1, y - 0.12, z * span), (wing_x - 0.15, y - 0.12, z * span), 0.05, 0.45)
    return s


def _truck(u: Callable[[float, float], float]) -> Scene:
    s = Scene()
    length, width, wheel = u(0.8, 1.05), u(0.28, 0.36), u(0.13, 0.18)
    cab = u(0.25, 0.35)
    cab_h, box_h = u(0.3, 0.42), u(0.35, 0.55)
    floor = wheel * 1.3
    s.box((length - cab / 2, floor + cab_h / 2, 0), (cab / 2, cab_h / 2, width * 0.95), 0.04, 0.85)
    s.box((length - cab - 0.03 - (2 * length - cab) / 2 + 0.05, floor + box_h / 2, 0),
          ((2 * length - cab - 0.1) / 2 - 0.03, box_h / 2, width), 0.02, 0.7)
    s.box((0, floor - 0.02, 0), (length, 0.03, width * 0.8), 0.01, 0.4)
    for x in (length - cab / 2, -length * 0.45, -length * 0.75):
        for z in (width * 0.8, -width * 0.8):
            s.wheel((x, wheel, z), wheel, 0.06)
    return s


def _car(u: Callable[[float, float], float]) -> Scene:
    s = Scene()
    length, width, wheel = u(0.7, 0.95), u(0.3, 0.38), u(0.11, 0.15)
    body_h = u(0.14, 0.22)
    floor = wheel * 0.9
    s.box((0, floor + body_h / 2, 0), (length, body_h / 2, width), 0.06, 0.8)
    cabin_len, cabin_h = u(0.35, 0.5), u(0.14, 0.2)
    s.box((-u(0.05, 0.25), floor + body_h + cabin_h / 2, 0), (cabin_len, cabin_h / 2, width * 0.85), 0.06, 0.5)
    if u(0, 1) > 0.6:  # a spoiler on some
        s.box((-length + 0.05, floor + body_h + 0.08, 0), (0.05, 0.015, width * 0.9), 0.01, 0.4)
    for x in (length * 0.65, -length * 0.62):
        for z in (width * 0.9, -width * 0.9):
            s.wheel((x, wheel, z), wheel, 0.05)
    return s


_BUILDERS = (_animal, _human, _airplane, _truck, _car)


def build_object(category: int, instance: int) -> Scene:
    """The scene of ``instance`` (0-9) of ``category`` (0-4): its proportions drawn from a generator seeded by
    (:data:`SEED`, category, instance)."""
    if not (0 <= category < len(CATEGORIES) and 0 <= instance < 10):
        raise InvalidInputError(f"synthnorb has categories 0-{len(CATEGORIES) - 1} and instances 0-9, got "
                                f"{category}, {instance}")
    rng = np.random.default_rng([SEED, category, instance])

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    return _BUILDERS[category](u)


# --- signed distances ----------------------------------------------------------------------------------------------


def _distances(p: torch.Tensor, prims: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(M, K)``: the signed distance (a bound) of every point to every primitive, in :meth:`Scene.tensors` order."""
    out = []
    q = p[:, None, :]
    if len(prims["ell"]):  # ellipsoid: k0 (k0 - 1) / k1 (Quilez)
        c, r = prims["ell"][:, :3], prims["ell"][:, 3:]
        d = q - c
        k0 = (d / r).norm(dim=-1)
        k1 = (d / (r * r)).norm(dim=-1).clamp_min(1e-9)
        out.append(k0 * (k0 - 1) / k1)
    if len(prims["cap"]):
        a, b, r = prims["cap"][:, :3], prims["cap"][:, 3:6], prims["cap"][:, 6]
        pa, ba = q - a, b - a
        h = ((pa * ba).sum(-1) / (ba * ba).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        out.append((pa - ba * h[..., None]).norm(dim=-1) - r)
    if len(prims["box"]):
        c, half, r = prims["box"][:, :3], prims["box"][:, 3:6], prims["box"][:, 6]
        d = (q - c).abs() - (half - r[:, None])
        out.append(d.clamp_min(0).norm(dim=-1) + d.amax(-1).clamp_max(0) - r)
    if len(prims["whl"]):  # a cylinder whose axis is z
        c, r, w = prims["whl"][:, :3], prims["whl"][:, 3], prims["whl"][:, 4]
        d = q - c
        radial = d[..., :2].norm(dim=-1) - r
        axial = d[..., 2].abs() - w
        both = torch.stack([radial, axial], -1)
        out.append(both.amax(-1).clamp_max(0) + both.clamp_min(0).norm(dim=-1))
    return torch.cat(out, 1)


def _rotation_y(degrees: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` turntable rotations about the up axis (counter-clockwise seen from above)."""
    t = torch.deg2rad(degrees.to(torch.float32))
    c, s = torch.cos(t), torch.sin(t)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1),
                        torch.stack([-s, zero, c], -1)], -2)


def _rays(azimuths: torch.Tensor, elevations: torch.Tensor, centre: torch.Tensor, size: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Origins and unit directions ``(B, size * size, 3)`` in object coordinates, and each view's turntable rotation
    ``(B, 3, 3)`` (room to object). The room's camera looks from +x towards the object's centre, raised by the
    elevation; the turntable turns the object by the azimuth, i.e. the rays by minus it."""
    e = torch.deg2rad(elevations.to(torch.float32))
    eye = torch.stack([torch.cos(e), torch.sin(e), torch.zeros_like(e)], -1) * DISTANCE  # room frame
    forward = -eye / eye.norm(dim=-1, keepdim=True)
    up_world = torch.tensor([0.0, 1.0, 0.0])
    right = torch.cross(forward, up_world.expand_as(forward), dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.cross(right, forward, dim=-1)
    half = math.tan(math.radians(FOV / 2))
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    v, w = torch.meshgrid(-coords, coords, indexing="ij")  # rows top to bottom, columns left to right
    dirs = (forward[:, None, :] + half * (w.reshape(1, -1, 1) * right[:, None, :]
                                          + v.reshape(1, -1, 1) * up[:, None, :]))
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    to_object = _rotation_y(-azimuths)  # turning the object by +a = turning the room by -a about its centre
    origin = (to_object * eye[:, None, :]).sum(-1)[:, None, :].expand_as(dirs) + centre
    return origin, (to_object[:, None, :, :] * dirs[:, :, None, :]).sum(-1), to_object


def _bounds(prims: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """A bounding sphere (centre, radius) of the scene."""
    pts, reach = [], []
    if len(prims["ell"]):
        pts.append(prims["ell"][:, :3])
        reach.append(prims["ell"][:, 3:].amax(-1))
    if len(prims["cap"]):
        pts += [prims["cap"][:, :3], prims["cap"][:, 3:6]]
        reach += [prims["cap"][:, 6], prims["cap"][:, 6]]
    if len(prims["box"]):
        pts.append(prims["box"][:, :3])
        reach.append(prims["box"][:, 3:6].norm(dim=-1))
    if len(prims["whl"]):
        pts.append(prims["whl"][:, :3])
        reach.append(prims["whl"][:, 3:5].norm(dim=-1))
    p, r = torch.cat(pts), torch.cat(reach)
    lo, hi = (p - r[:, None]).amin(0), (p + r[:, None]).amax(0)
    centre = (lo + hi) / 2
    return centre, float(((p - centre).norm(dim=-1) + r).amax()) + 0.02


def render(category: int, instance: int, azimuths: Sequence[float] | np.ndarray, elevations: Sequence[float] | np.ndarray,
           lightings: Sequence[int] | np.ndarray, size: int = SIZE) -> torch.Tensor:
    """Grayscale renders ``(B, size, size)`` float32 in [0, 1] of one object, view ``i`` at ``azimuths[i]``,
    ``elevations[i]`` (degrees) under lamp ``lightings[i]`` (0-5). The geometry is traced once per view; the six
    lamps only shade it."""
    az = torch.as_tensor(azimuths, dtype=torch.float32).reshape(-1)
    el = torch.as_tensor(elevations, dtype=torch.float32).reshape(-1)
    lights = torch.as_tensor(lightings, dtype=torch.long).reshape(-1)
    if not (len(az) == len(el) == len(lights)):
        raise InvalidInputError("render needs as many azimuths, elevations and lightings")
    if len(lights) and (int(lights.min()) < 0 or int(lights.max()) >= LIGHTINGS):
        raise InvalidInputError(f"lightings are 0-{LIGHTINGS - 1}")
    views, view_of = torch.unique(torch.stack([az, el], 1), dim=0, return_inverse=True)
    where, normal, albedo, to_object = _trace(category, instance, views[:, 0], views[:, 1], size)
    n = size * size
    lamp = torch.tensor([[math.cos(math.radians(le)) * math.cos(math.radians(la)), math.sin(math.radians(le)),
                          math.cos(math.radians(le)) * math.sin(math.radians(la))] for la, le, *_ in LAMPS])
    strength = torch.tensor([s for *_, s, _ in LAMPS])
    ambient = torch.tensor([a for *_, a in LAMPS])
    pairs, pair_of = torch.unique(torch.stack([view_of, lights], 1), dim=0, return_inverse=True)
    images = torch.full((len(pairs), n), BACKGROUND)
    view, pixel = where // n, where % n
    image_of = torch.full((len(views), LIGHTINGS), -1, dtype=torch.long)  # the image showing a view under a lamp
    image_of[pairs[:, 0], pairs[:, 1]] = torch.arange(len(pairs))
    for li in range(LIGHTINGS):  # every hit of every view under lamp li, at once
        target = image_of[view, li]
        shown = target >= 0
        if not shown.any():
            continue
        v = view[shown]
        to_lamp = (to_object[v] * lamp[li]).sum(-1)  # elementwise: no BLAS, the same bytes anywhere
        lambert = (normal[shown] * to_lamp).sum(-1).clamp_min(0)
        shade = albedo[shown] * (ambient[li] + strength[li] * lambert)
        images[target[shown], pixel[shown]] = shade.clamp(1 / 255, 1)  # an object pixel never reads as background
    return images[pair_of].reshape(len(az), size, size)


def _trace(category: int, instance: int, az: torch.Tensor, el: torch.Tensor, size: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sphere tracing of every view: the flat indices of the rays that hit (view * size^2 + pixel), their unit
    normals and albedos (object coordinates), and each view's turntable rotation."""
    prims = build_object(category, instance).tensors()
    centre, radius = _bounds(prims)
    origin, dirs, to_object = _rays(az, el, centre, size)
    b, n = dirs.shape[:2]
    o, d = origin.reshape(-1, 3), dirs.reshape(-1, 3)
    # enter and leave the bounding sphere; rays that miss it are background
    oc = o - centre
    bq = (oc * d).sum(-1)
    disc = bq * bq - ((oc * oc).sum(-1) - radius * radius)
    t_near = (-bq - disc.clamp_min(0).sqrt()).clamp_min(0)
    t_far = -bq + disc.clamp_min(0).sqrt()
    t = t_near.clone()
    hit = torch.zeros(len(o), dtype=torch.bool)
    active = torch.nonzero(disc > 0).squeeze(1)
    for _ in range(STEPS):
        if not len(active):
            break
        ta = t[active]
        dist = _distances(o[active] + d[active] * ta[:, None], prims).amin(1)
        t[active] = ta + dist
        done_hit = dist < EPS * (1 + ta)
        hit[active[done_hit]] = True
        active = active[~done_hit & (ta + dist < t_far[active])]
    # normals by central differences, albedo of the nearest primitive, at the hits only
    where = torch.nonzero(hit).squeeze(1)
    p = o[where] + d[where] * t[where, None]
    h = 1e-3
    grads = []
    for axis in range(3):
        step = torch.zeros(3)
        step[axis] = h
        grads.append(_distances(p + step, prims).amin(1) - _distances(p - step, prims).amin(1))
    normal = torch.stack(grads, -1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    albedo = prims["albedo"][_distances(p, prims).argmin(1)]
    return where, normal, albedo, to_object


# --- the data set ---------------------------------------------------------------------------------------------------


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (elevation index, azimuth index, lighting) in smallNORB's file order for one instance."""
    e, a, li = np.meshgrid(np.arange(len(ELEVATIONS)), np.arange(len(AZIMUTHS)), np.arange(LIGHTINGS), indexing="ij")
    return e.reshape(-1), a.reshape(-1), li.reshape(-1)


def render_split(instances: Sequence[int], size: int = SIZE, elevations: Sequence[int] | None = None,
                 azimuths: Sequence[int] | None = None, progress: Callable[[str], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``dat`` uint8 ``(N, 2, size, size)``, ``cat`` int32 ``(N,)``, ``info`` int32 ``(N, 4)`` (instance, elevation
    index, azimuth / 10, lighting) for every category x instance x viewpoint x lighting (optionally a subset of
    elevation and azimuth indices, for tests)."""
    e, a, li = _grid()
    keep = np.ones(len(e), dtype=bool)
    if elevations is not None:
        keep &= np.isin(e, list(elevations))
    if azimuths is not None:
        keep &= np.isin(a, list(azimuths))
    e, a, li = e[keep], a[keep], li[keep]
    dats, cats, infos = [], [], []
    for category in range(len(CATEGORIES)):
        for instance in instances:
            img = render(category, instance, [AZIMUTHS[i] for i in a], [ELEVATIONS[i] for i in e], li, size // 2)
            u8 = (img * 255).round().to(torch.uint8).repeat_interleave(2, 1).repeat_interleave(2, 2).numpy()
            dats.append(np.stack([u8, u8], 1))
            cats.append(np.full(len(e), category, dtype=np.int32))
            infos.append(np.stack([np.full(len(e), instance), e, 2 * a, li], 1).astype(np.int32))
            if progress is not None:
                progress(f"synthnorb: {CATEGORIES[category]} {instance} rendered ({len(e)} views)")
    return np.concatenate(dats), np.concatenate(cats), np.concatenate(infos)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_gz(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    raw = Path(tmp)
    try:
        write_norb(raw, array)
        with open(raw, "rb") as src, gzip.GzipFile(path.with_suffix(path.suffix + ".part"), "wb", compresslevel=6,
                                                    mtime=0) as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
        os.replace(path.with_suffix(path.suffix + ".part"), path)
    finally:
        raw.unlink(missing_ok=True)
        path.with_suffix(path.suffix + ".part").unlink(missing_ok=True)


def synthnorb_files(root: str | Path, generate_missing: bool = True) -> dict[str, dict[str, Path]]:
    """``{"train"|"test": {"dat"|"cat"|"info": path}}`` under ``root/synthnorb``: the cache, generated (about 5
    minutes on 2 cores) when missing or of another :data:`VERSION`, and checked against its manifest."""
    from .datasets import DatasetUnavailableError

    folder = Path(root) / "synthnorb"
    names = {split: {part: folder / f"{stem.replace('smallnorb', 'synthnorb')}-{part}.mat.gz"
                     for part in ("dat", "cat", "info")} for split, stem in NORB_FILES.items()}
    manifest = folder / "manifest.json"
    if manifest.is_file():
        record = json.loads(manifest.read_text())
        if record.get("version") == VERSION and all(p.is_file() for parts in names.values() for p in parts.values()):
            if not record.get("complete", False):
                _log.warning("synthnorb: the cache under %s is a partial set (made for a test)", folder)
            return names
        _log.warning("synthnorb: the cache under %s is of version %s, not %s: regenerating", folder,
                     record.get("version"), VERSION)
    if not generate_missing:
        raise DatasetUnavailableError(f"synthnorb is not generated under {folder}")
    _log.warning("synthnorb: rendering 48,600 images into %s, once (a few minutes on 2 cores)", folder)
    generate(root)
    return names


def generate(root: str | Path, size: int = SIZE, progress: Callable[[str], None] | None = None,
             instances: dict[str, Sequence[int]] | None = None, elevations: Sequence[int] | None = None,
             azimuths: Sequence[int] | None = None) -> Path:
    """Render both splits into ``root/synthnorb`` (smallNORB's binary files, gzipped) with ``manifest.json``
    (version, seed, each file's SHA-256, the time it took). Every file is written to a temporary name and renamed.

    ``instances`` (``{"train": ..., "test": ...}``), ``elevations`` and ``azimuths`` (indices) and a smaller ``size``
    make a partial set, for tests; the manifest says so (``complete: false``)."""
    folder = Path(root) / "synthnorb"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    say = progress or (lambda text: _log.info(text))
    files = {}
    chosen = instances or {"train": TRAIN_INSTANCES, "test": TEST_INSTANCES}
    for split in ("train", "test"):
        dat, cat, info = render_split(chosen[split], size, elevations, azimuths, progress=say)
        stem = NORB_FILES[split].replace("smallnorb", "synthnorb")
        for part, array in (("dat", dat), ("cat", cat), ("info", info)):
            path = folder / f"{stem}-{part}.mat.gz"
            _write_gz(path, array)
            files[path.name] = _sha256(path)
    complete = instances is None and elevations is None and azimuths is None and size == SIZE
    record = {"version": VERSION, "seed": SEED, "size": size, "complete": complete, "files": files,
              "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2)
    os.chmod(tmp, 0o644)  # mkstemp's files are private
    os.replace(tmp, folder / "manifest.json")
    return folder


def contact_sheet(path: str | Path, instance: int = 4, elevation: int = 40, lighting: int = 0, size: int = SIZE
                  ) -> Path:
    """A PNG of every category (rows) at every azimuth (columns), one instance, elevation and lamp."""
    from PIL import Image

    rows = [render(c, instance, AZIMUTHS, [elevation] * len(AZIMUTHS), [lighting] * len(AZIMUTHS), size)
            for c in range(len(CATEGORIES))]
    sheet = torch.cat([torch.cat(list(r), 1) for r in rows], 0)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    Image.fromarray((sheet * 255).round().to(torch.uint8).numpy()).save(tmp, optimize=True)
    os.chmod(tmp, 0o644)  # mkstemp's files are private
    os.replace(tmp, path)
    return path
