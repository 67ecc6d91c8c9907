"""First-order optimizers, learning-rate schedules, parameter averaging and regularisers.

Every optimizer is built from a model and updates its parameters in place from the
gradients the backward pass left in ``layer.grads``::

    opt = minidl.optim.Adam(model, lr=1e-3)
    model.backward(crit.backward())
    opt.step()

Each is written the way the lectures write it, with the update in its module docstring,
and equals ``torch.optim``'s for the same hyperparameters, step for step.
``make_optimizer(name, model, **kw)`` builds one by name (the command line uses it).
"""
import functools
import inspect

from .base import Optimizer
from .sgd import SGD
from .adagrad import AdaGrad
from .rmsprop import RMSProp
from .adam import Adam, AdamW
from .rprop import Rprop
from .schedules import (Schedule, Constant, StepDecay, InverseSqrt, Inverse, Cosine,
                        LinearWarmup, LRScheduler)
from .ema import EMA
from .regularization import l2_penalty, add_l2_grad, l1_penalty, add_l1_grad, clip_grad_norm

__all__ = [
    "Optimizer", "SGD", "AdaGrad", "RMSProp", "Adam", "AdamW", "Rprop",
    "Schedule", "Constant", "StepDecay", "InverseSqrt", "Inverse", "Cosine", "LinearWarmup",
    "LRScheduler", "EMA", "l2_penalty", "add_l2_grad", "l1_penalty", "add_l1_grad",
    "clip_grad_norm", "OPTIMIZERS", "make_optimizer",
]

# name -> factory(model, **kw); "momentum" and "nesterov" are SGD with momentum 0.9
# (keywords passed to make_optimizer override these defaults).
OPTIMIZERS = {
    "sgd": SGD,
    "momentum": functools.partial(SGD, momentum=0.9),
    "nesterov": functools.partial(SGD, momentum=0.9, nesterov=True),
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "adam": Adam,
    "adamw": AdamW,
    "rprop": Rprop,
}


def make_optimizer(name, model, **kw):
    """Build the optimizer called ``name`` (a key of ``OPTIMIZERS``) for ``model``.

    Args:
        name: one of ``OPTIMIZERS`` (case-insensitive), e.g. ``"adam"``.
        model: the network.
        **kw: hyperparameters for the constructor, e.g. ``lr=0.1``. SGD and its momentum
            variants have no default ``lr``, so they need one.

    Returns:
        The optimizer.
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names are "
                         f"{', '.join(sorted(OPTIMIZERS))}")
    factory = OPTIMIZERS[key]
    accepted = [k for k in inspect.signature(factory).parameters if k != "model"]
    refused = sorted(k for k in kw if k not in accepted)
    if refused:  # said here, in the words of the command line's --precond-opt refusal
        raise ValueError(f"{key} ({getattr(factory, 'func', factory).__name__}) does not "
                         f"take {refused}; it takes {', '.join(accepted)}")
    if key in ("sgd", "momentum", "nesterov") and "lr" not in kw:
        raise ValueError(f"optimizer {key!r} has no default learning rate; pass lr=..., "
                         "e.g. make_optimizer('sgd', model, lr=0.1)")
    return factory(model, **kw)
