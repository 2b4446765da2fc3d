"""Throughput benchmark: training-step and inference images/s and peak memory per model.

Each model is measured in a fresh process (``spawn``), so the peak memory of one does not hide in another's.
For models that expose ``convolution_stack()`` (the CapsNets), the convolutions alone are timed forward and
backward on the same batch, and their time over a whole training step is ``conv_share``: ``1 - conv_share`` is
what routing, the votes, the decoder, the loss and the optimiser cost on top of the dense work (a roofline in
time: the step cannot be faster than its convolutions). On CPU the peak is the process's maximum resident set size
(torch and Python included, about 0.4 GiB before any model); on CUDA it is ``torch.cuda.max_memory_allocated``.
Figures depend on the machine: they are printed, never asserted.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .errors import InvalidInputError, option
from .models import adapt, create_model
from .models.layers import set_fast_kernels
from .runtime import autocast_context, autocast_dtype, resolve_device, tune_cpu_allocator
from .training.loop import Objective, compile_objective, train_step

__all__ = ["BenchResult", "bench_model", "run_benchmarks"]

DEFAULT_MODELS = ("capsnet", "capsnet_small", "baseline_cnn", "resnet18")
KERNELS = ("fast", "eager", "both")  # bench_model's kernels: the fast paths, their eager references, or both alternated


@dataclass(frozen=True)
class BenchResult:
    """One model's figures at one batch size on one device."""

    model: str
    params: int
    batch_size: int
    device: str
    amp: str
    channels_last: bool
    compiled: bool
    train_images_per_s: float
    eval_images_per_s: float
    peak_memory_mib: float
    memory_kind: str
    conv_share: float | None = None  # time of the convolutions alone (forward + backward) / a training step
    kernels: str = "fast"  # fast (the fused routing, StemConv2d), eager (their references) or both, alternated
    eager_train_images_per_s: float | None = None  # with kernels="both": the eager path, timed in the same rounds
    # with profile_ops=N: the N operators with the most self time in a training step, (name, ms per step, share),
    # for the path timed as train_images_per_s and (kernels="both") for the eager path
    top_ops: tuple[tuple[str, float, float], ...] = ()
    eager_top_ops: tuple[tuple[str, float, float], ...] = ()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    name: str,
    batch_size: int = 128,
    steps: int = 5,
    warmup: int = 2,
    device: str = "auto",
    amp: bool = True,
    in_chans: int = 1,
    img_size: int = 28,
    num_classes: int = 10,
    channels_last: bool = False,
    compile: bool = False,
    kernels: str = "fast",
    profile_ops: int = 0,
    model_kwargs: dict | None = None,
) -> BenchResult:
    """Time ``steps`` training steps (forward, backward, Adam) and ``steps`` inference batches of ``name``; rates are
    from the median step, so one slow step (another process on the cores) does not move them.

    ``kernels``: ``fast`` (the default paths: :func:`~capsprobe.models.layers.fused_route_by_agreement` and
    :class:`~capsprobe.models.layers.StemConv2d`), ``eager`` (their eager references, what earlier versions ran) or
    ``both``: every round times one eager and one fast step of the same model on the same batch, one after the
    other, so a burst of load from another process hits both (``eager_train_images_per_s``). Peak memory is one
    process's: compare ``fast`` and ``eager`` runs for it, not ``both``. ``profile_ops=N`` also profiles two
    training steps (after the timing, so the profiler's overhead is not in the rates) and keeps the ``N`` operators
    with the most self CPU time. ``model_kwargs``: the model's own options (an experiment's ``options``)."""

    if kernels not in KERNELS:
        raise InvalidInputError(f"{option('kernels')} must be fast, eager or both, got {kernels!r}")
    dev = resolve_device(device)
    dtype = autocast_dtype(dev, amp)
    torch.manual_seed(0)
    model = create_model(name, in_chans=in_chans, num_classes=num_classes, img_size=img_size,
                         **(model_kwargs or {})).to(dev)
    switchable = set_fast_kernels(model, kernels != "eager") > 0
    objective = compile_objective(Objective(model, channels_last=channels_last).train(), compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    images = torch.rand(batch_size, in_chans, img_size, img_size, device=dev)
    labels = torch.randint(0, num_classes, (batch_size,), device=dev)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step():
        train_step(objective, optimizer, scaler, images, labels, dev, dtype)

    stack = getattr(model, "convolution_stack", None)
    conv_step = None
    if callable(stack):
        convs = stack()
        params = [p for p in convs.parameters() if p.requires_grad]

        def conv_step():
            with autocast_context(dev, dtype):
                out = convs(images)
            torch.autograd.grad(out.float().sum(), params)

    def timed(fn) -> float:
        _sync(dev)
        start = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - start

    both = kernels == "both" and switchable

    def eager_step():
        set_fast_kernels(model, False)
        try:
            step()
        finally:
            set_fast_kernels(model, True)

    for _ in range(warmup):
        step()
        if both:
            eager_step()
        if conv_step is not None:
            conv_step()
    # the full step and the convolutions alone alternate, one of each per round, and the medians are compared: a
    # burst of load from another process then hits both or neither (two separate timing loops gave shares that
    # varied 0.10-0.38 between runs on a shared 2-core machine)
    step_times, conv_times, eager_times = [], [], []
    for _ in range(steps):
        if both:
            eager_times.append(timed(eager_step))
        step_times.append(timed(step))
        if conv_step is not None:
            conv_times.append(timed(conv_step))
    step_seconds = statistics.median(step_times)
    train_rate = batch_size / step_seconds
    conv_share = statistics.median(conv_times) / step_seconds if conv_times else None
    eager_rate = batch_size / statistics.median(eager_times) if eager_times else None
    top_ops = _top_operators(step, profile_ops) if profile_ops else ()
    eager_top_ops = _top_operators(eager_step, profile_ops) if profile_ops and both else ()

    model.eval()
    adapter = adapt(model)
    def infer():
        with autocast_context(dev, dtype):
            adapter.outputs(images)

    with torch.inference_mode():
        for _ in range(warmup):
            infer()
        eval_rate = batch_size / statistics.median(timed(infer) for _ in range(steps))

    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda allocated"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process RSS"
    return BenchResult(
        model=name,
        params=sum(p.numel() for p in model.parameters()),
        batch_size=batch_size,
        device=str(dev),
        amp=str(dtype).replace("torch.", "") if dtype is not None else "off",
        channels_last=channels_last,
        compiled=compile,
        train_images_per_s=train_rate,
        eval_images_per_s=eval_rate,
        peak_memory_mib=peak,
        memory_kind=kind,
        conv_share=conv_share,
        kernels=kernels if switchable else "-",
        eager_train_images_per_s=eager_rate,
        top_ops=top_ops,
        eager_top_ops=eager_top_ops,
    )


def _top_operators(step, count: int, steps: int = 2) -> tuple[tuple[str, float, float], ...]:
    """The ``count`` operators with the most self CPU time over ``steps`` calls of ``step``: (name, ms per step,
    share of all operators' self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return tuple((e.key, e.self_cpu_time_total / 1e3 / steps, e.self_cpu_time_total / total) for e in rows[:count])


def _bench_in_child(kwargs: dict) -> dict:
    tune_cpu_allocator()  # as the command line does, so the figures are what `capsprobe train` gets
    return asdict(bench_model(**kwargs))


def run_benchmarks(models=DEFAULT_MODELS, isolate: bool = True, **kwargs) -> list[BenchResult]:
    """Benchmark every model, each in its own process when ``isolate``; kwargs go to :func:`bench_model`.

    Raises:
        InvalidInputError: an unknown model or an unsupported device, before any process starts.
    """
    import timm  # lazy: the model registry

    from .models import UnknownModelError, native_models

    resolve_device(kwargs.get("device", "auto"))
    unknown = [n for n in models if not (n in native_models() or timm.is_model(n))]
    if unknown:
        raise UnknownModelError(f"unknown model {unknown[0]!r}; see `capsprobe list`")
    results = []
    for name in models:
        if isolate:
            with mp.get_context("spawn").Pool(1) as pool:
                results.append(BenchResult(**pool.apply(_bench_in_child, ({"name": name, **kwargs},))))
        else:
            results.append(bench_model(name, **kwargs))
    return results
