"""Exponential moving average (EMA) of the parameters, for evaluating a smoothed model.

Mini-batch gradients are noisy, so the iterates theta_t keep jittering around an optimum.
Averaging them smooths that out (lecture 4, "model fine-tuning"). After each optimizer
step t = 1, 2, ...::

    theta'_t = gamma theta'_{t-1} + (1 - gamma) theta_t,        theta'_0 = theta_0

with gamma in [0, 1) close to 1 (0.99 to 0.9999): the average spans roughly the last
1 / (1 - gamma) steps. Training keeps updating theta; the average is only swapped in to
evaluate or to save the final model::

    ema = EMA(model, gamma=0.999)
    for x, y in loader:
        ...; opt.step(); ema.update()
    with ema.averaged():             # the model holds theta' inside the block
        evaluate(model)
    # theta is back, bit for bit

Only trainable parameters are averaged; buffers (BatchNorm running statistics) are left
as they are. The swap copies values into the existing arrays, so optimizers and
preconditioners that hold the parameter arrays keep seeing the same objects.

Reference: B. T. Polyak, A. B. Juditsky, "Acceleration of stochastic approximation by
averaging", SIAM J. Control Optim. 1992 (iterate averaging).
"""
import contextlib
import numbers

from .. import backend
from .base import check_number

__all__ = ["EMA"]


class EMA:
    """An exponential moving average theta' of a model's parameters.

    Args:
        model: the network (a ``Layer`` with at least one parameter).
        gamma: the decay in [0, 1); theta' starts as a copy of the current parameters.

    Attributes:
        averages: ``{qualified parameter name: theta'}``, on each parameter's device.
        t: the number of ``update()`` calls.
    """

    def __init__(self, model, gamma=0.999):
        self.gamma = check_number("EMA", "gamma", gamma, 0.0, 1.0, high_open=True)
        if not hasattr(model, "parameters"):
            raise TypeError(f"EMA expects a model (a minidl Layer with .parameters()), got "
                            f"{type(model).__name__}")
        self.model = model
        self.param_list = model.parameters()  # [(qualified_name, layer, key), ...]
        if not self.param_list:
            raise ValueError("EMA: the model has no trainable parameters "
                             "(model.parameters() is empty), so there is nothing to average")
        self.averages = {name: layer.params[key].copy()  # same shape as theta
                         for name, layer, key in self.param_list}
        self.t = 0
        self._swapped = False

    def update(self):
        """theta' <- gamma theta' + (1 - gamma) theta, after an optimizer step."""
        if self._swapped:
            raise RuntimeError("EMA.update() inside ema.averaged(): the model holds the "
                               "averages; leave the block (or call swap()) first")
        self.t += 1
        for name, layer, key in self.param_list:
            theta = layer.params[key]
            self.averages[name] = self.gamma * self.averages[name] + (1 - self.gamma) * theta

    def swap(self):
        """Exchange the model's parameters with the averages, in place (twice restores)."""
        for name, layer, key in self.param_list:
            theta = layer.params[key]
            saved = theta.copy()  # same shape as theta
            theta[...] = self.averages[name]
            self.averages[name] = saved
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def averaged(self):
        """Context manager: the model holds theta' inside, theta again on leaving."""
        if self._swapped:
            raise RuntimeError("EMA.averaged(): the averages are already swapped in")
        self.swap()
        try:
            yield self.model
        finally:
            self.swap()

    def copy_to(self, model=None):
        """Write the averages into ``model`` (default: the tracked model), for saving."""
        if self._swapped:
            raise RuntimeError("EMA.copy_to(): call it outside ema.averaged()")
        model = self.model if model is None else model
        targets = {name: layer.params[key] for name, layer, key in model.parameters()}
        for name, average in self.averages.items():
            if name not in targets or tuple(targets[name].shape) != tuple(average.shape):
                raise ValueError(f"EMA.copy_to(): the model has no parameter {name} of shape "
                                 f"{tuple(average.shape)}")
            targets[name][...] = average
        return model

    def state_dict(self):
        """``{"t": int, "gamma": float, "ema.<name>": host array}``."""
        if self._swapped:
            raise RuntimeError("EMA.state_dict(): call it outside ema.averaged()")
        out = {"t": int(self.t), "gamma": float(self.gamma)}
        for name, average in self.averages.items():
            out[f"ema.{name}"] = backend.to_numpy(average).copy()
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` wrote; arrays go to each parameter's device.

        Raises:
            RuntimeError: called inside ``ema.averaged()``.
            ValueError: a missing or unknown entry (the averages of another model), a shape
                that does not match, t not an integer >= 0, gamma outside [0, 1); the EMA is
                left as it was.
        """
        owner = "EMA.load_state_dict"
        if self._swapped:
            raise RuntimeError(f"{owner}(): call it outside ema.averaged() (the model holds "
                               "the averages inside)")
        params = {f"ema.{name}": layer.params[key] for name, layer, key in self.param_list}
        unknown = sorted(set(state) - set(params) - {"t", "gamma"})
        if unknown:
            raise ValueError(f"{owner}: entries {unknown} name parameters the model does not "
                             f"have; it has {sorted(params)} (and 't', 'gamma')")
        new = {}
        for entry, theta in params.items():
            if entry not in state:
                raise ValueError(f"{owner}: missing entry {entry!r}")
            host = backend.to_numpy(state[entry])
            if tuple(host.shape) != tuple(theta.shape):
                raise ValueError(f"{owner}: {entry!r} has shape {tuple(host.shape)}, the "
                                 f"parameter {tuple(theta.shape)}")
            new[entry[len("ema."):]] = backend.array_module(theta).asarray(host,
                                                                          dtype=theta.dtype)
        t = _plain(state.get("t", 0))
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise ValueError(f"{owner}: t must be an integer >= 0 (the number of updates), "
                             f"got {t!r}")
        gamma = self.gamma
        if "gamma" in state:
            gamma = check_number("EMA", "gamma", _plain(state["gamma"]), 0.0, 1.0,
                                 high_open=True)
        self.averages, self.t, self.gamma = new, int(t), gamma
        return self

    def __repr__(self):
        return f"EMA(gamma={self.gamma:g}, t={self.t}, {len(self.averages)} parameters)"


def _plain(value):
    """A saved number as a Python number (a 0-d array from an ``.npz`` file unwrapped)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return backend.to_numpy(value).item()
    return value
