"""Benchmark: Conv2d forward + backward, minidl against PyTorch CPU, in one process.

The project's target: on x (128, 32, 32, 32), 64 filters 3x3, padding 1, float32, one
forward and one backward pass of minidl's Conv2d take at most 1.3x PyTorch CPU's time.
``benchmarks/run.py`` times this with every other workload (and pins the threads); this
script is the quick single-workload version.

Each side is warmed up, then timed over several repetitions; the table reports the median
(robust to a noisy machine) and the ratio minidl / torch. The repetitions alternate
between the two libraries so slow phases of the machine hit both alike. Without torch the
minidl timings are still printed.

Usage::

    python benchmarks/bench_conv.py [--batch 128] [--repeats 7] [--warmup 2]
"""
import argparse
import statistics
import sys
import time

import numpy as np

import minidl
from minidl.layers import Conv2d


def time_once(fn):
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_minidl_step(x, dout, layer):
    def step():
        layer.forward(x)
        layer.backward(dout)
        layer.clear_cache()
    return step


def make_torch_step(torch, x, dout, W, b, padding):
    xt = torch.from_numpy(x).requires_grad_(True)
    Wt = torch.from_numpy(W.copy()).requires_grad_(True)
    bt = torch.from_numpy(b.copy()).requires_grad_(True)
    doutt = torch.from_numpy(dout)

    def step():
        out = torch.nn.functional.conv2d(xt, Wt, bt, padding=padding)
        out.backward(doutt)
        xt.grad, Wt.grad, bt.grad = None, None, None
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    minidl.set_backend("numpy")
    minidl.set_default_dtype("float32")
    rng = np.random.default_rng(0)
    N, C, S, F = args.batch, args.channels, args.size, args.filters
    x = rng.standard_normal((N, C, S, S)).astype(np.float32)  # (N, C, H, W)
    dout = rng.standard_normal((N, F, S, S)).astype(np.float32)  # (N, F, Ho, Wo)
    layer = Conv2d(C, F, 3, padding=1, rng=minidl.default_rng(0))
    steps = {"minidl": make_minidl_step(x, dout, layer)}

    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: timing minidl only (pip install torch for the ratio)")
    if torch is not None:
        W = minidl.to_numpy(layer.params["W"])  # (F, C, 3, 3)
        b = minidl.to_numpy(layer.params["b"])  # (F,)
        steps["torch"] = make_torch_step(torch, x, dout, W, b, padding=1)

    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(time_once(step))

    print(f"Conv2d forward+backward, x ({N}, {C}, {S}, {S}), {F} filters 3x3, padding 1, "
          f"float32, median of {args.repeats} after {args.warmup} warm-up")
    threads = f", torch threads {torch.get_num_threads()}" if torch is not None else ""
    print(f"numpy {np.__version__}{threads}")
    print(f"{'library':<8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    medians = {}
    for name, ts in times.items():
        medians[name] = statistics.median(ts) * 1e3
        print(f"{name:<8} {medians[name]:>10.1f} {min(ts) * 1e3:>8.1f} {max(ts) * 1e3:>8.1f}")
    if "torch" in medians:
        ratio = medians["minidl"] / medians["torch"]
        verdict = "meets" if ratio <= 1.3 else "MISSES"
        print(f"ratio minidl/torch: {ratio:.2f} ({verdict} the <= 1.3x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
