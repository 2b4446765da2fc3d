"""Data: splits, class balance, disjointness, augmentation, offline errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from capsprobe.data import (
    DatasetUnavailableError,
    ImageSplit,
    UnknownDatasetError,
    iterate_batches,
    load_dataset,
    shift_images,
)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def sample():
    return load_dataset("mnist-sample")


def _keys(split: ImageSplit) -> set[bytes]:
    return {img.numpy().tobytes() for img in split.images}


def test_sample_split_sizes_and_balance(sample):
    assert (len(sample.train), len(sample.val), len(sample.test)) == (3600, 400, 1000)
    for split, per_class in ((sample.train, 360), (sample.val, 40), (sample.test, 100)):
        assert torch.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
    assert sample.train.images.dtype == torch.uint8 and sample.train.images.shape[1:] == (1, 28, 28)
    assert int(sample.train.images.max()) == 255


def test_sample_splits_are_disjoint_and_fixed(sample):
    train, val, test = _keys(sample.train), _keys(sample.val), _keys(sample.test)
    assert not train & val and not train & test and not val & test
    again = load_dataset("mnist-sample")
    assert torch.equal(again.test.images, sample.test.images)


def test_limit_is_stratified(sample):
    small = load_dataset("mnist-sample", limit=50)
    assert (len(small.train), len(small.val), len(small.test)) == (50, 50, 50)
    assert torch.bincount(small.test.labels, minlength=10).tolist() == [5] * 10


def test_shift_convention_single_pixel():
    img = torch.zeros(2, 1, 7, 7)
    img[:, 0, 3, 3] = 1
    out = shift_images(img, torch.tensor([[1, 2], [-2, 0]]))  # (dy, dx): down 1 right 2; up 2
    assert out[0, 0, 4, 5] == 1 and out[0].sum() == 1
    assert out[1, 0, 1, 3] == 1 and out[1].sum() == 1
    edge = shift_images(img, torch.tensor([[0, 4], [0, -4]]))  # leaves the frame: zero fill
    assert edge.sum() == 0


def test_training_augmentation_moves_by_integers_up_to_two(sample):
    split = sample.train.subset(torch.arange(64))
    clean = split.float_images()
    (aug, labels), = list(iterate_batches(split, 64, max_shift=2, seed=3))
    assert torch.equal(labels, split.labels)
    found = []
    for i in range(64):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(shift_images(clean[i : i + 1], torch.tensor([[dy, dx]])), aug[i : i + 1])
        ]
        assert matches, f"image {i} is not an integer shift of at most 2 px"
        found.append(matches[0])
    assert len(set(found)) > 5  # per-sample offsets, not one for the batch


def test_evaluation_batches_are_untouched(sample):
    split = sample.test.subset(torch.arange(100))
    batches = list(iterate_batches(split, 32))
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), split.float_images(), rtol=0, atol=0)
    assert torch.equal(torch.cat([b[1] for b in batches]), split.labels)


def test_shuffle_depends_on_seed_and_epoch(sample):
    split = sample.test
    order = lambda **kw: torch.cat([b[1] for b in iterate_batches(split, 100, shuffle=True, **kw)])  # noqa: E731
    assert torch.equal(order(seed=1, epoch=0), order(seed=1, epoch=0))
    assert not torch.equal(order(seed=1, epoch=0), order(seed=1, epoch=1))
    assert sorted(order(seed=1, epoch=0).tolist()) == sorted(split.labels.tolist())


def test_distributed_shards_cover_the_split(sample):
    split = sample.test
    shards = [torch.cat([b[1] for b in iterate_batches(split, 64, shuffle=True, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 500
    assert torch.bincount(torch.cat(shards), minlength=10).tolist() == torch.bincount(split.labels).tolist()


def test_offline_mnist_without_files_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("mnist", root=tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message and "--data-root" in message and "mnist-sample" in message


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(UnknownDatasetError, match="mnist-sample"):
        load_dataset("mnits")


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="full MNIST not at ../shared/data")
def test_full_mnist_from_data_root():
    splits = load_dataset("mnist", root=SHARED_MNIST, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert not _keys(splits.val.subset(np.arange(500))) & _keys(splits.test)
