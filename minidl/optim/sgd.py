"""Stochastic gradient descent, with Polyak (heavy-ball) or Nesterov momentum.

Plain SGD (lecture 1): theta_{k+1} = theta_k - alpha_k g_k. Momentum (Polyak 1964) adds
up the past gradients so that consistent directions speed up and oscillating ones cancel.
For step k = 1, 2, ... with lr, momentum mu, weight decay lambda::

    g_k   = grad f(theta_{k-1}) + lambda theta_{k-1}     L2 weight decay in the gradient
    m_k   = mu m_{k-1} + g_k,            m_0 = 0         momentum buffer
    d_k   = g_k + mu m_k      (Nesterov)
          = m_k               (Polyak)
    theta_k = theta_{k-1} - lr d_k

With mu = 0 this is plain SGD (m_k = g_k). This is PyTorch's ``torch.optim.SGD`` with
dampening 0; the lecture's form m_{k+1} = mu m_k - lr g_k, theta_{k+1} = theta_k + m_{k+1}
is the same sequence (its m is -lr times ours) while lr stays constant, and differs only
in when a changed lr takes effect.

References: B. T. Polyak, "Some methods of speeding up the convergence of iteration
methods", 1964; I. Sutskever et al., "On the importance of initialization and momentum in
deep learning", ICML 2013 (the Nesterov form used here).
"""
from .. import backend
from .base import Optimizer, check_number

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD with optional Polyak or Nesterov momentum and L2 weight decay.

    Args:
        model: the network whose ``parameters()`` are optimised.
        lr: learning rate, >= 0.
        momentum: mu in [0, 1); 0 gives plain SGD.
        nesterov: use the Nesterov look-ahead d_k = g_k + mu m_k (needs momentum > 0).
        weight_decay: lambda >= 0, adds lambda * theta to the gradient.
    """

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        name = type(self).__name__
        self.momentum = check_number(name, "momentum", momentum, 0.0, 1.0, high_open=True)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, low=0.0)
        if nesterov not in (True, False):
            raise ValueError(f"{name}: nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError(f"{name}: nesterov=True needs momentum > 0 (Nesterov momentum "
                             "looks ahead along the momentum buffer); set e.g. momentum=0.9")
        self.nesterov = bool(nesterov)
        super().__init__(model, lr)

    def init_state(self, theta):
        xp = backend.array_module(theta)
        return {"m": xp.zeros_like(theta)}  # same shape as theta

    def update(self, theta, g, s):
        if self.weight_decay:
            g = g + self.weight_decay * theta  # same shape as theta
        m = s["m"]
        m *= self.momentum                     # m_k = mu m_{k-1} + g_k, in place
        m += g
        if self.nesterov:
            d = g + self.momentum * m
        else:
            d = m
        theta -= self.lr * d

    def hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def extra_repr(self):
        return (f"lr={self.lr:g}, momentum={self.momentum:g}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay:g}")
