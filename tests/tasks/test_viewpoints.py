"""The novel-viewpoint protocol: the smallNORB reader on tiny files written byte for byte, the registered splits, the
in-plane analogue, random crops, and the viewpoint task's evaluation and report section."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

import capsprobe  # noqa: F401
from capsprobe.data import DatasetUnavailableError, ImageSplit, iterate_batches, load_dataset
from capsprobe.data.ops import crop_images, random_crops
from capsprobe.data.viewpoints import (
    AZIMUTH_FAMILIAR,
    NORB_FILES,
    NorbFormatError,
    read_norb,
    rotate_scale,
    write_norb,
)
from capsprobe.probe import ProbePlan, Subject
from capsprobe.tasks import get_task


def _header(magic: int, dims: list[int]) -> bytes:
    """The specification, written out by hand: int32 magic, int32 ndim, max(3, ndim) int32 dimensions."""
    padded = dims + [1] * max(0, 3 - len(dims))
    return struct.pack("<ii", magic, len(dims)) + struct.pack(f"<{len(padded)}i", *padded)


def test_reader_parses_files_written_by_hand(tmp_path):
    dat = np.arange(2 * 2 * 4 * 4, dtype=np.uint8).reshape(2, 2, 4, 4)
    (tmp_path / "a.mat").write_bytes(_header(0x1E3D4C55, [2, 2, 4, 4]) + dat.tobytes())
    assert (read_norb(tmp_path / "a.mat") == dat).all()
    cat = np.array([3, 1], dtype="<i4")
    (tmp_path / "c.mat").write_bytes(_header(0x1E3D4C54, [2]) + cat.tobytes())  # 1-D: two padding dims
    assert read_norb(tmp_path / "c.mat").tolist() == [3, 1]
    (tmp_path / "c.mat.gz").write_bytes(gzip.compress(_header(0x1E3D4C54, [2]) + cat.tobytes()))
    assert read_norb(tmp_path / "c.mat.gz").tolist() == [3, 1]


def test_writer_matches_the_specification_byte_for_byte(tmp_path):
    info = np.array([[1, 2, 34, 5], [0, 8, 0, 0]], dtype=np.int32)
    write_norb(tmp_path / "i.mat", info)
    assert (tmp_path / "i.mat").read_bytes() == _header(0x1E3D4C54, [2, 4]) + info.astype("<i4").tobytes()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("payload,match", [
    (struct.pack("<ii", 0x1E3D4C56, 1) + struct.pack("<3i", 1, 1, 1) + b"\0", "magic"),
    (_header(0x1E3D4C55, [2, 3]) + b"\0" * 5, "says 6"),
    (b"\x55\x4c", "too short"),
    (struct.pack("<ii", 0x1E3D4C55, 4) + struct.pack("<3i", 1, 1, 1), "truncated"),
])
def test_reader_refuses_malformed_files(tmp_path, payload, match):
    (tmp_path / "bad.mat").write_bytes(payload)
    with pytest.raises(NorbFormatError, match=match):
        read_norb(tmp_path / "bad.mat")


def _fake_norb(root, n=36, side=12):
    """Tiny smallNORB files: every image's pixel values encode its index, azimuths cycle through 0..34."""
    folder = root / "smallnorb"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in NORB_FILES.values():
        dat = rng.integers(0, 256, (n, 2, side, side), dtype=np.uint8)
        cat = (np.arange(n) % 5).astype(np.int32)
        info = np.stack([np.arange(n) % 10, np.arange(n) % 9, (2 * np.arange(n)) % 36, np.arange(n) % 6], 1).astype(np.int32)
        write_norb(folder / f"{stem}-dat.mat", dat)
        write_norb(folder / f"{stem}-cat.mat.gz", cat)  # gzipped, as downloaded
        write_norb(folder / f"{stem}-info.mat", info)
    return folder


def test_smallnorb_splits_downsample_crop_and_flag_viewpoints(tmp_path):
    _fake_norb(tmp_path)
    splits = load_dataset("smallnorb-azimuth", tmp_path, download=False, val_fraction=0.2, check_size=False)  # 12x12
    train = splits.train
    assert train.images.shape[2:] == (6, 6) and train.crop == 4  # 12 -> 6 (2x2 means), crops of 2/3
    assert splits.test.images.shape[2:] == (4, 4) and splits.test.crop is None  # centre crop at test
    assert splits.val.images.shape[2:] == (4, 4)
    familiar = torch.tensor(AZIMUTH_FAMILIAR)
    for part in (train, splits.val):
        assert part.familiar.all() and torch.isin(part.poses[:, 2].long(), familiar).all()
    test = splits.test
    assert test.familiar.any() and (~test.familiar).any()
    assert (test.familiar == torch.isin(test.poses[:, 2].long(), familiar)).all()
    assert len(test) == 36  # every test image, familiar or novel
    # the downsampling: the first image's first 2x2 block is the mean of the left image's block
    raw = read_norb(tmp_path / "smallnorb" / f"{NORB_FILES['test']}-dat.mat")
    full = load_dataset("smallnorb", tmp_path, download=False, check_size=False).test
    block = raw[:, 0, 4:6, 4:6].reshape(len(raw), -1).astype(float).mean(1)  # centre crop starts at pixel 1 of 6
    assert np.abs(full.images[:, 0, 1, 1].numpy() - np.round(block)).max() <= 1  # round-half-even vs. torch.round
    elevation = load_dataset("smallnorb-elevation", tmp_path, download=False, check_size=False).test
    assert (elevation.familiar == (elevation.poses[:, 1] <= 2)).all()


def test_smallnorb_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="smallnorb.*download is off"):
        load_dataset("smallnorb", tmp_path, download=False)


def test_random_crops_take_the_window_at_each_corner():
    images = torch.arange(2 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    corners = torch.tensor([[0, 2], [1, 0]])
    out = crop_images(images, corners, 3)
    assert torch.equal(out[0, 0], images[0, 0, 0:3, 2:5]) and torch.equal(out[1, 0], images[1, 0, 1:4, 0:3])
    c = random_crops(500, (6, 6), 4, torch.Generator().manual_seed(0))
    assert c.min() == 0 and c.max() == 2  # every corner that fits, and none that does not


def test_training_batches_are_random_crops_and_evaluation_the_centre():
    images = torch.randint(0, 255, (8, 1, 6, 6), dtype=torch.uint8)
    split = ImageSplit(images, torch.arange(8), crop=4)
    (train, _), = list(iterate_batches(split, 8, shuffle=True, seed=1))
    (again, _), = list(iterate_batches(split, 8, shuffle=True, seed=1))
    assert train.shape == (8, 1, 4, 4) and torch.equal(train, again)
    (evaluation, labels), = list(iterate_batches(split, 8))
    assert torch.equal(evaluation, images[:, :, 1:5, 1:5].float() / 255)


def test_rotation_turns_counter_clockwise_and_scale_enlarges():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.uint8)
    x[0, 0, 4, 7] = 255  # right of the centre
    up = rotate_scale(x, torch.tensor([90.0]), torch.tensor([1.0]))
    assert (up[0, 0] > 100).nonzero().tolist() == [[1, 4]]  # above the centre
    down = rotate_scale(x, torch.tensor([-90.0]), torch.tensor([1.0]))
    assert (down[0, 0] > 100).nonzero().tolist() == [[7, 4]]
    y = torch.zeros(1, 1, 9, 9, dtype=torch.uint8)
    y[0, 0, 4, 6] = 255  # 2 px right
    big = rotate_scale(y, torch.tensor([0.0]), torch.tensor([1.5]))
    assert big[0, 0, 4].argmax().item() == 7  # 3 px right


def test_inplane_analogue_poses_and_flags():
    splits = load_dataset("mnist-sample-viewpoint")
    for part in (splits.train, splits.val):
        assert part.familiar.all() and (part.poses[:, 0].abs() <= 30).all()
        assert ((part.poses[:, 1] >= 0.9) & (part.poses[:, 1] <= 1.1)).all()
    test = splits.test
    angle = test.poses[:, 0].abs()
    assert (test.familiar == (angle <= 30)).all() and test.familiar.float().mean() == 0.5
    assert angle[~test.familiar].max() > 150  # novel reaches far beyond the familiar range
    again = load_dataset("mnist-sample-viewpoint")
    assert torch.equal(again.test.images, test.images)  # the poses are drawn once, with a fixed seed


class _Oracle(torch.nn.Module):
    """Right on familiar images, wrong on novel ones (reads the flag planted in the corner pixel)."""

    def forward_features(self, x):
        return x

    def forward_head(self, x, pre_logits=False):
        if pre_logits:
            return x.flatten(1)
        label = (x[:, 0, 0, 1] * 255).round().long()
        novel = x[:, 0, 0, 0] > 0.5
        guess = torch.where(novel, (label + 1) % 3, label)
        return torch.nn.functional.one_hot(guess, 3).float() * 5


def test_viewpoint_evaluation_scores_familiar_and_novel_separately():
    n = 40
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    familiar = torch.arange(n) < 30
    images[:, 0, 0, 1] = labels.to(torch.uint8)
    images[~familiar, 0, 0, 0] = 255
    split = ImageSplit(images, labels, familiar=familiar)
    task = get_task("viewpoint")
    subjects = [Subject(f"oracle-seed{s}", _Oracle(), "oracle", seed=s) for s in range(2)]
    result = task.evaluate(subjects, split, ProbePlan((), {}, bootstrap=50, progress=False, device="cpu"))
    acc = result.metrics.set_index(["run", "magnitude"])["value"]
    assert acc[("oracle-seed0", "familiar")] == 1.0 and acc[("oracle-seed0", "novel")] == 0.0
    per_seed = result.tables["viewpoint"]
    assert per_seed["familiar_error"].tolist() == [0.0, 0.0] and per_seed["novel_error"].tolist() == [1.0, 1.0]
    assert result.manifest["familiar_images"] == 30 and result.manifest["novel_images"] == 10
    comparison = result.tables["comparison"]
    assert set(comparison["magnitude"]) == {"familiar", "novel"}
    with pytest.raises(Exception, match="no familiar and novel"):
        task.evaluate(subjects, ImageSplit(images, labels), ProbePlan((), {}, progress=False, device="cpu"))


def test_missing_files_are_downloaded_when_allowed(tmp_path, monkeypatch):
    """No network: urlopen is replaced by one that serves tiny files; they land gzipped, whole, under smallnorb/."""
    import io

    import capsprobe.data.viewpoints as vp

    source = _fake_norb(tmp_path / "source")
    asked = []

    class _Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout):
        asked.append(url)
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        path = next(p for p in (source / name, source / f"{name}.gz") if p.is_file())
        raw = path.read_bytes()
        return _Response(raw if path.suffix == ".gz" else gzip.compress(raw))

    monkeypatch.setattr(vp.urllib.request, "urlopen", urlopen)
    splits = load_dataset("smallnorb", tmp_path / "root", download=True, check_size=False)
    assert len(asked) == 6 and all(u.startswith(vp.NORB_URL) and u.endswith(".mat.gz") for u in asked)
    assert len(splits.test) == 36
    assert sorted(p.suffix for p in (tmp_path / "root" / "smallnorb").iterdir()) == [".gz"] * 6  # no .part left


def test_error_by_pose_reads_degrees_from_each_data_set():
    from capsprobe.tasks.viewpoint import _pose_axes

    norb = _pose_axes(np.array([[3, 0, 34, 5], [1, 8, 2, 0]], dtype=np.float32))
    assert norb["elevation"].tolist() == [30, 70] and norb["azimuth"].tolist() == [340, 20]
    inplane = _pose_axes(np.array([[-29.0, 1.0], [14.9, 0.9], [179.9, 1.1], [-45.0, 1.0]], dtype=np.float32))
    assert inplane["rotation"].tolist() == [22.5, 7.5, 172.5, 52.5]  # bin centres of the angle's size


def test_cli_trains_and_perturbs_a_viewpoint_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from capsprobe.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    tiny = ["-o", "conv_channels=8", "-o", "primary_types=4", "-o", "caps1_types=4", "-o", "caps2_types=4"]
    result = runner.invoke(app, ["train", "--model", "capsnet_em_small", "--dataset", "mnist-sample-viewpoint",
                                 "--task", "viewpoint", "--limit", "32", "--epochs", "1", "--batch-size", "16",
                                 "--device", "cpu", "--no-progress", *tiny])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "capsnet_em_small-mnist-sample-viewpoint-seed0"
    result = runner.invoke(app, ["perturb", str(run), "--limit", "32", "--device", "cpu", "--no-progress",
                                 "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert "32 images" in result.output and "viewpoint" in result.output
    report = tmp_path / "reports" / run.name
    assert (report / "viewpoint.csv").is_file() and (report / "summary.csv").is_file()
    result = runner.invoke(app, ["report", str(report)])
    assert result.exit_code == 0, result.output
    assert "Familiar and novel test error" in (report / "report.md").read_text()
    bad = runner.invoke(app, ["train", "--task", "nonsense", "--limit", "8", "--epochs", "1", "--no-progress"])
    assert bad.exit_code == 2 and "'nonsense' is not one of" in bad.output and "'viewpoint'" in bad.output


def test_published_numbers_stand_beside_the_models_built_from_their_architecture():
    from capsprobe.report.published import NOVEL_VIEWPOINT, published_beside

    table = published_beside({"capsnet_em_cpu": "capsnet_em_small", "capsnet_small": "capsnet_small",
                              "sr": "backbone_head_self", "pool": "baseline_cnn_pool"}, NOVEL_VIEWPOINT)
    by = {(r.model, r.measure): r.published for r in table.itertuples()}
    assert by[("capsnet_em_cpu", "smallNORB novel azimuths, error %")] == "13.50"  # Hinton et al.: EM capsules
    assert by[("pool", "smallNORB novel azimuths, error %")] == "20.00"  # and their CNN
    assert by[("sr", "smallNORB novel azimuths, error %")] == "19.86 +- 1.03"  # SR-CapsNet's self-routing
    assert "capsnet_small" not in set(table["model"])  # no published novel-viewpoint number for it
    assert published_beside({"x": "resnet18"}, NOVEL_VIEWPOINT).empty


# --- pose against the object's true pose (issue 49, item 2) --------------------------------------------------------


def _posed_split(classes: int = 2, instances: int = 4, elevations=(0, 4, 8), seed: int = 0) -> ImageSplit:
    """A smallNORB-format test split (every azimuth, 3 elevations, one lamp) whose images carry their own labels:
    pixel row 0 holds (class, instance, elevation, azimuth) as smallNORB's ``info`` numbers them; rows 1-4 are 16
    pixels of noise."""
    c, i, e, a = (v.ravel() for v in np.meshgrid(np.arange(classes), np.arange(instances), np.array(elevations),
                                                  np.arange(0, 36, 2), indexing="ij"))
    n = len(c)
    images = torch.zeros(n, 1, 5, 4, dtype=torch.uint8)
    images[:, 0, 0] = torch.tensor(np.stack([c, i, e, a], 1), dtype=torch.uint8)
    images[:, 0, 1:] = torch.randint(0, 256, (n, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    poses = torch.tensor(np.stack([i, e, a, np.zeros(n)], 1), dtype=torch.float32)
    familiar = torch.isin(poses[:, 2].long(), torch.tensor(AZIMUTH_FAMILIAR))
    return ImageSplit(images, torch.tensor(c), poses=poses, familiar=familiar)


class _PoseStub(torch.nn.Module):
    """Reads its image's labels from the pixels: right class scores, and per class a 16-D pose that is
    ``(cos az, sin az, elevation)`` and the class, rotated into 16 dimensions, plus a little of the image's noise.
    ``blind``: the class and the noise only. ``capsule=False``: no poses, the 16-D vector is the representation (a
    convnet's face). ``trained=False``: a capsule model whose poses no loss trains."""

    def __init__(self, blind: bool = False, capsule: bool = True, trained: bool = True, classes: int = 2):
        super().__init__()
        self.blind, self.has_poses, self.poses_trained, self.k = blind, capsule, trained, classes
        q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))
        self.register_buffer("q", torch.tensor(q, dtype=torch.float32))

    def probe_outputs(self, x):
        from capsprobe.models import ModelOutputs

        codes = (x[:, 0, 0] * 255).round()
        label, elevation, azimuth = codes[:, 0].long(), codes[:, 2], torch.deg2rad(10 * codes[:, 3])
        noise = x[:, 0, 1:].flatten(1) - 0.5
        z = torch.zeros(len(x), 16)
        if not self.blind:
            z[:, :3] = torch.stack([azimuth.cos(), azimuth.sin(), (elevation - 4) / 3.3], 1)
        z[:, 3] = label.float()
        z = z @ self.q.T + (1.0 if self.blind else 0.05) * noise
        scores = torch.nn.functional.one_hot(label, self.k).float() * 0.8 + 0.1
        if not self.has_poses:
            return ModelOutputs(scores=scores, representation=z)
        poses = torch.zeros(len(x), self.k, 16)
        poses[torch.arange(len(x)), label] = z
        return ModelOutputs(scores=scores, representation=poses.flatten(1), poses=poses)


def _probe_plan():
    return ProbePlan((), {}, bootstrap=50, progress=False, device="cpu")


def test_pose_truth_table_has_its_rows_for_smallnorb_poses_and_none_in_plane(monkeypatch):
    import capsprobe.tasks.viewpoint as vt
    from capsprobe.metrics import posetruth

    monkeypatch.setitem(posetruth.MLP_SETTINGS, "max_iter", 5)  # its rows only here (its known answers: test_posetruth)
    split = _posed_split(elevations=(0, 8))
    subjects = [Subject("caps-seed0", _PoseStub(), "caps", seed=0),
                Subject("cnn-seed0", _PoseStub(capsule=False), "cnn", seed=0),
                Subject("self-seed0", _PoseStub(trained=False), "self", seed=0)]
    result = get_task("viewpoint").evaluate(subjects, split, _probe_plan())
    table = result.tables["viewpoint_posetruth"]
    probe = table[table["measure"] == "probe"]
    keys = set(zip(probe["run"], probe["representation"], probe["probe"], probe["factor"], probe["part"]))
    expect = {(run, rep, probe, f, p) for run, reps in (("caps-seed0", ("pose", "full")), ("cnn-seed0", ("full",)))
              for rep in reps for probe in ("linear", "mlp") for f in ("azimuth", "elevation")
              for p in ("familiar", "novel")}
    assert keys == expect and len(probe) == len(expect)  # the untrained poses: no rows
    assert probe["angle_error"].notna().tolist() == (probe["factor"] == "azimuth").tolist()
    novel = probe[probe["part"] == "novel"]
    assert (novel["n"] == int((~split.familiar).sum()) // 2).all()  # held-out instances (2 of 4 per class), novel rows
    dci = table[table["measure"] == "dci"]
    assert set(zip(dci["run"], dci["representation"], dci["factor"])) == {
        (run, rep, f) for run, rep in (("caps-seed0", "pose"), ("caps-seed0", "full"), ("cnn-seed0", "full"))
        for f in ("all", "azimuth", "elevation")}
    steps = table[table["measure"] == "step_map"]
    assert len(steps) == 3 and (steps["factor"] == "azimuth").all() and steps["composition"].notna().all()
    assert result.manifest["untrained_poses"]["runs"] == ["self-seed0"]
    inplane = ImageSplit(split.images, split.labels, poses=torch.zeros(len(split), 2), familiar=split.familiar)
    assert "viewpoint_posetruth" not in get_task("viewpoint").evaluate(subjects[:1], inplane, _probe_plan()).tables
    monkeypatch.setattr(vt, "POSETRUTH_MLP", False)
    linear = get_task("viewpoint").evaluate(subjects[1:2], split, _probe_plan()).tables["viewpoint_posetruth"]
    assert set(linear["probe"]) == {"linear"}


def test_pose_truth_reads_a_posed_model_and_not_a_blind_one_and_reports_it(tmp_path, monkeypatch):
    import capsprobe.tasks.viewpoint as vt
    from capsprobe.report.folder import read_probe_outputs, write_probe_outputs
    from capsprobe.tasks.viewpoint import viewpoint_section

    monkeypatch.setattr(vt, "POSETRUTH_MLP", False)  # the MLP's rows: the test above
    subjects = [Subject(f"posed-seed{s}", _PoseStub(capsule=False), "posed", seed=s) for s in (0, 1)]
    subjects.append(Subject("blind-seed0", _PoseStub(blind=True, capsule=False), "blind", seed=0))
    result = get_task("viewpoint").evaluate(subjects, _posed_split(), _probe_plan())
    table = result.tables["viewpoint_posetruth"]
    probe = table[table["measure"] == "probe"].set_index(["run", "probe", "factor", "part"])
    for f in ("azimuth", "elevation"):
        posed, blind = probe.loc[("posed-seed0", "linear", f, "familiar")], probe.loc[("blind-seed0", "linear", f,
                                                                                       "familiar")]
        assert posed["r2"] > 0.9 and posed["selectivity"] > 0.8, f
        assert abs(blind["r2"]) < 0.2 and abs(blind["selectivity"]) < 0.2, f
    assert probe.loc[("posed-seed0", "linear", "azimuth", "novel"), "r2"] > 0.9  # a linear code extrapolates
    assert probe.loc[("posed-seed0", "linear", "azimuth", "familiar"), "angle_error"] < 10
    steps = table[table["measure"] == "step_map"].set_index("run")
    assert steps.loc["posed-seed0", "gain"] > 0.9 and steps.loc["posed-seed0", "composition"] < 0.1
    # blind: the map predicts nothing of the next view (held-out 1 - R^2 near 1); its gain over the identity is about
    # 1/2, the mean's: the identity's residual is two independent noises, the mean's one
    assert steps.loc["blind-seed0", "map_error"] > 0.8 and steps.loc["posed-seed0", "map_error"] < 0.1
    assert 0.3 < steps.loc["blind-seed0", "gain"] < 0.7
    # the report: per model, the mean over its seeds with a t interval; one seed: its run's own interval
    data = read_probe_outputs(write_probe_outputs(result, tmp_path / "report"))  # through viewpoint_posetruth.csv
    del data.tables["viewpoint_poses"]  # its figure (matplotlib) is another test's
    section = viewpoint_section(data)
    shown = dict(section.tables)["Pose against the object's true pose"]
    row = shown[(shown["model"] == "posed") & (shown["probe"] == "linear")].iloc[0]
    assert row["seeds"] == 2
    runs = probe.xs(("linear", "azimuth", "familiar"), level=(1, 2, 3)).loc[["posed-seed0", "posed-seed1"], "r2"]
    mean, half = runs.mean(), 12.706 * runs.std(ddof=1) / np.sqrt(2)  # t_{1, 0.975}
    assert row["azimuth R^2 familiar"] == f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"
    one = shown[(shown["model"] == "blind") & (shown["probe"] == "linear")].iloc[0]
    own = probe.loc[("blind-seed0", "linear", "elevation", "novel")]
    assert one["elevation R^2 novel"] == f"{own['r2']:.2f} [{own['r2_low']:.2f}, {own['r2_high']:.2f}]"
    assert any("Hewitt & Liang" in n and "Eastwood & Williams" in n and "instance" in n for n in section.notes)
    kept = vt._pose_truth_table(data.tables["viewpoint_posetruth"], {"posed-seed1"})  # missed the target: left out
    posed = kept[(kept["model"] == "posed") & (kept["probe"] == "linear")].iloc[0]
    own = probe.loc[("posed-seed0", "linear", "azimuth", "familiar")]
    assert posed["seeds"] == 1 and posed["azimuth R^2 familiar"] == f"{own['r2']:.2f} [{own['r2_low']:.2f}, {own['r2_high']:.2f}]"
