"""DistributedDataParallel: every native model trains under DDP whatever its loss leaves unused, and ranks decide
together (when to stop, a non-finite loss, diverged weights, the data download), so no rank waits forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from capsprobe.models import (
    GCNN,
    BackboneHeadNet,
    BaselineCNN,
    CapsNet,
    EfficientCapsNet,
    EMCapsNet,
    create_model,
    family_classes,
    native_models,
)
from capsprobe.training.loop import Objective, data_parallel, train_step

# the smallest size of each family; a family not listed here (registered later) is tested at its default size
TINY: dict[type, dict] = {
    CapsNet: dict(conv_channels=16, primary_types=4, decoder_hidden=(16,)),
    EMCapsNet: dict(conv_channels=4, primary_types=2, caps1_types=2, caps2_types=2, num_iters=1),
    EfficientCapsNet: dict(channels=(4, 4, 4, 8), primary_caps=2, decoder_hidden=(16,)),
    BaselineCNN: dict(channels=(4, 4, 4), hidden=(8, 8)),
    BackboneHeadNet: dict(planes=4, blocks=(1, 1, 1), caps_types=2),
    GCNN: dict(fields=(2, 2), hidden=8),
}


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """A gloo process group of this process alone (world size 1): enough for DDP's reducer to run its checks. One
    thread while it lasts: the models are tiny, and a second thread only waits on a busy machine."""
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{store}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    dist.destroy_process_group()


@pytest.mark.trains
@pytest.mark.parametrize("name", native_models())
def test_every_native_model_trains_under_ddp_without_reconstruction(one_rank, name):
    """recon_weight=0 leaves a decoder (and backbone_head_self its vote matrices) outside every loss; DDP is told to
    look for unused parameters exactly when there are some, and two steps go through."""
    model = create_model(name, in_chans=1, num_classes=10, img_size=28, **TINY.get(family_classes()[name], {}))
    objective = Objective(model, recon_weight=0.0)
    images, labels = torch.rand(4, 1, 28, 28), torch.arange(4)
    wrapped = data_parallel(objective, (images, labels, None), torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}  # a G-CNN's state_dict is its export
    for _ in range(2):
        loss, _ = train_step(wrapped, optimizer, scaler, images, labels, torch.device("cpu"), None)
        assert torch.isfinite(loss)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert wrapped.find_unused_parameters == bool(unused), unused
    trained = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert trained and not set(trained) & set(unused)  # what no loss reaches is left as it was


@pytest.mark.slow
@pytest.mark.trains
def test_two_ranks_decide_together_and_fail_together(tmp_path):
    """Two gloo ranks (tests/training/ddp_ranks.py): rank 1's batch norm statistics are spoilt after every step, so
    its own evaluation never reaches the target that rank 0's reaches at once, yet both stop at that step; a NaN
    loss on rank 1 alone, and weights diverged on rank 0 alone, raise the same NonFiniteLossError on both ranks; rank
    0 failing to write the run stops rank 1 too; rank 1 loads the data only once rank 0 has. A rank left waiting is
    a hang, killed after the driver's timeout."""
    driver = Path(__file__).with_name("ddp_ranks.py")
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path), "--timeout", "45"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    said: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("rank ") and ": " in line:
            who, what = line.split(": ", 1)
            said.setdefault(who, []).append(what)
    summary = json.loads(proc.stdout.splitlines()[-1]) if proc.stdout.strip() else {}
    assert summary.get("hung") == [] and summary.get("exitcodes") == [3, 3], proc.stdout[-4000:] + proc.stderr[-2000:]

    assert said["rank 1 load"] == ["after rank 0: True"] * 4
    assert said["rank 0 agree"] == said["rank 1 agree"] == ["stopped after (0, 0)"]  # the first step of epoch 1
    metrics = json.loads((tmp_path / "agree" / "metrics.json").read_text())
    assert metrics["reached_target"] is True and metrics["steps"] == 1 and metrics["world_size"] == 2
    for part, message in (("nan", "non-finite loss in epoch 1 (by batch 1)"), ("weights", "weights are not finite")):
        assert said[f"rank 0 {part}"] == said[f"rank 1 {part}"], said
        assert said[f"rank 0 {part}"][0].startswith(f"NonFiniteLossError: {message}")
    full = "OSError: [Errno 28] No space left on device"
    assert said["rank 0 write"] == [full] and said["rank 1 write"] == [f"RunError: rank 0 stopped: {full}"]
