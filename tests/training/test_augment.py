"""The augmentation control (issue 48): training images rotated (the full circle) or warped by the suite's affine
sampler, after the shift, seeded from the run's seed; validation and test images never."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from capsprobe.data import load_dataset
from capsprobe.training import loop
from capsprobe.training.loop import augment_batch, augment_seed, fit
from capsprobe.training.objectives import classify_batches
from capsprobe.training.runs import ConfigError, RunConfig
from capsprobe.transforms import affine


def _blob(n: int, size: int = 28, off: int = 8) -> torch.Tensor:
    """``n`` copies of a 3x3 square ``off`` px right of the centre of a ``size`` x ``size`` image (odd side: the
    centre is a pixel, so the square sits at a known angle 0)."""
    images = torch.zeros(n, 1, size, size)
    c = (size - 1) // 2
    images[:, :, c - 1 : c + 2, c + off - 1 : c + off + 2] = 1.0
    return images


@pytest.mark.parametrize("kind", ["rotate", "affine"])
def test_the_same_seed_gives_the_same_batch_and_another_seed_another(kind):
    images = torch.rand(6, 1, 28, 28)
    first, again, other = (augment_batch(images, kind, s).images for s in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)
    assert not torch.allclose(first, images, atol=1e-3)
    # the batch seed comes from the run's seed, epoch, rank and batch: each of them changes it
    base = augment_seed(0, 0, 0, 0)
    assert base == augment_seed(0, 0, 0, 0)
    assert len({base, augment_seed(1, 0, 0, 0), augment_seed(0, 1, 0, 0), augment_seed(0, 0, 1, 0),
                augment_seed(0, 0, 0, 1)}) == 5


def test_rotate_turns_the_pattern_by_its_angle_over_the_full_circle_and_keeps_its_ink():
    images = _blob(256, size=29)
    out = augment_batch(images, "rotate", 3)
    angles = out.params["angle"]
    assert angles.min() >= -180 and angles.max() < 180
    assert angles.min() < -150 and angles.max() > 150  # upside down included: the full circle, not +-90
    # the ink's centroid turns counter-clockwise on screen by the drawn angle (y points down), the suite's convention
    ys, xs = torch.meshgrid(torch.arange(29.0), torch.arange(29.0), indexing="ij")
    mass = out.images.sum((1, 2, 3))
    cx = (out.images[:, 0] * xs).sum((1, 2)) / mass - 14
    cy = (out.images[:, 0] * ys).sum((1, 2)) / mass - 14
    seen = torch.rad2deg(torch.atan2(-cy, cx))
    gap = (seen - angles + 180) % 360 - 180
    assert gap.abs().max() < 3
    assert torch.allclose(mass, images.sum((1, 2, 3)), rtol=0.05)


def test_affine_is_the_suites_affine_warp_at_full_strength():
    images = torch.rand(5, 1, 28, 28)
    assert torch.equal(augment_batch(images, "affine", 11).images, affine(images, 1.0, seed=11).images)


def test_training_batches_are_augmented_from_the_runs_seed_and_evaluation_sees_raw_images(tmp_path, monkeypatch):
    config = RunConfig(model="baseline_cnn_pool", epochs=1, batch_size=16, limit=32, max_shift=0, augment="rotate",
                       seed=4, device="cpu", model_kwargs={"channels": [4, 4, 4], "hidden": [8, 8]})
    seen: list[tuple[bool, torch.Tensor]] = []
    build = loop.build_model

    def spied(cfg, spec):
        model = build(cfg, spec)
        model.features.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].detach().clone())))
        return model

    monkeypatch.setattr(loop, "build_model", spied)
    fit(config, tmp_path / "run", progress=False)

    splits = load_dataset(config.dataset, None, False, config.val_fraction, split_seed=0, limit=config.limit)
    raw = list(classify_batches(splits.train, 16, torch.device("cpu"), train=True, seed=4, epoch=0))
    trained = [x for training, x in seen if training]
    assert len(trained) == len(raw)
    for i, (images, _, _) in enumerate(raw):
        assert torch.equal(trained[i], augment_batch(images, "rotate", augment_seed(4, 0, 0, i)).images)
        assert not torch.allclose(trained[i], images, atol=1e-3)
    evaluated = torch.cat([x for training, x in seen if not training])
    plain = torch.cat([splits.val.images, splits.test.images]).float() / 255
    assert len(evaluated) == len(plain)
    assert torch.equal(evaluated, plain)  # validation then test, untouched
    assert '"augment": "rotate"' in (tmp_path / "run" / "config.json").read_text()


@pytest.mark.parametrize("bad", ["rotation", "", None, 1])
def test_an_unknown_augmentation_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError) as err:
        RunConfig(augment=bad)
    message = str(err.value)
    assert "\n" not in message and "augment" in message and "rotate" in message and "affine" in message


def test_the_cli_option_reaches_the_config(tmp_path, monkeypatch):
    from capsprobe.cli import app
    from capsprobe.training import runs

    got: list[RunConfig] = []
    monkeypatch.setattr(loop, "fit", lambda config, out, **kw: got.append(config) or out)
    monkeypatch.setattr(runs, "read_metrics", lambda path: {"test_accuracy": math.nan})
    result = CliRunner().invoke(app, ["train", "--model", "baseline_cnn_pool", "--augment", "affine", "--no-progress",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert got[0].augment == "affine"
    assert RunConfig().augment == "none"
    refused = CliRunner().invoke(app, ["train", "--augment", "flip", "--out", str(tmp_path / "s")])
    assert refused.exit_code != 0 and "augment" in refused.output


def test_a_tasks_parts_get_their_images_warp():
    parts = torch.rand(3, 2, 1, 36, 36)  # MultiMNIST: the two digits, the reconstruction targets
    images = parts.sum(1).clamp(max=1)
    (out, _, warped), = loop._augmented(iter([(images, torch.zeros(3, 2), parts)]), "rotate", 2, 1, 0)
    seed = augment_seed(2, 1, 0, 0)
    assert torch.equal(out, augment_batch(images, "rotate", seed).images)
    for k in range(2):
        assert torch.equal(warped[:, k], augment_batch(parts[:, k], "rotate", seed).images)
