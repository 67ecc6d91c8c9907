"""Gradient checks: compare hand-written backward passes with central differences.

The numerical derivative of a scalar function f at x along element i is::

    df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)

with error O(eps^2) from truncation and O(u |f| / eps) from rounding (u = 2.2e-16 in
float64), so eps = 1e-6 gives about 1e-10 relative accuracy. Checks always run in
float64: in float32 (u = 6e-8) no eps gives more than about 4 correct digits.

A layer is checked through the scalars f_k(x, theta) = sum(forward(x) * dout_k) for
``directions`` (default 2) *random* upstream gradients dout_k, each against
``backward(dout_k)``. Three traps shape this design:

* An all-ones dout hides bugs: for BatchNorm, sum(out) does not depend on x at all, so
  every input gradient is 0 and a wrong backward still "passes".
* A dout that equals the input hides bugs: for a square Linear with dout = x, the
  transposed weight gradient x^T dout equals the right one dout^T x (x^T x is
  symmetric). That happens whenever the check draws dout from the same generator and
  seed as the user drew x. So the checks never use ``minidl.default_rng``: their
  directions come from ``check_rng(seed)``, a Philox generator keyed by
  ``SeedSequence(CHECK_ENTROPY, spawn_key=(seed,))``. ``default_rng(s)`` is PCG64 keyed
  by ``SeedSequence(s)`` without a spawn key, a different algorithm and key for every
  integer s, so no data a user draws with it repeats the check's directions.
* One direction can still be unlucky (or chosen by the caller); a second independent one
  makes a symmetric coincidence like the one above vanish. The report says which
  generator and seed drew the directions (``report.directions_from``), so a failure
  reproduces with ``check_layer(layer, x, seed=...)``.

Random layers. A layer in train mode that draws random numbers (Dropout) would compute a
different function at every evaluation. The checks hold every layer's randomness fixed
for their duration (``Layer.fixed_randomness``: one mask for all evaluations, the mask and
the layer's generator put back afterwards), and then run the forward pass twice: if the
outputs still differ (a custom random layer without ``fixed_randomness``), they refuse
with a ``RuntimeError`` instead of reporting a right layer wrong.

An element passes when |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).
An element out of tolerance is measured again with the step 10 eps, and fails only if it
is out of tolerance there too: rounding makes a derivative that is exactly zero (a bias
before BatchNorm) come out as noise of size u |f| / eps, ten times smaller at 10 eps,
while a wrong backward is wrong at every step.
A backward that writes an array of the wrong shape, or none, fails with a message saying
so (NumPy broadcasting could otherwise make a wrong shape look right).

In place. A pass must not write into the arrays it is given: a Residual hands the same
dout to its block and to its shortcut, a layer's output is the next layer's input (ReLU
keeps its output for its backward pass), and the first input is the user's data. So every
forward gets a copy of x and every backward a copy of dout (and, in ``check_jvp`` and
``check_backward_rop``, every ``jvp`` a copy of Rx and every ``backward_rop`` a copy of
Rdout); the derivatives are judged on what the passes return, and a pass that changed its
copy fails with an extra line (``input`` for forward, ``dout`` for backward, ``tangent``
for the R-operator passes) saying so.

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
           "GradCheckReport", "ArrayCheck", "rel_error", "check_jvp", "check_backward_rop",
           "check_rng", "CHECK_ENTROPY"]

CHECK_ENTROPY = int.from_bytes(b"minidl.gradcheck", "big")  # 128 bits of ASCII
"""Entropy of the checks' seed sequence; with spawn_key=(seed,) it keys ``check_rng``."""


def check_rng(seed=0):
    """The generator the checks draw their random directions from.

    ``Generator(Philox(SeedSequence(CHECK_ENTROPY, spawn_key=(seed,))))``: a counter-based
    generator keyed by a seed sequence that ``minidl.default_rng(s)`` (PCG64 keyed by
    ``SeedSequence(s)``, no spawn key) never produces, so the directions are independent of
    any data drawn with ``default_rng``, whatever its seed.

    Args:
        seed: non-negative integer; the reports name it so a failure can be reproduced.

    Returns:
        A host NumPy ``Generator``.
    """
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or int(seed) < 0:
        raise ValueError(f"check_rng expects a non-negative integer seed, got {seed!r}")
    random = backend.host().random
    sequence = random.SeedSequence(CHECK_ENTROPY, spawn_key=(int(seed),))
    return random.Generator(random.Philox(sequence))


def _directions_rng(rng, seed):
    """(generator, description) for the random directions of one check."""
    if rng is None:
        return check_rng(seed), f"minidl.gradcheck.check_rng({int(seed)})"
    if not hasattr(rng, "standard_normal"):
        raise TypeError(f"rng must be a generator (e.g. minidl.gradcheck.check_rng(0)) or "
                        f"None, got {rng!r}; pass seed=<int> to pick the check's own seed")
    return rng, "the generator passed as rng="


def _check_directions(directions):
    if isinstance(directions, bool) or not hasattr(directions, "__index__") \
            or int(directions) < 1:
        raise ValueError(f"directions must be a positive integer, got {directions!r}")
    return int(directions)


def rel_error(a, b):
    """max |a - b| / max(1e-12, |a| + |b|): the CS231n relative error, elementwise max."""
    xp = backend.array_module(a, b)
    denom = xp.maximum(xp.abs(a) + xp.abs(b), 1e-12)
    return float((xp.abs(a - b) / denom).max()) if a.size else 0.0


def _float64_contiguous(x, fn):
    if x.dtype.name != "float64":
        raise TypeError(f"{fn} needs a float64 array, got {x.dtype}; "
                        "in float32 central differences are accurate to ~4 digits at best")
    if x.size > 1 and not x.flags.c_contiguous:
        # reshape(-1) would be a copy: perturbing it would leave x, and f, unchanged and
        # every derivative would come out 0
        raise ValueError(f"{fn} needs a C-contiguous array (it perturbs x in place); got "
                         "a Fortran-ordered or strided one: pass xp.ascontiguousarray(x) "
                         "and let f read that array")
    return x.reshape(-1)


def numerical_gradient(f, x, eps=1e-6):
    """Central-difference gradient of the scalar function ``f()`` with respect to ``x``.

    ``x`` is perturbed in place, one element at a time, and restored exactly.

    Args:
        f: callable with no arguments returning a float; it must read ``x``.
        x: float64 array (on either backend) that ``f`` depends on.
        eps: the step h.

    Returns:
        Array of the shape of ``x`` holding df/dx.

    Raises:
        TypeError: ``x`` is not float64.
        ValueError: ``x`` is not C-contiguous (Fortran-ordered, a transpose or a strided
            slice): it could not be perturbed in place through a flat view.
    """
    return _numerical_gradients(lambda: [f()], x, eps)[0]


def _numerical_gradients(f, x, eps):
    """Central differences of K scalars at once: ``f()`` returns K floats -> (K, *x.shape).

    One pair of evaluations per element serves every scalar (e.g. one forward pass gives
    sum(out * dout_k) for all K upstream directions).
    """
    flat = _float64_contiguous(x, "numerical_gradient")
    np = backend.host()
    columns = []
    for i in range(x.size):
        old = float(flat[i])
        flat[i] = old + eps
        f_plus = np.asarray(f(), dtype="float64")  # (K,)
        flat[i] = old - eps
        f_minus = np.asarray(f(), dtype="float64")  # (K,)
        flat[i] = old
        columns.append((f_plus - f_minus) / (2 * eps))
    K = len(f()) if not columns else columns[0].shape[0]
    grad = np.stack(columns, axis=1) if columns else np.zeros((K, 0))  # (K, size)
    xp = backend.array_module(x)
    return xp.asarray(grad.reshape((K,) + tuple(x.shape)))  # (K, *x.shape)


def _one_sided(f, flat, i, h):
    """Forward and backward one-sided slopes of all K scalars at element i: two (K,)."""
    np = backend.host()
    old = float(flat[i])
    f0 = np.asarray(f(), dtype="float64")
    flat[i] = old + h
    fp = np.asarray(f(), dtype="float64")
    flat[i] = old - h
    fm = np.asarray(f(), dtype="float64")
    flat[i] = old
    return (fp - f0) / h, (f0 - fm) / h


class ArrayCheck:
    """The result for one array, over all K upstream directions: worst element, errors, kinks.

    ``analytic`` and ``numeric`` are stacked over the directions, shape (K, *shape). An
    element fails when it is out of tolerance in any direction (and not on a kink there).

    Attributes:
        name, shape: the array checked.
        ok: no element failed (and the analytic array had the right shape).
        n_failed: elements out of tolerance in at least one direction.
        kinks: flat indices of elements skipped as kinks (in some direction).
        max_abs_error, max_rel_error: over all directions, kinks excluded; the relative
            error is |a - n| / max(|a|, |n|), the relative part of the pass rule (an
            element also passes while |a - n| <= atol, whatever its relative error).
        worst_index, worst_direction, worst_analytic, worst_numeric: the element with the
            largest error relative to its bound.
        problem: a sentence when the backward wrote no array or one of the wrong shape.
    """

    def __init__(self, name, analytic, numeric, rtol, atol, kinks=(), problem=None,
                 numeric_10=None):
        self.name = name
        self.shape = tuple(numeric.shape[1:])
        self.rtol, self.atol = rtol, atol
        self.problem = problem
        self.directions = int(numeric.shape[0])
        self.kinks = sorted({i for _, i in kinks})
        if problem is not None:
            self.n_failed, self.ok = int(numeric[0].size), False
            self.max_abs_error = self.max_rel_error = float("inf")
            self.worst_index, self.worst_direction = (), 0
            self.worst_analytic = self.worst_numeric = float("nan")
            return
        xp = backend.array_module(analytic, numeric)
        K = self.directions
        diff = xp.abs(analytic - numeric).reshape(K, -1)  # (K, size)
        bound = atol + rtol * xp.maximum(xp.abs(analytic), xp.abs(numeric)).reshape(K, -1)
        skip = xp.zeros(diff.shape, dtype=bool)  # (K, size)
        for k, i in kinks:
            skip[k, i] = True
        diff = xp.where(skip, 0.0, diff)
        bad = diff > bound  # (K, size)
        if numeric_10 is not None:  # the second opinion at step 10 eps (module doc)
            a = analytic.reshape(K, -1)
            n10 = numeric_10.reshape(K, -1)
            bound_10 = atol + rtol * xp.maximum(xp.abs(a), xp.abs(n10))
            bad &= xp.abs(a - n10) > bound_10
            diff = xp.where(bad, diff, xp.minimum(diff, bound))
        self.n_failed = int(bad.any(axis=0).sum())
        self.ok = self.n_failed == 0
        size = diff.shape[1]
        self.max_abs_error = float(diff.max()) if size else 0.0
        # the relative part of the pass rule, |a - n| / max(|a|, |n|), so that a failed
        # element always shows an error above rtol (CS231n's rel_error divides by
        # |a| + |n|, up to 2x less: a FAIL could read "7.5e-06" against rtol 1e-05)
        denom = xp.maximum(xp.maximum(xp.abs(analytic), xp.abs(numeric)), 1e-12)
        self.max_rel_error = float((diff / denom.reshape(K, -1)).max()) if size else 0.0
        score = (diff / bound).reshape(-1)  # (K * size,)
        worst = int(score.argmax()) if size else 0
        k, i = divmod(worst, max(size, 1))
        self.worst_direction = k
        self.worst_index = tuple(int(v) for v in backend.host().unravel_index(i, self.shape))
        self.worst_analytic = float(analytic.reshape(K, -1)[k, i]) if size else 0.0
        self.worst_numeric = float(numeric.reshape(K, -1)[k, i]) if size else 0.0

    def __str__(self):
        status = "ok  " if self.ok else "FAIL"
        if self.problem is not None:
            return f"  [{status}] {self.name:<10} {self.problem}"
        line = (f"  [{status}] {self.name:<10} shape {str(self.shape):<16} max rel error "
                f"{self.max_rel_error:.2e}, max abs error {self.max_abs_error:.2e}")
        if not self.ok:
            where = (f" (upstream direction {self.worst_direction})"
                     if self.directions > 1 else "")
            line += (f"\n         {self.n_failed} element(s) out of tolerance; worst at index "
                     f"{self.worst_index}{where}: analytic {self.worst_analytic:.10g} vs "
                     f"numeric {self.worst_numeric:.10g}")
        elif self.max_rel_error > self.rtol:
            line += (f"\n         (relative error above rtol only where |a - n| <= atol = "
                     f"{self.atol:g}: near-zero entries, which pass on the absolute error)")
        if self.kinks:
            line += f"\n         {len(self.kinks)} element(s) skipped: they sit on a kink"
        return line


class GradCheckReport:
    """All array checks of one call; ``ok`` when every array passed.

    Attributes:
        checks: the ``ArrayCheck`` of each array (input first, then the parameters).
        directions_from: where the random directions came from (generator and seed), or
            None when the check used none (``check_loss``, ``check_model``).
        max_rel_error: ``{name: max relative error}``.
    """

    def __init__(self, title, checks, rtol, atol, eps, directions_from=None):
        self.title, self.checks = title, checks
        self.rtol, self.atol, self.eps = rtol, atol, eps
        self.directions_from = directions_from
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
        lines = [head]
        if self.directions_from:
            label = "random directions" if "drawn from" in self.directions_from else "directions"
            lines.append(f"  {label}: {self.directions_from}")
        return "\n".join(lines + [str(c) for c in self.checks])

    __repr__ = __str__


def _shape_problem(analytic, shape, what):
    """A sentence when the backward's array is missing or misshapen, else None."""
    if analytic is None:
        return f"{what} is missing (None)"
    if not backend.is_array(analytic):
        return f"{what} is a {type(analytic).__name__}, not an array"
    if tuple(analytic.shape) != tuple(shape):
        return (f"{what} has shape {tuple(analytic.shape)}, expected {tuple(shape)} (the "
                "shape of what it is the gradient of)")
    return None


_WROTE = {
    "input": ("{who} wrote into its input {arg} (in place); compute the result in a new "
              "array: the caller's {arg} (the previous layer's output, or the data) must "
              "stay as it was"),
    "dout": ("{who} wrote into its dout (in place, e.g. dout *= ...); return a new array "
             "(dx = dout * ...): a Residual passes the same dout on to its shortcut"),
    "tangent": ("{who} wrote into its tangent {arg} (in place); return a new array: a "
                "Residual passes the same {arg} on to its shortcut, and a curvature "
                "product reuses it"),
}


def _without_writes(fn, a, wrote, key):
    """``fn(copy of a)``; adds ``key`` to the set ``wrote`` when fn changed its copy."""
    a_in = a.copy()
    result = fn(a_in)
    if not _same(a_in, a):
        wrote.add(key)
    return result


def _wrote_checks(wrote, title, shapes, rtol, atol):
    """The failed checks for every pass that wrote into an array it was given.

    ``wrote``: keys (``"forward"``, ``"backward"``, ``"jvp"``, ``"backward_rop"``) of
    passes that did; ``shapes``: their argument's shape, by the same key.
    """
    kinds = {"forward": ("input", "x"), "backward": ("dout", "dout"),
             "jvp": ("tangent", "Rx"), "backward_rop": ("tangent", "Rdout")}
    return [_wrote_check(kinds[key][0], f"{title}.{key}", kinds[key][1], shapes[key], rtol,
                         atol)
            for key in ("forward", "backward", "jvp", "backward_rop") if key in wrote]


def _wrote_check(kind, who, arg, shape, rtol, atol):
    """A failed check saying that a pass wrote into an array it was given."""
    placeholder = backend.host().zeros((1,) + tuple(shape))  # only its shape is read
    return ArrayCheck(kind, None, placeholder, rtol, atol,
                      problem=_WROTE[kind].format(who=who, arg=arg))


def _same(a, b):
    """True when the two arrays hold the same values (NaN equal to NaN)."""
    xp = backend.array_module(a, b)
    return bool(xp.array_equal(a, b, equal_nan=True))


def _compare(name, f, x, analytics, eps, rtol, atol, what):
    """Check the K analytic gradients (a list, one per scalar of ``f``) of x."""
    numeric = _numerical_gradients(f, x, eps)  # (K, *x.shape)
    for a in analytics:
        problem = _shape_problem(a, x.shape, what)
        if problem is not None:
            return ArrayCheck(name, None, numeric, rtol, atol, problem=problem)
    xp = backend.array_module(x)
    analytic = xp.stack([xp.asarray(a, dtype="float64") for a in analytics])  # (K, *shape)
    K = analytic.shape[0]
    diff = xp.abs(analytic - numeric).reshape(K, -1)  # (K, size)
    bound = (atol + rtol * xp.maximum(xp.abs(analytic), xp.abs(numeric))).reshape(K, -1)
    bad = backend.to_numpy(diff > bound)  # (K, size) on the host
    kinks = []
    flat = x.reshape(-1)
    host_a = backend.to_numpy(analytic).reshape(K, -1)
    host_b = backend.to_numpy(bound)
    numeric_10 = backend.to_numpy(numeric).reshape(K, -1).copy()  # (K, size)
    for i in backend.host().nonzero(bad.any(axis=0))[0].tolist():
        sp, sm = _one_sided(f, flat, i, 10 * eps)
        numeric_10[:, i] = (sp + sm) / 2  # the central difference at step 10 eps
        sp, sm = _one_sided(f, flat, i, eps)
        sp2, sm2 = _one_sided(f, flat, i, eps / 10)
        for k in backend.host().nonzero(bad[:, i])[0].tolist():
            jump, jump2 = abs(sp[k] - sm[k]), abs(sp2[k] - sm2[k])
            a, b = float(host_a[k, i]), float(host_b[k, i])
            # a kink: the slopes disagree at both step sizes (a smooth f shrinks the gap
            # 10x) and the analytic value is one of the one-sided slopes, or between them
            lo, hi = min(sp2[k], sm2[k]), max(sp2[k], sm2[k])
            if jump > b and jump2 > 0.5 * jump and lo - 10 * b <= a <= hi + 10 * b:
                kinks.append((k, i))
    numeric_10 = xp.asarray(numeric_10.reshape(analytic.shape))
    return ArrayCheck(name, analytic, numeric, rtol, atol, kinks, numeric_10=numeric_10)


def _float64_copy(a):
    """A C-ordered float64 copy (central differences perturb it in place, element by element)."""
    return backend.array_module(a).array(a, dtype="float64", order="C")


@contextlib.contextmanager
def _float64_session(layer):
    """Run a check on float64 copies of a layer's parameters and buffers.

    Yields ``reset()``, which puts the buffers back to their values at the start, so that
    repeated forward passes cannot drift through BatchNorm's running statistics. Every
    leaf's randomness is held fixed (``Layer.fixed_randomness``). On exit the original
    arrays (and dtypes) come back, the random layers' masks and generators too, and
    everything the passes cached is dropped: a check leaves the layer as it found it.
    """
    leaves = layer.leaves()
    saved = [(leaf, dict(leaf.params), dict(leaf.buffers)) for leaf in leaves]
    try:
        with contextlib.ExitStack() as stack:
            for leaf in leaves:
                stack.enter_context(leaf.fixed_randomness())
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


def _refuse_if_random(title, first, second):
    """Raise when two evaluations at the same point differ: the function is random."""
    xp = backend.array_module(first, second)
    if tuple(first.shape) == tuple(second.shape) and bool(xp.array_equal(first, second)):
        return
    raise RuntimeError(
        f"{title}: two forward passes on the same input gave different results, so central "
        "differences would measure random noise, not a derivative. Some layer draws random "
        "numbers in train mode without a way to hold them fixed: call .eval() on it, or "
        "give it fixed_randomness() (see minidl.layers.Layer, and Dropout for an example)")


def _parameter_analytics(model, K_grads):
    """[(name, leaf, key, [grad for each direction])] from the K recorded gradient dicts."""
    out = []
    for j, (name, leaf, key) in enumerate(model.parameters()):
        out.append((name, leaf, key, [grads[j] for grads in K_grads]))
    return out


def _record_grads(model):
    """The gradient of every parameter now in ``grads`` (copies; None where missing)."""
    out = []
    for _, leaf, key in model.parameters():
        g = leaf.grads.get(key)
        out.append(g.copy() if backend.is_array(g) else g)
    return out


def _compare_all(f, x, dxs, model, grads_per_direction, eps, rtol, atol):
    """Checks of the input gradients and of every parameter gradient, over K directions."""
    title = type(model).__name__
    checks = [_compare("x", f, x, dxs, eps, rtol, atol, f"{title}.backward's return value")]
    for name, leaf, key, gs in _parameter_analytics(model, grads_per_direction):
        checks.append(_compare(name, f, leaf.params[key], gs, eps, rtol, atol,
                               f"grads[{key!r}] of {type(leaf).__name__}"))
    return checks


def check_layer(layer, x, dout=None, rng=None, eps=1e-6, rtol=1e-5, atol=1e-7,
                check_finite=True, seed=0, directions=2):
    """Check ``layer.backward`` against central differences, in float64.

    The layer's parameters and buffers are temporarily replaced by float64 copies and put
    back afterwards, so the check leaves the layer as it found it (running statistics,
    Dropout masks and generators included). Random layers in train mode are held fixed.

    Args:
        layer: any ``Layer`` (a container is checked as a whole).
        x: input array; it is copied to float64.
        dout: one upstream gradient of the output's shape; by default ``directions``
            random normal arrays (see the module doc for why random, and why two).
        rng: generator for the random directions; by default ``check_rng(seed)``, which
            never repeats data drawn with ``minidl.default_rng``.
        eps, rtol, atol: step and tolerances (see the module doc).
        check_finite: raise ``ValueError`` if x holds NaN or inf.
        seed: seed of ``check_rng`` (named in the report, so a failure reproduces).
        directions: how many random upstream gradients (ignored when ``dout`` is given).

    Returns:
        ``GradCheckReport``: ``.ok``, ``.max_rel_error`` per array, ``.directions_from``,
        readable ``str()``.

    Raises:
        RuntimeError: the layer computes a different output each time (an unfixable random
            layer in train mode).
    """
    title = type(layer).__name__
    if check_finite:
        expect_finite(f"check_layer({title}): input x", x)
    wrote = set()  # passes that wrote into an array they were given (module doc, "In place")

    def forward():  # on its own copy: central differences keep perturbing x
        return _without_writes(layer.forward, x, wrote, "forward")

    with _float64_session(layer) as reset:
        x = _float64_copy(x)
        reset()
        out = forward()
        xp = backend.array_module(out)
        if dout is None:
            gen, source = _directions_rng(rng, seed)
            K = _check_directions(directions)
            # non-uniform on purpose, and independent of anything drawn with default_rng
            douts = [xp.asarray(gen.standard_normal(out.shape)) for _ in range(K)]
            source = f"{K} upstream gradient(s) drawn from {source}"
        else:
            douts = [_float64_copy(xp.asarray(dout))]
            source = ("the dout passed in (one direction, chosen by the caller, can hide an "
                      "error: leave dout out to check random ones)")
        reset()
        _refuse_if_random(f"check_layer({title})", out, forward())

        def f():
            reset()
            out = forward()
            return [float((out * d).sum()) for d in douts]

        dxs, grads = [], []
        for d in douts:
            f()
            # on a copy: a backward that writes into its dout must not change the direction
            # the numeric side uses (an in-place factor would then match on both sides)
            dxs.append(_without_writes(layer.backward, d, wrote, "backward"))
            grads.append(_record_grads(layer))
            dxs[-1] = dxs[-1].copy() if backend.is_array(dxs[-1]) else dxs[-1]
        checks = _compare_all(f, x, dxs, layer, grads, eps, rtol, atol)
        checks += _wrote_checks(wrote, title, {"forward": x.shape, "backward": out.shape},
                                rtol, atol)
    return GradCheckReport(title, checks, rtol, atol, eps, source)


def _float_target(target):
    if backend.is_array(target) and target.dtype.kind == "f":
        return _float64_copy(target)
    return target


def check_loss(loss, logits, target, eps=1e-6, rtol=1e-5, atol=1e-8):
    """Check ``loss.backward()`` (dL/dlogits) against central differences in float64.

    The loss is a scalar, so no random direction is needed.
    """
    expect_finite(f"check_loss({type(loss).__name__}): logits", logits)
    title = type(loss).__name__
    x = _float64_copy(logits)
    target = _float_target(target)
    wrote = set()  # "forward" when the loss wrote into its logits (module doc, "In place")

    def f():  # on its own copy of the logits
        return [_without_writes(lambda h: loss.forward(h, target), x, wrote, "forward")]

    f()
    analytic = loss.backward()
    analytic = analytic.copy() if backend.is_array(analytic) else analytic
    check = _compare("logits", f, x, [analytic], eps, rtol, atol,
                     f"{title}.backward()'s return value")
    extra = ([_wrote_check("input", f"{title}.forward", "logits", x.shape, rtol, atol)]
             if wrote else [])
    return GradCheckReport(title, [check] + extra, rtol, atol, eps)


def check_model(model, loss, x, target, eps=1e-6, rtol=1e-5, atol=1e-8):
    """Check the gradients of ``loss(model(x), target)`` for the input and every parameter.

    As ``check_layer``: float64 copies, random layers held fixed, the model left as found.
    """
    title = f"{type(model).__name__} + {type(loss).__name__}"
    expect_finite(f"check_model({type(model).__name__}): input x", x)
    wrote = set()  # "forward" when the model wrote into x (module doc, "In place")
    with _float64_session(model) as reset:
        x = _float64_copy(x)
        target = _float_target(target)

        def f():  # on the model's own copy of x
            reset()
            return [_without_writes(lambda a: loss.forward(model.forward(a), target), x,
                                    wrote, "forward")]

        first = backend.host().asarray(f())
        _refuse_if_random(f"check_model({title})", first, backend.host().asarray(f()))
        dx = model.backward(loss.backward())
        dx = dx.copy() if backend.is_array(dx) else dx
        checks = _compare_all(f, x, [dx], model, [_record_grads(model)], eps, rtol, atol)
    if wrote:
        checks.append(_wrote_check("input", f"{type(model).__name__}.forward", "x", x.shape,
                                   rtol, atol))
    return GradCheckReport(title, checks, rtol, atol, eps)


def _random_tangents(layer, x, gen):
    """Random Rx (shape of x) and one random V per parameter, on x's device."""
    xp = backend.array_module(x)
    Rx = xp.asarray(gen.standard_normal(x.shape))  # same shape as x
    V = [xp.asarray(gen.standard_normal(leaf.params[key].shape))
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


def _stacked_check(name, analytics, numerics, numerics_10, rtol, atol, what):
    """One ArrayCheck over K directions from lists of K analytic and K numeric arrays
    (at steps h and 10 h)."""
    xp = backend.array_module(numerics[0])
    numeric = xp.stack(numerics)  # (K, *shape)
    for a in analytics:
        problem = _shape_problem(a, numeric.shape[1:], what)
        if problem is not None:
            return ArrayCheck(name, None, numeric, rtol, atol, problem=problem)
    return ArrayCheck(name, xp.stack(analytics), numeric, rtol, atol,
                      numeric_10=xp.stack(numerics_10))


def check_jvp(layer, x, rng=None, h=1e-6, rtol=1e-5, atol=1e-7, seed=0, directions=2):
    """Check ``layer.jvp`` (R-operator forward) against a central difference of forward.

    For each of ``directions`` random tangent pairs Rx and V (one per parameter), compares
    ``jvp(Rx)`` with (forward(x + h Rx; theta + h V) - forward(x - h Rx; theta - h V)) / 2h.
    The tangents come from ``rng`` or ``check_rng(seed)`` (see ``check_layer``).
    """
    gen, source = _directions_rng(rng, seed)
    K = _check_directions(directions)
    title = type(layer).__name__
    wrote = set()  # passes that wrote into an array they were given (module doc, "In place")

    def forward(a):
        return _without_writes(layer.forward, a, wrote, "forward")

    with _float64_session(layer) as reset:
        x = _float64_copy(x)
        reset()
        out = forward(x)
        reset()
        _refuse_if_random(f"check_jvp({title})", out, forward(x))
        analytics, numerics, numerics_10 = [], [], []
        for _ in range(K):
            Rx, V = _random_tangents(layer, x, gen)

            def run(r):
                reset()
                return [forward(x + r * Rx)]

            numerics.append(_central(layer, V, h, run)[0])
            numerics_10.append(_central(layer, V, 10 * h, run)[0])
            reset()
            forward(x)
            _set_rparams(layer, V)
            Rout = _without_writes(layer.jvp, Rx, wrote, "jvp")
            analytics.append(Rout.copy() if backend.is_array(Rout) else Rout)
        checks = [_stacked_check("Rout", analytics, numerics, numerics_10, rtol, atol,
                                 f"{title}.jvp's return value")]
        checks += _wrote_checks(wrote, title, {"forward": x.shape, "jvp": x.shape}, rtol,
                                atol)
    return GradCheckReport(f"{title}.jvp", checks, rtol, atol, h,
                           f"{K} tangent(s) drawn from {source}")


def check_backward_rop(layer, x, rng=None, h=1e-6, rtol=1e-5, atol=1e-7, seed=0,
                       directions=2):
    """Check ``layer.backward_rop`` against a central difference of the backward pass.

    With random dout, Rdout, Rx and V (``directions`` independent sets, from ``rng`` or
    ``check_rng(seed)``), the backward pass run at (x + r Rx, theta + r V, dout + r Rdout)
    is differentiated in r at 0, and compared with R{dx} = ``backward_rop(Rdout)`` and
    R{grads} = ``layer.Rgrads`` (after forward, backward and jvp at r = 0).
    """
    gen, source = _directions_rng(rng, seed)
    K = _check_directions(directions)
    title = type(layer).__name__
    wrote = set()  # passes that wrote into an array they were given (module doc, "In place")

    def forward(a):
        return _without_writes(layer.forward, a, wrote, "forward")

    def backward(d):
        return _without_writes(layer.backward, d, wrote, "backward")

    with _float64_session(layer) as reset:
        x = _float64_copy(x)
        xp = backend.array_module(x)
        reset()
        out = forward(x)
        reset()
        _refuse_if_random(f"check_backward_rop({title})", out, forward(x))
        params = layer.parameters()
        analytic = [[] for _ in range(1 + len(params))]
        numeric = [[] for _ in range(1 + len(params))]
        numeric_10 = [[] for _ in range(1 + len(params))]
        for _ in range(K):
            dout = xp.asarray(gen.standard_normal(out.shape))  # same shape as out
            Rdout = xp.asarray(gen.standard_normal(out.shape))
            Rx, V = _random_tangents(layer, x, gen)

            def run(r):
                reset()
                forward(x + r * Rx)
                dx = backward(dout + r * Rdout)
                return [dx] + [leaf.grads[key].copy() for _, leaf, key in params]

            for j, num in enumerate(_central(layer, V, h, run)):
                numeric[j].append(num)
            for j, num in enumerate(_central(layer, V, 10 * h, run)):
                numeric_10[j].append(num)
            reset()
            forward(x)
            backward(dout)
            _set_rparams(layer, V)
            _without_writes(layer.jvp, Rx, wrote, "jvp")
            Rdx = _without_writes(layer.backward_rop, Rdout, wrote, "backward_rop")
            analytic[0].append(Rdx.copy() if backend.is_array(Rdx) else Rdx)
            for j, (_, leaf, key) in enumerate(params, start=1):
                g = leaf.Rgrads.get(key)
                analytic[j].append(g.copy() if backend.is_array(g) else g)
        checks = [_stacked_check("Rdx", analytic[0], numeric[0], numeric_10[0], rtol, atol,
                                 f"{title}.backward_rop's return value")]
        for j, (name, leaf, key) in enumerate(params, start=1):
            checks.append(_stacked_check(f"R{name}", analytic[j], numeric[j], numeric_10[j],
                                         rtol, atol, f"Rgrads[{key!r}] of {type(leaf).__name__}"))
        checks += _wrote_checks(wrote, title, {"forward": x.shape, "backward": out.shape,
                                               "jvp": x.shape, "backward_rop": out.shape},
                                rtol, atol)
    return GradCheckReport(f"{title}.backward_rop", checks, rtol, atol, h,
                           f"{K} set(s) of dout, Rdout, Rx, V drawn from {source}")
