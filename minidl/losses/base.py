"""The ``Loss`` protocol.

``loss.forward(logits, target) -> float`` computes the reduced loss and caches what the
backward pass needs; ``loss.backward() -> dlogits`` returns the gradient of the reduced
loss with respect to the logits (same shape as the logits).

Curvature methods need the loss's second derivatives with respect to the logits, written
by hand for each loss. Logits of example n are flattened to a vector of K entries:

* ``hvp(Rlogits)``: H @ Rlogits, the Hessian of the reduced loss applied to a tangent of
  the logits (same shape as the logits). Block diagonal over examples.
* ``hessian()``: the per-example blocks of that Hessian, shape (N, K, K).
* ``hessian_sum()``: sum_n H_n, shape (K, K), without building the (N, K, K) stack (KFRA's
  starting matrix; for MSE and BCE the blocks are diagonal).
* ``hessian_factor()``: S of shape (N, K, K) with S_n S_n^T = hessian()[n] (KFLR's
  square-root factor). For a "mean" loss the blocks carry the 1/N of the reduction.
* ``sample_target(rng)``: targets drawn from the model's own predictive distribution
  p(y | logits) (for the true Fisher, MBF-True and sampled KFAC).

Every loss keeps the logits of the last forward pass in ``cache["logits"]`` (the
preconditioners that sample targets from the model read them there).

``reduction="mean"`` averages over all elements as PyTorch does; ``"sum"`` sums.

What every loss does with its input (the layers' rules, ``minidl.layers.base``):

* logits that are not a floating array raise ``TypeError`` (uint8 pixels: use
  ``minidl.data.transforms.to_float``); integer class labels are the targets'
  business.
* An empty batch (N = 0) gives 0.0 with ``reduction="sum"``; ``"mean"`` raises
  ``ValueError``, since the mean over no values is 0/0 (PyTorch returns NaN).
* A loss value that is NaN or infinite is returned as it is (a training loop then stops
  as "diverged") together with one ``minidl.errors.NonFiniteWarning`` that names the rows
  whose logits or targets are not finite. Only the one value is checked on every call;
  the rows are searched only when it is already bad.
* ``backward`` or a curvature method before ``forward`` raises ``RuntimeError``.
"""
import warnings

from .. import backend
from ..errors import NonFiniteWarning
from ..layers.base import expect_input

__all__ = ["Loss"]


class Loss:
    """Base class: reduction handling and the calling convention."""

    def __init__(self, reduction="mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', "
                             f"got {reduction!r}")
        self.reduction = reduction
        self.cache = {}

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    def hvp(self, Rlogits):
        raise NotImplementedError

    def hessian(self):
        raise NotImplementedError

    def hessian_sum(self):
        """sum_n H_n, shape (K, K); subclasses override it with a cheaper formula."""
        return self.hessian().sum(axis=0)

    def hessian_factor(self):
        raise NotImplementedError

    def sample_target(self, rng):
        raise NotImplementedError

    def logits(self):
        """The logits of the last ``forward`` call (what ``sample_target`` draws around)."""
        return self._need("logits")

    # -- shared input handling (the first and last line of every forward) --------------
    def _start(self, logits, count):
        """Check the logits and return c, the reduction's scale: 1/count or 1.

        Args:
            logits: what arrived (must be a floating array).
            count: how many terms the "mean" divides by (examples or elements).
        """
        expect_input(self, logits)
        if self.reduction == "sum":
            return 1.0
        if count == 0:
            raise ValueError(
                f"{type(self).__name__}(reduction='mean') got an empty batch (logits of shape "
                f"{tuple(logits.shape)}): the mean over no values is 0/0. Skip empty "
                "batches, or use reduction='sum' (which gives 0)")
        return 1.0 / count

    def _finish(self, value, logits, target):
        """Return ``value``; if it is NaN or infinite, first warn naming the rows to blame."""
        if value == value and abs(value) != float("inf"):
            return value
        bad_logits = _bad_rows(logits)
        bad_target = _bad_rows(target) if backend.is_array(target) and \
            target.dtype.kind == "f" else []
        if bad_logits:
            why = ("NaN or infinity in the input batch passes through every layer into the "
                   "logits (or the weights have diverged); check the data with "
                   "minidl.layers.base.expect_finite('x', x)")
        elif bad_target:
            why = "the targets hold NaN or infinity; check the labels of the batch"
        else:
            why = ("the logits and targets are all finite, so the loss overflowed: a "
                   "diverging run (lower the learning rate) or logits far too large")
        warnings.warn(f"{type(self).__name__}.forward: the loss is {value}; logits "
                      f"{_rows_text(bad_logits)}; target {_rows_text(bad_target)}. {why}",
                      NonFiniteWarning, stacklevel=3)
        return value

    def _need(self, key):
        if key not in self.cache:
            raise RuntimeError(f"{type(self).__name__}: call forward(logits, target) before "
                               "backward() or the curvature methods")
        return self.cache[key]

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


def _bad_rows(a):
    """The indices n of the rows a[n] that hold NaN or infinity (a list, maybe empty)."""
    xp = backend.array_module(a)
    finite = xp.isfinite(a)
    ok = finite.reshape(a.shape[0], -1).all(axis=1) if a.ndim else finite.reshape(1)
    return backend.to_numpy(xp.nonzero(~ok)[0]).tolist()


def _rows_text(rows):
    """'all finite' or 'non-finite in 3 row(s) [0, 4, 7]' (the first 10 listed)."""
    if not rows:
        return "all finite"
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    return f"non-finite in {len(rows)} row(s) {rows[:10]}{more}"
