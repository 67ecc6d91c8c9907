# %% [markdown]
# # Lesson 1: supervised learning as maximum likelihood
#
# *Seed: lecture 004 (Ilin, "Deep Learning Optimization"), slides 3-7.*
#
# We train a network f(x, theta) on examples (x_n, y_n) by minimising a loss. The two
# standard losses are negative log-likelihoods of a probabilistic model of y given x:
#
# * classification, one-hot y: softmax outputs f_j = exp(h_j) / sum_j' exp(h_j') are the
#   parameters of a categorical distribution, p(y | x, theta) = prod_j f_j^{y_j}, and the
#   cross-entropy loss L = -(1/N) sum_n sum_j y_nj log f_j(x_n) is -(1/N) log of the
#   likelihood of the training set;
# * regression: the mean squared error is, up to a constant and a scale, the negative
#   log-likelihood of y ~ N(f(x, theta), sigma^2 I).
#
# So minimising the loss *is* maximising the likelihood. This lesson checks both statements
# numerically with minidl's own losses, then trains an MLP on MNIST.
#
# Run it top to bottom: `python lessons/01_supervised_learning.py` (`MINIDL_FAST=1` for the
# quick version on the bundled MNIST subset).

# %%
import math

import matplotlib.pyplot as plt

import minidl
from minidl import lesson
from minidl.data import DataLoader
from minidl.gradcheck import check_loss
from minidl.layers import Linear, ReLU, Sequential
from minidl.losses import MSELoss, SoftmaxCrossEntropy, softmax
from minidl.optim import SGD
from minidl.train import evaluate, fit

minidl.set_default_dtype("float64")   # exact comparisons below; training speed is no issue
xp = minidl.xp()
rng = minidl.default_rng(0)
print("fast mode" if lesson.FAST else "full mode")

# %% [markdown]
# ## 1. Cross-entropy is the categorical negative log-likelihood
# For a batch of logits h (N, K) and labels, minidl's `SoftmaxCrossEntropy` gives one
# number. We compute the likelihood of the labels another way -- multiply out
# prod_j f_j^{y_j} for every example with one-hot y -- and compare.

# %%
N, K = 500, 10
h = xp.asarray(3 * rng.standard_normal((N, K)))            # (N, K) logits
labels = xp.asarray(rng.integers(0, K, N))                 # (N,)
Y = xp.eye(K)[labels]                                      # (N, K) one-hot targets

crit = SoftmaxCrossEntropy()
ce = crit.forward(h, labels)
f = softmax(h)                                             # (N, K) class probabilities
lik_per_example = (f ** Y).prod(axis=1)                    # (N,) Cat(y_n | f(x_n))
log_lik = float(xp.log(lik_per_example).sum())
print(f"cross-entropy {ce:.12f}   -(1/N) log-likelihood {-log_lik / N:.12f}")
assert abs(ce + log_lik / N) < 1e-12, "CE must equal the mean categorical NLL"

# the likelihood of the whole set underflows; that is one reason we minimise the mean NLL
print(f"likelihood of all {N} labels as a product: {float(lik_per_example.prod())!r}; "
      f"its log: {log_lik:.1f}")

# the gradient with respect to the logits is (f - y) / N (checked by central differences)
report = check_loss(crit, h, labels)
assert report.ok, report
crit.forward(h, labels)
assert float(abs(crit.backward() - (f - Y) / N).max()) < 1e-15

# %% [markdown]
# ## 2. MSE is the Gaussian negative log-likelihood
# A line fitted to noisy data. For y ~ N(f(x), sigma^2) the NLL of N examples is
#
#     NLL(theta, sigma) = N/2 log(2 pi sigma^2) + N * MSE(theta) / (2 sigma^2),
#
# so for every fixed sigma it is an increasing affine function of `MSELoss` -- the same
# minimiser theta -- and over sigma it is smallest at sigma^2 = MSE(theta).

# %%
n_reg = 200
x_reg = xp.asarray(rng.uniform(-2, 2, (n_reg, 1)))                       # (n, 1)
y_reg = 1.5 * x_reg - 0.5 + 0.7 * xp.asarray(rng.standard_normal((n_reg, 1)))  # (n, 1)
line = Linear(1, 1, rng=rng)
mse = MSELoss()
opt = SGD(line, lr=0.1)
for _ in range(300):                                       # full-batch gradient descent
    mse.forward(line.forward(x_reg), y_reg)
    line.backward(mse.backward())
    opt.step()
mse_fit = mse.forward(line.forward(x_reg), y_reg)


def gaussian_nll(pred, y, sigma):
    """-sum_n log N(y_n | pred_n, sigma^2), written out from the density."""
    return float((0.5 * xp.log(2 * math.pi * sigma ** 2)
                  + (y - pred) ** 2 / (2 * sigma ** 2)).sum())


pred = line.forward(x_reg)
for sigma in (0.3, 1.0, 3.0):
    nll = gaussian_nll(pred, y_reg, sigma)
    affine = n_reg / 2 * math.log(2 * math.pi * sigma ** 2) + n_reg * mse_fit / (2 * sigma ** 2)
    assert abs(nll - affine) < 1e-9 * abs(nll)
sigmas = xp.linspace(0.3, 2.0, 400)
nlls = [gaussian_nll(pred, y_reg, float(s)) for s in sigmas]
sigma_ml = float(sigmas[int(xp.argmin(xp.asarray(nlls)))])
print(f"W = {float(line.params['W'][0, 0]):.3f}, b = {float(line.params['b'][0]):.3f}, "
      f"MSE = {mse_fit:.4f}; the NLL is smallest at sigma = {sigma_ml:.3f}, "
      f"sqrt(MSE) = {math.sqrt(mse_fit):.3f}")
assert abs(sigma_ml - math.sqrt(mse_fit)) < float(sigmas[1] - sigmas[0])

# %% [markdown]
# ## 3. An MLP on MNIST: watching the likelihood go up
# A 784-100-10 ReLU network trained with SGD and momentum. After every epoch we record,
# on 2000 training images, the cross-entropy (minidl's loss) and, computed separately
# from the softmax outputs, the geometric-mean likelihood per example,
# prod_n p(y_n|x_n)^(1/N).
# The plot should show one curve going down exactly as the other goes up:
# exp(-CE) is the geometric-mean likelihood.

# %%
minidl.set_default_dtype("float32")   # training in float32, as in practice
n_train = lesson.choose(None, 5000)
x_train, y_train, x_test, y_test = lesson.mnist(n_train=n_train, n_test=lesson.choose(None, 1000))
epochs = lesson.choose(5, 4)
print(f"{x_train.shape[0]} training and {x_test.shape[0]} test images, {epochs} epochs")

net = Sequential(Linear(784, 100, rng=rng), ReLU(), Linear(100, 10, rng=rng))
opt = SGD(net, lr=0.1, momentum=0.9)
probe_x, probe_y = x_train[:2000], y_train[:2000]           # fixed set to track the likelihood
curve = []                                                  # (step, CE, geometric-mean lik)


def track(step):
    net.eval()
    logits = net.forward(probe_x).astype("float64")          # (n, 10), compared in float64
    ce_now = crit.forward(logits, probe_y)
    p = softmax(logits)[xp.arange(probe_x.shape[0]), probe_y]    # (n,) p(y_n | x_n)
    curve.append((step, ce_now, float(xp.exp(xp.log(p).mean()))))
    net.train()


track(0)
loader = DataLoader(x_train, y_train, batch_size=100, rng=minidl.default_rng(1))
for epoch in range(epochs):
    history = fit(net, crit, opt, loader, epochs=1, log_every=0)
    track(opt.t)
    print(f"epoch {epoch + 1}: train CE {history.last['train_loss']:.4f}")
test = evaluate(net, crit, DataLoader(x_test, y_test, 1000, shuffle=False))
print(f"test accuracy {test['accuracy']:.4f}, test CE {test['loss']:.4f}")

steps, ces, liks = zip(*curve)
for c, l in zip(ces, liks):
    assert abs(math.exp(-c) - l) < 1e-12 * l + 1e-15     # exp(-CE) = geometric-mean likelihood
best_ce, best_lik = ces.index(min(ces)), liks.index(max(liks))
assert best_ce == best_lik, "the lowest CE is the highest likelihood"
assert ces[-1] < 0.25 * ces[0], "training lowered the CE (raised the likelihood)"
assert test["accuracy"] > lesson.choose(0.97, 0.87)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
ax = axes[0]
line_ce, = ax.plot(steps, ces, "o-", label="cross-entropy (minidl loss)")
ax.set_xlabel("SGD step")
ax.set_ylabel("cross-entropy (nats per example)")
ax2 = ax.twinx()
line_lik, = ax2.plot(steps, liks, "s--", color="C1", label="geometric-mean likelihood")
ax2.set_ylabel("prod p(y|x)^(1/N)")
ax.set_title("CE falls exactly as the likelihood rises")
ax.legend(handles=[line_ce, line_lik], loc="center right", fontsize=8)

ax = axes[1]
ax.plot(minidl.to_numpy(sigmas), nlls)
ax.axvline(math.sqrt(mse_fit), color="k", ls=":", label="sqrt(MSE)")
ax.set_xlabel("sigma (units of y)")
ax.set_ylabel("Gaussian NLL (nats, summed)")
ax.set_title("NLL over sigma: minimum at sigma^2 = MSE")
ax.legend(fontsize=8)

ax = axes[2]
order = minidl.to_numpy(xp.argsort(x_reg[:, 0]))
xs, ys = minidl.to_numpy(x_reg[:, 0]), minidl.to_numpy(y_reg[:, 0])
ps = minidl.to_numpy(pred[:, 0])
ax.scatter(xs, ys, s=6, alpha=0.6)
ax.plot(xs[order], ps[order], "C3")
ax.fill_between(xs[order], ps[order] - math.sqrt(mse_fit), ps[order] + math.sqrt(mse_fit),
                color="C3", alpha=0.15, label="f(x) +- sigma_ML")
ax.set(xlabel="x", ylabel="y")
ax.set_title("least squares = Gaussian maximum likelihood")
ax.legend(fontsize=8)
fig.tight_layout()
print(lesson.savefig(fig, "01_supervised_learning"))

# %% [markdown]
# The test digits the network is least sure about, with its class probabilities: the
# plot should show badly written digits, with the probability spread over the classes
# each one resembles. Which digits come up depends on the run (fast mode's short
# training shows a 2 that could be a 3 and an 8 that could be a 3 or a 5; the full run
# a 3 that could be a 7 or a 9): read the bars.

# %%
net.eval()
probs = softmax(net.forward(x_test))                       # (n_test, 10)
unsure = minidl.to_numpy(xp.argsort(probs.max(axis=1))[:6])
fig, axes = plt.subplots(2, 6, figsize=(12, 4), gridspec_kw={"height_ratios": [2, 1]})
for col, i in enumerate(unsure):
    axes[0, col].imshow(minidl.to_numpy(x_test[i]).reshape(28, 28), cmap="gray_r")
    axes[0, col].set_title(f"label {int(y_test[i])}")
    axes[0, col].axis("off")
    axes[1, col].bar(range(10), minidl.to_numpy(probs[i]))
    axes[1, col].set_xticks(range(10))
    axes[1, col].set_ylim(0, 1)
fig.suptitle("least certain test digits and p(y | x)")
fig.tight_layout()
print(lesson.savefig(fig, "01_mnist_unsure"))

# %% [markdown]
# ## Exercises
# 1. Train the same network with `MSELoss` on one-hot targets (the Gaussian model of
#    section 2 applied to class labels). Which probabilistic model is that, and how do the
#    test accuracy and the confidence of the outputs compare with cross-entropy?
# 2. Show on paper that the gradient of the categorical NLL with respect to the logits is
#    (f - y) / N, then confirm with `check_loss` for soft targets (rows of y summing to 1).
# 3. Section 2 fixed sigma for all inputs. Let the network predict log sigma(x) as a
#    second output and write the Gaussian NLL for it: what does its gradient do to examples
#    with large errors?
