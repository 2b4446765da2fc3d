"""Forward passes and probe time of an outside CapsNet probed through ModelAdapter: the separate callables
(representation=, scores=, poses=: one forward each) against one outputs= callable (one forward per batch).

The outside model is capsprobe's paper-family capsnet_small behind a plain nn.Module with no capsprobe face, so
the probe sees it only through the adapter. Both ways probe the same digits under the same conditions, in one run,
alternating; the metrics must agree exactly.

    .venv/bin/python experiments/adapter_forwards.py [--images 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import capsprobe
from capsprobe import ModelAdapter, Subject
from capsprobe.models import create_model


class Outside(nn.Module):
    """A CapsNet as an outside repository has it: ``poses(x) -> (B, 10, 16)`` and ``forward`` = capsule lengths."""

    def __init__(self):
        super().__init__()
        self.net = create_model("capsnet_small")
        self.forwards = 0

    def poses(self, x):
        self.forwards += 1
        return self.net.probe_outputs(x).poses

    def forward(self, x):
        return self.poses(x).norm(dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Outside().eval()
    test = capsprobe.load_dataset("mnist-sample").test.subset(range(args.images))
    ways = {
        "separate callables": ModelAdapter(model, representation=lambda m, x: m.poses(x).flatten(1),
                                           scores=lambda m, x: m.poses(x).norm(dim=-1),
                                           poses=lambda m, x: m.poses(x)),
        "outputs=": ModelAdapter(model, has_poses=True, outputs=lambda m, x: (lambda p: {
            "scores": p.norm(dim=-1), "representation": p.flatten(1), "poses": p})(m.poses(x))),
    }
    transforms = ["rotate", "flip", "translate", "affine", "jigsaw", "swap"]
    times: dict[str, list[float]] = {w: [] for w in ways}
    forwards: dict[str, int] = {}
    metrics = {}
    for _ in range(args.rounds):
        for way, adapter in ways.items():
            model.forwards = 0
            start = time.perf_counter()
            result = capsprobe.run_probe([Subject("outside", adapter, model_name="outside")], test, transforms,
                                         n_boot=200, progress=False)
            times[way].append(time.perf_counter() - start)
            forwards[way] = model.forwards
            metrics[way] = result.metrics
    a, b = (metrics[w].sort_values(["transform", "magnitude", "metric"]).reset_index(drop=True) for w in ways)
    same = bool((a["value"] - b["value"]).abs().max() < 1e-6)
    print(f"{args.images} digits, {len(transforms)} transformations ({', '.join(transforms)}), {args.rounds} rounds "
          f"alternating, torch {torch.__version__}, {torch.get_num_threads()} threads; metrics identical: {same}")
    print("| adapter | model forward calls | probe time, s (each round) |")
    print("| --- | ---: | --- |")
    for way in ways:
        print(f"| {way} | {forwards[way]:,} | {' / '.join(f'{t:.1f}' for t in times[way])} |")


if __name__ == "__main__":
    main()
