"""minidl's speed and memory against PyTorch CPU: one command, one table, one JSON file.

Every workload runs minidl and PyTorch in one process, a fresh one for each workload and
thread count (what one workload leaves in the allocator, caches and thread pools must not
time another), float32, with the same number of threads on both sides (threadpoolctl for
NumPy's BLAS, ``torch.set_num_threads``), at 1 and at 2 threads. The two libraries take
turns, one repetition each, so a busy neighbour on a shared machine slows both alike; the
table reports the median of each and the ratio of the medians (minidl / torch, lower is
better).

========================  =================================================  ==========
workload                  what one repetition runs                           target
========================  =================================================  ==========
conv                      Conv2d forward + backward, x (128, 32, 32, 32),    <= 1.3x
                          64 filters 3x3, padding 1
conv_stride2              the same with stride 2                             <= 1.3x
batchnorm2d               BatchNorm2d forward + backward (128, 64, 32, 32)   <= 1.5x
maxpool2d                 MaxPool2d 2x2 forward + backward, same input       <= 1.5x
cnn5_step                 BNP's 5-layer CNN, batch 128 of 3x32x32:           <= 1.5x
                          forward, loss, backward, SGD step
resnet20_step             ResNet-20 (BatchNorm, option-A shortcuts), batch   <= 1.5x
                          128: forward, loss, backward, SGD step
autoencoder_step          MNIST autoencoder 784-1000-500-250-30-..., batch   <= 1.0x
                          1000: forward, BCE loss, backward, SGD step
resnet20_peak_memory      peak resident memory of one ResNet-20 step above   <= 1.5x
                          the model, data and optimizer state (two steps, so
                          one runs while the last one's caches are held; each
                          side in a fresh subprocess, 1 thread)
========================  =================================================  ==========

The column "% peak" is the GEMM work of a workload (the three products of every Conv2d and
Linear: forward, weight gradient, input gradient where it is computed) divided by its
time, as a fraction of this machine's float32 GEMM rate measured at the start with NumPy
(a 2048^3 product). Last, each preconditioner's step time relative to Adam comes from
``bench_precond.py`` (imported, not copied), at 1 thread.

Threads: with ``threadpool_limits(2)`` minidl's layers run their pieces (Conv2d's chunks,
BatchNorm's, ReLU's and MaxPool2d's pieces, Linear's row blocks) in two threads of its own
with BLAS held to one thread inside each (``minidl.parallel``); PyTorch runs its own
thread pool. Both sides get the same number of threads.

Run it with the BLAS environment a normal machine has (some of ours set variables that
pick an older, slower OpenBLAS kernel; tests and CI keep them)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py --quick

``--rounds 3`` times the whole table three times, one round after the other, and reports
the median ratio with the range over the rounds: on a shared machine one round's ratio
can move by +-0.3 (the neighbours' load changes between workloads, not within the
interleaved repetitions of one). ``--quick`` (3 repetitions, 1 thread, no
preconditioners) is for iterating;
``--only conv maxpool2d`` times a subset. The JSON (``--json``, default
``benchmarks/results.json``) holds every timing, the BLAS library and the machine.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402

import minidl  # noqa: E402
from minidl import models  # noqa: E402
from minidl.layers import BatchNorm2d, Conv2d, MaxPool2d  # noqa: E402
from minidl.layers.im2col import output_size  # noqa: E402
from minidl.losses import BCEWithLogits, SoftmaxCrossEntropy  # noqa: E402
from minidl.optim import SGD  # noqa: E402

TARGETS = {"conv": 1.3, "conv_stride2": 1.3, "batchnorm2d": 1.5, "maxpool2d": 1.5,
           "cnn5_step": 1.5, "resnet20_step": 1.5, "autoencoder_step": 1.0,
           "resnet20_peak_memory": 1.5}
NOTES_MARKER = "<!-- notes: run.py keeps everything from here on -->"
WORKLOADS = ["conv", "conv_stride2", "batchnorm2d", "maxpool2d", "cnn5_step",
             "resnet20_step", "autoencoder_step"]


# -- the machine --------------------------------------------------------------------------
def gemm_peak(threads, size=2048, repeats=5):
    """This machine's float32 GEMM rate (FLOP/s) with NumPy's BLAS at ``threads``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)  # (size, size)
    with threadpoolctl.threadpool_limits(threads):
        a @ a
        times = [_time(lambda: a @ a) for _ in range(repeats)]
    return 2 * size ** 3 / min(times)


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine():
    import torch
    # the library's file name only: a full path would tell where this machine keeps it
    blas = [{k: (os.path.basename(v) if k == "filepath" else v) for k, v in info.items()
             if k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for info in threadpoolctl.threadpool_info()]
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "blas": blas,
            "minidl_commit": _git_commit(), "load_start": _load(),
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}}


def _load():
    """The 1-minute load average (how busy the machine is), or None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- GEMM work of a model ------------------------------------------------------------------
def gemm_flops(model, x_shape, first_dx=False):
    """FLOPs of the forward, weight-gradient and input-gradient products of every Conv2d and
    Linear of ``model`` on a batch of shape ``x_shape`` (the first layer's input gradient
    only with ``first_dx``), read off one forward pass on two examples."""
    from minidl.layers import Linear
    model.forward(np.zeros((2,) + tuple(x_shape[1:]), dtype=np.float32))
    total, first = 0, True
    for leaf in model.leaves():
        if isinstance(leaf, (Conv2d, Linear)):
            x = leaf.cache["x"]
            if isinstance(leaf, Conv2d):
                Ho, Wo = output_size(x.shape[2], x.shape[3], leaf.kernel_size, leaf.stride,
                                     leaf.padding)
                one = 2 * Ho * Wo * leaf.params["W"].size  # per example: L F C kh kw
            else:
                one = 2 * leaf.params["W"].size  # per example: out in
            total += one * (2 if first and not first_dx else 3) * x_shape[0]
            first = False
    model.clear_cache()
    return total


# -- the workloads: each returns (minidl step, torch step, GEMM FLOPs per step) ------------
def layer_workload(torch, layer, x, dout, torch_forward, torch_params=()):
    """One layer's forward + backward in minidl and in PyTorch on the same x and dout.

    ``torch_forward`` maps the torch input to the torch output; ``torch_params`` are the
    tensors whose gradients it makes (cleared after each step, as minidl's cache is).
    """
    def ours():
        layer.forward(x)
        layer.backward(dout)
        layer.clear_cache()

    xt = torch.from_numpy(x).requires_grad_(True)
    doutt = torch.from_numpy(dout)

    def theirs():
        torch_forward(xt).backward(doutt)
        for t in (xt,) + tuple(torch_params):
            t.grad = None

    return ours, theirs


def conv_workload(torch, stride):
    rng = np.random.default_rng(0)
    N, C, S, F = 128, 32, 32, 64
    x = rng.standard_normal((N, C, S, S)).astype(np.float32)  # (N, C, H, W)
    layer = Conv2d(C, F, 3, stride=stride, padding=1, rng=minidl.default_rng(0))
    Ho = (S + 2 - 3) // stride + 1
    dout = rng.standard_normal((N, F, Ho, Ho)).astype(np.float32)  # (N, F, Ho, Wo)
    Wt = torch.from_numpy(minidl.to_numpy(layer.params["W"]).copy()).requires_grad_(True)
    bt = torch.from_numpy(minidl.to_numpy(layer.params["b"]).copy()).requires_grad_(True)
    ours, theirs = layer_workload(
        torch, layer, x, dout,
        lambda xt: torch.nn.functional.conv2d(xt, Wt, bt, stride=stride, padding=1), (Wt, bt))
    return ours, theirs, 3 * 2 * dout.size * C * 9


def batchnorm_workload(torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 64, 32, 32)).astype(np.float32)  # (N, C, H, W)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    bn = torch.nn.BatchNorm2d(64)
    ours, theirs = layer_workload(torch, BatchNorm2d(64), x, dout, bn, (bn.weight, bn.bias))
    return ours, theirs, 0


def maxpool_workload(torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 64, 32, 32)).astype(np.float32)  # (N, C, H, W)
    dout = rng.standard_normal((128, 64, 16, 16)).astype(np.float32)  # (N, C, Ho, Wo)
    ours, theirs = layer_workload(torch, MaxPool2d(2), x, dout,
                                  lambda xt: torch.nn.functional.max_pool2d(xt, 2))
    return ours, theirs, 0


def torch_twin(torch, model):
    """The same network in PyTorch, with minidl's initial weights."""
    from minidl.layers import (BatchNorm1d, Flatten, GlobalAvgPool2d, Linear, ReLU,
                               Residual, Sequential)
    nn = torch.nn

    def tensor(a):
        return torch.from_numpy(np.array(minidl.to_numpy(a), dtype=np.float32))

    class ZeroPad(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.s, self.lo = layer.stride, layer.pad
            self.hi = layer.out_channels - layer.in_channels - layer.pad

        def forward(self, x):
            sub = x[:, :, ::self.s, ::self.s]
            return nn.functional.pad(sub, (0, 0, 0, 0, self.lo, self.hi))

    class Res(nn.Module):
        def __init__(self, block, shortcut):
            super().__init__()
            self.block, self.shortcut = block, shortcut

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    def convert(layer):
        if isinstance(layer, Sequential):
            return nn.Sequential(*[convert(child) for child in layer.layers])
        if isinstance(layer, Residual):
            return Res(convert(layer.block),
                       None if layer.shortcut is None else convert(layer.shortcut))
        if isinstance(layer, Conv2d):
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          layer.stride, layer.padding, bias="b" in layer.params)
        elif isinstance(layer, Linear):
            m = nn.Linear(layer.in_features, layer.out_features, bias="b" in layer.params)
        elif isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            m = (nn.BatchNorm2d if isinstance(layer, BatchNorm2d) else nn.BatchNorm1d)(
                layer.num_features, eps=layer.eps, momentum=layer.momentum)
        elif isinstance(layer, ReLU):
            return nn.ReLU()
        elif isinstance(layer, MaxPool2d):
            return nn.MaxPool2d(layer.kernel_size, layer.stride)
        elif isinstance(layer, GlobalAvgPool2d):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif isinstance(layer, Flatten):
            return nn.Flatten()
        elif isinstance(layer, models.ZeroPadShortcut):
            return ZeroPad(layer)
        else:
            raise TypeError(f"no PyTorch twin for {type(layer).__name__}")
        with torch.no_grad():
            names = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
            for key, value in layer.params.items():
                getattr(m, names[key]).copy_(tensor(value))
        return m

    return convert(model)


def training_workload(torch, model, loss, x, y, torch_loss):
    """One SGD step (lr 1e-3, momentum 0.9) of ``model`` and of its PyTorch twin."""
    twin = torch_twin(torch, model)
    model.needs_input_grad = False  # as PyTorch: no gradient for the data
    model.free_after_backward = True  # as PyTorch: activations freed during backward
    opt = SGD(model, lr=1e-3, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    topt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9)

    def ours():
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()

    def theirs():
        topt.zero_grad(set_to_none=True)
        torch_loss(twin(xt), yt).backward()
        topt.step()

    return ours, theirs


def cnn5_workload(torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 3, 32, 32)).astype(np.float32)  # (N, C, H, W)
    y = rng.integers(0, 10, 128)
    model = models.cnn5((3, 32, 32), 10, rng=minidl.default_rng(0))
    flops = gemm_flops(model, x.shape)
    ours, theirs = training_workload(torch, model, SoftmaxCrossEntropy(), x, y,
                                     torch.nn.functional.cross_entropy)
    return ours, theirs, flops


def resnet20_model_and_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 3, 32, 32)).astype(np.float32)  # (N, C, H, W)
    y = rng.integers(0, 10, 128)
    return models.resnet(20, rng=minidl.default_rng(0)), x, y


def resnet20_workload(torch):
    model, x, y = resnet20_model_and_batch()
    flops = gemm_flops(model, x.shape)
    ours, theirs = training_workload(torch, model, SoftmaxCrossEntropy(), x, y,
                                     torch.nn.functional.cross_entropy)
    return ours, theirs, flops


def autoencoder_workload(torch):
    from minidl.data import load_default
    images, _ = load_default("train")
    x = (images[:1000].reshape(1000, -1) / 255.0).astype(np.float32)  # (1000, 784)
    model = models.autoencoder("mnist", rng=minidl.default_rng(0))
    flops = gemm_flops(model, x.shape)
    ours, theirs = training_workload(
        torch, model, BCEWithLogits(), x, x.copy(),
        torch.nn.functional.binary_cross_entropy_with_logits)
    return ours, theirs, flops


MAKERS = {
    "conv": lambda torch: conv_workload(torch, 1),
    "conv_stride2": lambda torch: conv_workload(torch, 2),
    "batchnorm2d": batchnorm_workload,
    "maxpool2d": maxpool_workload,
    "cnn5_step": cnn5_workload,
    "resnet20_step": resnet20_workload,
    "autoencoder_step": autoencoder_workload,
}


def time_pair(ours, theirs, threads, repeats, warmup, torch):
    """Medians (seconds) of the two steps, taking turns, at ``threads`` threads each."""
    torch.set_num_threads(threads)
    with threadpoolctl.threadpool_limits(threads):
        for _ in range(warmup):
            ours()
            theirs()
        t_ours, t_theirs = [], []
        for r in range(repeats):
            # alternate who goes first, so neither always follows the other's cache state
            pair = [(ours, t_ours), (theirs, t_theirs)]
            for fn, times in (pair if r % 2 == 0 else pair[::-1]):
                times.append(_time(fn))
    return statistics.median(t_ours), statistics.median(t_theirs)


# -- each workload in a fresh process ---------------------------------------------------
def workload_child(name, threads, repeats):
    """Time one workload at ``threads`` threads in this (fresh) process; print JSON."""
    import torch
    minidl.set_backend("numpy")
    minidl.set_default_dtype("float32")
    ours, theirs, flops = MAKERS[name](torch)
    m, th = time_pair(ours, theirs, threads, repeats, warmup=2, torch=torch)
    print(json.dumps({"minidl_s": m, "torch_s": th, "flops": flops}))
    return 0


def run_workload_child(name, threads, repeats):
    """``(minidl s, torch s, GEMM FLOPs)`` of one workload timed in a process of its own.

    A fresh process per workload: what one workload leaves behind (glibc's heap and its
    mmap threshold, which decide whether a large tensor costs page faults; BLAS and
    OpenMP threads still spinning; caches) must not change another's timing. Measured:
    PyTorch's Conv2d fwd+bwd took 176 ms in a fresh process and 123-130 ms after the
    other workloads had run in the same one (its 32 MB tensors then came from glibc's
    heap instead of fresh, page-faulting mmap blocks), minidl's 210-220 ms in both.
    """
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--workload-child",
                           name, "--threads", str(threads), "--repeats", str(repeats)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} workload failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["minidl_s"], out["torch_s"], out["flops"]


# -- peak memory (a fresh subprocess per side) --------------------------------------------
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(side, free=True):
    """Print the peak resident memory of one ResNet-20 step above the set-up (bytes)."""
    import gc
    import torch
    torch.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)
    minidl.set_default_dtype("float32")
    model, x, y = resnet20_model_and_batch()
    model.needs_input_grad = False
    model.free_after_backward = free
    if side == "minidl":
        loss, opt = SoftmaxCrossEntropy(), SGD(model, lr=1e-3, momentum=0.9)

        def step():
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            opt.step()
    else:
        twin = torch_twin(torch, model)
        del model
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        topt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9)

        def step():
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(twin(xt), yt).backward()
            topt.step()
    step()  # warm-up: PyTorch prepares its kernels, minidl's optimizer its buffers
    if side == "minidl":
        model.clear_cache()  # what a step leaves behind counts as the step's memory
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM) to the current one
    before = _rss_bytes()
    step()
    step()  # the second step runs while the first one's caches are still held
    peak = _status_kb("VmHWM") * 1024
    print(json.dumps({"side": side, "setup_bytes": before, "peak_bytes": peak,
                      "step_peak_bytes": peak - before}))


def peak_memory():
    """Peak bytes above the set-up of one ResNet-20 step: minidl as timed (caches freed
    during backward), minidl keeping its caches (the default, for preconditioners), torch."""
    out = {}
    for side in ("minidl", "minidl-keep", "torch"):
        # big blocks straight from the OS and back on free, so the resident size follows
        # what is allocated (glibc would otherwise keep freed blocks of up to 32 MB)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child",
                               side], capture_output=True, text=True, check=True, env=env)
        out[side] = json.loads(proc.stdout.strip().splitlines()[-1])["step_peak_bytes"]
    return out


# -- preconditioners relative to Adam (bench_precond's own functions) ---------------------
def precond_ratios(repeats):
    """{problem: {method: (ms per step, median per-round ratio to Adam)}} at 1 thread."""
    import bench_precond as bp
    out = {}
    with threadpoolctl.threadpool_limits(1):
        for prob in ("autoencoder", "cnn5"):
            steppers = {}
            for name in bp.METHODS:
                if (prob, name) in getattr(bp, "SLOW", {}):
                    continue
                step, _ = bp.setup_method(name, prob)
                if step is not None:
                    steppers[name] = step
            steps = bp.problem_periods(prob)
            times = {name: [] for name in steppers}
            for _ in range(repeats):
                for name, step in steppers.items():
                    times[name].append(bp.time_steps(step, steps))
            out[prob] = {name: (1e3 * statistics.median(ts),
                                statistics.median(t / a for t, a in zip(ts, times["adam"])))
                         for name, ts in times.items()}
    return out


# -- the table -----------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="3 repetitions, 1 thread, no preconditioners (for iterating)")
    p.add_argument("--only", nargs="+", choices=WORKLOADS + ["memory", "precond"],
                   help="time only these rows")
    p.add_argument("--threads", nargs="+", type=int, default=None, help="default: 1 2")
    p.add_argument("--repeats", type=int, default=None, help="default: 9 (quick: 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="time every workload this many times, one round after the other, "
                        "and report the median ratio over the rounds with its range (the "
                        "ratio of one round moved by up to +-0.3 on a shared machine)")
    p.add_argument("--precond-rounds", type=int, default=1,
                   help="rounds of bench_precond's T2-step periods per method (1: about 20 "
                        "minutes on a busy 2-core machine)")
    p.add_argument("--json", default=os.path.join(HERE, "results.json"))
    p.add_argument("--memory-child", choices=["minidl", "minidl-keep", "torch"],
                   help=argparse.SUPPRESS)
    p.add_argument("--workload-child", choices=WORKLOADS, help=argparse.SUPPRESS)
    p.add_argument("--results-md", metavar="FILE",
                   help="also write the table as Markdown (benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    if args.memory_child:
        side = args.memory_child
        return memory_child(side.split("-")[0], free=not side.endswith("keep"))
    if args.workload_child:
        return workload_child(args.workload_child, args.threads[0], args.repeats)

    import torch
    minidl.set_backend("numpy")
    minidl.set_default_dtype("float32")
    threads = args.threads or ([1] if args.quick else [1, 2])
    repeats = args.repeats or (3 if args.quick else 9)
    chosen = args.only or (WORKLOADS + ["memory"] + ([] if args.quick else ["precond"]))
    info = machine()
    print(f"{info['date']}  {info['cpu']} ({info['cores']} cores)  numpy {info['numpy']}  "
          f"torch {info['torch']}  minidl {info['minidl_commit']}")
    for blas in info["blas"]:
        print(f"BLAS: {blas.get('internal_api')} {blas.get('version')} kernel "
              f"{blas.get('architecture')}  ({os.path.basename(blas.get('filepath', ''))})")
    print(f"OPENBLAS_CORETYPE={info['env']['OPENBLAS_CORETYPE']} "
          f"OPENBLAS_L2_SIZE={info['env']['OPENBLAS_L2_SIZE']}")
    peaks = {t: gemm_peak(t) for t in threads}
    print("float32 GEMM peak (NumPy, 2048^3): " +
          ", ".join(f"{peaks[t] / 1e9:.0f} GFLOP/s at {t} thread(s)" for t in threads))
    print(f"medians of {repeats} interleaved repetitions; ratio = minidl / torch\n")
    header = (f"{'workload':<22} {'thr':>3} {'minidl ms':>10} {'torch ms':>9} {'ratio':>6} "
              f"{'target':>7} {'% peak':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    flops = {}
    per_round = {}  # (workload, threads) -> [(minidl s, torch s), one per round]
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"round {r + 1} of {args.rounds}", flush=True)
        for name in (n for n in WORKLOADS if n in chosen):
            for t in threads:
                m, th, flops[name] = run_workload_child(name, t, repeats)
                per_round.setdefault((name, t), []).append((m, th))
                print(_format(_row(name, t, [(m, th)], flops[name], peaks)), flush=True)
    for (name, t), times in per_round.items():
        rows.append(_row(name, t, times, flops[name], peaks))
    if args.rounds > 1:
        print(f"\nmedian over {args.rounds} rounds (range of the ratio in brackets)")
        for row in rows:
            print(_format(row), flush=True)
    if "memory" in chosen:
        mem = peak_memory()
        row = {"workload": "resnet20_peak_memory", "threads": 1,
               "minidl_mb": mem["minidl"] / 2**20, "torch_mb": mem["torch"] / 2**20,
               "ratio": mem["minidl"] / mem["torch"], "target": TARGETS["resnet20_peak_memory"]}
        rows.append(row)
        print(f"{'resnet20_peak_memory':<22} {1:>3} {row['minidl_mb']:>8.0f}MB "
              f"{row['torch_mb']:>7.0f}MB {row['ratio']:>6.2f} {row['target']:>6.1f}x "
              f"{'':>7} {_verdict(row)}")
        keep = {"workload": "resnet20_memory_keep_caches", "threads": 1,
                "minidl_mb": mem["minidl-keep"] / 2**20, "torch_mb": mem["torch"] / 2**20,
                "ratio": mem["minidl-keep"] / mem["torch"], "target": None}
        rows.append(keep)
        print(f"{'  (caches kept)':<22} {1:>3} {keep['minidl_mb']:>8.0f}MB "
              f"{keep['torch_mb']:>7.0f}MB {keep['ratio']:>6.2f} {'-':>7} {'':>7} "
              "(no target: for preconditioners)")
    precond = None
    if "precond" in chosen:
        precond = precond_ratios(repeats=args.precond_rounds)
        print("\npreconditioner step time relative to Adam (bench_precond.py, 1 thread)")
        for prob, table in precond.items():
            print(f"  {prob:<12} " + "  ".join(f"{name} {ratio:.2f}x"
                                              for name, (_, ratio) in table.items()))
    info["load_end"] = _load()
    judged = [r for r in rows if r["target"] is not None]
    missed = [r for r in judged if r["ratio"] > r["target"]]
    print(f"\n{len(judged) - len(missed)} of {len(judged)} rows meet their target")
    with open(args.json, "w") as f:
        json.dump({"machine": info, "gemm_peak_flops": peaks, "repeats": repeats,
                   "command": " ".join(sys.argv), "rows": rows, "precond": precond}, f,
                  indent=1)
    print(f"wrote {args.json}")
    if args.results_md:
        notes = ""  # the hand-written part after the marker survives a rewrite
        if os.path.exists(args.results_md):
            with open(args.results_md) as f:
                old = f.read()
            if NOTES_MARKER in old:
                notes = old[old.index(NOTES_MARKER):]
        with open(args.results_md, "w") as f:
            f.write(markdown(info, peaks, repeats, rows, precond) + "\n" +
                    (notes or NOTES_MARKER + "\n"))
        print(f"wrote {args.results_md}")
    return 0


def markdown(info, peaks, repeats, rows, precond):
    """The results page: command, date, machine, the table, the preconditioners."""
    rounds = max((r.get("rounds", 1) for r in rows), default=1)
    blas = "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
                     for b in info["blas"] if b.get("version"))
    lines = [
        "# Benchmark results", "",
        "The table is written by `benchmarks/run.py` (the notes after it by hand); "
        "reproduce it with", "",
        "    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py " +
        (f"--rounds {rounds} " if rounds > 1 else "") + "--results-md benchmarks/RESULTS.md",
        "",
        f"- date: {info['date']}; minidl commit {info['minidl_commit']}",
        f"- machine: {info['cpu']}, {info['cores']} cores, load average "
        f"{info.get('load_start', '?')} when the run started and "
        f"{info.get('load_end', '?')} when it ended (1-minute; this process adds about 1); "
        f"Python {info['python']}, NumPy {info['numpy']}, PyTorch {info['torch']}",
        f"- BLAS: {blas}; float32 GEMM peak measured with NumPy: " + ", ".join(
            f"{peaks[t] / 1e9:.0f} GFLOP/s at {t} thread(s)" for t in sorted(peaks)),
        f"- each row: median of {repeats} repetitions, minidl and PyTorch taking turns in "
        "one process (a fresh one per workload and thread count), the same number of "
        "threads on both sides; ratio = minidl / torch" +
        (f"; the whole table timed {rounds} times one round after the other, each time "
         "the median over the rounds and, in brackets, the range of the rounds' ratios"
         if rounds > 1 else ""),
        "- training steps (cnn5, resnet20, autoencoder) run forward, loss, backward and "
        "an SGD step with `model.needs_input_grad = False` (no gradient for the data) and "
        "`model.free_after_backward = True` (caches freed during backward), as PyTorch does",
        "", "| workload | threads | minidl | torch | ratio | target | % GEMM peak | |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "minidl_ms" in r:
            frac = f"{100 * r['peak_fraction']:.0f}%" if r["peak_fraction"] else "-"
            spread = (f" [{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}]"
                      if r.get("rounds", 1) > 1 else "")
            lines.append(f"| {r['workload']} | {r['threads']} | {r['minidl_ms']:.1f} ms | "
                         f"{r['torch_ms']:.1f} ms | {r['ratio']:.2f}{spread} | "
                         f"<= {r['target']}x | {frac} | {_verdict(r)} |")
        else:
            target = f"<= {r['target']}x" if r["target"] else "-"
            lines.append(f"| {r['workload']} | {r['threads']} | {r['minidl_mb']:.0f} MB | "
                         f"{r['torch_mb']:.0f} MB | {r['ratio']:.2f} | {target} | - | "
                         f"{_verdict(r) if r['target'] else ''} |")
    if precond:
        names = []
        for table in precond.values():
            names += [name for name in table if name not in names]
        lines += ["", "Preconditioner step time relative to Adam (`bench_precond.py`'s "
                  "set-ups and periods, 1 thread, median per-round ratio; n/a: not timed "
                  "there):", "", "| problem | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for prob, table in precond.items():
            cells = [f"{table[n][1]:.2f}x" if n in table else "n/a" for n in names]
            lines.append(f"| {prob} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _row(name, threads, times, flops, peaks):
    """One table row from the (minidl s, torch s) medians of one or more rounds: the
    median of each side, the median of the rounds' ratios and their range."""
    ratios = [m / th for m, th in times]
    m = statistics.median(m for m, _ in times)
    return {"workload": name, "threads": threads, "minidl_ms": 1e3 * m,
            "torch_ms": 1e3 * statistics.median(th for _, th in times),
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "rounds": len(times), "target": TARGETS[name],
            "peak_fraction": flops / m / peaks[threads] if flops else None}


def _verdict(row):
    return "ok" if row["ratio"] <= row["target"] else "MISS"


def _format(row):
    frac = f"{100 * row['peak_fraction']:6.0f}%" if row["peak_fraction"] else f"{'-':>7}"
    spread = ""
    if row.get("rounds", 1) > 1:
        spread = f"  [{row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f}]"
    return (f"{row['workload']:<22} {row['threads']:>3} {row['minidl_ms']:>10.1f} "
            f"{row['torch_ms']:>9.1f} {row['ratio']:>6.2f} {row['target']:>6.1f}x {frac} "
            f"{_verdict(row)}{spread}")


if __name__ == "__main__":
    sys.exit(main())
