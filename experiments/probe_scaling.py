"""How the probe's time grows with the number of images: one trained run, the same conditions, 1k to 10k test
digits; per stage (forward passes, metrics, comparison) and per metric, with each metric's bootstrap share.

    .venv/bin/python experiments/probe_scaling.py RUN [--sizes 1000,2000,5000,10000] [--data-root ../shared/data]

Prints a markdown table: seconds per stage and milliseconds per image; a probe that scales linearly keeps the
per-image column flat.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

import capsprobe
from capsprobe import metrics as M
from capsprobe.metrics import registry as R


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--sizes", default="1000,2000,5000,10000")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--transforms", default="rotate,jigsaw")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    run = capsprobe.load_run(args.run)
    test = capsprobe.load_dataset(run.config.dataset, root=args.data_root, download=False).test
    per_metric: dict[str, float] = defaultdict(float)
    boot = {"s": 0.0}
    originals = {name: m.fn for name, m in M.METRICS.items() if m.fn is not None}

    def timed(name, fn):
        def wrapper(condition, seed, n_boot):
            t0 = time.perf_counter()
            try:
                return fn(condition, seed, n_boot)
            finally:
                per_metric[name] += time.perf_counter() - t0
        return wrapper

    # the bootstrap helpers as the metric registry calls them
    saved = {n: getattr(R, n) for n in dir(R) if n.startswith("bootstrap") and callable(getattr(R, n))}

    def timed_boot(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                boot["s"] += time.perf_counter() - t0
        return wrapper

    print(f"run {run.path.name}, transforms {args.transforms}, {args.bootstrap} bootstrap resamples, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print("| images | total s | forward s | metrics s | of it bootstrap s | ms per image | slowest metric (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n in (int(s) for s in args.sizes.split(",")):
        per_metric.clear()
        boot["s"] = 0.0
        for name, fn in originals.items():
            M.METRICS[name] = M.METRICS[name].__class__(**{**M.METRICS[name].__dict__, "fn": timed(name, fn)})
        for name, fn in saved.items():
            setattr(R, name, timed_boot(fn))
        try:
            split = test.subset(range(min(n, len(test.labels))))
            result = capsprobe.run_probe([run], split, args.transforms.split(","), n_boot=args.bootstrap,
                                         progress=False)
        finally:
            for name, fn in originals.items():
                M.METRICS[name] = M.METRICS[name].__class__(**{**M.METRICS[name].__dict__, "fn": fn})
            for name, fn in saved.items():
                setattr(R, name, fn)
        t = result.timing
        worst = max(per_metric.items(), key=lambda kv: kv[1])
        print(f"| {len(split.labels):,} | {t['total']:.1f} | {t.get('forward', 0):.1f} | {t.get('metrics', 0):.1f} | "
              f"{boot['s']:.1f} | {1000 * t['total'] / len(split.labels):.2f} | {worst[0]} ({worst[1]:.1f}) |")


if __name__ == "__main__":
    main()
