"""Rprop: move each weight by its own step size, in the direction of the gradient's sign.

The size of the gradient says little when it varies by orders of magnitude across weights
and over time, so Rprop only uses its sign, and adapts a step size eta per weight
(lecture 4): grow it (x eta_plus) while the gradient keeps its sign, shrink it
(x eta_minus) when the sign flips (the last step jumped over a minimum), and keep it
within [eta_min, eta_max]. For step k = 1, 2, ..., with eta_0 = lr and gprev_0 = 0::

    p_k       = g_k o gprev_{k-1}
    eta_k     = clip(eta_{k-1} o s_k, eta_min, eta_max),
                s_k = eta_plus where p_k > 0, eta_minus where p_k < 0, 1 where p_k = 0
    gbar_k    = 0 where p_k < 0, g_k elsewhere       (after a sign flip, pause one step)
    theta_k   = theta_{k-1} - sign(gbar_k) o eta_k
    gprev_k   = gbar_k

This is PyTorch's ``torch.optim.Rprop`` (the variant without weight backtracking). Rprop is
meant for full-batch training: with mini-batches, a weight that gets +0.1 nine times and
-0.9 once moves a lot although its mean gradient is zero, which is why RMSProp exists. As
in PyTorch, ``lr`` only sets the initial step sizes; changing it later has no effect.

Reference: M. Riedmiller, H. Braun, "A direct adaptive method for faster backpropagation
learning: the RPROP algorithm", ICNN 1993.
"""
from .. import backend
from .base import Optimizer, check_number

__all__ = ["Rprop"]


class Rprop(Optimizer):
    """Resilient backpropagation (Riedmiller and Braun 1993).

    Args:
        model: the network whose ``parameters()`` are optimised.
        lr: eta_0 > 0, the initial step size of every weight.
        etas: (eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus.
        step_sizes: (eta_min, eta_max) with 0 <= eta_min <= eta_max, the allowed step sizes.
    """

    def __init__(self, model, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)):
        name = type(self).__name__
        for label, pair in (("etas", etas), ("step_sizes", step_sizes)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"{name}: {label} must be a pair of numbers, got {pair!r}")
        self.eta_minus = check_number(name, "etas[0] (eta_minus)", etas[0], 0.0, 1.0,
                                      low_open=True, high_open=True)
        self.eta_plus = check_number(name, "etas[1] (eta_plus)", etas[1], low=1.0,
                                     low_open=True)
        self.eta_min = check_number(name, "step_sizes[0] (eta_min)", step_sizes[0], low=0.0)
        self.eta_max = check_number(name, "step_sizes[1] (eta_max)", step_sizes[1],
                                    low=self.eta_min, allowed=f"[step_sizes[0], inf) = "
                                    f"[{self.eta_min:g}, inf)")
        super().__init__(model, lr)
        if self.lr == 0.0:
            raise ValueError(f"{name}: lr (the initial step size) must be > 0, got {lr!r}")

    def init_state(self, theta):
        xp = backend.array_module(theta)
        return {"eta": xp.full_like(theta, self.lr),  # same shape as theta
                "gprev": xp.zeros_like(theta)}       # same shape as theta

    def update(self, theta, g, s):
        xp = backend.array_module(theta)
        p = g * s["gprev"]  # same shape as theta
        factor = xp.ones_like(theta)  # same shape as theta
        factor[p > 0] = self.eta_plus
        factor[p < 0] = self.eta_minus
        s["eta"] = xp.clip(s["eta"] * factor, self.eta_min, self.eta_max)
        gbar = g.copy()  # same shape as theta
        gbar[p < 0] = 0
        theta -= xp.sign(gbar) * s["eta"]
        s["gprev"] = gbar

    def hyperparameters(self):
        return {"eta_minus": self.eta_minus, "eta_plus": self.eta_plus,
                "eta_min": self.eta_min, "eta_max": self.eta_max}

    def extra_repr(self):
        return (f"lr={self.lr:g}, etas=({self.eta_minus:g}, {self.eta_plus:g}), "
                f"step_sizes=({self.eta_min:g}, {self.eta_max:g})")
