"""The extension table (docs/extending.md), row by row: each extension written here, registered with its one call, then trained
and probed end to end at tiny size (one run on 48 images, a 16-image probe), and every registration undone after."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import timm
import torch

from capsprobe.data import DatasetSpec, ImageSplit, register_dataset
from capsprobe.data import datasets as data_registry
from capsprobe.metrics import METRICS, Estimate, Metric, register_metric
from capsprobe.models import (
    BackboneHeadNet,
    Head,
    check_model_kwargs,
    components,
    create_model,
    list_heads,
    native_models,
    register_family,
    register_head,
    register_routing,
    unregister_family,
    unregister_head,
)
from capsprobe.models.layers import squash
from capsprobe.tasks import TASKS, get_task, register_task
from capsprobe.training.objectives import TRAINING_TASKS
from capsprobe.transforms import TRANSFORMS, Transform, register_transform
from capsprobe.transforms.functional import Transformed

FAMILY, HEAD, DATASET, TRANSFORM, METRIC, TASK = ("toy_ext_net", "toy-mean", "toy-digits", "toy-invert",
                                                  "toy_dark_share", "toy-classify")


# --- the extensions, as a user writes them ------------------------------------------------------------------------


def invert(images: torch.Tensor, magnitude: float, seed: int = 0) -> Transformed:
    """``(B, C, H, W)`` in [0, 1] -> the images blended towards their negative by ``magnitude``."""
    return Transformed(images + magnitude * (1 - 2 * images))


def dark_share(condition, seed: int, n_boot: int) -> Estimate:
    """The share of images whose top score fell (a toy metric: needs scores alone)."""
    fell = condition.scores.max(1) < condition.clean_scores.max(1)
    return Estimate(float(fell.mean()), (0.0, 1.0), len(fell))


def build_mean_head(model, width: int) -> int:
    """A capsule head: squashed primaries, one matrix per (input, class) pair, each class the mean of its votes."""
    model.conv_pose = torch.nn.Conv2d(width, model.caps_types * model.pose_dim, 1)
    model.weight = torch.nn.Parameter(0.1 * torch.randn(model.num_classes, model.num_in, model.pose_dim,
                                                        model.out_dim))
    return model.num_classes * model.out_dim


def route_mean(model, votes, poses, act):
    v = squash(votes.mean(dim=2))
    return v, v.norm(dim=-1)


def mean_routing(votes, num_iters, detach_inner, activation, record=None):
    """A CapsNet routing: each class capsule the activated mean of its votes ``(B, N_out, N_in, D)``."""
    ROUTED.append(votes.shape[1])
    return activation(votes.mean(dim=2))


def toy_ext_net(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
    """A model family: the smallest backbone under the toy head."""
    args = dict(planes=4, blocks=(1, 1, 1), caps_types=2, pose_dim=4, out_dim=4)
    return BackboneHeadNet(head=HEAD, **{**args, **kwargs})


def toy_digits(root, download):
    """A data set loader: random 1x28x28 images, ten classes, 64 training and 32 test images."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        return ImageSplit(torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10)

    return make(64), make(32)


def evaluate_and_mark(subjects, split, plan, surrogate=None):
    """A task: classify's batches, loss and section, its evaluation counted."""
    CALLS.append(len(split))
    return get_task("classify").evaluate(subjects, split, plan, surrogate)


CALLS: list[int] = []
ROUTED: list[int] = []


# --- registration and its undoing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered():
    tables = (TRANSFORMS, METRICS, TASKS, TRAINING_TASKS, data_registry._REGISTRY, components._ROUTINGS)
    saved = {id(t): dict(t) for t in tables}
    done = []  # what was registered so far: a failing registration leaves nothing behind either
    try:
        register_transform(Transform(TRANSFORM, invert, (0, 1.0), 0, "blend to the negative", "nuisance", 0, 1,
                                     geometric=False))
        register_metric(Metric(METRIC, dark_share, frozenset({"scores"}), "top score fell (toy)", "lower"))
        register_head(Head(HEAD, build_mean_head, primary=lambda m, raw, maps: (squash(raw), None), route=route_mean,
                           classifier="conv_pose"))
        done.append("head")
        register_family(BackboneHeadNet)(toy_ext_net)
        done.append("family")
        register_dataset(DatasetSpec(DATASET, 1, 28, 10, "random digits (tests)"), toy_digits)
        register_routing(HEAD)(mean_routing)
        register_task(replace(get_task("classify"), name=TASK, description="classify, counted",
                              evaluate=evaluate_and_mark))
        yield
    finally:
        if "family" in done:
            unregister_family(FAMILY)
        if "head" in done:
            unregister_head(HEAD)
        for table in tables:
            table.clear()
            table.update(saved[id(table)])
    assert FAMILY not in native_models() and HEAD not in list_heads() and not timm.is_model(FAMILY)


def test_a_family_is_unregistered_without_timms_private_helper(monkeypatch):
    """timm releases without ``_registry._clear_model_entries``: the name leaves every registry table all the same."""
    from timm.models import _registry

    monkeypatch.delattr(_registry, "_clear_model_entries", raising=False)
    name = "toy_ext_bare_net"

    def toy_ext_bare_net(pretrained: bool = False, **kwargs) -> BackboneHeadNet:
        return BackboneHeadNet(head="avg", planes=4, blocks=(1, 1, 1), **kwargs)

    try:
        register_family(BackboneHeadNet)(toy_ext_bare_net)
        assert timm.is_model(name) and name in native_models()
    finally:
        unregister_family(name)
    assert not timm.is_model(name) and name not in native_models() and name not in timm.list_models()
    assert name not in _registry._model_to_module and name not in _registry._model_default_cfgs
    assert not any(name in models for models in _registry._module_to_models.values())
    unregister_family(name)  # twice: nothing left to remove, nothing raised


@pytest.fixture(scope="module")
def probed(registered, tmp_path_factory):
    """One run of the toy family (toy head) on the toy data set for the toy task, probed with the toy transform."""
    from capsprobe.pipeline import perturb
    from capsprobe.training.loop import fit
    from capsprobe.training.runs import RunConfig

    run = fit(RunConfig(model=FAMILY, dataset=DATASET, task=TASK, epochs=1, batch_size=16, limit=48,
                        model_kwargs={"caps_types": 2}), tmp_path_factory.mktemp("ext") / "run", progress=False)
    return perturb([str(run)], transforms=[TRANSFORM], magnitudes={TRANSFORM: [1.0]}, limit=16, n_boot=10,
                   progress=False)


def _rows(result, **where) -> pd.DataFrame:
    m = result.metrics
    for key, value in where.items():
        m = m[m[key] == value]
    return m


# --- one test per row of docs/extending.md's extension table -----------------------------------------------------


def test_a_transform_is_probed(probed):
    assert set(_rows(probed, transform=TRANSFORM)["magnitude"]) == {"0", "1"}


def test_a_metric_is_computed_for_every_condition(probed):
    rows = _rows(probed, metric=METRIC)
    assert len(rows) == 2 and rows["value"].between(0, 1).all()
    assert _rows(probed, metric=METRIC, magnitude="0")["value"].item() == 0  # the identity changes nothing


def test_a_model_family_takes_its_options_and_trains(registered, probed):
    assert FAMILY in native_models()
    check_model_kwargs(FAMILY, {"caps_types": 2, "planes": 4})
    with pytest.raises(Exception, match="takes no option 'depth'"):
        check_model_kwargs(FAMILY, {"depth": 2})
    assert set(probed.metrics["model"]) == {FAMILY}


def test_a_head_gives_the_probe_poses(probed):
    assert [r["poses"] for r in probed.manifest["runs"]] == [True]  # the probe read the head's class poses


def test_a_routing_of_the_capsnet_is_one_registration(registered):
    model = create_model("capsnet_small", routing=HEAD, conv_channels=8, primary_types=2).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert ROUTED == [10]  # the registered routing, once, to ten class capsules


def test_a_data_set_is_trained_and_probed(probed):
    assert probed.manifest["dataset"] == DATASET and probed.metrics["n_images"].max() == 16


def test_a_task_evaluates_the_runs(probed):
    assert probed.manifest["task"] == TASK and CALLS == [16]  # its evaluate, once, on the 16 probed images
