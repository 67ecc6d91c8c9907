"""Assertions for assignment tests whose failure message teaches.

The tests of the assignments (in their masters) call these in the student's kernel. A
failing check raises ``AssertionError`` with a message a student can act on: which array,
its shape against the expected one (a transposed gradient shows up here), the worst
element with both values and the error, or minidl's gradient-check report (which array,
which element, analytic against numeric). Otter shows that message as the test's output.

``earlier_answers_from_reference`` lets a question that builds on an earlier one be graded
on its own code: inside it, the student's functions see the reference answers of the
earlier questions, so a mistake there is not charged twice.
"""
import contextlib

from .. import backend

__all__ = ["assert_close", "assert_gradcheck", "assert_loss_gradcheck", "as_array",
           "assert_same_updates", "earlier_answers_from_reference"]


@contextlib.contextmanager
def earlier_answers_from_reference(function, **reference):
    """Inside the block, the global names in ``reference`` point at the reference answers,
    as ``function`` (one of the student's, e.g. ``Conv2d.forward``) sees them; the
    student's own are put back afterwards, also when a check in the block fails.

    Args:
        function: a function defined in the student's notebook; its globals are the
            notebook's.
        reference: ``name=reference function``, e.g. ``im2col=...`` for A2's Conv2d,
            which calls question 2's ``im2col``.
    """
    names = function.__globals__
    saved = {name: names[name] for name in reference if name in names}
    names.update(reference)
    try:
        yield
    finally:
        for name in reference:
            if name in saved:
                names[name] = saved[name]
            else:
                names.pop(name, None)


def as_array(name, value):
    """``value`` as a host float64 array, or an ``AssertionError`` saying what came back."""
    np = backend.host()
    if value is None or value is Ellipsis:
        raise AssertionError(f"{name} is {value!r}: this part is not written yet")
    try:
        return np.asarray(backend.to_numpy(value) if backend.is_array(value) else value,
                          dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{name} should be an array of numbers, got "
                             f"{type(value).__name__} ({e})") from None


def assert_close(name, got, expected, rtol=1e-6, atol=1e-9):
    """Check ``got`` against ``expected`` elementwise: |got - exp| <= atol + rtol |exp|."""
    np = backend.host()
    expected = as_array(f"the reference {name}", expected)
    got = as_array(name, got)
    if got.shape != expected.shape:
        hint = ""
        if got.ndim == 2 and got.shape == expected.shape[::-1]:
            hint = " (the transpose: check the order of the factors)"
        raise AssertionError(f"{name} has shape {got.shape}, expected {expected.shape}{hint}")
    if not np.isfinite(got).all():
        raise AssertionError(f"{name} holds {int((~np.isfinite(got)).sum())} NaN/inf values")
    diff = np.abs(got - expected)
    bound = atol + rtol * np.abs(expected)
    if (diff > bound).any():
        worst = np.unravel_index(int(np.argmax(diff / bound)), got.shape)
        rel = diff[worst] / max(abs(expected[worst]), 1e-300)
        n_bad = int((diff > bound).sum())
        raise AssertionError(
            f"{name}: {n_bad} of {got.size} element(s) differ from the reference; worst at "
            f"index {tuple(int(i) for i in worst)}: got {got[worst]:.10g}, expected "
            f"{expected[worst]:.10g} (relative error {rel:.2e}, tolerance {rtol:g})")


def assert_gradcheck(layer, x, **kwargs):
    """Run ``minidl.gradcheck.check_layer`` and fail with its report unless it passes.

    The gradients' shapes are checked first (each ``grads[k]`` against ``params[k]``), so a
    transposed gradient is named as such instead of failing inside the comparison.
    """
    from ..gradcheck import check_layer
    np = backend.host()
    # this first pass only checks shapes: run it in the layer's own precision (minidl does
    # not mix them); check_layer itself then works in float64 on copies of the parameters
    dtype = next((p.dtype for p in layer.params.values()), np.float64)
    x_in = np.array(x, dtype=dtype)
    x_kept = x_in.copy()
    try:
        out = layer.forward(x_in)
        dout = np.ones_like(as_array("forward output", out))
        dx = layer.backward(dout)
    except AssertionError:
        raise
    except Exception as e:
        raise AssertionError(f"{type(layer).__name__}: forward/backward raised "
                             f"{type(e).__name__}: {e}") from None
    # the gradient check below works on copies and cannot see a pass that writes into
    # its input (x[x < 0] = 0 in a ReLU): the caller's array would change under it
    for name, arg, got, kept, why in (
            ("forward", "x", x_in, x_kept, "x is the previous layer's output"),
            ("backward", "dout", dout, 1.0, "dout is the layer above's, which may read it")):
        if not np.array_equal(got, np.broadcast_to(kept, np.shape(got))):
            raise AssertionError(f"{type(layer).__name__}.{name} changed its input {arg} in "
                                 f"place; leave it as it is and compute into a new array "
                                 f"({why})")
    as_array("backward's return value dx", dx)
    for key, p in layer.params.items():
        g = layer.grads.get(key)
        if g is None:
            raise AssertionError(f"backward did not set grads[{key!r}]")
        if tuple(np.shape(g)) != tuple(np.shape(p)):
            raise AssertionError(f"grads[{key!r}] has shape {tuple(np.shape(g))}, but "
                                 f"params[{key!r}] has shape {tuple(np.shape(p))}: a gradient "
                                 "has the shape of its parameter (transposed?)")
    try:
        report = check_layer(layer, np.array(x, dtype=np.float64), **kwargs)
    except Exception as e:
        raise AssertionError(f"the gradient check could not run: {type(e).__name__}: {e}") \
            from None
    if not report.ok:
        raise AssertionError(str(report))


def assert_loss_gradcheck(loss, logits, target, **kwargs):
    """``minidl.gradcheck.check_loss`` of ``loss.backward()``; fail with its report."""
    from ..gradcheck import check_loss
    try:
        report = check_loss(loss, logits, target, **kwargs)
    except Exception as e:
        raise AssertionError(f"the gradient check could not run: {type(e).__name__}: {e}") \
            from None
    if not report.ok:
        raise AssertionError(str(report))


def _tiny_model(seed):
    from .. import layers
    rng = backend.default_rng(seed)
    model = layers.Sequential(layers.Linear(3, 2, rng=rng), layers.Tanh(),
                              layers.Linear(2, 2, rng=rng))
    return model.astype("float64")


def assert_same_updates(make_mine, make_reference, steps=6, seed=0, rtol=1e-7, atol=1e-12):
    """Run two optimizers on identical tiny models with the same gradients, step by step.

    ``make_mine(model)`` and ``make_reference(model)`` build the optimizers. At step k both
    models get the same made-up gradients (random, with sign changes, a zero entry and a
    tiny one, so that sign-based and adaptive methods and their eps are exercised), both
    optimizers step, and every parameter is compared; the first difference names the step
    and the parameter. The gradients must come out of ``step()`` as they went in
    (``torch.optim`` never changes ``p.grad``; a preconditioner, a clip or a log may read
    them afterwards).
    """
    np = backend.host()
    mine_model, ref_model = _tiny_model(seed), _tiny_model(seed)
    mine, ref = make_mine(mine_model), make_reference(ref_model)
    rng = backend.default_rng(seed + 1)
    names = [name for name, _, _ in ref_model.parameters()]
    for k in range(1, steps + 1):
        given = []  # the gradients as handed to the student's optimizer
        for (_, a, key), (_, b, _) in zip(mine_model.parameters(), ref_model.parameters()):
            g = rng.standard_normal(a.params[key].shape) * (1 + k % 3)
            g.reshape(-1)[0] = 0.0 if k == 3 else g.reshape(-1)[0]
            g.reshape(-1)[-1] *= 1e-6  # tiny, where sqrt(v) is near eps: eps's place shows
            a.grads[key], b.grads[key] = g.copy(), g.copy()
            given.append(g)
        try:
            mine.step()
        except Exception as e:
            raise AssertionError(f"step {k}: your optimizer raised {type(e).__name__}: {e}") \
                from None
        for name, (_, a, key), g in zip(names, mine_model.parameters(), given):
            if not np.array_equal(a.grads.get(key), g):
                raise AssertionError(
                    f"step {k}: your optimizer changed the gradient of parameter {name} in "
                    "place (layer.grads); leave g as it is and compute into a new array "
                    "(torch.optim never changes p.grad, and the gradient may be read after "
                    "step())")
        ref.step()
        for name, (_, a, key), (_, b, _) in zip(names, mine_model.parameters(),
                                                ref_model.parameters()):
            assert_close(f"step {k}, parameter {name}", a.params[key], b.params[key],
                         rtol=rtol, atol=atol)
