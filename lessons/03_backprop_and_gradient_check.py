# %% [markdown]
# # Lesson 1: checking a backward pass
#
# minidl has no autodiff: every layer's `backward` is written by hand, so every one can be
# wrong. This lesson shows how to catch that with central differences,
#
#     df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2h),
#
# and the three traps that make gradient checks fail (or pass) for the wrong reason:
# float32, an all-ones upstream gradient, and kinks. Run it top to bottom
# (`python lessons/01_gradient_check.py`) or cell by cell in an editor that understands
# `# %%` cells.

# %%
import minidl
from minidl.gradcheck import check_layer, numerical_gradient
from minidl.layers import Linear, ReLU, Sequential

rng = minidl.default_rng(0)
xp = minidl.xp()

# %% [markdown]
# ## 1. A correct layer passes
# `check_layer` feeds the layer a random upstream gradient `dout`, so it checks the
# scalar f(x, W, b) = sum(layer(x) * dout) against `layer.backward(dout)`.

# %%
layer = Linear(4, 3, rng=rng)
x = rng.standard_normal((5, 4))
print(check_layer(layer, x))

# %% [markdown]
# ## 2. A one-percent bug does not
# We break one element of dW; the report names the array, the element, both values.

# %%
class BuggyLinear(Linear):
    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"][1, 2] *= 1.01
        return dx


print(check_layer(BuggyLinear(4, 3, rng=rng), x))

# %% [markdown]
# ## 3. Why float64
# Rounding error of a central difference is about u |f| / h. With float32 (u ~ 6e-8) no
# step h gives more than ~3 correct digits; with float64 (u ~ 1e-16) we get ~10.

# %%
for dtype, h in [("float32", 1e-2), ("float32", 1e-4), ("float64", 1e-6)]:
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
    print(f"{dtype} h={h:g}: max error {float(abs(approx - exact).max()):.1e}")

# %% [markdown]
# ## 4. Kinks
# ReLU has no derivative at 0. At x = 0 the central difference gives 0.5, the backward
# pass 0. The checker tests the one-sided slopes there and reports the element as a kink
# instead of a failure.

# %%
print(check_layer(ReLU(), xp.asarray([[0.0, 1.0, -2.0]], dtype="float64")))

# %% [markdown]
# ## 5. A whole network
# Containers are checked the same way: every parameter of every layer, and the input.

# %%
model = Sequential(Linear(4, 8, rng=rng), ReLU(), Linear(8, 2, rng=rng))
report = check_layer(model, x)
print(report)
assert report.ok
