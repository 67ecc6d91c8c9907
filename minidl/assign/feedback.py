"""Assertions for assignment tests whose failure message teaches.

The tests of the assignments (in their masters) call these in the student's kernel. A
failing check raises ``AssertionError`` with a message a student can act on: which array,
its shape against the expected one (a transposed gradient shows up here), the worst
element with both values and the error, or minidl's gradient-check report (which array,
which element, analytic against numeric). Otter shows that message as the test's output.
"""
from .. import backend

__all__ = ["assert_close", "assert_gradcheck", "assert_loss_gradcheck", "as_array"]


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
    try:
        out = layer.forward(np.array(x, dtype=np.float64))
        dx = layer.backward(np.ones_like(as_array("forward output", out)))
    except AssertionError:
        raise
    except Exception as e:
        raise AssertionError(f"{type(layer).__name__}: forward/backward raised "
                             f"{type(e).__name__}: {e}") from None
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
