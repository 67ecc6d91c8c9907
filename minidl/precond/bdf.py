"""BDF: the block-diagonal full empirical Fisher, one dense block per layer (small models).

The reference direction of the MBF paper's cosine-similarity experiment (its Figure 6):
each covered layer keeps the exact empirical Fisher over its own parameters, no further
approximation, and preconditions with its damped inverse::

    theta = [vec(W); b]          the layer's parameters in the flat order (W then b, C order)
    g_n   = d l_n / d theta      per-example gradient of example n's own loss   (p,)
    F     = (1/N) sum_n g_n g_n^T                                              (p, p)
    F_avg <- beta F_avg + (1 - beta) F        (beta = 0: this batch only; the paper used 0.9)
    P     = (F_avg + lambda I)^{-1}           (every T2 steps)
    d     = P g,   g = the layer's mini-batch gradient, written back into layer.grads

For a mean loss the layers' per-example shares carry the 1/N, so g_n = N * share_n; for a
sum loss g_n = share_n (pass ``loss=`` so BDF knows the reduction). The per-example
gradients come from the layer's ``per_example_grads()`` (one einsum, no loop over
examples). A p x p matrix per layer limits BDF to small models: the paper's experiment
used 256-20-20-20-20-20-10.

Also here: ``cosine_similarity(direction_a, direction_b)``, the cosine of the angle between
two directions flattened in the same order (arrays, dicts of arrays such as
``layer.grads``, or lists of those), as the paper compares MBF, KFAC, ... against BDF.

BatchNorm and other layers without ``per_example_grads`` are left to the optimizer.
"""
from .. import backend
from ..layers.conv import Conv2d
from ..layers.linear import Linear
from .base import Preconditioner, check_number, check_period

__all__ = ["BDF", "cosine_similarity"]


def _flatten(direction):
    """Ravel an array, a dict of arrays (insertion order) or a list of those into one list."""
    if isinstance(direction, dict):
        direction = list(direction.values())
    if isinstance(direction, (list, tuple)):
        parts = []
        for part in direction:
            parts.extend(_flatten(part))
        return parts
    if not backend.is_array(direction):
        raise TypeError(f"cosine_similarity expects arrays, dicts of arrays or lists of "
                        f"those, got {type(direction).__name__}")
    return [direction.ravel()]


def cosine_similarity(direction_a, direction_b):
    """cos(a, b) = <a, b> / (||a|| ||b||) over the flattened directions.

    Args:
        direction_a: an array, a dict of arrays (e.g. a copy of ``layer.grads``) or a
            list of those; flattened in order.
        direction_b: the same structure and sizes as ``direction_a``.

    Returns:
        A Python float in [-1, 1].
    """
    a, b = _flatten(direction_a), _flatten(direction_b)
    xp = backend.array_module(*a, *b)
    a, b = xp.concatenate(a), xp.concatenate(b)  # (p,), (p,)
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarity: the directions have {a.size} and {b.size} "
                         "entries; flatten the same parameters in the same order")
    norm = float(xp.linalg.norm(a)) * float(xp.linalg.norm(b))
    if norm == 0.0:
        raise ValueError("cosine_similarity: a direction is zero, so the angle is undefined")
    return float(a @ b) / norm


class BDF(Preconditioner):
    """Block-diagonal full empirical Fisher: one exact, damped (p x p) block per layer.

    Args:
        model: the network; its Linear and Conv2d layers are preconditioned.
        damping: lambda, added to each layer's block before inversion.
        stat_decay: beta, the decay of the moving average of the blocks (0: the current
            batch's EF).
        loss: the loss object, read only for its ``reduction`` (default: a mean loss).
        T1: update the blocks every ``T1`` steps.
        T2: recompute the inverses every ``T2`` steps.
        warn: warn about parameterised layers left to the optimizer.
        max_block: the most parameters p one layer may have (default 8192: its two p x p
            float32 matrices then take 0.5 GiB).

    Raises:
        ValueError: a layer has more than ``max_block`` parameters (checked for every
            layer before any block is allocated; the message gives the memory it would
            take), or has no ``per_example_grads``.
    """

    name = "bdf"

    def __init__(self, model, damping=1e-3, stat_decay=0.0, loss=None, T1=1, T2=1,
                 warn=True, max_block=8192):
        self.damping = check_number("BDF", "damping", damping, low=0.0, low_open=True)
        self.beta = check_number("BDF", "stat_decay (beta)", stat_decay, 0.0, 1.0, high_open=True)
        self.max_block = check_period("BDF", "max_block", max_block)
        self.reduction = getattr(loss, "reduction", "mean")
        super().__init__(model, T1=T1, T2=T2, warn=warn)
        sizes = [sum(int(p.size) for p in layer.params.values()) for layer in self.layers]
        for i, (layer, size) in enumerate(zip(self.layers, sizes)):  # all checks first
            if not hasattr(layer, "per_example_grads"):
                raise ValueError(f"BDF needs per_example_grads() on {self.names[i]} "
                                 f"({type(layer).__name__})")
            if size > self.max_block:
                gib = 2 * size * size * layer.params["W"].dtype.itemsize / 2**30
                raise ValueError(
                    f"BDF keeps two p x p matrices per layer, and layer {self.names[i]} "
                    f"({type(layer).__name__}) has p = {size} parameters: {gib:.3g} GiB "
                    f"(max_block={self.max_block}). BDF is for tiny models (the MBF "
                    "paper's 256-20-20-20-20-20-10 has p <= 5140 per layer); use MBF or "
                    "KFAC for this one, or raise max_block if the memory is there")
        for i, (layer, size) in enumerate(zip(self.layers, sizes)):
            W = layer.params["W"]
            xp = backend.array_module(W)
            self.state[i]["F"] = xp.zeros((size, size), dtype=W.dtype)  # (p, p)
            self.state[i]["P"] = xp.zeros((size, size), dtype=W.dtype)  # (p, p)

    def covered_types(self):
        return [Linear, Conv2d]

    def hyperparameters(self):
        # not max_block: a limit on memory, not part of the method
        return dict(super().hyperparameters(), damping=self.damping, stat_decay=self.beta)

    def _flat_per_example(self, layer):
        """Per-example gradients g_n of each example's own loss, shape (N, p)."""
        shares = layer.per_example_grads()  # key -> (N, *param shape)
        xp = backend.array_module(*shares.values())
        N = shares["W"].shape[0]
        G = xp.concatenate([shares[key].reshape(N, -1) for key in layer.params], axis=1)
        return G * N if self.reduction == "mean" else G  # (N, p)

    def update_curvature(self, i, layer, step=None):
        """F = (1/N) G^T G from the per-example gradients, averaged with decay beta."""
        s = self.state[i]
        G = self._flat_per_example(layer)  # (N, p)
        F = G.T @ G / G.shape[0]  # (p, p)
        s["F"] = self.beta * s["F"] + (1 - self.beta) * F

    def update_inverse(self, i, layer, step=None):
        """P = (F + lambda I)^{-1}."""
        s = self.state[i]
        xp = backend.array_module(s["F"])
        eye = xp.eye(s["F"].shape[0], dtype=s["F"].dtype)  # (p, p)
        s["P"] = xp.linalg.inv(s["F"] + self.damping * eye)  # (p, p)

    def precondition(self, i, layer, step=None):
        """d = P g over the layer's flattened [vec(W), b]."""
        xp = backend.array_module(layer.grads["W"])
        g = xp.concatenate([layer.grads[key].ravel() for key in layer.params])  # (p,)
        d = self.state[i]["P"] @ g  # (p,)
        start = 0
        for key, p in layer.params.items():
            layer.grads[key] = d[start:start + p.size].reshape(p.shape)  # like p
            start += p.size
