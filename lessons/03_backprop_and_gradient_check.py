# %% [markdown]
# # Lesson 3: backpropagation by hand, and checking it
#
# *Seed: lecture 004 (Ilin, "Deep Learning Optimization"), the home assignment: "implement
# backpropagation for a multilayer perceptron in numpy. For each block you need the
# forward computation y = f(x, theta) and the backward computation that turns dL/dy into
# dL/dx and dL/dtheta."*
#
# minidl has no autodiff: every block is written exactly that way, by hand, so every one
# can be wrong. This lesson
#
# 1. runs the blocks of an MLP one at a time, forward and then backward, as the assignment
#    asks, and shows that this *is* what `Sequential` does;
# 2. checks each block with central differences (`minidl.gradcheck`),
#
#        df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2h);
#
# 3. shows what typical wrong backward passes look like in the check report;
# 4. and the traps that make a gradient check fail (or pass) for the wrong reason:
#    float32 and kinks.
#
# Run it top to bottom: `python lessons/03_backprop_and_gradient_check.py`.

# %%
import matplotlib.pyplot as plt

import minidl
from minidl import lesson
from minidl.gradcheck import check_layer, check_loss, numerical_gradient
from minidl.layers import Linear, ReLU, Sequential, Tanh
from minidl.losses import SoftmaxCrossEntropy

minidl.set_default_dtype("float64")
rng = minidl.default_rng(0)
xp = minidl.xp()

# %% [markdown]
# ## 1. The blocks, one at a time
# A 5-8-3 network: Linear -> Tanh -> Linear -> softmax cross-entropy. Shapes follow
# PyTorch: x (N, in), W (out, in), b (out,). The three blocks and their backward maps:
#
# | block | forward | dL/dx | dL/dtheta |
# |---|---|---|---|
# | Linear | y = x W' + b | dy W | dW = dy' x, db = sum_n dy_n |
# | Tanh | y = tanh(x) | dy * (1 - y^2) | (none) |
# | softmax CE | L = -(1/N) sum_n log softmax(h_n)[y_n] | dL/dh = (softmax(h) - onehot(y)) / N | (none) |

# %%
N = 4
x = xp.asarray(rng.standard_normal((N, 5)))             # (N, 5) inputs
labels = xp.asarray(rng.integers(0, 3, N))              # (N,) class labels
lin1, act, lin2 = Linear(5, 8, rng=rng), Tanh(), Linear(8, 3, rng=rng)
crit = SoftmaxCrossEntropy()

# forward, block by block
a = lin1.forward(x)                                     # (N, 8) pre-activations
z = act.forward(a)                                      # (N, 8) hidden units
h = lin2.forward(z)                                     # (N, 3) logits
L = crit.forward(h, labels)                             # scalar

# backward, in reverse order: each block maps dL/d(its output) to dL/d(its input)
dh = crit.backward()                                    # (N, 3)
dz = lin2.backward(dh)                                  # (N, 8), fills lin2.grads
da = act.backward(dz)                                   # (N, 8)
dx = lin1.backward(da)                                  # (N, 5), fills lin1.grads
print(f"loss {L:.4f}; dL/dx has shape {dx.shape}, dL/dW1 {lin1.grads['W'].shape}")

# the table's formulas, written out again, give the same numbers
onehot = xp.eye(3)[labels]                              # (N, 3)
p = xp.exp(h) / xp.exp(h).sum(axis=1, keepdims=True)    # (N, 3) softmax
assert float(abs(dh - (p - onehot) / N).max()) < 1e-15
assert float(abs(lin2.grads["W"] - dh.T @ z).max()) < 1e-15
assert float(abs(lin2.grads["b"] - dh.sum(axis=0)).max()) < 1e-15
assert float(abs(da - dz * (1 - z ** 2)).max()) < 1e-15
assert float(abs(dx - da @ lin1.params["W"]).max()) < 1e-15

# Sequential is exactly this loop: forward in order, backward in reverse
model = Sequential(lin1, act, lin2)
grads_by_hand = [lin1.grads["W"].copy(), lin1.grads["b"].copy(), lin2.grads["W"].copy()]
crit.forward(model.forward(x), labels)
dx_seq = model.backward(crit.backward())
assert float(abs(dx_seq - dx).max()) == 0.0
for g, g_seq in zip(grads_by_hand, [lin1.grads["W"], lin1.grads["b"], lin2.grads["W"]]):
    assert float(abs(g - g_seq).max()) == 0.0
print("the block-by-block backward pass and Sequential.backward agree exactly")

# %% [markdown]
# ## 2. A correct block passes the check
# `check_layer` feeds the block a random upstream gradient `dout`, so it checks the scalar
# f(x, W, b) = sum(block(x) * dout) against `block.backward(dout)`, for the input and
# every parameter. (An all-ones dout would hide bugs that cancel in the sum.)

# %%
for block, xin in ((lin1, x), (act, a), (lin2, z)):
    report = check_layer(block, xin)
    print(report)
    assert report.ok
report = check_loss(crit, h, labels)
print(report)
assert report.ok

# %% [markdown]
# ## 3. What a wrong backward looks like
# Five bugs students really write, each as a subclass that overrides one backward pass.
# For each, the report should FAIL, and fail on the array the bug touches and only there:
# that is how the report points at the line to fix.

# %%
class NoTransposeLinear(Linear):
    """Bug: dW = x' dy, the (in, out) matrix, where W is (out, in); with in = out the
    shapes agree, so nothing crashes."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"] = self.cache["x"].T @ dout      # (in, out): wrong orientation
        return dx


class FirstExampleBiasLinear(Linear):
    """Bug: db = dy[0], the first example's gradient instead of the sum over the batch."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["b"] = dout[0].copy()                # (out,)
        return dx


class OnePercentLinear(Linear):
    """Bug: one element of dW 1% off (an indexing slip)."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"][1, 2] *= 1.01
        return dx


class InputDerivativeTanh(Tanh):
    """Bug: dx = dy * (1 - x^2), the derivative written with the input, not the output."""

    def backward(self, dout):
        x_in = self.cache["x"]
        return dout * (1 - x_in ** 2)


class NoMeanCrossEntropy(SoftmaxCrossEntropy):
    """Bug: dL/dh = softmax(h) - onehot(y), the 1/N of the mean forgotten."""

    def backward(self):
        return super().backward() * self.cache["p"].shape[0]


x_sq = xp.asarray(rng.standard_normal((N, 4)))          # (N, 4): a square Linear 4 -> 4
cases = [
    ("dW not transposed", check_layer(NoTransposeLinear(4, 4, rng=rng), x_sq), {"W"}),
    ("db of one example", check_layer(FirstExampleBiasLinear(5, 8, rng=rng), x), {"b"}),
    ("dW[1,2] 1% off", check_layer(OnePercentLinear(5, 8, rng=rng), x), {"W"}),
    ("tanh' from input", check_layer(InputDerivativeTanh(), a), {"x"}),
    ("CE without 1/N", check_loss(NoMeanCrossEntropy(), h, labels), {"logits"}),
]
for name, report, broken in cases:
    print(f"--- {name}\n{report}")
    failed = {c.name for c in report.checks if not c.ok}
    assert not report.ok and failed == broken, (name, failed)

# %% [markdown]
# Reading the reports: the forgotten 1/N shows analytic = N x numeric (here 4x) in every
# element; the 1% bug fails one element, and the report names its index; the bias bug
# leaves W and x correct. The plot shows each bug's maximum relative error per array
# against the tolerance: correct arrays sit at rounding level (1e-10 to 1e-7), broken
# ones far above.

# %%
arrays = ["x", "W", "b", "logits"]
fig, ax = plt.subplots(figsize=(9, 3.6))
width = 0.8 / len(cases)
for k, (name, report, _) in enumerate(cases):
    errs = [report[a].max_rel_error if a in [c.name for c in report.checks] else float("nan")
            for a in arrays]
    errs = [max(e, 1e-16) for e in errs]
    ax.bar([i + k * width for i in range(len(arrays))], errs, width, label=name)
ax.axhline(1e-5, color="k", ls="--", lw=1, label="tolerance (rtol 1e-5)")
ax.set_yscale("log")
ax.set_xticks([i + 0.4 - width / 2 for i in range(len(arrays))], arrays)
ax.set_ylabel("max relative error")
ax.set_title("gradient-check report of five buggy backward passes, per array")
ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
fig.tight_layout()
print(lesson.savefig(fig, "03_backprop_and_gradient_check"))

# %% [markdown]
# ## 4. Why the upstream gradient must be random
# With dout = all ones, the check tests f = sum(out), so it only sees what the backward
# pass returns for a constant dout. BatchNorm is the classic case: sum(BN(x)) does not
# depend on x, its true dx for dout = ones is 0, and any backward that also returns 0
# for a constant dout "passes", however wrong it is for other douts (one that drops
# the x_hat term, say). Here: a Linear whose dx has an extra term that vanishes when
# dout is constant.

# %%
class ZeroSumBugLinear(Linear):
    """Bug: dx gets an extra term that vanishes when dout is constant."""

    def backward(self, dout):
        dx = super().backward(dout)
        centred = dout - dout.mean(axis=1, keepdims=True)    # (N, out), 0 for constant dout
        return dx + centred[:, :1]


buggy = ZeroSumBugLinear(5, 8, rng=rng)
ones = check_layer(buggy, x, dout=xp.ones((N, 8)))
random = check_layer(buggy, x)
print(f"dout = ones: {'PASSED' if ones.ok else 'FAILED'};  random dout: "
      f"{'PASSED' if random.ok else 'FAILED'}")
assert ones.ok and not random.ok

# %% [markdown]
# ## 5. Why float64
# Rounding error of a central difference is about u |f| / h, truncation error about
# h^2 |f'''| / 6. The best step, h ~ u^(1/3), balances them at an error ~ u^(2/3): with
# float32 (u ~ 6e-8) about 2e-5, four correct digits at best, not enough for the
# check's rtol of 1e-5; with float64 (u ~ 1e-16) about 5e-11, ten digits.

# %%
max_error = {}
for dtype, h in [("float32", 1e-2), ("float32", 3e-3), ("float32", 1e-4), ("float64", 1e-6)]:
    v = xp.asarray([0.3, -1.2, 2.0], dtype=dtype)

    def f():
        return float((xp.sin(v) * v).sum())

    exact = xp.cos(v) * v + xp.sin(v)
    if dtype == "float64":
        approx = numerical_gradient(f, v, eps=h)
    else:
        approx = xp.zeros_like(v)
        for i in range(3):
            old = float(v[i])
            v[i] = old + h
            fp = f()
            v[i] = old - h
            fm = f()
            v[i] = old
            approx[i] = (fp - fm) / (2 * h)
    max_error[dtype, h] = float(abs(approx - exact).max())
    print(f"{dtype} h={h:g}: max error {max_error[dtype, h]:.1e}")
assert min(e for (dtype, _), e in max_error.items() if dtype == "float32") > 5e-6
assert max_error["float64", 1e-6] < 1e-9

# %% [markdown]
# ## 6. Kinks
# ReLU has no derivative at 0. At x = 0 the central difference gives 0.5, the backward
# pass 0. The checker tests the one-sided slopes there and reports the element as a kink
# instead of a failure.

# %%
print(check_layer(ReLU(), xp.asarray([[0.0, 1.0, -2.0]], dtype="float64")))

# %% [markdown]
# ## 7. A whole network
# Containers are checked the same way: every parameter of every layer, and the input.

# %%
model = Sequential(Linear(5, 8, rng=rng), ReLU(), Linear(8, 2, rng=rng))
report = check_layer(model, x)
print(report)
assert report.ok


# %% [markdown]
# ## Exercises
# 1. Write the backward pass of a `Sigmoid` block by hand (y = 1 / (1 + e^-x),
#    dy/dx = y (1 - y)) as a subclass of `minidl.layers.Layer`, and check it with
#    `check_layer`. Then break it on purpose as in section 3: which array fails?
# 2. The report of "CE without 1/N" says analytic / numeric = 4. Predict the ratio for a
#    batch of 100, then confirm. Why would a network trained with this bug still learn,
#    and what would you have to change to compensate?
# 3. Find a bug in a Linear backward that `check_layer` cannot see with N = 1 but does see
#    with N = 4 (hint: section 3's bias bug). What does that say about the batch size to
#    check with?
