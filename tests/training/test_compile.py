"""``--compile``: the training objective is one graph for torch.compile, and EM's epoch schedule does not recompile it.

Without a compiler (``torch._dynamo.explain`` and a counting backend: no code generated), on tiny models. A graph
break splits the step into graphs the compiler cannot fuse across, and every recompile costs a trace; before these
tests capsnet_small's objective was 9 graphs and capsnet_em_small's 20 (the routing's products were an autograd
Function with a custom ``jvp``, which dynamo does not trace), and EM recompiled at every epoch (the spread loss margin
was a Python float the graph guarded on).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from capsprobe.models import create_model
from capsprobe.training.loop import Objective

GRAPH_BUDGET = 1  # graphs in a training objective's forward: raise it only with the reason written here


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_capsnet_smalls_objective_is_one_graph():
    torch.manual_seed(0)
    model = create_model("capsnet_small", in_chans=1, num_classes=10, img_size=28, conv_channels=16, primary_types=4)
    images, labels = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    explained = torch._dynamo.explain(Objective(model).train())(images, labels)
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_count <= GRAPH_BUDGET and not reasons, reasons


def test_em_is_one_graph_compiled_once_across_epochs():
    """The spread loss margin changes every epoch (0.2, 0.3, ...): the graph reads it from a buffer, so one compile
    serves every epoch, and the compiled loss follows the margin exactly as the eager one does."""
    torch.manual_seed(0)
    model = create_model("capsnet_em_small", in_chans=1, num_classes=5, img_size=20, conv_channels=8,
                         primary_types=2, caps1_types=2, caps2_types=2)
    objective = Objective(model).train()
    counter = CompileCounter()
    compiled = torch.compile(objective, backend=counter)
    images, labels = torch.rand(3, 1, 20, 20), torch.randint(0, 5, (3,))
    losses = []
    for epoch in range(3):
        model.set_epoch(epoch)
        loss, _ = compiled(images, labels)
        loss.backward()
        eager, _ = objective(images, labels)
        torch.testing.assert_close(loss, eager)
        losses.append(float(loss.detach()))
    assert counter.frame_count == 1, f"{counter.frame_count} graphs compiled over 3 epochs"
    assert losses[0] < losses[1] < losses[2]  # a wider margin, a larger spread loss: the margin is not baked in
