# %% [markdown]
# # Lesson 11: Mini-Block Fisher (MBF) and Shampoo -- between Adam and K-FAC
#
# Seed: 003, A. Bahamou, D. Goldfarb, Y. Ren, "A Mini-Block Fisher Method for Deep Neural
# Networks" (AISTATS 2023). Second-order methods such as K-FAC and Shampoo precondition
# each layer's gradient with an approximation of that layer's whole block of the
# empirical Fisher F = E[g g^T]; Adam uses only its diagonal (and a square root). MBF sits
# in between: each layer's block is approximated by many small **mini-blocks**, one per
# output neuron of a dense layer ([W[o, :], b[o]]), one per (filter, channel) of a
# convolution. The paper motivates it with two measurements, which we repeat with minidl:
#
# 1. **Heat-map of the inverse empirical Fisher** of a layer: the per-neuron mini-blocks
#    on its diagonal hold far more of its weight than their share of the entries.
# 2. **Cosine similarity** of each method's direction with the direction of the exact
#    block-diagonal Fisher (BDF: one dense damped EF block per layer), along the BDF
#    trajectory, on the 256-20-20-20-20-20-10 tanh net and down-scaled (16x16) MNIST. The
#    paper reports MBF's cosine mostly at 0.6-0.7, always above SGD-m's and Adam's, usually
#    below K-FAC's and Shampoo's.
#
# Then (3) a short optimizer race on an MNIST autoencoder.
#
# Run: `python lessons/11_mini_block_fisher_shampoo.py` (`MINIDL_FAST=1`: fewer steps).

# %%
import warnings

import matplotlib.pyplot as plt

import minidl
from minidl import data, methods, models
from minidl.layers import AvgPool2d, Linear, Sequential
from minidl.lesson import FAST, savefig
from minidl.lesson import mnist as lesson_mnist
from minidl.losses import BCEWithLogits, SoftmaxCrossEntropy
from minidl.optim import SGD, Adam
from minidl.precond import BDF, KFAC, MBF, Shampoo
from minidl.precond.bdf import cosine_similarity

xp = minidl.xp()
warnings.simplefilter("ignore", category=minidl.precond.CoverageWarning)

# Down-scaled MNIST as in Martens & Grosse (2015): pad 28x28 to 32x32, average 2x2 -> 16x16.
n_train = 5000 if FAST else 20000
X28, Y, _, _ = lesson_mnist(n_train, 1, flatten=False)        # (n, 1, 28, 28) in [0, 1]
pool = AvgPool2d(2)
X16 = pool(xp.pad(X28, ((0, 0), (0, 0), (2, 2), (2, 2))))    # (n, 1, 16, 16)
X16 = X16.reshape(n_train, 256)                      # (n_train, 256) values in [0, 1]
print(f"{n_train} MNIST digits, down-scaled to 16x16")

# %% [markdown]
# ## 1. Following the BDF trajectory, and every method's direction on the way
# At every step we compute the mini-batch gradient once, then let each method turn that
# same gradient into its direction:
#
# * **BDF** (`minidl.precond.BDF`, stat_decay 0.9, damping 1e-3): the reference;
# * **MBF**, **K-FAC** (empirical Fisher), **Shampoo**: the preconditioners, each keeping
#   its own statistics along the way (statistics and inverses refreshed every step);
# * **SGD-m** and **Adam**: the optimizers' steps, taken on shadow copies of the network
#   that hold the same weights and gradient (direction = -(step) / lr).
#
# The network then steps along the BDF direction (SGD, lr 0.05). BDF keeps a dense
# p x p block per layer; the first layer's block would be 5,140 x 5,140, too slow to
# invert every step on two cores, so -- as the paper shows only the middle four layers --
# BDF covers the middle four layers and the first and last layers take the plain gradient.
# **Expected plot:** per layer, the cosines of K-FAC and Shampoo highest, MBF in the
# middle, SGD-m and Adam lowest.

# %%
ce = SoftmaxCrossEntropy()
sizes = [256, 20, 20, 20, 20, 20, 10]
net = models.mlp(sizes, activation="tanh", rng=minidl.default_rng(0))
linears = [layer for layer in net.layers if isinstance(layer, Linear)]
middle = Sequential(*linears[1:5])                   # the same layer objects, not a copy
preconds = {"MBF": MBF(net, damping=3e-3, T2=1, kl_clip=None),
            "K-FAC": KFAC(net, loss=ce, damping=1e-3, T1=1, T2=1, kl_clip=None),
            "Shampoo": Shampoo(net),
            "BDF": BDF(middle, damping=1e-3, stat_decay=0.9, loss=ce)}
shadows = {name: models.mlp(sizes, activation="tanh", rng=minidl.default_rng(0))
           for name in ("SGD-m", "Adam")}
shadow_opts = {"SGD-m": SGD(shadows["SGD-m"], lr=1.0, momentum=0.9),
               "Adam": Adam(shadows["Adam"], lr=1.0)}
opt = SGD(net, lr=0.05)


def copy_grads(layers):
    return [{key: g.copy() for key, g in layer.grads.items()} for layer in layers]


steps = 60 if FAST else 400
cosines = {name: [] for name in ("K-FAC", "Shampoo", "MBF", "SGD-m", "Adam")}
loader = data.DataLoader(X16, Y, 100, rng=minidl.default_rng(1))
k = 0
while k < steps:
    for xb, yb in loader:
        ce.forward(net(xb), yb)
        net.backward(ce.backward())
        raw = copy_grads(linears)                    # the mini-batch gradient
        directions = {}
        for name, pre in preconds.items():           # BDF last: its direction stays
            for layer, g in zip(linears, raw):
                layer.grads = {key: v.copy() for key, v in g.items()}
            pre.step()
            directions[name] = copy_grads(linears)
        for name, shadow in shadows.items():
            shadow_linears = [layer for layer in shadow.layers if isinstance(layer, Linear)]
            before = []
            for layer, twin, g in zip(linears, shadow_linears, raw):
                for key in layer.params:
                    twin.params[key][...] = layer.params[key]
                twin.grads = {key: v.copy() for key, v in g.items()}
                before.append({key: p.copy() for key, p in twin.params.items()})
            shadow_opts[name].step()                 # lr = 1: the step is -direction
            directions[name] = [{key: b[key] - twin.params[key] for key in b}
                                for b, twin in zip(before, shadow_linears)]
        for name in cosines:
            cosines[name].append([cosine_similarity(directions[name][i], directions["BDF"][i])
                                  for i in range(1, 5)])           # the middle four layers
        opt.step()                                   # along BDF (middle), gradient (ends)
        k += 1
        if k == steps:
            break

cos = {name: xp.asarray(values) for name, values in cosines.items()}   # (steps, 4) each
skip = 10                                            # the statistics' first steps
median = {name: [float(xp.median(c[skip:, j])) for j in range(4)] for name, c in cos.items()}
print("median cosine with the BDF direction, layers 2-5 (after the first 10 steps):")
for name, values in median.items():
    print(f"  {name:<8} " + "  ".join(f"{v:.2f}" for v in values))
in_band = float(((cos["MBF"][skip:] >= 0.6) & (cos["MBF"][skip:] <= 0.7)).mean())
print(f"MBF cosines within 0.6-0.7: {in_band:.0%} of (step, layer) pairs")
for j in range(4):
    assert median["MBF"][j] > max(median["SGD-m"][j], median["Adam"][j]), \
        f"layer {j + 2}: MBF should be closer to BDF than SGD-m and Adam"
mean = {name: sum(values) / 4 for name, values in median.items()}
assert mean["MBF"] < min(mean["K-FAC"], mean["Shampoo"]), "MBF between first and second order"
# what we measured instead of the paper's band (see below): not mostly inside 0.6-0.7, and
# lower for the layers further from the output
assert in_band < 0.5, f"MBF's cosine is mostly inside 0.6-0.7 now ({in_band:.0%}): update the text"
assert median["MBF"][3] > median["MBF"][0] + 0.1, "MBF's cosine should fall from layer 5 to 2"

# %% [markdown]
# **Measured vs the paper:** the ordering holds on every middle layer: K-FAC and Shampoo
# closest to BDF, then MBF, then SGD-m and Adam. MBF's cosine is not "mostly 0.6-0.7"
# here: it falls from ~0.65-0.7 at layer 5 (near the output) to ~0.35-0.4 at layer 2; the print
# above gives the share of its values inside the paper's band. We assert the ordering,
# not the band.
#
# ## 2. The inverse empirical Fisher of one layer
# BDF keeps each layer's exact EF block (the moving average, `state[i]["F"]`). We take the
# block of layer 2 (20 neurons x 20 inputs + bias = 420 parameters) at the end of the run,
# invert it with the same damping, reorder its parameters neuron by neuron
# ([W[o, :], b[o]] for o = 1..20, MBF's mini-blocks) and draw |F^{-1}|. **Expected plot:**
# a bright block diagonal of 20 squares of 21 x 21: the mini-blocks, 5% of the entries
# holding about a third of the weight (not most of it: the print below). (The diagonal
# stripes outside them link the same input j across different neurons: the input-side
# structure that K-FAC's factor A captures and MBF drops.)

# %%
F2 = preconds["BDF"].state[0]["F"]                   # (420, 420) flat order: W then b
n_out, n_in = linears[1].params["W"].shape
order = xp.concatenate([xp.concatenate([o * n_in + xp.arange(n_in), xp.asarray([n_out * n_in + o])])
                        for o in range(n_out)])      # (420,) neuron by neuron
F_inv = xp.linalg.inv(F2 + 1e-3 * xp.eye(F2.shape[0]))[xp.ix_(order, order)]
mask = xp.kron(xp.eye(n_out), xp.ones((n_in + 1, n_in + 1))) > 0     # the mini-blocks
mass = float(xp.abs(F_inv)[mask].sum() / xp.abs(F_inv).sum())
share = float(mask.mean())
print(f"mini-blocks hold {share:.0%} of the entries of F^-1 and {mass:.0%} of its weight "
      f"(sum of |entries|)")
assert mass > 3 * share, "the mini-blocks should hold far more than their share of the weight"

# %% [markdown]
# ## 3. A short race on an MNIST autoencoder
# The paper's autoencoder experiments (Hinton & Salakhutdinov's 784-1000-500-250-30
# network, batch 1,000, 500 seconds per method) are far beyond a lesson on two cores.
# Ours: the 16x16 digits through a 256-128-64-16-64-128-256 ReLU autoencoder with a
# sigmoid cross-entropy loss (`BCEWithLogits`), batch 100; each method built by
# `minidl.methods.build` with its learning rate the best of a small grid measured on this
# problem over 400 steps (SGD-m {0.01, 0.03, 0.1, 0.3, 1}, Adam {1e-3, 3e-3, 1e-2, 3e-2},
# K-FAC {0.01, 0.03, 0.1, 0.3, 1 (diverges)}, Shampoo {0.01, 0.03, 0.1, 0.3}, MBF {1e-4,
# 3e-4, 1e-3, 3e-3, 1e-2, 3e-2}), and the preconditioners' statistics refreshed every step
# and their inverses every 10 (Shampoo's roots every 20) steps. (With the library's K-FAC
# default T2 = 100 the factors stay at their identity start for the first 100 steps, and
# K-FAC equals SGD-m for most of a race this short.) K-FAC's and MBF's KL clipping is
# off (`kl_clip=None`), as it was in the grid search the rates come from.
# **Expected plot (paper):** MBF, K-FAC and Shampoo below SGD-m and Adam.

# %%
bce = BCEWithLogits()
race_lr = {"momentum": 0.3, "adam": 1e-2, "kfac": 0.3, "shampoo": 0.3, "mbf": 1e-2}
race_kw = {"kfac": dict(T1=1, T2=10, kl_clip=None), "shampoo": dict(T2=20),
           "mbf": dict(T2=10, kl_clip=None)}
race_epochs = 3 if FAST else 10
race = {}
for name, lr in race_lr.items():
    model = models.mlp([256, 128, 64, 16, 64, 128, 256], rng=minidl.default_rng(0))
    opt, pre = methods.build(name, model, bce, lr=lr, precond_kw=race_kw.get(name))
    losses = []
    for epoch in range(race_epochs):
        for xb, _ in data.DataLoader(X16, X16, 100, rng=minidl.default_rng(1)):
            losses.append(bce.forward(model(xb), xb))
            model.backward(bce.backward())
            if pre is not None:
                pre.step()
            opt.step()
    race[name] = xp.asarray(losses)
    print(f"{name:<9} lr {lr:<7g} training loss: first 50 steps {float(race[name][:50].mean()):.4f}"
          f", last 50 steps {float(race[name][-50:].mean()):.4f}")
final = {name: float(v[-50:].mean()) for name, v in race.items()}
ranking = sorted(final, key=final.get)
print("ranking by the mean loss of the last 50 steps: " + " < ".join(ranking))
assert final["mbf"] < final["momentum"], "MBF should beat SGD-m on the autoencoder"
if not FAST:                                         # 2,000 steps: the paper's ranking
    assert final["mbf"] < final["adam"], "in the longer race MBF should beat Adam"

# %% [markdown]
# **Measured vs the paper:** it depends on the length of the race. In fast mode (150
# steps) MBF ends below SGD-m but Adam ends lowest of all (adam < mbf < kfac < shampoo <
# momentum): early on, Adam's per-coordinate scaling wins. In full mode (20,000 digits,
# 2,000 steps) we measured the paper's ranking: Shampoo 0.1122 < MBF 0.1148 < K-FAC 0.1163
# < Adam 0.1219 < SGD-m 0.1445. So we assert MBF < SGD-m in both modes and MBF < Adam
# only in the full run. The paper's own setting (the full-size autoencoder) is the last
# exercise below.

# %%
fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, 1]})
absF = xp.abs(F_inv)
axes[0].imshow(minidl.to_numpy(absF), cmap=plt.get_cmap("magma", 9), interpolation="nearest",
               vmin=0, vmax=float(xp.quantile(absF, 0.995)))
axes[0].set(title=f"|EF^-1|, layer 2, neuron by neuron\n({mass:.0%} of the weight in "
            f"the mini-blocks)", xticks=[], yticks=[])
for j, ax in zip((0, 3), axes[1:3]):
    for name, c in cos.items():
        smooth = xp.convolve(c[:, j], xp.ones(5) / 5, mode="valid")
        ax.plot(minidl.to_numpy(smooth), label=name)
    ax.axhspan(0.6, 0.7, color="gray", alpha=0.15, label="paper: MBF 0.6-0.7")
    ax.set(xlabel="step along the BDF trajectory", ylabel="cosine with BDF (5-step mean)",
           ylim=(0, 1), title=f"Layer {j + 2} of 256-20-20-20-20-20-10 tanh")
axes[1].legend(fontsize=8)
for name, v in race.items():
    smooth = xp.convolve(v, xp.ones(20) / 20, mode="valid")
    axes[3].plot(minidl.to_numpy(smooth), label=f"{name} (lr {race_lr[name]:g})")
axes[3].set(xlabel="step", ylabel="training loss (BCE, 20-step mean)", yscale="log",
            title="Autoencoder 256-128-64-16-64-128-256")
axes[3].legend(fontsize=8)
fig.tight_layout()
print("saved", savefig(fig, "11_mini_block_fisher_shampoo", dpi=70))

# %% [markdown]
# ## Exercises
# 1. Add MBF-True (`MBF(net, fisher="true", loss=ce, rng=minidl.default_rng(0))`) to part 1.
#    Is its cosine close to MBF's, as the paper finds?
# 2. Vary MBF's damping (1e-4 ... 1e-1). How does its cosine with BDF move between the
#    SGD-m curve and the K-FAC curve? Explain with d ~ g / lambda for small g.
# 3. (Long; a GPU helps.) Run the race on the paper's network, `models.autoencoder("mnist")`
#    on full 28x28 MNIST with batch 1,000, for the same wall-clock time per method.
