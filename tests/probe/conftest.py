"""The probe tests' shared runs: three one-epoch runs on 48 images, trained once per test session."""

from __future__ import annotations

import pytest

TINY_RUN = dict(epochs=1, batch_size=16, limit=48)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, _test_datasets):
    """Three one-epoch runs on 48 images: a tiny CapsNet, resnet18, and a tiny CapsNet on 3x32x32 images."""
    from capsprobe.training.loop import fit
    from capsprobe.training.runs import RunConfig

    root = tmp_path_factory.mktemp("runs")
    caps = fit(RunConfig(model="capsnet_small", model_kwargs={"conv_channels": 16, "primary_types": 4}, **TINY_RUN),
               root / "caps", progress=False)
    conv = fit(RunConfig(model="resnet18", model_kwargs={"stem": "imagenet"}, **TINY_RUN), root / "conv",
               progress=False)
    rgb = fit(RunConfig(model="capsnet_small", dataset="test-rgb32", model_kwargs={"conv_channels": 8, "primary_types": 2},
                        **TINY_RUN), root / "rgb", progress=False)
    return {"caps": caps, "conv": conv, "rgb": rgb}
