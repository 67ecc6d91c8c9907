"""The ``Preconditioner`` protocol shared by BNP, MBF, KFAC, Shampoo, KFRA, KFLR and BDF.

A preconditioner sits between the backward pass and the optimizer::

    loss_value = crit.forward(model.forward(x), y)
    model.backward(crit.backward())
    precond.step()          # reads layer.cache["x"], layer.cache["dout"], layer.grads,
                            # updates its curvature statistics, then overwrites each
                            # covered layer's grads with the preconditioned direction
    opt.step()              # any first-order optimizer (SGD, momentum, Adam, ...)

Everything a method keeps lives in ``self.state[i]`` (a dict of arrays for the i-th
covered layer) and ``self.t`` (steps taken), so ``state_dict()`` can write it into a
checkpoint without pickling. Subclasses write three methods, the way the papers split the
work: ``update_curvature(i, layer)`` (running statistics, every ``T1`` steps),
``update_inverse(i, layer)`` (damped inverses or inverse roots, every ``T2`` steps) and
``precondition(i, layer)`` (replace ``layer.grads`` in place).
"""
import warnings

from .. import backend

__all__ = ["Preconditioner", "CoverageWarning"]


class CoverageWarning(UserWarning):
    """Issued by a constructor when some parameterised layers are left to the optimizer."""


class Preconditioner:
    """Base class. Subclasses set ``covers`` (layer classes) and the three methods.

    Args:
        model: the network (a ``Layer``); its leaves with parameters are considered.
        T1: update the curvature statistics every ``T1`` steps (1 = every step).
        T2: recompute inverses every ``T2`` steps.
        warn: issue a ``CoverageWarning`` naming the layers the method does not cover.
    """

    name = "preconditioner"

    def __init__(self, model, T1=1, T2=1, warn=True):
        for label, value in (("T1", T1), ("T2", T2)):
            if int(value) != value or value < 1:
                raise ValueError(f"{type(self).__name__}: {label} must be a positive integer, "
                                 f"got {value!r}")
        self.model = model
        self.T1, self.T2 = int(T1), int(T2)
        self.t = 0
        self.layers = []      # covered leaf layers, forward order
        self.names = []       # their qualified names
        self.uncovered = []   # qualified names of parameterised leaves left alone
        for lname, leaf in model.named_leaves():
            if not leaf.params:
                continue
            if self.applies_to(leaf):
                self.layers.append(leaf)
                self.names.append(lname)
            else:
                self.uncovered.append(f"{lname} ({type(leaf).__name__})")
        if not self.layers:
            raise ValueError(f"{type(self).__name__} covers none of the model's layers; it "
                             f"handles {[c.__name__ for c in self.covered_types()]}")
        self.state = [dict() for _ in self.layers]
        if warn and self.uncovered:
            warnings.warn(f"{type(self).__name__} leaves these layers' gradients to the "
                          f"optimizer unchanged: {', '.join(self.uncovered)}",
                          CoverageWarning, stacklevel=3)

    # -- what subclasses write -----------------------------------------------------------
    def covered_types(self):
        """The layer classes this method preconditions."""
        raise NotImplementedError

    def applies_to(self, layer):
        return isinstance(layer, tuple(self.covered_types()))

    def update_curvature(self, i, layer):
        raise NotImplementedError

    def update_inverse(self, i, layer):
        raise NotImplementedError

    def precondition(self, i, layer):
        raise NotImplementedError

    # -- the step ------------------------------------------------------------------------
    def check_ready(self):
        """Raise a clear error when backward has not run since the last forward."""
        for layer, name in zip(self.layers, self.names):
            if "dout" not in layer.cache or not layer.grads:
                raise RuntimeError(f"{type(self).__name__}.step(): layer {name} has no "
                                   "gradient yet; call model.backward(...) first")

    def step(self):
        """Update statistics (every T1), inverses (every T2), then precondition in place."""
        self.check_ready()
        if self.t % self.T1 == 0:
            for i, layer in enumerate(self.layers):
                self.update_curvature(i, layer)
        if self.t % self.T2 == 0:
            for i, layer in enumerate(self.layers):
                self.update_inverse(i, layer)
        for i, layer in enumerate(self.layers):
            self.precondition(i, layer)
        self.t += 1

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self):
        """``{"t": array, "<i>.<key>": host array}``: plain arrays, safe for ``.npz``."""
        out = {"t": backend.host().asarray(self.t)}
        for i, s in enumerate(self.state):
            for key, value in s.items():
                out[f"{i}.{key}"] = backend.to_numpy(value).copy()
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` wrote, onto the active backend (as copies)."""
        new = [dict() for _ in self.layers]
        for name, value in state.items():
            if name == "t":
                continue
            i, key = name.split(".", 1)
            if not i.isdigit() or int(i) >= len(self.layers):
                raise ValueError(f"{type(self).__name__}.load_state_dict: entry {name!r} does "
                                 f"not match a covered layer (there are {len(self.layers)})")
            arr = backend.to_numpy(value)
            # a copy: the preconditioner owns its state (Shampoo updates it in place, which
            # must not reach back into the caller's dict)
            new[int(i)][key] = backend.asarray(arr).copy() if arr.dtype.kind in "fiub" else arr
        self.state = new
        self.t = int(state["t"]) if "t" in state else 0
        return self

    def __repr__(self):
        return f"{type(self).__name__}(covers {len(self.layers)} layers: {self.names})"
