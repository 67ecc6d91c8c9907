# %% [markdown]
# # Lesson 5: loss surfaces, critical points and the Taylor model of a step
#
# *Seeds: lecture 001 (Ghauch and Ghadikolaei: loss surface of DNNs, saddle points,
# "analysis of gradient descent", the optimal step) and lecture 004 (Ilin: quadratic
# approximation, the Hessian and critical points).*
#
# Around a point w_t the loss is approximately quadratic,
#
#     L(w) ~ L(w_t) + g'(w - w_t) + 1/2 (w - w_t)' H (w - w_t),
#
# with g the gradient and H the Hessian. The eigenvalues of H tell the shape: at a critical
# point (g = 0) all positive is a minimum, all negative a maximum, mixed signs a saddle.
# For a gradient step w_t - alpha g the model predicts the change
#
#     Delta(alpha) ~ -alpha g'g + alpha^2 / 2 g'Hg,
#
# best at alpha* = g'g / g'Hg and turning positive (the step *raises* the loss) at
# 2 alpha*. We compute H exactly with minidl's R-operator passes (`minidl.curvature`:
# `hessian`, `hvp`, `optimal_step`), no autodiff, and check these statements on real
# networks.
#
# Run it top to bottom: `python lessons/05_loss_surfaces.py`.

# %%
import math

import matplotlib.pyplot as plt

import minidl
from minidl import curvature, lesson
from minidl.data import DataLoader
from minidl.layers import AvgPool2d, Flatten, Linear, Sequential, Tanh
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.optim import SGD
from minidl.train import fit

minidl.set_default_dtype("float64")
xp = minidl.xp()
rng = minidl.default_rng(0)

# %% [markdown]
# ## 1. The zero-init saddle of a deep linear network
# A two-layer linear network y = W2 W1 x (no biases), fitted by MSE to a linear teacher.
# At W1 = W2 = 0 every gradient is zero -- dL/dW1 = W2' (...) and dL/dW2 = (...) W1' --
# so w = 0 is a critical point. The Hessian there has eigenvalues in +- pairs: a saddle.
# Gradient descent started *exactly* there never moves; started a hair away it escapes
# along the negative-curvature directions, after a plateau.

# %%
d_in, d_hidden, d_out, n = 4, 3, 2, 200
x = xp.asarray(rng.standard_normal((n, d_in)))               # (n, 4)
teacher = xp.asarray(rng.standard_normal((d_in, d_out)))     # (4, 2)
y = x @ teacher                                              # (n, 2)
mse = MSELoss()


def deep_linear(scale, seed=1):
    r = minidl.default_rng(seed)
    net = Sequential(Linear(d_in, d_hidden, bias=False, rng=r),
                     Linear(d_hidden, d_out, bias=False, rng=r))
    for _, layer, key in net.parameters():
        layer.params[key] *= scale                            # scale 0: exactly zero
    return net


net = deep_linear(0.0)
L0, g0 = curvature.loss_and_grad(net, mse, x, y)
H0 = curvature.hessian(net, mse, x, y)                        # (18, 18)
eig0 = minidl.to_numpy(xp.linalg.eigvalsh(H0))
print(f"at w = 0: loss {L0:.3f}, |g| = {float(xp.linalg.norm(g0)):.1e}")
print("Hessian eigenvalues:", eig0.round(3))
assert float(xp.linalg.norm(g0)) == 0.0, "w = 0 is a critical point"
assert eig0.min() < -0.1 and eig0.max() > 0.1, "with eigenvalues of both signs: a saddle"
assert abs(eig0.sum()) < 1e-10, "they come in +- pairs (the trace is zero)"

# a three-layer linear net at zero is a flatter critical point: the Hessian vanishes
net3 = Sequential(Linear(d_in, 3, bias=False), Linear(3, 3, bias=False),
                  Linear(3, d_out, bias=False))
for _, layer, key in net3.parameters():
    layer.params[key][...] = 0.0
H3 = curvature.hessian(net3, mse, x, y)
print(f"three linear layers at w = 0: max |H_ij| = {float(abs(H3).max()):.1e} "
      "(a critical point that second-order information cannot classify)")
assert float(abs(H3).max()) == 0.0

# gradient descent from exactly 0, and from 1e-4 away
curves = {}
for scale in (0.0, 1e-4, 1e-2):
    net = deep_linear(scale)
    opt = SGD(net, lr=0.05)
    losses = []
    for _ in range(800):
        losses.append(mse.forward(net.forward(x), y))
        net.backward(mse.backward())
        opt.step()
    curves[scale] = losses
    if scale == 0.0:
        assert all(float(abs(layer.params["W"]).max()) == 0.0 for layer in net.leaves()), \
            "gradient descent cannot leave w = 0"
print(f"loss after {len(curves[0.0])} steps: from 0 {curves[0.0][-1]:.3f}, "
      f"from 1e-4 {curves[1e-4][-1]:.3g}, from 1e-2 {curves[1e-2][-1]:.3g}")
assert curves[0.0][-1] == curves[0.0][0]
assert curves[1e-4][-1] < 0.01 * curves[1e-4][0]

# %% [markdown]
# The plot shows the loss on the plane through w = 0 spanned by the Hessian's most
# negative and most positive eigenvectors: it should curve down along one axis and up
# along the other (a saddle), and the training curves should show the plateau whose
# length grows as the start gets closer to the saddle.

# %%
net = deep_linear(0.0)
lam, V = xp.linalg.eigh(H0)                                   # ascending, columns
v_neg, v_pos = V[:, 0], V[:, -1]                              # (18,), (18,)
ts = xp.linspace(-1.5, 1.5, 61)
surface = xp.zeros((len(ts), len(ts)))                        # (61, 61)
for i, a in enumerate(ts):
    for j, b in enumerate(ts):
        curvature.set_params(net, float(a) * v_neg + float(b) * v_pos)
        surface[j, i] = mse.forward(net.forward(x), y)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
T1, T2 = xp.meshgrid(ts, ts)
cs = axes[0].contourf(minidl.to_numpy(T1), minidl.to_numpy(T2), minidl.to_numpy(surface),
                      levels=30, cmap="viridis")
fig.colorbar(cs, ax=axes[0])
axes[0].plot(0, 0, "r*", ms=12)
axes[0].set_xlabel(f"along v_min (lambda = {float(lam[0]):.2f})")
axes[0].set_ylabel(f"along v_max (lambda = {float(lam[-1]):.2f})")
axes[0].set_title("loss around w = 0: a saddle")
for scale, losses in curves.items():
    axes[1].semilogy(losses, label=f"start {scale:g} away from 0")
axes[1].set_xlabel("gradient descent step")
axes[1].set_ylabel("MSE")
axes[1].set_title("plateaus near the saddle")
axes[1].legend(fontsize=8)
fig.tight_layout()
print(lesson.savefig(fig, "05_saddle"))

# %% [markdown]
# ## 2. Hessian eigenvalues of a real network during training
# A small tanh network on MNIST digits averaged down to 7 x 7 pixels (`AvgPool2d(4)`):
# 49-16-10, P = 970 parameters, on a fixed probe batch of 1000 training images. The full
# Hessian would take 970 Hessian-vector products per look; the Lanczos method
# (`curvature.lanczos`, 60 products) finds its extreme eigenvalues, which is what we
# track. For comparison we also track the largest eigenvalue of the Gauss-Newton matrix
# G = J' H_L J, the part of H that is positive semi-definite by construction.
#
# The plot should show the most negative and the most positive eigenvalues after every
# epoch. Textbooks often draw the Hessian becoming nearly positive semi-definite as
# training converges; we check how far that is true for this network.

# %%
x_img, y_img, _, _ = lesson.mnist(n_train=lesson.choose(None, 5000), n_test=1, flatten=False)
pool = AvgPool2d(4)
x_small = Flatten().forward(pool.forward(x_img))              # (N, 49)
x_small = (x_small - x_small.mean(axis=0)) / (x_small.std(axis=0) + 1e-8)
x_probe, y_probe = x_small[:1000], y_img[:1000]               # the batch for the Hessian
r = minidl.default_rng(4)
mlp = Sequential(Linear(49, 16, rng=r), Tanh(), Linear(16, 10, rng=r))
ce = SoftmaxCrossEntropy()
opt = SGD(mlp, lr=0.2)
loader = DataLoader(x_small, y_img, batch_size=100, rng=minidl.default_rng(5))
epochs = lesson.choose(12, 6)
track = {"epoch": [], "loss": [], "lambda_min": [], "lambda_top": [], "ggn_max": []}
for epoch in range(epochs + 1):
    if epoch > 0:
        fit(mlp, ce, opt, loader, epochs=1, log_every=0)
    ritz = curvature.lanczos(mlp, ce, x_probe, y_probe, minidl.default_rng(6), steps=60)
    ggn_top = curvature.top_eigenvalues(mlp, ce, x_probe, y_probe, minidl.default_rng(6),
                                        k=1, curvature="ggn")
    track["epoch"].append(epoch)
    track["loss"].append(ce.forward(mlp.forward(x_probe), y_probe))
    track["lambda_min"].append(float(ritz[0]))
    track["lambda_top"].append(ritz[::-1][:5].copy())
    track["ggn_max"].append(float(ggn_top[0]))
    print(f"epoch {epoch:2d}: loss {track['loss'][-1]:.3f}, Hessian lambda_min "
          f"{ritz[0]:+.4f}, lambda_max {ritz[-1]:.4f}, GGN lambda_max {ggn_top[0]:.4f}")
ratio = [-lo / top[0] for lo, top in zip(track["lambda_min"], track["lambda_top"])]
print(f"|lambda_min| / lambda_max: {ratio[0]:.2f} at the start, {ratio[-1]:.2f} after "
      f"{epochs} epochs")
assert track["lambda_min"][0] < 0, "at the random start the Hessian is indefinite"
assert ratio[-1] < 0.75 * ratio[0], "the negative curvature shrinks relative to the positive"

# %% [markdown]
# What we measured: the negative curvature shrinks relative to the positive, but it does
# not vanish -- after these epochs |lambda_min| is still a sizeable fraction of lambda_max
# (the ratio printed above: 0.17 in fast mode, 0.31 in full mode in our runs), so this
# network, not yet at a minimum of its training loss, still sits where the surface bends
# down in some directions. Note also that the Hessian's largest eigenvalue at the start is
# about twice the GGN's: the second-order terms of the network,
# sum_k dL/dz_k d^2 z_k / dtheta^2, are not negligible while the residuals are large.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
tops = xp.asarray(track["lambda_top"])                      # (epochs + 1, 5)
for i in range(tops.shape[1]):
    axes[0].plot(track["epoch"], minidl.to_numpy(tops[:, i]), "o-", ms=3, color="C0",
                 alpha=1 - 0.15 * i, label="5 largest (Hessian)" if i == 0 else None)
axes[0].plot(track["epoch"], track["lambda_min"], "o-", ms=3, color="C3",
             label="smallest (Hessian)")
axes[0].plot(track["epoch"], track["ggn_max"], "s--", ms=3, color="C2",
             label="largest (Gauss-Newton)")
axes[0].axhline(0, color="grey", lw=0.5)
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("eigenvalue")
axes[0].set_title("extreme Hessian eigenvalues during training")
axes[0].legend(fontsize=8)
axes[1].plot(track["epoch"], ratio, "o-")
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("|lambda_min| / lambda_max")
axes[1].set_title("how indefinite the Hessian is")
fig.tight_layout()
print(lesson.savefig(fig, "05_hessian_eigenvalues"))

# %% [markdown]
# ## 3. Does the Taylor model predict a real step?
# At the trained network of section 2 (and at its random start) we take the full-batch
# gradient g of the probe batch, compute g'Hg with one Hessian-vector product
# (`curvature.hvp`), and compare the model -alpha g'g + alpha^2/2 g'Hg with the measured
# change L(w - alpha g) - L(w) over a range of alpha. The plot should show the two curves
# together for small alpha, the minimum near alpha*, and the measured curve crossing zero
# near the predicted 2 alpha*.

# %%
def taylor_check(model, label):
    theta = curvature.flatten_params(model).copy()            # (P,)
    L_now, g = curvature.loss_and_grad(model, ce, x_probe, y_probe)
    gg = float(g @ g)
    gHg = float(g @ curvature.hvp(model, ce, x_probe, y_probe, g))
    alpha_star = curvature.optimal_step(model, ce, x_probe, y_probe)
    assert abs(alpha_star - gg / gHg) < 1e-9 * alpha_star
    alphas = xp.linspace(0.0, 3.0, 121) * alpha_star
    predicted = -alphas * gg + alphas ** 2 / 2 * gHg
    measured = []
    for a in alphas:
        curvature.set_params(model, theta - float(a) * g)
        measured.append(ce.forward(model.forward(x_probe), y_probe) - L_now)
    curvature.set_params(model, theta)
    measured = xp.asarray(measured)
    # relative error of the model for small steps: the neglected terms are O(alpha^3)
    # against a change of O(alpha), so it should fall like alpha^2
    small = alpha_star * xp.asarray([0.2, 0.1, 0.05, 0.025])
    rel = []
    for a in small:
        curvature.set_params(model, theta - float(a) * g)
        change = ce.forward(model.forward(x_probe), y_probe) - L_now
        rel.append(abs(change - (-float(a) * gg + float(a) ** 2 / 2 * gHg)) / abs(change))
    curvature.set_params(model, theta)
    # where the measured change turns positive (linear interpolation between grid points)
    k = int(xp.argmax((measured > 0) & (alphas > 0)))
    if k == 0:
        crossing = math.inf
    else:
        m0, m1 = float(measured[k - 1]), float(measured[k])
        crossing = float(alphas[k - 1] + (alphas[k] - alphas[k - 1]) * m0 / (m0 - m1))
    print(f"{label}: alpha* = {alpha_star:.4g}; model error at alpha = alpha* x "
          f"(0.2, 0.1, 0.05, 0.025): {', '.join(f'{100 * e:.3f}%' for e in rel)}; "
          f"the loss rises from alpha = {crossing / alpha_star:.3f} alpha* (model: 2 alpha*)")
    return alphas / alpha_star, predicted, measured, rel, crossing / alpha_star


fresh = Sequential(Linear(49, 16, rng=minidl.default_rng(4)), Tanh(),
                   Linear(16, 10, rng=minidl.default_rng(4)))
checks = {"random start": taylor_check(fresh, "random start"),
          f"after {epochs} epochs": taylor_check(mlp, f"after {epochs} epochs")}
for name, (_, _, _, rel, cross) in checks.items():
    assert rel[-1] < 0.01, f"{name}: for small steps the Taylor model is within 1%"
    assert all(b < 0.5 * a for a, b in zip(rel, rel[1:])), "its error falls ~ alpha^2"
    assert 1.2 < cross < 2.8, f"{name}: the loss turns up within 40% of 2 alpha*"

# %%
fig, axes = plt.subplots(1, len(checks), figsize=(11, 3.8))
for ax, (name, (a, pred, meas, rel, cross)) in zip(axes, checks.items()):
    ax.plot(minidl.to_numpy(a), minidl.to_numpy(meas), label="measured L(w - a g) - L(w)")
    ax.plot(minidl.to_numpy(a), minidl.to_numpy(pred), "--",
            label="-a g'g + a^2/2 g'Hg")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(1, color="k", ls=":", lw=1)
    ax.axvline(2, color="k", ls=":", lw=1)
    ax.set_xlabel("alpha / alpha*")
    ax.set_ylabel("change of the loss")
    ax.set_title(f"{name}: turns up at {cross:.2f} alpha* (model 2)", fontsize=10)
    ax.legend(fontsize=8)
fig.tight_layout()
print(lesson.savefig(fig, "05_loss_surfaces"))

# %% [markdown]
# What we measured: for small steps the model is excellent (its error falls like alpha^2,
# as a Taylor model's should), and it puts the minimum near alpha*. Where the loss turns
# back up it is only roughly right: the measured crossing lies up to ~30% beyond 2 alpha*
# (printed above; how far depends on the data and the point), because at steps that long
# the third-order terms are no longer small.
#
# ## Exercises
# 1. In section 1, start gradient descent at w = 0 plus a tiny step along v_max only (the
#    positive-curvature eigenvector). Does it escape? Explain with the eigenvalues.
# 2. Repeat section 3 along a direction other than -g, e.g. the Adam direction or a random
#    direction d: the optimal step is then -g'd / d'Hd. When can d'Hd be negative, and
#    what does the Taylor model predict then?
# 3. Track alpha* = g'g / g'Hg over training (`curvature.optimal_step` after every epoch)
#    and compare it with the learning rate you used. Is SGD taking steps shorter or longer
#    than alpha*?
