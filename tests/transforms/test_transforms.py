"""The perturbation suite: identities, conventions with a single lit pixel, determinism, validation."""

from __future__ import annotations

import pytest
import torch

from capsprobe.transforms import (
    SUITE,
    TRANSFORMS,
    UnknownTransformError,
    apply_matrix,
    get_transform,
    parse_magnitude_specs,
    resolve,
)


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(6, 1, 28, 28)


def _lit(h=9, w=9, y=4, x=6):
    img = torch.zeros(1, 1, h, w)
    img[0, 0, y, x] = 1
    return img


def _where(img):
    (pos,) = (img[0, 0] > 0.5).nonzero().tolist()
    return tuple(pos)  # (y, x)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_identity_magnitude_is_exactly_the_identity(name, images):
    t = get_transform(name)
    out = t(images, t.identity, seed=3)
    assert torch.equal(out.images, images)
    if t.geometric:
        assert torch.equal(out.matrix, torch.eye(3).expand(6, 3, 3))
    assert t.identity in t.grid


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_each_flip_twice_is_the_identity(direction, images):
    flip = get_transform("flip")
    assert torch.equal(flip(flip(images, direction).images, direction).images, images)
    assert not torch.equal(flip(images, direction).images, images)


def test_four_quarter_turns_give_back_the_image(images):
    rotate = get_transform("rotate")
    out = images
    for _ in range(4):
        out = rotate(out, 90).images
    assert torch.equal(out, images)
    # the exact path and the interpolating warp agree on what +90 means
    r = rotate(images, 90)
    torch.testing.assert_close(apply_matrix(images, r.matrix), r.images, atol=1e-5, rtol=0)


def test_swap_twice_is_the_identity(images):
    swap = get_transform("swap")
    for halves in ("top-bottom", "left-right"):
        once = swap(images, halves).images
        assert not torch.equal(once, images) and torch.equal(swap(once, halves).images, images)


# --- a single lit pixel lands where the Convention says (9x9 image, centre (4, 4)) ---------------------------


def test_rotate_is_counter_clockwise_on_screen():
    rotate = get_transform("rotate")
    img = _lit(y=4, x=6)  # two pixels right of the centre
    assert _where(rotate(img, 90).images) == (2, 4)  # above the centre
    assert _where(rotate(img, -90).images) == (6, 4)  # below
    assert _where(rotate(img, 180).images) == (4, 2)  # left
    # 45 degrees through the interpolating path: the mass moves up and to the right of the centre
    out = rotate(_lit(9, 9, 4, 8), 45).images[0, 0]
    ys, xs = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    cy, cx = (out * ys).sum() / out.sum(), (out * xs).sum() / out.sum()
    assert cx.item() == pytest.approx(4 + 4 / 2**0.5, abs=0.05) and cy.item() == pytest.approx(4 - 4 / 2**0.5, abs=0.05)


def test_translate_moves_right_and_down():
    translate = get_transform("translate")
    assert _where(translate(_lit(y=4, x=4), 2).images) == (6, 6)
    assert _where(translate(_lit(y=4, x=4), -3).images) == (1, 1)
    assert translate(_lit(y=4, x=4), 8).images.sum() == 0  # off the frame: zero fill


def test_scale_is_about_the_centre():
    scale = get_transform("scale")
    assert _where(scale(_lit(y=4, x=6), 1.5).images) == (4, 7)  # 2 px from the centre -> 3 px
    assert _where(scale(_lit(y=2, x=4), 1.5).images) == (1, 4)


def test_shear_moves_rows_below_the_centre_right():
    shear = get_transform("shear")
    assert _where(shear(_lit(y=6, x=4), 0.5).images) == (6, 5)
    assert _where(shear(_lit(y=2, x=4), 0.5).images) == (2, 3)
    assert _where(shear(_lit(y=4, x=1), 0.5).images) == (4, 1)  # the centre row stays


@pytest.mark.parametrize("name, magnitude", [("rotate", 90), ("translate", 2), ("scale", 1.5), ("shear", 0.5),
                                             ("flip", "horizontal"), ("flip", "vertical"), ("rotate", 180)])
def test_returned_matrix_maps_the_pixel(name, magnitude):
    img = _lit(y=2, x=6)
    out = get_transform(name)(img, magnitude)
    y, x = _where(out.images)
    mapped = out.matrix[0] @ torch.tensor([6.0, 2.0, 1.0])
    torch.testing.assert_close(mapped[:2], torch.tensor([float(x), float(y)]), atol=1e-5, rtol=0)


# --- jigsaw and random transforms ------------------------------------------------------------------------------


def _patches(img, grid):
    c, h, w = img.shape
    p = img.reshape(c, grid, h // grid, grid, w // grid).permute(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    return sorted(map(tuple, p.tolist()))


@pytest.mark.parametrize("grid", [2, 4, 7])
def test_jigsaw_never_identity_and_keeps_the_patches(grid):
    jigsaw = get_transform("jigsaw")
    img = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)  # every patch distinct
    for seed in range(40):
        out = jigsaw(img, grid, seed).images
        assert not torch.equal(out, img)
        assert _patches(out[0], grid) == _patches(img[0], grid)


def test_jigsaw_seeds(images):
    jigsaw = get_transform("jigsaw")
    assert torch.equal(jigsaw(images, 4, 1).images, jigsaw(images, 4, 1).images)
    assert not torch.equal(jigsaw(images, 4, 1).images, jigsaw(images, 4, 2).images)


@pytest.mark.parametrize("name, magnitude", [("jigsaw", 4), ("affine", 0.8)])
def test_per_image_seeds_do_not_depend_on_the_batch(name, magnitude, images):
    t = get_transform(name)
    seeds = torch.arange(100, 106)
    whole = t(images, magnitude, seeds).images
    for i in range(6):
        torch.testing.assert_close(t(images[i : i + 1], magnitude, seeds[i : i + 1]).images[0], whole[i], rtol=0, atol=1e-5)
    assert not torch.equal(whole[0], t(images, magnitude, seeds + 1).images[0])


def test_affine_is_seeded_and_bounded(images):
    affine = get_transform("affine")
    a, b = affine(images, 1.0, 5), affine(images, 1.0, 5)
    assert torch.equal(a.images, b.images) and torch.equal(a.matrix, b.matrix)
    m = affine(torch.zeros(200, 1, 28, 28), 1.0, torch.arange(200)).matrix
    lin = m[:, :2, :2]
    det = torch.linalg.det(lin)
    assert det.min() > 0.8 * 0.8 * 0.99 and det.max() < 1.2 * 1.2 * 1.01  # scale 0.8..1.2 per axis, shear keeps area
    half = affine(torch.zeros(200, 1, 28, 28), 0.5, torch.arange(200)).matrix
    assert (half[:, :2, :2] - torch.eye(2)).abs().max() < (lin - torch.eye(2)).abs().max()


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, bad", [("rotate", 181), ("translate", -9), ("scale", 0.4), ("shear", 0.7),
                                       ("affine", 1.5), ("flip", "diagonal"), ("swap", "up"), ("jigsaw", 2.5)])
def test_magnitude_outside_its_range_is_refused(name, bad, images):
    with pytest.raises(ValueError, match=name):
        get_transform(name)(images, bad)


def test_jigsaw_grid_must_divide_the_image():
    with pytest.raises(ValueError, match="does not divide"):
        get_transform("jigsaw")(torch.rand(1, 1, 28, 28), 5)


def test_unknown_transform_lists_the_valid_ones():
    with pytest.raises(UnknownTransformError) as err:
        get_transform("spin")
    assert all(name in str(err.value) for name in TRANSFORMS)


def test_resolve_all_and_kinds():
    asked_by_name = ("affnist", "spatial-grid", "worst-of-k", "fgsm", "pgd", "pgd-long", "fgsm-margin", "pgd-margin",
                     "pgd-transfer", "apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack")
    mnist_c = [t.name for t in resolve(["mnist-c"])]  # the MNIST-C group (tests/transforms/test_corruptions.py)
    assert [t.name for t in resolve(["all"])] == list(SUITE) == [n for n in TRANSFORMS
                                                                 if n not in asked_by_name and n not in mnist_c]
    assert all(TRANSFORMS[n].worst_case for n in asked_by_name[1:]) and not any(TRANSFORMS[n].worst_case for n in SUITE)
    rotate = get_transform("rotate")
    assert rotate.kind_at(45) == "nuisance" and rotate.kind_at(-90) == "semantic" and rotate.kind_at(180) == "semantic"
    assert get_transform("jigsaw").kind == "semantic" and get_transform("shear").kind == "nuisance"


def test_parse_magnitude_specs():
    rot, flip = get_transform("rotate"), get_transform("flip")
    assert parse_magnitude_specs(["0,45, 90"], [rot]) == {"rotate": [0.0, 45.0, 90.0]}
    assert parse_magnitude_specs(["flip=horizontal"], [rot, flip]) == {"flip": ["horizontal"]}
    with pytest.raises(ValueError, match="name the transformation"):
        parse_magnitude_specs(["0,45"], [rot, flip])
    with pytest.raises(ValueError, match="outside"):
        parse_magnitude_specs(["rotate=200"], [rot])
    with pytest.raises(ValueError, match="not among"):
        parse_magnitude_specs(["scale=1"], [rot])


def test_affnist_transform_is_the_protocol_warp():
    from capsprobe.transforms import affnist_warp

    t = get_transform("affnist")
    img = torch.rand(3, 1, 40, 40)
    seeds = torch.tensor([4, 5, 6])
    out = t(img, "warp", seeds)
    expected, params = affnist_warp(img, seeds)
    assert torch.equal(out.images, expected)
    torch.testing.assert_close(out.matrix, params["matrix"].float())
    assert t.kind_at("warp") == "nuisance" and "affnist" not in SUITE
