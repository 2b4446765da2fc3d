"""MultiMNIST training: two-label loss, each digit reconstructed from its own capsule, top-2 accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capsprobe.data import load_dataset, multimnist
from capsprobe.models import CapsNet, capsule_lengths, margin_loss, reconstruction_loss
from capsprobe.pipeline import perturb, write_report
from capsprobe.report import write_probe_outputs
from capsprobe.tasks import UnknownTaskError
from capsprobe.tasks.multimnist import multimnist_evaluate
from capsprobe.tasks.multimnist import top_k_hits as hits
from capsprobe.training.loop import Objective, fit
from capsprobe.training.runs import RunConfig, load_run

TINY_CAPS = {"conv_channels": 16, "primary_types": 4}


def test_hits_top2_and_top1():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.9, 0.1, 0.8], [0.2, 0.9, 0.1]])
    assert hits(scores, torch.tensor([[1, 0], [0, 1], [1, 2]])).tolist() == [1, 0, 0]
    assert hits(scores, torch.tensor([0, 2, 1])).tolist() == [1, 0, 1]


def test_two_label_objective_reconstructs_each_digit_from_its_own_capsule():
    torch.manual_seed(0)
    model = CapsNet(img_size=36, **TINY_CAPS)
    pairs = multimnist(load_dataset("mnist-sample", limit=40).test, 6, seed=1)
    x, y, parts = pairs.images, pairs.labels, pairs.parts
    loss, lengths = Objective(model, task="multimnist")(x, y, parts)
    poses = model.forward_features(x)
    expected = margin_loss(capsule_lengths(poses), F.one_hot(y, 10).sum(1))
    for k in range(2):
        expected = expected + reconstruction_loss(model.decode(poses, y[:, k]), parts[:, k])
    torch.testing.assert_close(loss, expected)
    # the reconstruction of digit 1 does not see digit 2's capsule
    noisy = poses.clone()
    noisy[torch.arange(6), y[:, 1]] = torch.randn(6, 16)
    torch.testing.assert_close(model.decode(noisy, y[:, 0]), model.decode(poses, y[:, 0]))


def test_convnets_refuse_two_labels():
    from capsprobe.models import create_model

    with pytest.raises(ValueError, match="needs a model with class-capsule poses"):
        Objective(create_model("resnet18", img_size=36), task="multimnist")(torch.rand(2, 1, 36, 36),
                                                                            torch.tensor([[0, 1], [2, 3]]))


def test_multimnist_run_evaluation_and_report(tmp_path):
    cfg = RunConfig(model="capsnet_small", task="multimnist", epochs=1, batch_size=16, limit=48, max_shift=0,
                    model_kwargs=TINY_CAPS)
    out = fit(cfg, tmp_path / "mm", progress=False)
    run = load_run(out)
    assert run.input["img_size"] == 36 and run.model.img_size == (36, 36)
    assert 0 <= run.metrics["test_accuracy"] <= 1
    result = multimnist_evaluate([run], load_dataset("mnist-sample", limit=48).test, n_boot=50, show=4)
    metrics = result.metrics
    assert set(metrics["metric"]) == {"accuracy", "recon_error"} and (metrics["n_images"] == 48).all()
    assert ((metrics["ci_low"] <= metrics["value"]) & (metrics["value"] <= metrics["ci_high"])).all()
    assert result.arrays["segmentation-mm"]["images"].shape == (2, 4, 3, 36, 36)
    # perturb asks the run's task: a MultiMNIST run is evaluated on pairs, and its report renders from files
    probed = perturb([str(out)], limit=48, n_boot=50, progress=False)
    assert probed.manifest["task"] == "multimnist" and set(probed.metrics["metric"]) == {"accuracy", "recon_error"}
    folder = write_probe_outputs(probed, tmp_path / "rep")
    write_report(folder)
    assert (folder / "figures" / "segmentation-mm.png").is_file()
    assert "both digits named in" in (folder / "report.md").read_text()


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(UnknownTaskError, match="unknown task 'segment'"):
        fit(RunConfig(model="capsnet_small", task="segment", limit=16), tmp_path / "x", progress=False)
