# %% [markdown]
# # Lesson 13: convolutions -- naive loops vs im2col vs the GPU, measured
#
# A 2-D convolution layer (cross-correlation, as in PyTorch) maps x (N, C, H, W) with
# filters W (F, C, kh, kw) to
#
#     out[n, f, ho, wo] = b[f] + sum_{c, i, j} W[f, c, i, j] x[n, c, ho + i, wo + j].
#
# Written as loops this is four nested loops over the output and a sum over each window:
# correct, and hopelessly slow in Python. minidl's `Conv2d` instead uses **im2col**
# (Chellapilla et al. 2006): copy every window into one column of a matrix `cols`
# (C kh kw, N Ho Wo); then the whole batch's convolution is ONE matrix product
# `W.reshape(F, -1) @ cols`, which BLAS runs at full speed. On a GPU the same product runs
# on thousands of cores (CuPy backend, `minidl.set_backend("cupy")`).
#
# We (1) look at what im2col builds, (2) check that `Conv2d` equals the loops, (3) time
# the loops, minidl's im2col path and -- where CuPy and a GPU are present -- the GPU.
#
# Seed: none of the five source lectures and papers treats convolutions; this lesson
# follows K. Chellapilla, S. Puri, P. Simard (2006) on im2col and the CS231n notes, the
# references of `minidl.layers.conv`.
#
# Run: `python lessons/13_convolutions.py` (`MINIDL_FAST=1` for the quick version).

# %%
import time

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
from threadpoolctl import threadpool_limits

import minidl
from minidl import backend
from minidl.layers import Conv2d
from minidl.layers.im2col import im2col
from minidl.lesson import FAST, savefig

xp = minidl.xp()
rng = minidl.default_rng(0)

# %% [markdown]
# ## 1. What im2col builds
# One 5x5 image with pixel values 0..24, a 3x3 kernel, stride 1, no padding: 3x3 = 9
# output pixels, so 9 columns, each holding the 9 pixels of one window.
# **Expected plot:** column k of `cols` is the k-th window read row by row; neighbouring
# columns share 6 of their 9 pixels (overlapping windows), which is why im2col uses about
# kh kw times the memory of the input.

# %%
tiny = xp.arange(25, dtype=xp.float64).reshape(1, 1, 5, 5)       # (N, C, H, W) = (1, 1, 5, 5)
cols_tiny = im2col(tiny, (3, 3), (1, 1), (0, 0))                  # (C kh kw, N Ho Wo) = (9, 9)
print("cols =\n", minidl.to_numpy(cols_tiny).astype(int))
assert cols_tiny.shape == (9, 9)
assert [int(v) for v in cols_tiny[:, 0]] == [0, 1, 2, 5, 6, 7, 10, 11, 12]  # first window

# %% [markdown]
# ## 2. The loops, and Conv2d against them
# The loop version is the definition above, written out: for every example, filter and
# output pixel, multiply the window by the filter and sum. (This is the only place in the
# course we write a convolution by hand; the test suite checks `Conv2d` against the same
# sum.)

# %%
def conv_loops(x, W, b):
    """out[n, f, ho, wo] = b[f] + sum(W[f] * x[n, :, ho:ho+kh, wo:wo+kw]); stride 1, no pad."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    Ho, Wo = H - kh + 1, Wd - kw + 1
    out = xp.zeros((N, F, Ho, Wo), dtype=x.dtype)                 # (N, F, Ho, Wo)
    for n in range(N):
        for f in range(F):
            for ho in range(Ho):
                for wo in range(Wo):
                    window = x[n, :, ho:ho + kh, wo:wo + kw]      # (C, kh, kw)
                    out[n, f, ho, wo] = b[f] + (window * W[f]).sum()
    return out


minidl.set_default_dtype("float64")
layer = Conv2d(3, 4, 3, rng=minidl.default_rng(1))
x_check = xp.asarray(rng.standard_normal((2, 3, 7, 7)))           # (2, 3, 7, 7)
diff = float(xp.abs(layer(x_check) - conv_loops(x_check, layer.params["W"],
                                                 layer.params["b"])).max())
print(f"Conv2d (im2col) vs loops: max difference {diff:.1e}")
assert diff < 1e-12
minidl.set_default_dtype("float32")

# %% [markdown]
# ## 3. Timing
# A layer with N = 4 images, C = 8 input channels, F = 16 filters and a 3x3 kernel, on
# images from 8x8 to 32x32 (fast mode: up to 24x24). We time the forward pass (median of
# several runs; the loops only once where slow). The work is the same for all methods:
# 2 N F Ho Wo C kh kw floating-point operations. BLAS runs on **one thread** here
# (`threadpoolctl.threadpool_limits(1)`), so both methods use one CPU core: a fair
# comparison, and stable on a shared machine.
# **Expected plot:** both lines grow with the image area, the loops ~100-1000 times above
# im2col; the GPU line (when present) is flat, because a layer this small does not fill
# a GPU: launching the kernels costs more than the arithmetic.

# %%
def median_time(fn, repeats, sync=lambda: None):
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


N, C, F, k = 4, 8, 16, 3
sizes = [8, 12, 16, 24] if FAST else [8, 12, 16, 24, 32]
t_loops, t_im2col, flops = [], [], []
one_thread = threadpool_limits(limits=1)               # undone after the CPU timings
for s in sizes:
    layer = Conv2d(C, F, k, rng=minidl.default_rng(2))
    x = xp.asarray(rng.standard_normal((N, C, s, s)), dtype=xp.float32)   # (N, C, s, s)
    W, b = layer.params["W"], layer.params["b"]
    t_loops.append(median_time(lambda: conv_loops(x, W, b), 1 if s > 12 else 3))
    t_im2col.append(median_time(lambda: layer(x), 21))
    flops.append(2 * N * F * (s - k + 1) ** 2 * C * k * k)
    print(f"{s:>2}x{s:<2}  loops {t_loops[-1] * 1e3:8.1f} ms   im2col {t_im2col[-1] * 1e3:7.3f} ms"
          f"   speed-up {t_loops[-1] / t_im2col[-1]:6.0f}x")
speedup = [a / b for a, b in zip(t_loops, t_im2col)]
assert min(speedup) > 10, f"im2col should be far faster than Python loops, got {speedup}"

# %% [markdown]
# A realistic layer: a mini-batch of 64 MNIST-sized images through 32 -> 64 filters,
# forward and backward. The loops would take minutes here; we extrapolate their time from
# the measured cost per output pixel of the largest size above (an estimate, not a
# measurement, and labelled so).

# %%
big = dict(N=32 if FAST else 64, C=32, F=64, s=28)
layer = Conv2d(big["C"], big["F"], k, padding=1, rng=minidl.default_rng(3))
x_big = xp.asarray(rng.standard_normal((big["N"], big["C"], 28, 28)), dtype=xp.float32)
dout_big = xp.ones((big["N"], big["F"], 28, 28), dtype=xp.float32)   # (N, F, 28, 28)


def fwd_bwd():
    layer(x_big)
    layer.backward(dout_big)


t_big_cpu = median_time(fwd_bwd, 5)
one_thread.restore_original_limits()
per_pixel_loops = t_loops[-1] / (N * F * (sizes[-1] - k + 1) ** 2 * C)   # s per (pixel*C)
t_big_loops_est = 3 * per_pixel_loops * big["N"] * big["F"] * 28 * 28 * big["C"]
gflops_big = 3 * 2 * big["N"] * big["F"] * 28 * 28 * big["C"] * k * k / t_big_cpu / 1e9
print(f"{big}: im2col forward+backward (one core) {t_big_cpu * 1e3:.1f} ms "
      f"({gflops_big:.1f} GFLOP/s); "
      f"loops would need about {t_big_loops_est:.0f} s (extrapolated)")

# %% [markdown]
# ## 4. The GPU
# The same code runs on a GPU when CuPy is installed: `minidl.set_backend("cupy")` makes
# every array a CuPy array and every `@` a cuBLAS call. GPU calls return before the work
# is done, so we synchronise before reading the clock.

# %%
gpu = backend.cupy_available()
t_gpu, t_big_gpu = None, None
if gpu:
    minidl.set_backend("cupy")
    gx = minidl.xp()
    sync = gx.cuda.Device().synchronize
    t_gpu = []
    for s in sizes:
        layer = Conv2d(C, F, k, rng=minidl.default_rng(2))
        x = gx.asarray(rng.standard_normal((N, C, s, s)), dtype=gx.float32)
        layer(x)                                                  # warm-up (kernel compile)
        t_gpu.append(median_time(lambda: layer(x), 21, sync))
    layer = Conv2d(big["C"], big["F"], k, padding=1, rng=minidl.default_rng(3))
    x_big = gx.asarray(x_big)
    dout_big = gx.asarray(dout_big)
    fwd_bwd()
    t_big_gpu = median_time(fwd_bwd, 11, sync)
    minidl.set_backend("numpy")
    print("GPU forward:", ", ".join(f"{t * 1e3:.3f} ms" for t in t_gpu))
    print(f"GPU forward+backward of the realistic layer: {t_big_gpu * 1e3:.2f} ms, "
          f"{t_big_cpu / t_big_gpu:.0f}x faster than this CPU")
    assert t_big_gpu < t_big_cpu, "the GPU should win on the realistic layer"
else:
    print("No GPU part: CuPy is not installed or no GPU answers on this machine "
          "(backend.cupy_available() is False). Run this lesson where `pip install "
          "minidl[gpu]` works and a GPU is present to fill in the third line.")

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [0.8, 1, 1.2]})
axes[0].imshow(minidl.to_numpy(tiny[0, 0]), cmap="viridis")
for (r, c), v in zip([(r, c) for r in range(5) for c in range(5)], range(25)):
    axes[0].text(c, r, v, ha="center", va="center", color="w", fontsize=9)
axes[0].add_patch(plt.Rectangle((-0.5, -0.5), 3, 3, fill=False, ec="r", lw=2))
axes[0].set(title="input 5x5, first 3x3 window (red)", xticks=[], yticks=[])
axes[1].imshow(minidl.to_numpy(cols_tiny), cmap="viridis")
axes[1].add_patch(plt.Rectangle((-0.5, -0.5), 1, 9, fill=False, ec="r", lw=2))
axes[1].set(title="im2col: cols (C kh kw, N Ho Wo) = (9, 9)", xlabel="window (n, ho, wo)",
            ylabel="(c, i, j)")
mflop = [f / 1e6 for f in flops]
axes[2].loglog(mflop, [t * 1e3 for t in t_loops], "o-", label="Python loops")
axes[2].loglog(mflop, [t * 1e3 for t in t_im2col], "s-", label="minidl Conv2d (im2col + GEMM)")
if t_gpu is not None:
    axes[2].loglog(mflop, [t * 1e3 for t in t_gpu], "^-", label="minidl Conv2d on the GPU")
else:
    axes[2].text(0.03, 0.5, "GPU: not present on this machine", transform=axes[2].transAxes,
                 color="gray")
for m, s in zip(mflop, sizes):
    axes[2].annotate(f"{s}x{s}", (m, t_im2col[sizes.index(s)] * 1e3), fontsize=8,
                     textcoords="offset points", xytext=(0, -12), ha="center")
axes[2].xaxis.set_minor_formatter(NullFormatter())
axes[2].set(xlabel="MFLOP per forward pass (N=4, C=8, F=16, 3x3)", ylabel="time (ms)",
            title="Forward pass, measured (median)")
axes[2].legend()
fig.tight_layout()
print("saved", savefig(fig, "13_convolutions"))

# %% [markdown]
# ## What we measured
# `Conv2d` equals the loops to 1e-12 in float64, and is two to three orders of magnitude
# faster, because the work moves from Python loops into one BLAS matrix product (the
# numbers depend on your machine and how busy it is; the lesson asserts only a 10x
# margin). On a GPU, small layers are dominated by launch overhead; large ones are many
# times faster than the CPU.
#
# ## Exercises
# 1. im2col's `cols` has C kh kw N Ho Wo entries. For the realistic layer above, how many
#    MB is that in float32, compared with the input? When does that become a problem?
# 2. Time `layer.backward` alone. Which of its three parts (dW, db, dx) costs most? For
#    stride 1 and F <= C, `Conv2d` computes dx not with col2im but as a convolution of dout
#    with the flipped kernel (`Conv2d._input_grad`'s docstring). Derive that identity from
#    the forward formula, then time both routes on a layer with F = C
#    (`layer._input_grad` against `layer._input_grad_col2im`).
# 3. A 1x1 convolution needs no im2col at all. Write it as a single `@` on a reshaped x
#    and check it against `Conv2d(C, F, 1)`.
