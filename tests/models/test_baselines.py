"""Baselines: the paper's CNN, timm convnets with small-input stems, one output face for every model."""

from __future__ import annotations

import pytest
import timm
import torch

import capsprobe  # noqa: F401
from capsprobe.models import BaselineCNN, UnknownModelError, adapt, create_model, native_models


def test_paper_cnn_parameter_count():
    model = timm.create_model("baseline_cnn", in_chans=1, num_classes=10)
    assert isinstance(model, BaselineCNN)
    assert sum(p.numel() for p in model.parameters()) == 35_445_522


def test_paper_cnn_has_no_pooling_and_same_padding():
    model = BaselineCNN()
    assert model.forward_features(torch.rand(2, 1, 28, 28)).shape == (2, 128, 28, 28)
    assert model.forward_head(model.forward_features(torch.rand(2, 1, 28, 28)), pre_logits=True).shape == (2, 192)


def test_native_models_are_registered():
    assert set(native_models()) >= {"capsnet", "capsnet_small", "baseline_cnn"}


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100"])
def test_timm_convnet_small_input_stem(name):
    model = create_model(name, in_chans=1, num_classes=10, img_size=28).eval()
    assert model.capsprobe_stem != "unchanged"
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    fmap = model.forward_features(torch.rand(2, 1, 28, 28))
    assert fmap.shape[-1] >= 2  # the ImageNet stem would leave 1x1


@pytest.mark.parametrize("stem, final", [("small", 2), ("cifar", 4), ("imagenet", 1)])
def test_resnet_stems(stem, final):
    model = create_model("resnet18", in_chans=3, num_classes=10, img_size=32, stem=stem).eval()
    assert model.conv1.in_channels == 3
    if stem != "imagenet":
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity) == (stem == "cifar")
    assert model.forward_features(torch.rand(1, 3, 32, 32)).shape[-2:] == (final, final)


def test_unknown_stem_is_refused():
    with pytest.raises(ValueError, match="unknown stem 'tiny'"):
        create_model("resnet18", stem="tiny")


@pytest.mark.parametrize("name", native_models() + ["resnet18"])
def test_every_model_has_the_same_face(name):
    tiny = {"fields": (2, 2), "hidden": 8} if name.startswith("gcnn_") else {}  # e2cnn's bases: seconds at full width
    model = create_model(name, in_chans=1, num_classes=10, img_size=28, **tiny).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        out = adapt(model).outputs(x)
    assert out.scores.shape == (3, 10) and out.scores.dtype == torch.float32
    assert out.representation.dim() == 2 and out.representation.shape[0] == 3
    if adapt(model).has_poses:
        assert out.poses.shape[:2] == (3, 10)
        assert out.poses.shape[2] == 16 or name.startswith("backbone_head_")
        torch.testing.assert_close(out.representation, out.poses.flatten(1))
        with torch.no_grad():
            torch.testing.assert_close(out.scores, model(x))
        # EM's activations, self-routing's shares and the inverted routing's softmax sit beside the poses
        if name.startswith("capsnet_em") or name in ("backbone_head_em", "backbone_head_self", "backbone_head_inverted"):
            assert ((out.scores > 0) & (out.scores < 1)).all()
        else:  # the scores are the poses' lengths
            torch.testing.assert_close(out.scores, out.poses.norm(dim=-1), atol=1e-4, rtol=0)
    else:
        assert out.poses is None and not name.startswith("capsnet")
        torch.testing.assert_close(out.scores.sum(1), torch.ones(3))


def test_unknown_model_is_one_line_with_close_matches():
    with pytest.raises(UnknownModelError) as err:
        create_model("resnt18")
    message = str(err.value)
    assert "\n" not in message
    assert "unknown model 'resnt18'" in message and "resnet18" in message
    with pytest.raises(UnknownModelError, match="capsnet"):
        create_model("capsnett")


def test_pooled_cnn_for_the_affnist_comparison():
    model = timm.create_model("baseline_cnn_pool", img_size=40)
    assert sum(p.numel() for p in model.parameters()) == 6_728_466
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 2 and model.forward_features(torch.rand(1, 1, 40, 40)).shape == (1, 128, 10, 10)
    assert model.head_drop.p == 0.5


def test_every_model_a_capsprobe_module_registers_in_timm_is_a_native_model():
    from timm.models._registry import _model_entrypoints

    registered = {name for name, fn in _model_entrypoints.items() if fn.__module__.startswith("capsprobe.")}
    assert registered and registered == set(native_models())


class _ToyNet(torch.nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size=28, width: int = 4, **kwargs):
        super().__init__()
        self.width = width
        self.net = torch.nn.Sequential(torch.nn.Conv2d(in_chans, width, 3), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


def test_a_family_registered_in_one_step_takes_its_options_and_is_built():
    from capsprobe.errors import InvalidInputError
    from capsprobe.models import check_model_kwargs, register_family, unregister_family

    def toy_family_net(pretrained: bool = False, **kwargs) -> _ToyNet:
        return _ToyNet(**kwargs)

    register_family(_ToyNet)(toy_family_net)
    try:
        assert "toy_family_net" in native_models() and timm.is_model("toy_family_net")
        check_model_kwargs("toy_family_net", {"width": 6})
        with pytest.raises(InvalidInputError, match="takes no option 'depth'"):
            check_model_kwargs("toy_family_net", {"depth": 2})
        model = create_model("toy_family_net", in_chans=3, num_classes=5, img_size=16, width=6)
        assert isinstance(model, _ToyNet) and model.width == 6 and model(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    finally:
        unregister_family("toy_family_net")
    assert "toy_family_net" not in native_models() and not timm.is_model("toy_family_net")
