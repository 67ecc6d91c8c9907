# %% [markdown]
# # Lesson 4: initialisation and signal propagation
#
# *Seeds: lecture 004 (Ilin, "Deep Learning Optimization": weight initialisation, "does
# depth cause problems for optimization?") and lecture 001 (Ghauch and Ghadikolaei: random,
# Xavier, Saxe (orthogonal) and Martens (sparse) initialisation).*
#
# A linear layer y = W x with independent zero-mean weights of variance var(w), fed
# uncorrelated unit-variance inputs, gives outputs of variance
#
#     <var y_i> = N_x var(w)                 (forward, N_x inputs)
#
# and, by the same argument on the backward pass dL/dx = W' dL/dy,
#
#     <var dL/dx_j> = N_y var(w)             (backward, N_y outputs).
#
# Stack many layers and either variance grows or shrinks geometrically unless the factor is
# 1. Xavier (Glorot and Bengio 2010) takes var(w) = 2 / (N_x + N_y), the harmonic mean of
# 1/N_x and 1/N_y, so both stay put when the widths are equal. We measure all of this with
# minidl's initialisers (`minidl.init`, used through `Linear(..., init=name)`), then look
# at a subtler problem lecture 004 points out: even with whitened inputs and Xavier weights,
# the *covariance* of the signals of a deep linear net becomes ill-conditioned within a few
# layers.
#
# Run it top to bottom: `python lessons/04_initialisation.py`.

# %%
import math

import matplotlib.pyplot as plt

import minidl
from minidl import lesson
from minidl.data import ZCAWhiten
from minidl.layers import Linear, ReLU

minidl.set_default_dtype("float64")
xp = minidl.xp()
rng = minidl.default_rng(0)
INITS = ["uniform", "xavier_uniform", "he_normal", "orthogonal", "sparse"]

# %% [markdown]
# ## 1. One layer: forward N_x var(w), backward N_y var(w)
# A 400 -> 100 layer (N_x != N_y so the two factors differ), unit-variance inputs and
# upstream gradients. For each initialiser we compare the measured variance ratios with
# N_x var(w) and N_y var(w), where var(w) is the variance of the drawn weights.

# %%
N_x, N_y, n = 400, 100, 4000
x = xp.asarray(rng.standard_normal((n, N_x)))           # (n, N_x), var 1
dout = xp.asarray(rng.standard_normal((n, N_y)))        # (n, N_y), var 1
print(f"{'init':<15}{'var(w)':>10}{'var y':>9}{'N_x var w':>11}{'var dx':>9}{'N_y var w':>11}")
for name in ("uniform", "xavier_uniform", "he_normal"):
    layer = Linear(N_x, N_y, bias=False, rng=rng, init=name)
    var_w = float((layer.params["W"] ** 2).mean())
    var_y = float(layer.forward(x).var())
    var_dx = float(layer.backward(dout).var())
    print(f"{name:<15}{var_w:>10.2e}{var_y:>9.3f}{N_x * var_w:>11.3f}{var_dx:>9.3f}"
          f"{N_y * var_w:>11.3f}")
    assert abs(var_y / (N_x * var_w) - 1) < 0.05
    assert abs(var_dx / (N_y * var_w) - 1) < 0.05
print(f"Xavier's var(w) = 2/(N_x+N_y) = {2 / (N_x + N_y):.2e}")

# %% [markdown]
# ## 2. Through depth
# Twenty 256 -> 256 linear layers (no biases, no nonlinearity), whitened-scale inputs.
# We record the variance of the signal after every layer (forward) and of dL/dx at every
# layer's input when a unit-variance gradient enters at the top (backward). The plot should
# show: the fan-in uniform init (var w = 1/(3N)) shrinks both by 3x per layer, He (2/N,
# made for ReLU) doubles them, Martens' sparse init (15 weights of variance 1 per unit)
# multiplies them by ~15, while Xavier and orthogonal keep both near 1 (their lines lie
# on top of each other).
#
# The third panel puts a ReLU after every layer: ReLU zeroes half of a symmetric signal,
# halving its second moment, which is what He's factor 2 pays for.

# %%
depth, width, n = 20, 256, lesson.choose(2000, 500)
x0 = xp.asarray(rng.standard_normal((n, width)))        # (n, width)


def propagate(init, relu=False, seed=1):
    """Forward second moments and backward variances per layer of a deep net."""
    r = minidl.default_rng(seed)
    layers = [Linear(width, width, bias=False, rng=r, init=init) for _ in range(depth)]
    acts = [ReLU() for _ in range(depth)] if relu else []
    h, forward = x0, [1.0]
    for i, layer in enumerate(layers):
        h = layer.forward(h)
        if relu:
            h = acts[i].forward(h)
        forward.append(float((h ** 2).mean()))
    g, backward = xp.asarray(r.standard_normal(h.shape)), [1.0]   # (n, width) dL/d(top)
    for i in reversed(range(depth)):
        if relu:
            g = acts[i].backward(g)
        g = layers[i].backward(g)
        backward.append(float(g.var()))
    return forward, backward


results = {name: propagate(name) for name in INITS}
relu_results = {name: propagate(name, relu=True) for name in ("xavier_uniform", "he_normal")}
for name, (fwd, bwd) in results.items():
    print(f"{name:<15} after {depth} layers: forward variance {fwd[-1]:9.3g}, "
          f"backward variance {bwd[-1]:9.3g}")
for name in ("xavier_uniform", "orthogonal"):
    fwd, bwd = results[name]
    assert all(0.5 < v < 2 for v in fwd + bwd), f"{name} should keep both variances near 1"
assert results["uniform"][0][-1] < 1e-6 and results["uniform"][1][-1] < 1e-6
assert results["he_normal"][0][-1] > 1e4 and results["he_normal"][1][-1] > 1e4
he_relu = relu_results["he_normal"][0]
assert all(0.5 < v < 2 for v in he_relu), "He keeps the second moment of a ReLU net"
assert relu_results["xavier_uniform"][0][-1] < 1e-4

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), sharey=True)
for name, (fwd, bwd) in results.items():
    axes[0].semilogy(fwd, "o-", ms=3, label=name)
    axes[1].semilogy(bwd, "o-", ms=3, label=name)
for name, (fwd, _) in relu_results.items():
    axes[2].semilogy(fwd, "o-", ms=3, label=name, color=f"C{INITS.index(name)}")
axes[0].set_title("forward: var of the signal after layer l")
axes[1].set_title("backward: var of dL/dx, l layers below the top")
axes[2].set_title("ReLU net: second moment after layer l")
for ax in axes:
    ax.set_xlabel("layers")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_ylim(1e-10, 1e10)
axes[0].legend(fontsize=8)
axes[2].legend(fontsize=8)
fig.tight_layout()
print(lesson.savefig(fig, "04_variance_through_depth"))

# %% [markdown]
# ## 3. Whitened inputs, Xavier weights, and still ill-conditioned
# Lecture 004's experiment: a deep linear network with d = 32 inputs, inputs whitened (their
# covariance is exactly I; we whiten with `minidl.data.ZCAWhiten`), Xavier weights, zero
# biases. We look at the eigenvalues of the covariance of the signals after each of the
# first five layers. The plot should show the spectrum spreading layer after layer: a few
# directions carry the signal, others fade -- the condition number grows by orders of
# magnitude, although every variance is still ~1. (Past ~1e12 the smallest eigenvalues
# reach the rounding level of float64, so the last layers' numbers are lower bounds.)
#
# Why: the signals are multiplied by one random matrix after another (each layer draws
# its own). Even one square d x d Gaussian matrix stretches some directions far more than
# others (its singular values spread from near 0 to about 2 sqrt(d) times the weights'
# standard deviation), and a product of independent ones spreads them further with every
# factor: like the power method, though not with one matrix repeated, the signals turn
# towards a few dominant directions.

# %%
d, n = 32, 20000
raw = xp.asarray(rng.standard_normal((n, d))) @ xp.asarray(rng.standard_normal((d, d)))
h = ZCAWhiten(eps=0.0).fit_transform(raw)               # (n, d) whitened: covariance I
spectra, kappas = [], []
r = minidl.default_rng(3)
for layer_index in range(6):
    C = h.T @ h / n                                     # (d, d) covariance (zero mean)
    eig = xp.linalg.eigvalsh(C)[::-1]                   # (d,) descending
    spectra.append(minidl.to_numpy(eig))
    kappas.append(float(eig[0] / eig[-1]))
    print(f"after {layer_index} layers: mean variance {float(xp.trace(C)) / d:6.3f}, "
          f"condition number {kappas[-1]:10.3g}")
    h = Linear(d, d, bias=False, rng=r, init="xavier_uniform").forward(h)   # (n, d)
assert kappas[0] < 1 + 1e-6, "the inputs are white"
assert kappas[5] > 1e4, "within five layers the signal covariance is ill-conditioned"
assert all(b > a for a, b in zip(kappas, kappas[1:])), "and it gets worse with every layer"

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for k, eig in enumerate(spectra):
    axes[0].semilogy(range(1, d + 1), eig, "o-", ms=3, label=f"after {k} layers")
axes[0].set_xlabel("eigenvalue index")
axes[0].set_ylabel("eigenvalue of the signal covariance")
axes[0].set_title("deep linear net, d = 32, white inputs, Xavier")
axes[0].legend(fontsize=8)
axes[1].semilogy(range(6), kappas, "o-")
axes[1].set_xlabel("layers")
axes[1].set_ylabel("condition number")
axes[1].set_title("condition number of the signal covariance")
fig.tight_layout()
print(lesson.savefig(fig, "04_initialisation"))

# %% [markdown]
# If we froze the first five layers and trained the sixth by gradient descent, its
# Hessian would be this covariance (lesson 7), so lesson 2's rate (kappa-1)/(kappa+1)
# would be hopelessly close to 1. Batch normalisation (lesson 8) is one answer.
#
# ## Exercises
# 1. Repeat section 2 with widths alternating 128 and 512. Xavier's per-layer forward
#    factor is then 2 N_x / (N_x + N_y), 0.4 and 1.6 in turn: predict the variance after
#    20 layers and measure it. None of the five initialisers keeps the forward variance
#    exactly here: which var(w) would, and what would it do to the backward variance?
# 2. Put `Tanh` between the layers of section 2 and compare Xavier with orthogonal and
#    sparse initialisation over 50 layers. Why is the sparse init's large weight variance
#    less harmful with tanh than in a linear net?
# 3. In section 3, replace Xavier by orthogonal weights. What happens to the condition
#    number, and why is a product of orthogonal matrices special?
