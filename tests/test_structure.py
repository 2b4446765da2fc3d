"""The extension points: bring your own model, the metric and task registries, errors at the edge, one runtime."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import capsprobe
from capsprobe import metrics as M
from capsprobe.cli import app
from capsprobe.data import load_dataset
from capsprobe.errors import CapsprobeError, InvalidInputError
from capsprobe.models import ModelAdapter, adapt
from capsprobe.probe import Subject, run_probe
from capsprobe.probe.lie import layer_taps
from capsprobe.runtime import atomic_dir, epoch_seed, image_seeds
from capsprobe.tasks import TASKS, UnknownTaskError, get_task

runner = CliRunner()
PACKAGE = Path(capsprobe.__file__).resolve().parent


class TinyNet(nn.Module):
    """A model capsprobe has never heard of: no timm face, no probe_outputs."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(), nn.Flatten())  # (B, 4 * 12 * 12)
        self.head = nn.Linear(4 * 12 * 12, 10)
        self.caps = nn.Linear(4 * 12 * 12, 10 * 4)
        self.decoder = nn.Sequential(nn.Linear(10 * 4, 28 * 28), nn.Sigmoid())

    def forward(self, x):
        return self.head(self.encoder(x))


@pytest.fixture(scope="module")
def split():
    return load_dataset("mnist-sample", limit=20).test


def test_bring_your_own_model(split):
    torch.manual_seed(0)
    net = TinyNet()
    adapter = ModelAdapter(net, representation=lambda m, x: m.encoder(x))
    result = run_probe([Subject("mine", adapter)], split, ["rotate"], {"rotate": [30]}, n_boot=20, progress=False)
    m = result.metrics
    assert set(m["run"]) == {"mine"} and set(m["model"]) == {"mine"}  # the name it was given, not its class
    assert set(m["metric"]) == {"accuracy", "consistency", "confidence_drop", "true_class_score", "invariance_error",
                                "equivariance_error", "equivariance_error_pca16", "equivariance_gain", "label_r2", "ece",
                                "ece_scaled"}  # ece: softmax scores are in [0, 1]
    # scores default to the softmax of model(x)
    x = split.float_images()
    torch.testing.assert_close(adapter.outputs(x).scores, torch.softmax(net(x), -1))
    assert not result.arrays


def test_bring_your_own_capsule_model_gets_pose_metrics_and_pictures(split):
    net = TinyNet()
    adapter = ModelAdapter(
        net, representation=lambda m, x: m.caps(m.encoder(x)),
        scores=lambda m, x: m.caps(m.encoder(x)).view(-1, 10, 4).norm(dim=-1),
        poses=lambda m, x: m.caps(m.encoder(x)).view(-1, 10, 4),
        decode=lambda m, poses, labels: m.decoder(
            (poses * nn.functional.one_hot(labels, 10)[..., None]).flatten(1)).view(-1, 1, 28, 28))
    bigger = load_dataset("mnist-sample", limit=60).test  # per-class pose metrics need 2 fitting images per class
    result = run_probe([Subject("mycaps", adapter, model_name="mycaps")], bigger, ["flip"], n_boot=20, progress=False)
    assert {"invariance_error_pose", "equivariance_error_pose", "equivariance_gain_pose", "recon_equivariance_error",
            "recon_fidelity_error"} <= set(result.metrics["metric"])
    small = run_probe([Subject("mycaps", adapter, model_name="mycaps")], split, ["flip"], n_boot=20, progress=False)
    assert "equivariance_error_pose" not in set(small.metrics["metric"])  # 2 images per class: left out, not pooled
    assert result.arrays["pose_sweep-mycaps"]["images"].shape == (4, 11, 1, 28, 28)


def _capsule_callables():
    return dict(representation=lambda m, x: m.caps(m.encoder(x)),
                scores=lambda m, x: m.caps(m.encoder(x)).view(-1, 10, 4).norm(dim=-1),
                poses=lambda m, x: m.caps(m.encoder(x)).view(-1, 10, 4))


def _capsule_outputs(m, x):
    u = m.caps(m.encoder(x))
    return {"scores": u.view(-1, 10, 4).norm(dim=-1), "representation": u, "poses": u.view(-1, 10, 4)}


def test_one_outputs_callable_runs_the_model_once_per_batch_and_probes_the_same(split):
    """``ModelAdapter(outputs=...)``: one encoder pass per batch where the separate callables take three, and the
    probe's numbers are the same."""
    counts = {}
    results = {}
    for way in ("separate", "outputs"):
        torch.manual_seed(0)
        net = TinyNet()
        calls = []
        net.encoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
        adapter = (ModelAdapter(net, **_capsule_callables()) if way == "separate"
                   else ModelAdapter(net, outputs=_capsule_outputs, has_poses=True))
        assert adapter.has_poses
        results[way] = run_probe([Subject("mycaps", adapter, model_name="mycaps")], split, ["rotate"],
                                 {"rotate": [0, 30]}, n_boot=10, progress=False)
        counts[way] = (len(calls), sum(calls))
    n_separate, images_separate = counts["separate"]
    n_outputs, images_outputs = counts["outputs"]
    assert n_separate == 3 * n_outputs and images_separate == 3 * images_outputs
    assert images_outputs == 3 * len(split.labels)  # the clean pass and the two conditions: one forward per image
    pd.testing.assert_frame_equal(results["separate"].metrics, results["outputs"].metrics)


def test_outputs_callable_errors_are_one_line(split):
    net = TinyNet()
    x = split.float_images()[:2]
    with pytest.raises(InvalidInputError, match="not both"):
        ModelAdapter(net, representation=lambda m, x: x, outputs=_capsule_outputs)
    with pytest.raises(InvalidInputError, match="needs outputs"):
        ModelAdapter(net)
    with pytest.raises(InvalidInputError, match="has_poses=True"):
        ModelAdapter(net, outputs=_capsule_outputs).outputs(x)  # poses returned, not declared: never silently dropped
    with pytest.raises(InvalidInputError, match="returned no 'poses'"):
        ModelAdapter(net, outputs=lambda m, x: {"logits": m(x), "representation": m.encoder(x)},
                     has_poses=True).outputs(x)
    with pytest.raises(InvalidInputError, match="unknown key"):
        ModelAdapter(net, outputs=lambda m, x: {"score": m(x), "representation": m.encoder(x)}).outputs(x)
    out = ModelAdapter(net, outputs=lambda m, x: {"logits": m(x), "representation": m.encoder(x)}).outputs(x)
    torch.testing.assert_close(out.scores, torch.softmax(net(x), -1))  # logits alone: their softmax
    assert out.poses is None and out.logits is not None


class Mirror(nn.Module):
    """A 'capsule model' whose every pose is the image itself and whose decoder returns it: reconstructions exact."""

    def forward(self, x):
        return x.flatten(1)[:, :10]


def _mirror(decoder_gain: float) -> ModelAdapter:
    return ModelAdapter(
        Mirror(), representation=lambda m, x: x.flatten(1),
        scores=lambda m, x: torch.ones(len(x), 10) / 10,
        poses=lambda m, x: x.flatten(1)[:, None, :].expand(-1, 10, -1),
        decode=lambda m, poses, labels: decoder_gain * poses[torch.arange(len(labels)), labels].view(-1, 1, 28, 28))


def test_reconstruction_fidelity_and_equivariance_of_an_exact_decoder(split):
    """decode(phi(Tx)) = Tx: fidelity 0 everywhere (clean reconstruction error 0), and the reconstruction moves
    exactly as the input did (the input's own warp is reused, affine included); a decoder that gives half the image
    has fidelity error 1/4."""
    args = dict(transforms=["rotate", "affine", "jigsaw"], magnitudes={"rotate": [30], "affine": [1.0], "jigsaw": [4]},
                n_boot=10, progress=False)
    m = run_probe([Subject("exact", _mirror(1.0))], split, **args)
    rows = m.metrics.set_index(["transform", "magnitude", "metric"])["value"]
    for key in (("rotate", "30"), ("affine", "1"), ("jigsaw", "4"), ("rotate", "0")):
        assert rows[(*key, "recon_fidelity_error")] < 1e-12 and rows[(*key, "recon_equivariance_error")] < 1e-10, key
    assert m.manifest["runs"][0]["clean_reconstruction_error"] < 1e-12
    half = run_probe([Subject("half", _mirror(0.5))], split, **args)
    assert half.manifest["runs"][0]["clean_reconstruction_error"] == pytest.approx(0.25)


def test_a_module_without_a_known_face_is_told_to_use_the_adapter(split):
    class Bare(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    with pytest.raises(InvalidInputError, match="ModelAdapter"):
        run_probe([Bare()], split, ["flip"], progress=False)


def test_capabilities_are_asked_of_the_model():
    caps = adapt(capsprobe.models.create_model("capsnet_small", conv_channels=8, primary_types=2))
    conv = adapt(capsprobe.models.create_model("resnet18", stem="imagenet"))
    nodec = adapt(capsprobe.models.create_model("capsnet_small", conv_channels=8, primary_types=2, decoder=False))
    assert (caps.has_poses, caps.can_decode) == (True, True)
    assert (conv.has_poses, conv.can_decode) == (False, False)
    assert (nodec.has_poses, nodec.can_decode) == (True, False)
    # no layer above the models checks a model's type or name, or branches on a task name (the Lie probe reads a
    # model's probe_taps / feature_info); the guard looks at every module of those layers
    above = [p for d in ("probe", "report", "tasks", "training", "metrics", "transforms") for p in (PACKAGE / d).glob("*.py")]
    above += [PACKAGE / n for n in ("pipeline.py", "experiment.py", "bench.py", "cli.py")]
    assert len(above) > 25
    for path in above:
        text = path.read_text()
        assert not re.search(r"isinstance\([^)]*CapsNet|startswith\(\"capsnet|is_capsnet|task ==|import CapsNet", text), path
    assert [name for name, _, _ in layer_taps(caps.model)] == ["conv1", "primary", "digits"]
    assert [e["module"] for e in caps.model.feature_info] == ["conv1", "primary", "digits"]


def test_a_registered_metric_is_computed_by_the_probe(split, monkeypatch):
    def mean_score(c, seed, n_boot):
        return M.Estimate(float(c.scores.max(1).mean()), (0.0, 1.0), len(c.labels))

    monkeypatch.setitem(M.METRICS, "max_score", M.Metric("max_score", mean_score, frozenset({"scores"}),
                                                        "max score", "higher"))
    net = TinyNet()
    result = run_probe([ModelAdapter(net, representation=lambda m, x: m.encoder(x))], split, ["swap"], n_boot=10,
                       progress=False)
    rows = result.metrics[result.metrics["metric"] == "max_score"]
    assert len(rows) == 3 and (rows["value"] > 0).all()
    with pytest.raises(ValueError, match="better must be"):
        M.register_metric(M.Metric("x", mean_score, frozenset(), "x", "bigger"))


def test_the_task_registry():
    assert {"classify", "multimnist"} <= set(TASKS)
    assert get_task("multimnist").input_size(28) == 36 and get_task("classify").input_size(28) == 28
    with pytest.raises(UnknownTaskError, match="choose one of: classify, multimnist"):
        get_task("segment")


def test_library_messages_name_no_flags_and_the_cli_translates(tmp_path):
    from capsprobe.report import ReportExistsError, check_report_target

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("1")
    with pytest.raises(ReportExistsError) as info:
        check_report_target(tmp_path / "x", force=False)
    assert "`force`" in str(info.value) and "--" not in str(info.value)
    # no library module writes a command-line flag into a message
    for path in PACKAGE.rglob("*.py"):
        if path.name != "cli.py":
            assert not re.search(r"Error\([^\n]*[\"' ]--[a-z]", path.read_text()), path.name


def test_cli_turns_only_capsprobe_errors_into_one_line(tmp_path, monkeypatch):
    one = runner.invoke(app, ["report", str(tmp_path / "none")])
    assert one.exit_code == 1 and one.output.startswith("error: ") and len(one.output.strip().splitlines()) == 1
    verbose = runner.invoke(app, ["-v", "report", str(tmp_path / "none")])
    assert verbose.exit_code == 1 and "Traceback" in verbose.output and "ReportError" in verbose.output

    import capsprobe.pipeline

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(capsprobe.pipeline, "write_report", bug)
    crashed = runner.invoke(app, ["report", str(tmp_path)])
    assert isinstance(crashed.exception, KeyError) and not crashed.output.startswith("error:")
    assert issubclass(InvalidInputError, CapsprobeError) and issubclass(InvalidInputError, ValueError)


def test_seed_conventions_have_one_home():
    assert epoch_seed(2, 3, 1) == (2 * 1_000_003 + 3) * 1_009 + 1
    assert image_seeds(1, torch.tensor([0, 5])).tolist() == [1_000_003, 1_000_008]
    import capsprobe.data
    import capsprobe.tasks.multimnist
    import capsprobe.training.loop

    for module in (capsprobe.data.batches, capsprobe.training.loop, capsprobe.tasks.multimnist):
        assert "1_000_003" not in Path(module.__file__).read_text()


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "folder"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed half-way")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]  # no temporary folder left


@pytest.mark.parametrize("where", ["representation", "poses", "scores"])
def test_non_finite_model_outputs_are_a_clear_error(split, where):
    def bad(x):
        out = x.flatten(1).clone()
        out[0, 0] = float("inf") if where == "scores" else float("nan")
        return out

    adapter = ModelAdapter(
        Mirror(), representation=lambda m, x: bad(x) if where == "representation" else x.flatten(1),
        scores=lambda m, x: bad(x)[:, :10] if where == "scores" else torch.ones(len(x), 10) / 10,
        poses=lambda m, x: (bad(x) if where == "poses" else x.flatten(1))[:, None, :].expand(-1, 10, -1))
    what = {"representation": "representations", "poses": "poses", "scores": "class scores"}[where]
    with pytest.raises(InvalidInputError, match=f"{what} on clean images are not finite"):
        run_probe([Subject("bad", adapter)], split, ["rotate"], {"rotate": [30]}, n_boot=10, progress=False)
