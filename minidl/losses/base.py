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
"""

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

    def _need(self, key):
        if key not in self.cache:
            raise RuntimeError(f"{type(self).__name__}: call forward(logits, target) before "
                               "backward() or the curvature methods")
        return self.cache[key]

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"
