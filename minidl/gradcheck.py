"""Gradient checks: compare hand-written backward passes with central differences.

The numerical derivative of a scalar function f at x along element i is::

    df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)

with error O(eps^2) from truncation and O(u |f| / eps) from rounding (u = 2.2e-16 in
float64), so eps = 1e-6 gives about 1e-10 relative accuracy. Checks always run in
float64: in float32 (u = 6e-8) no eps gives more than about 3 correct digits.

A layer is checked through the scalar f(x, theta) = sum(forward(x) * dout) with a *random*
upstream gradient dout. An all-ones dout hides bugs: for BatchNorm, sum(out) does not
depend on x at all, so every input gradient is 0 and a wrong backward still "passes".

An element passes when |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).

Kinks. Where f is not differentiable (ReLU at 0, a tie in max-pooling) the central
difference averages two one-sided slopes and a correct backward can disagree with it.
A failing element is re-examined: if its one-sided slopes (f(x+h)-f(x))/h and
(f(x)-f(x-h))/h differ by much more than a smooth function allows, and still do at h/10,
the element sits on a kink and is reported as skipped, not failed.
"""
import contextlib

from . import backend
from .layers.base import expect_finite

__all__ = ["numerical_gradient", "check_layer", "check_loss", "check_model",
           "GradCheckReport", "ArrayCheck", "rel_error", "check_jvp", "check_backward_rop"]


def rel_error(a, b):
    """max |a - b| / max(1e-12, |a| + |b|): the CS231n relative error, elementwise max."""
    xp = backend.array_module(a, b)
    denom = xp.maximum(xp.abs(a) + xp.abs(b), 1e-12)
    return float((xp.abs(a - b) / denom).max()) if a.size else 0.0


def numerical_gradient(f, x, eps=1e-6):
    """Central-difference gradient of the scalar function ``f()`` with respect to ``x``.

    ``x`` is perturbed in place, one element at a time, and restored exactly.

    Args:
        f: callable with no arguments returning a float; it must read ``x``.
        x: float64 array (on either backend) that ``f`` depends on.
        eps: the step h.

    Returns:
        Array of the shape of ``x`` holding df/dx.
    """
    if x.dtype.name != "float64":
        raise TypeError(f"numerical_gradient needs a float64 array, got {x.dtype}; "
                        "in float32 central differences are accurate to ~3 digits only")
    xp = backend.array_module(x)
    grad = xp.zeros_like(x)  # same shape as x
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if flat.base is None and x.size > 1 and not x.flags.c_contiguous:
        raise ValueError("numerical_gradient needs a C-contiguous array")
    for i in range(x.size):
        old = float(flat[i])
        flat[i] = old + eps
        f_plus = f()
        flat[i] = old - eps
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def _one_sided(f, flat, i, h):
    old = float(flat[i])
    f0 = f()
    flat[i] = old + h
    fp = f()
    flat[i] = old - h
    fm = f()
    flat[i] = old
    return (fp - f0) / h, (f0 - fm) / h


class ArrayCheck:
    """The result for one array: worst element, errors, skipped kinks."""

    def __init__(self, name, analytic, numeric, rtol, atol, kinks):
        xp = backend.array_module(analytic)
        self.name = name
        self.shape = tuple(analytic.shape)
        diff = xp.abs(analytic - numeric)  # same shape as the array
        bound = atol + rtol * xp.maximum(xp.abs(analytic), xp.abs(numeric))
        bad = diff > bound
        for i in kinks:
            bad.reshape(-1)[i] = False
        self.kinks = list(kinks)
        self.n_failed = int(bad.sum())
        diff = diff.copy()
        for i in kinks:
            diff.reshape(-1)[i] = 0
        self.max_abs_error = float(diff.max()) if diff.size else 0.0
        denom = xp.maximum(xp.abs(analytic) + xp.abs(numeric), 1e-12)
        rel = diff / denom
        for i in kinks:
            rel.reshape(-1)[i] = 0
        self.max_rel_error = float(rel.max()) if rel.size else 0.0
        score = diff / bound
        for i in kinks:
            score.reshape(-1)[i] = 0
        worst = int(score.reshape(-1).argmax()) if score.size else 0
        self.worst_index = tuple(int(v) for v in backend.host().unravel_index(worst, self.shape))
        self.worst_analytic = float(analytic.reshape(-1)[worst]) if analytic.size else 0.0
        self.worst_numeric = float(numeric.reshape(-1)[worst]) if numeric.size else 0.0
        self.ok = self.n_failed == 0
        self.rtol, self.atol = rtol, atol

    def __str__(self):
        status = "ok  " if self.ok else "FAIL"
        line = (f"  [{status}] {self.name:<10} shape {str(self.shape):<16} max rel error "
                f"{self.max_rel_error:.2e}, max abs error {self.max_abs_error:.2e}")
        if not self.ok:
            line += (f"\n         {self.n_failed} element(s) out of tolerance; worst at index "
                     f"{self.worst_index}: analytic {self.worst_analytic:.10g} vs numeric "
                     f"{self.worst_numeric:.10g}")
        if self.kinks:
            line += f"\n         {len(self.kinks)} element(s) skipped: they sit on a kink"
        return line


class GradCheckReport:
    """All array checks of one call; ``ok`` when every array passed."""

    def __init__(self, title, checks, rtol, atol, eps):
        self.title, self.checks = title, checks
        self.rtol, self.atol, self.eps = rtol, atol, eps
        self.ok = all(c.ok for c in checks)
        self.max_rel_error = {c.name: c.max_rel_error for c in checks}

    def __getitem__(self, name):
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def __bool__(self):
        return self.ok

    def __str__(self):
        head = (f"gradient check of {self.title}: {'PASSED' if self.ok else 'FAILED'} "
                f"(float64, eps={self.eps:g}, pass if |a-n| <= {self.atol:g} + "
                f"{self.rtol:g}*max(|a|,|n|))")
        return "\n".join([head] + [str(c) for c in self.checks])

    __repr__ = __str__


def _compare(name, f, x, analytic, eps, rtol, atol):
    numeric = numerical_gradient(f, x, eps)
    xp = backend.array_module(x)
    diff = xp.abs(analytic - numeric)
    bound = atol + rtol * xp.maximum(xp.abs(analytic), xp.abs(numeric))
    kinks = []
    flat = x.reshape(-1)
    for i in backend.to_numpy(xp.nonzero((diff > bound).reshape(-1))[0]).tolist():
        sp, sm = _one_sided(f, flat, i, eps)
        sp2, sm2 = _one_sided(f, flat, i, eps / 10)
        jump, jump2 = abs(sp - sm), abs(sp2 - sm2)
        a = float(analytic.reshape(-1)[i])
        # a kink: the slopes disagree at both step sizes (a smooth f shrinks the gap 10x)
        # and the analytic value is one of the one-sided slopes, or between them
        lo, hi = min(sp2, sm2), max(sp2, sm2)
        if jump > bound.reshape(-1)[i] and jump2 > 0.5 * jump and \
                lo - 10 * float(bound.reshape(-1)[i]) <= a <= hi + 10 * float(bound.reshape(-1)[i]):
            kinks.append(i)
    return ArrayCheck(name, analytic, numeric, rtol, atol, kinks)


def _float64_copy(a):
    return backend.array_module(a).array(a, dtype="float64")


@contextlib.contextmanager
def _float64_session(layer):
    """Run a check on float64 copies of a layer's parameters and buffers.

    Yields ``reset()``, which puts the buffers back to their values at the start, so that
    repeated forward passes cannot drift through BatchNorm's running statistics. On exit
    the original arrays (and dtypes) come back and everything the passes cached is dropped:
    a check leaves the layer as it found it.
    """
    leaves = layer.leaves()
    saved = [(leaf, dict(leaf.params), dict(leaf.buffers)) for leaf in leaves]
    try:
        for leaf in leaves:
            for group in (leaf.params, leaf.buffers):
                for key, value in group.items():
                    if value.dtype.kind == "f":
                        group[key] = _float64_copy(value)
        start = [(leaf, {k: v.copy() for k, v in leaf.buffers.items()}) for leaf in leaves]

        def reset():
            for leaf, buffers in start:
                for k, v in buffers.items():
                    leaf.buffers[k] = v.copy()

        yield reset
    finally:
        for leaf, params, buffers in saved:
            leaf.params.update(params)
            leaf.buffers.update(buffers)
            leaf.grads, leaf.cache, leaf.Rparams, leaf.Rgrads = {}, {}, {}, {}


def _compare_all(f, x, dx, model, eps, rtol, atol):
    """Checks of the input gradient dx and of every parameter gradient now in ``grads``."""
    grads = [(name, leaf, key, leaf.grads[key].copy()) for name, leaf, key in model.parameters()]
    checks = [_compare("x", f, x, dx.copy(), eps, rtol, atol)]
    for name, leaf, key, g in grads:
        checks.append(_compare(name, f, leaf.params[key], g, eps, rtol, atol))
    return checks


def check_layer(layer, x, dout=None, rng=None, eps=1e-6, rtol=1e-5, atol=1e-7,
                check_finite=True):
    """Check ``layer.backward`` against central differences, in float64.

    The layer's parameters and buffers are temporarily replaced by float64 copies and put
    back afterwards, so the check leaves the layer as it found it (running statistics
    included).

    Args:
        layer: any ``Layer`` (a container is checked as a whole).
        x: input array; it is copied to float64.
        dout: upstream gradient; by default a random normal array from ``rng``.
        rng: generator for dout (default seed 0).
        eps, rtol, atol: step and tolerances (see the module doc).
        check_finite: raise ``ValueError`` if x holds NaN or inf.

    Returns:
        ``GradCheckReport``: ``.ok``, ``.max_rel_error`` per array, readable ``str()``.
    """
    if check_finite:
        expect_finite(f"check_layer({type(layer).__name__}): input x", x)
    rng = rng if rng is not None else backend.default_rng(0)
    with _float64_session(layer) as reset:
        x = _float64_copy(x)
        out = layer.forward(x)
        xp = backend.array_module(out)
        if dout is None:
            dout = xp.asarray(rng.standard_normal(out.shape))  # non-uniform on purpose
        dout = _float64_copy(dout)

        def f():
            reset()
            return float((layer.forward(x) * dout).sum())

        f()
        dx = layer.backward(dout)
        checks = _compare_all(f, x, dx, layer, eps, rtol, atol)
    return GradCheckReport(type(layer).__name__, checks, rtol, atol, eps)


def check_loss(loss, logits, target, eps=1e-6, rtol=1e-5, atol=1e-8):
    """Check ``loss.backward()`` (dL/dlogits) against central differences in float64."""
    expect_finite(f"check_loss({type(loss).__name__}): logits", logits)
    x = _float64_copy(logits)
    if target.dtype.kind == "f":
        target = _float64_copy(target)
    loss.forward(x, target)
    analytic = loss.backward().copy()
    check = _compare("logits", lambda: loss.forward(x, target), x, analytic, eps, rtol, atol)
    return GradCheckReport(type(loss).__name__, [check], rtol, atol, eps)


def check_model(model, loss, x, target, eps=1e-6, rtol=1e-5, atol=1e-8):
    """Check the gradients of ``loss(model(x), target)`` for the input and every parameter."""
    expect_finite(f"check_model({type(model).__name__}): input x", x)
    with _float64_session(model) as reset:
        x = _float64_copy(x)
        if target.dtype.kind == "f":
            target = _float64_copy(target)

        def f():
            reset()
            return loss.forward(model.forward(x), target)

        f()
        dx = model.backward(loss.backward())
        checks = _compare_all(f, x, dx, model, eps, rtol, atol)
    return GradCheckReport(f"{type(model).__name__} + {type(loss).__name__}", checks,
                           rtol, atol, eps)


def _random_tangents(layer, x, rng):
    """Random Rx (shape of x) and one random V per parameter, on x's device."""
    xp = backend.array_module(x)
    Rx = xp.asarray(rng.standard_normal(x.shape))  # same shape as x
    V = [xp.asarray(rng.standard_normal(leaf.params[key].shape))
         for _, leaf, key in layer.parameters()]
    return Rx, V


def _central(layer, V, h, run):
    """(run(+h) - run(-h)) / 2h with the parameters moved by +-h V; ``run(r)`` -> arrays."""
    params = [(leaf, key, leaf.params[key]) for _, leaf, key in layer.parameters()]
    results = []
    for r in (+h, -h):
        for (leaf, key, p0), v in zip(params, V):
            leaf.params[key] = p0 + r * v
        results.append(run(r))
    for leaf, key, p0 in params:
        leaf.params[key] = p0
    return [(a - b) / (2 * h) for a, b in zip(*results)]


def _set_rparams(layer, V):
    for (_, leaf, key), v in zip(layer.parameters(), V):
        leaf.Rparams[key] = v


def check_jvp(layer, x, rng=None, h=1e-6, rtol=1e-5, atol=1e-7):
    """Check ``layer.jvp`` (R-operator forward) against a central difference of forward.

    With random tangents Rx and V (one per parameter), compares ``jvp(Rx)`` with
    (forward(x + h Rx; theta + h V) - forward(x - h Rx; theta - h V)) / (2h).
    """
    rng = rng if rng is not None else backend.default_rng(0)
    with _float64_session(layer) as reset:
        x = _float64_copy(x)
        Rx, V = _random_tangents(layer, x, rng)

        def run(r):
            reset()
            return [layer.forward(x + r * Rx)]

        (numeric,) = _central(layer, V, h, run)
        reset()
        layer.forward(x)
        _set_rparams(layer, V)
        checks = [ArrayCheck("Rout", layer.jvp(Rx), numeric, rtol, atol, [])]
    return GradCheckReport(f"{type(layer).__name__}.jvp", checks, rtol, atol, h)


def check_backward_rop(layer, x, rng=None, h=1e-6, rtol=1e-5, atol=1e-7):
    """Check ``layer.backward_rop`` against a central difference of the backward pass.

    With random dout, Rdout, Rx and V, the backward pass run at
    (x + r Rx, theta + r V, dout + r Rdout) is differentiated in r at 0, and compared with
    R{dx} = ``backward_rop(Rdout)`` and R{grads} = ``layer.Rgrads`` (after forward,
    backward and jvp at r = 0).
    """
    rng = rng if rng is not None else backend.default_rng(0)
    with _float64_session(layer) as reset:
        x = _float64_copy(x)
        xp = backend.array_module(x)
        reset()
        out = layer.forward(x)
        dout = xp.asarray(rng.standard_normal(out.shape))  # same shape as out
        Rdout = xp.asarray(rng.standard_normal(out.shape))
        Rx, V = _random_tangents(layer, x, rng)
        params = layer.parameters()

        def run(r):
            reset()
            layer.forward(x + r * Rx)
            dx = layer.backward(dout + r * Rdout)
            return [dx] + [leaf.grads[key].copy() for _, leaf, key in params]

        numeric = _central(layer, V, h, run)
        reset()
        layer.forward(x)
        layer.backward(dout)
        _set_rparams(layer, V)
        layer.jvp(Rx)
        Rdx = layer.backward_rop(Rdout)
        checks = [ArrayCheck("Rdx", Rdx, numeric[0], rtol, atol, [])]
        for (name, leaf, key), num in zip(params, numeric[1:]):
            checks.append(ArrayCheck(f"R{name}", leaf.Rgrads[key], num, rtol, atol, []))
    return GradCheckReport(f"{type(layer).__name__}.backward_rop", checks, rtol, atol, h)
