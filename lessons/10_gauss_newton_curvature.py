# %% [markdown]
# # Lesson 10: Gauss-Newton and the structure of curvature
#
# Seed: 002, A. Botev, H. Ritter, D. Barber, "Practical Gauss-Newton optimisation for deep
# learning", ICML 2017 (slides). For a layer h_l = W_l a_{l-1}, a_l = f(h_l), the
# Hessian block of one example's loss E with respect to W_l is
#
#     H_{W_l} = (a_{l-1} a_{l-1}^T) kron Hcal_l     (row-major vec: Hcal_l kron a a^T),
#
# and the pre-activation Hessian Hcal_l obeys the backward recursion
#
#     Hcal_l = B_l W_{l+1}^T Hcal_{l+1} W_{l+1} B_l + D_l,
#     B_l = diag(f'(h_l)),  D_l = diag(f''(h_l) dE/da_l).
#
# Dropping D everywhere gives the Gauss-Newton (GN) matrix G = J^T H_L J, which is PSD
# whenever the loss is convex in the network output. For ReLU nets f'' = 0, so D = 0:
# each layer's diagonal Hessian block *is* its GN block, hence PSD, and the loss has no
# smooth local maxima or saddles within one layer's weights. KFLR, KFRA and K-FAC
# approximate these blocks by Kronecker products G_bar kron A.
#
# We check with minidl (`minidl.curvature` gives the exact matrices, no autodiff):
#
# 1. the recursion against the exact Hessian block (tanh net, where D != 0);
# 2. GN vs Hessian for a ReLU net: equal diagonal blocks, PSD blocks, an indefinite whole;
# 3. KFLR/KFRA/K-FAC blocks against the exact GGN (and empirical Fisher) vs batch size:
#    at batch size 1, KFLR = KFRA = the exact GGN block;
# 4. loss slices along random directions (the paper's Figure 1).
#
# Run: `python lessons/10_gauss_newton_curvature.py` (`MINIDL_FAST=1`: fewer batch sizes).

# %%
import warnings

import matplotlib.pyplot as plt

import minidl
from minidl import curvature
from minidl.curvature.flat import param_slices
from minidl.layers import Linear, ReLU, Sequential, Tanh
from minidl.lesson import FAST, savefig
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.precond import KFAC, KFLR, KFRA

minidl.set_default_dtype("float64")
xp = minidl.xp()
rng = minidl.default_rng(0)
D_in, D_h1, D_h2, K = 6, 5, 4, 3


def tiny_mlp(activation, seed=1):
    r = minidl.default_rng(seed)
    return Sequential(Linear(D_in, D_h1, rng=r), activation(), Linear(D_h1, D_h2, rng=r),
                      activation(), Linear(D_h2, K, rng=r))


def block(M, model, layer, key="W"):
    """The diagonal block of flat-order matrix M belonging to layer.params[key]."""
    for _, lay, k, start, stop, _ in param_slices(model):
        if lay is layer and k == key:
            return M[start:stop, start:stop]
    raise KeyError(key)


crit = SoftmaxCrossEntropy()
X = xp.asarray(rng.standard_normal((256, D_in)))                  # (256, D_in)
Y = xp.asarray(rng.integers(0, K, 256))                           # (256,) labels

# %% [markdown]
# ## 1. The block-diagonal Hessian recursion, checked on one example
# A 6-5-4-3 tanh MLP and cross-entropy. We run one forward and backward pass, then walk
# back from the loss Hessian H_L = `loss.hessian()[0]` with the recursion, reading f' and
# f'' from the activation layers (`df()`, `d2f()`) and dE/da from the backward pass.
# Each layer's W-block Hcal_l kron a a^T must equal the block of `curvature.hessian`.

# %%
model = tiny_mlp(Tanh)
x1, y1 = X[:1], Y[:1]
crit.forward(model(x1), y1)
douts = {}                                           # dE/d(output) of every layer
d = crit.backward()
for layer in reversed(model.layers):
    douts[id(layer)] = d
    d = layer.backward(d)

Hcal = crit.hessian()[0]                             # (K, K) at the logits, h_L
errors = []
H_exact = curvature.hessian(model, crit, x1, y1)     # (P, P) flat order
layers = model.layers
for idx in range(len(layers) - 1, -1, -2):           # Linear layers from the top: 4, 2, 0
    lin = layers[idx]
    a_prev = lin.cache["x"][0]                       # (in,) the layer's input
    recursion_block = xp.kron(Hcal, xp.outer(a_prev, a_prev))     # row-major vec of W
    err = float(xp.abs(recursion_block - block(H_exact, model, lin)).max())
    errors.append(err)
    print(f"Linear {idx // 2 + 1}: recursion vs exact Hessian block, max diff {err:.1e}")
    if idx == 0:
        break
    act = layers[idx - 1]                            # the activation below this Linear
    B = xp.diag(act.df()[0])                         # (D, D) f'(h)
    Dm = xp.diag(act.d2f()[0] * douts[id(act)][0])   # (D, D) f''(h) dE/da
    Hcal = B @ lin.params["W"].T @ Hcal @ lin.params["W"] @ B + Dm
assert max(errors) < 1e-12

# %% [markdown]
# ## 2. Gauss-Newton vs Hessian
# Now ReLU. On a batch of 64 examples we compute the exact Hessian
# (`curvature.hessian`) and Gauss-Newton matrix (`curvature.ggn`). **Expected plot:** the
# two matrices agree on the layer blocks along the diagonal (cyan lines separate the
# layers) and differ off them: the difference lives only in the cross-layer blocks (and
# there only where a weight meets the output gradient, the sparse stripes); the GN matrix
# is PSD, the Hessian has negative eigenvalues. With tanh the diagonal blocks differ as
# well (the D term).

# %%
xb, yb = X[:64], Y[:64]
results = {}
for name, act in (("ReLU", ReLU), ("tanh", Tanh)):
    net = tiny_mlp(act)
    H = curvature.hessian(net, crit, xb, yb)         # (P, P)
    G = curvature.ggn(net, crit, xb, yb)             # (P, P)
    linears = [lay for lay in net.layers if isinstance(lay, Linear)]
    diag_diff = max(float(xp.abs(block(H - G, net, lay)).max()) for lay in linears)
    block_min_eig = min(float(xp.linalg.eigvalsh(block(H, net, lay))[0]) for lay in linears)
    results[name] = dict(H=H, G=G, diag_diff=diag_diff, block_min_eig=block_min_eig,
                         H_min=float(xp.linalg.eigvalsh(H)[0]),
                         G_min=float(xp.linalg.eigvalsh(G)[0]),
                         off=float(xp.abs(H - G).max()))
    print(f"{name}: max |H - G| on the W-blocks {diag_diff:.1e}, "
          f"anywhere {results[name]['off']:.1e};"
          f" smallest eigenvalue of a W-block of H {block_min_eig:.1e}; of H "
          f"{results[name]['H_min']:.1e}; of G {results[name]['G_min']:.1e}")
relu, tanh = results["ReLU"], results["tanh"]
assert relu["diag_diff"] < 1e-12 < 1e-4 < relu["off"], "ReLU: same layer blocks, not the rest"
assert relu["block_min_eig"] > -1e-12, "ReLU: every layer's Hessian block is PSD"
assert relu["H_min"] < -1e-4, "the whole Hessian is indefinite"
assert min(relu["G_min"], tanh["G_min"]) > -1e-12, "GN is PSD"
assert tanh["diag_diff"] > 1e-4, "tanh: the D term changes the layer blocks"

# %% [markdown]
# ## 3. Kronecker-factored blocks vs the exact GGN, by batch size
# For each Linear layer minidl's KFLR, KFRA and K-FAC keep factors (G_bar, A) with
# block ~ G_bar kron A in the row-major vec of [W | b]. We take one step with
# `stat_decay=0` (this batch's factors only) and compare each block with the exact one:
# KFLR and KFRA with the GGN block, K-FAC (empirical Fisher version) with the empirical
# Fisher block (`curvature.empirical_fisher`). The approximation E[a a^T kron Gcal] ~
# E[a a^T] kron E[Gcal] is exact for one example. **Expected plot:** all three errors are
# ~1e-16 at batch size 1 and of order 0.1-1 for every larger batch on this tiny net
# (random inputs and labels: the examples' curvatures have little in common). KFRA also
# averages the Jacobians inside its recursion; we expected that to cost it accuracy
# against KFLR, but measured the two within a few percent of each other here.


# %%
def wb_order(model, layer):
    """Flat indices of [W | b] in row-major order (how the Kronecker factors vec them)."""
    (start_W, stop_W), (start_b, _) = [(s, e) for _, lay, k, s, e, _ in param_slices(model)
                                       if lay is layer]
    F, m_in = layer.params["W"].shape
    idx = xp.arange(start_W, stop_W).reshape(F, m_in)
    return xp.concatenate([idx, start_b + xp.arange(F)[:, None]], axis=1).ravel()


def factor_errors(N):
    net = tiny_mlp(ReLU)
    x, y = X[:N], Y[:N]
    exact = {"GGN": curvature.ggn(net, crit, x, y),
             "EF": curvature.empirical_fisher(net, crit, x, y)}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        methods = {"KFLR": (KFLR(net, loss=crit, stat_decay=0.0), "GGN"),
                   "KFRA": (KFRA(net, loss=crit, stat_decay=0.0), "GGN"),
                   "K-FAC (empirical)": (KFAC(net, loss=crit, fisher="empirical",
                                                stat_decay=0.0, factor_init="identity",
                                                kl_clip=None, T1=1, T2=1), "EF")}
    for name, (pre, ref) in methods.items():
        crit.forward(net(x), y)
        net.backward(crit.backward())
        pre.step()
        errs = []
        for i, lay in enumerate(pre.layers):
            s = pre.state[i]
            approx = xp.kron(s["G"], s["A"])                       # (F m, F m)
            idx = wb_order(net, lay)
            true = exact[ref][xp.ix_(idx, idx)]
            errs.append(float(xp.linalg.norm(approx - true) / xp.linalg.norm(true)))
        out[name] = max(errs)
    return out


batch_sizes = [1, 4, 32] if FAST else [1, 2, 4, 8, 16, 32, 64, 128]
rel_err = {N: factor_errors(N) for N in batch_sizes}
for N, errs in rel_err.items():
    print(f"N = {N:>3}: " + "   ".join(f"{k} {v:.1e}" for k, v in errs.items()))
assert all(v < 1e-12 for v in rel_err[1].values()), "batch size 1: the blocks are exact"
big = rel_err[batch_sizes[-1]]
assert all(v > 1e-3 for v in big.values()), "larger batches: only an approximation"
print(f"N = {batch_sizes[-1]}: KFRA's error is {big['KFRA'] / big['KFLR']:.2f} times KFLR's")

# %% [markdown]
# (K-FAC's empirical Fisher is a different matrix from the GGN: for cross-entropy it
# equals the GGN only in expectation over labels sampled from the model, which is what
# `KFAC(fisher="true")` estimates.)
#
# ## 4. Loss slices along random directions
# The paper's Figure 1: a 2-layer ReLU net with square loss, E along W_1 = W_1* + xU + yV
# (two random directions within layer 1), along two directions within W_2, and along
# W_1 = W_1* + xU, W_2 = W_2* + yV jointly. Within one layer the loss is piecewise a
# convex quadratic, so any local maximum must sit on a kink (where a ReLU switches).
# We test it on the grid: a point larger than its 8 neighbours, where the activation
# pattern is the same at all 9 points (so the loss is smooth there), would be a smooth
# local maximum. **Expected plot:** contour maps of bowls and valleys, some with creases
# (kinks) and, in the joint slice, saddle shapes; no smooth peak.

# %%
mse = MSELoss()
net2 = Sequential(Linear(4, 8, rng=minidl.default_rng(3)), ReLU(),
                  Linear(8, 2, rng=minidl.default_rng(4)))
X2 = xp.asarray(rng.standard_normal((50, 4)))                     # (50, 4)
Y2 = xp.asarray(rng.standard_normal((50, 2)))                     # (50, 2)
W1, W2 = net2.layers[0].params["W"], net2.layers[2].params["W"]
W1_0, W2_0 = W1.copy(), W2.copy()
U1, V1 = (xp.asarray(rng.standard_normal(W1.shape)) for _ in range(2))
U2, V2 = (xp.asarray(rng.standard_normal(W2.shape)) for _ in range(2))
n_grid = 31 if FAST else 61
grid = xp.linspace(-2.0, 2.0, n_grid)
slices = {"within W1": lambda a, b: (W1_0 + a * U1 + b * V1, W2_0),
          "within W2": lambda a, b: (W1_0, W2_0 + a * U2 + b * V2),
          "W1 and W2 jointly": lambda a, b: (W1_0 + a * U1, W2_0 + b * V2)}
surfaces, smooth_maxima = {}, {}
for name, weights in slices.items():
    E = xp.zeros((n_grid, n_grid))
    pattern = [[None] * n_grid for _ in range(n_grid)]
    for i, a in enumerate(grid):
        for j, b in enumerate(grid):
            W1[...], W2[...] = weights(float(a), float(b))
            E[i, j] = mse.forward(net2(X2), Y2)
            pattern[i][j] = (net2.layers[1].df() > 0).tobytes()    # ReLU on/off pattern
    count = 0
    for i in range(1, n_grid - 1):
        for j in range(1, n_grid - 1):
            nbrs = E[i - 1:i + 2, j - 1:j + 2]
            is_max = float(E[i, j]) >= float(nbrs.max()) and int((nbrs == E[i, j]).sum()) == 1
            same = all(pattern[i + di][j + dj] == pattern[i][j]
                       for di in (-1, 0, 1) for dj in (-1, 0, 1))
            count += int(is_max and same)
    surfaces[name], smooth_maxima[name] = E, count
    print(f"{name}: smooth strict local maxima on the {n_grid}x{n_grid} grid: {count}")
W1[...], W2[...] = W1_0, W2_0
assert sum(smooth_maxima.values()) == 0

# %%
fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
names = ["|Hessian|", "|Gauss-Newton|", "|H - GN|"]
bounds = [s for _, _, key, s, _, _ in param_slices(tiny_mlp(ReLU)) if key == "W"]
for ax, name, M in zip(axes, names, [relu["H"], relu["G"], relu["H"] - relu["G"]]):
    im = ax.imshow(minidl.to_numpy(xp.log10(xp.abs(M) + 1e-8)), cmap=plt.get_cmap("magma", 7),
                   vmin=-6, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="log10 |entry|")
    for b in bounds[1:]:                              # layer boundaries
        ax.axhline(b - 0.5, color="c", lw=0.6)
        ax.axvline(b - 0.5, color="c", lw=0.6)
    ax.set(title=f"ReLU net, 64 examples: log10 {name}", xticks=[], yticks=[])
for name in rel_err[1]:
    axes[3].loglog(batch_sizes, [max(rel_err[N][name], 1e-16) for N in batch_sizes], "o-",
                   label=name + (" vs EF" if "K-FAC" in name else " vs GGN"))
axes[3].set(xlabel="batch size N", ylabel="relative error (max over layers)",
            title="Kronecker-factored block vs the exact block")
axes[3].legend(fontsize=8)
fig.tight_layout()
print("saved", savefig(fig, "10_gauss_newton_curvature", dpi=80))

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
g = minidl.to_numpy(grid)
for ax, (name, E) in zip(axes, surfaces.items()):
    logE = minidl.to_numpy(xp.log10(E)).T
    cs = ax.contourf(g, g, logE, 12, cmap="viridis", antialiased=False)
    ax.contour(g, g, logE, 15, colors="w", linewidths=0.4)
    fig.colorbar(cs, ax=ax)
    ax.set(title=f"log10 E along {name} ({smooth_maxima[name]} smooth maxima)",
           xlabel="x", ylabel="y")
fig.tight_layout()
print("saved", savefig(fig, "10_loss_slices", dpi=80))

# %% [markdown]
# ## Exercises
# 1. Repeat part 4 with tanh instead of ReLU. Do smooth local maxima appear within one
#    layer? (The D term of the recursion is no longer zero.)
# 2. In part 3 use `KFAC(fisher="true", n_samples=...)` and compare with the GGN block.
#    How many samples does it take to beat KFRA at batch size 32?
# 3. Take a Newton step -H^{-1} g and a GN step -G^{-1} g (with a little damping) on the
#    ReLU net of part 2 from a random point. Can either of them increase the loss?
#    Which one, and why?
