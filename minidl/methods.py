"""Training methods by name: an optimizer, an optional preconditioner and a default rate.

``minidl compare`` and ``minidl train`` accept a method name; this table says what each
name means, in one place. A first-order method is an optimizer alone; a second-order
method is a preconditioner (``minidl.precond``) that rewrites the gradients, followed by
an optimizer (usually SGD with momentum) that takes the step::

    model.backward(loss.backward());  precond.step();  optimizer.step()

=============  ==========================================  ===========================
name           optimizer (defaults)                        preconditioner (defaults)
=============  ==========================================  ===========================
sgd            SGD, lr 0.1                                 -
momentum       SGD momentum 0.9, lr 0.05                   -
nesterov       SGD Nesterov momentum 0.9, lr 0.05          -
adam           Adam, lr 1e-3                               -
adamw          AdamW, lr 1e-3, weight decay 1e-2           -
adagrad        AdaGrad, lr 1e-2                            -
rmsprop        RMSProp, lr 1e-3                            -
rprop          Rprop, lr 1e-3 (a full-batch method)        -
kfac           SGD momentum 0.9, lr 0.01                   KFAC damping 0.03, T1 1, T2 10,
                                                           KL clip 1e-2 (lr=optimizer)
shampoo        SGD momentum 0.9, lr 0.05                   Shampoo, roots every 20 steps
kfra           SGD momentum 0.9, lr 0.01                   KFRA damping 0.03 (loss=)
kflr           SGD momentum 0.9, lr 0.01                   KFLR damping 0.03 (loss=)
mbf            SGD momentum 0.9, lr 3e-4                   MBF damping 3e-3, KL bound 1e-3
                                                           (lr=optimizer)
bnp            SGD momentum 0.9, lr 2e-3                   BNP
bdf            SGD momentum 0.9, lr 0.01                   BDF damping 1e-3 (tiny models:
                                                           a dense p x p block per layer)
=============  ==========================================  ===========================

The default rates suit the small MNIST classifiers of the command line (batch 128, mean
cross-entropy); other problems want their own (``--lr``). BNP divides each gradient by
the variance of the layer's input, and the last layers' inputs of the 5-layer CNN start
with variances near 1e-4: with BNP's variance floor eps2 at 1e-5, its 2e-3 took
``minidl compare --model cnn5 --limit 3000 --epochs 2`` from 2.31 to 110 (the table said
"loss rose"; 4 seeds of 4 diverged, and 1 of 4 at 1e-3). The floor is now 1e-3 (see
``minidl.precond.bnp``): 8 seeds of 8 reach 93-95% at 2e-3 in 3 epochs, 3 of 4 at 3e-3,
and 6e-3 diverged (2 of 2). The table's values are part of the interface (tests and the
command line rely on them); change them only with a reason.

``build`` makes the pair. It passes ``loss=`` and ``rng=`` to the classes that take them,
and ``lr=optimizer`` to those with a step bound that needs the learning rate (KFAC's KL
clipping, MBF's step bound, the optional Levenberg-Marquardt damping), so those
safeguards are on whenever a method is built by name. ``precond_kw`` sets any constructor
keyword of the class (``damping``, ``stat_decay``, ``T1``, ``T2``, ``kl_clip``, ...; the
command line's ``--precond-opt KEY=VALUE``); a keyword the class does not take is a
``ValueError`` listing the ones it does (``precond_options(name)`` gives them with their
defaults). A method whose class is not in ``minidl.precond`` is reported as unavailable
rather than failing at import.
"""
import dataclasses
import difflib
import inspect

__all__ = ["Method", "METHODS", "DEFAULT_COMPARE", "get_method", "did_you_mean",
           "available_methods", "build", "precond_options"]


@dataclasses.dataclass(frozen=True)
class Method:
    """One named training method.

    Attributes:
        name: the name used on the command line.
        optimizer: a key of ``minidl.optim.OPTIMIZERS``.
        lr: the default learning rate.
        optimizer_kw: other optimizer hyperparameters.
        precond: the class name in ``minidl.precond`` (None for first-order methods).
        precond_kw: preconditioner hyperparameters, replacing the class's defaults.
        note: one line for ``--help``.
    """
    name: str
    optimizer: str
    lr: float
    optimizer_kw: dict = dataclasses.field(default_factory=dict)
    precond: str = None
    precond_kw: dict = dataclasses.field(default_factory=dict)
    note: str = ""


_MOMENTUM = {"momentum": 0.9}

METHODS = {m.name: m for m in (
    Method("sgd", "sgd", 0.1, note="plain stochastic gradient descent"),
    Method("momentum", "sgd", 0.05, _MOMENTUM, note="SGD with heavy-ball momentum 0.9"),
    Method("nesterov", "sgd", 0.05, {"momentum": 0.9, "nesterov": True},
           note="SGD with Nesterov momentum 0.9"),
    Method("adam", "adam", 1e-3, note="Adam (Kingma and Ba 2015)"),
    Method("adamw", "adamw", 1e-3, {"weight_decay": 1e-2}, note="Adam, decoupled decay"),
    Method("adagrad", "adagrad", 1e-2, note="AdaGrad"),
    Method("rmsprop", "rmsprop", 1e-3, note="RMSProp"),
    Method("rprop", "rprop", 1e-3, note="Rprop (meant for full batches)"),
    Method("kfac", "sgd", 0.01, _MOMENTUM, "KFAC",
           {"damping": 0.03, "T1": 1, "T2": 10, "kl_clip": 1e-2},
           note="K-FAC preconditioner + SGD momentum"),
    Method("shampoo", "sgd", 0.05, _MOMENTUM, "Shampoo", {"T2": 20},
           note="Shampoo preconditioner + SGD momentum"),
    Method("kfra", "sgd", 0.01, _MOMENTUM, "KFRA", {"damping": 0.03},
           note="KFRA preconditioner + SGD momentum"),
    Method("kflr", "sgd", 0.01, _MOMENTUM, "KFLR", {"damping": 0.03},
           note="KFLR preconditioner + SGD momentum"),
    Method("mbf", "sgd", 3e-4, _MOMENTUM, "MBF", {"damping": 3e-3},
           note="mini-block Fisher + SGD momentum"),
    Method("bnp", "sgd", 2e-3, _MOMENTUM, "BNP", {},
           note="BN-like preconditioner + SGD momentum"),
    Method("bdf", "sgd", 0.01, _MOMENTUM, "BDF", {"damping": 1e-3},
           note="exact per-layer Fisher + SGD momentum (tiny models only)"),
)}

# what ``minidl compare`` runs with no --methods (the unavailable ones are skipped)
# the default run stays well under 2 minutes on 2 cores (KFLR, KFRA, Shampoo and MBF are
# slower on the 784-wide first layer; ask for them with --methods)
DEFAULT_COMPARE = ("sgd", "momentum", "adam", "bnp", "kfac")


def _precond_class(method):
    from . import precond
    return getattr(precond, method.precond, None)


def is_available(name):
    """True when the method's preconditioner class exists in ``minidl.precond``."""
    method = METHODS[name]
    return method.precond is None or _precond_class(method) is not None


def available_methods():
    """Names of the methods this installation can run."""
    return [name for name in METHODS if is_available(name)]


def did_you_mean(name, names):
    """`` (did you mean 'kfac'?)`` for the closest of ``names``, or ``""`` when none is
    close. Names equally close are all given: 'kfca' is one swap from 'kfac' and one
    letter from 'kfra', and the hint should not pick one at random."""
    name = str(name).lower()
    ratio = {n: difflib.SequenceMatcher(None, name, n).ratio() for n in names}
    close = difflib.get_close_matches(name, list(names), n=3)
    close = [n for n in close if ratio[n] == ratio[close[0]]]
    return f" (did you mean {' or '.join(repr(n) for n in close)}?)" if close else ""


def get_method(name):
    """The ``Method`` called ``name``; a ValueError naming the valid ones otherwise."""
    key = str(name).strip().lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}{did_you_mean(key, METHODS)}; choose from "
                         f"{', '.join(available_methods())}")
    if not is_available(key):
        raise ValueError(f"method {key!r} needs minidl.precond.{METHODS[key].precond}, which "
                         f"this version of minidl does not have; available: "
                         f"{', '.join(available_methods())}")
    return METHODS[key]


_PASSED_BY_BUILD = ("model", "loss", "rng", "lr", "warn")


def precond_options(name):
    """``{keyword: default}`` a method's preconditioner takes (its table values applied).

    These are the names ``build(precond_kw=...)`` and the command line's
    ``--precond-opt KEY=VALUE`` accept; empty for a first-order method.
    """
    method = get_method(name)
    if method.precond is None:
        return {}
    params = inspect.signature(_precond_class(method)).parameters
    out = {k: p.default for k, p in params.items() if k not in _PASSED_BY_BUILD}
    out.update({k: v for k, v in method.precond_kw.items() if k in out})
    return out


def build(name, model, loss, lr=None, rng=None, optimizer_kw=None, precond_kw=None,
          **overrides):
    """Make the optimizer and preconditioner of method ``name`` for ``model``.

    Args:
        name: a key of ``METHODS``.
        model: the network.
        loss: the loss object (passed as ``loss=`` to preconditioners that take it).
        lr: the learning rate; None uses the method's default.
        rng: generator handed to preconditioners that sample (``rng=``), if they take one.
        optimizer_kw: optimizer hyperparameters replacing the table's (``momentum=0.5``).
        precond_kw: preconditioner hyperparameters replacing the table's
            (``damping=0.01``, ``T2=50``); a key the class does not accept is an error
            (so are ``loss``, ``rng`` and ``lr``, which build passes itself).
        **overrides: more optimizer hyperparameters (the same as ``optimizer_kw``).

    Returns:
        ``(optimizer, precond)``; ``precond`` is None for first-order methods.

    Raises:
        ValueError: an unknown method, preconditioner keywords for a first-order method,
            or a keyword the preconditioner class does not accept (the message lists the
            ones it does).
    """
    import warnings

    from .optim import make_optimizer
    from .precond import CoverageWarning
    method = get_method(name)
    lr = method.lr if lr is None else lr
    kw = dict(method.optimizer_kw, **(optimizer_kw or {}), **overrides)
    if "lr" in kw:
        raise ValueError(f"the learning rate is not an optimizer setting here: pass lr= "
                         f"(the command line's --lr), got lr={kw['lr']!r} among them")
    optimizer = make_optimizer(method.optimizer, model, lr=lr, **kw)
    precond_kw = dict(precond_kw or {})
    if method.precond is None:
        if precond_kw:
            raise ValueError(f"method {method.name!r} has no preconditioner, so the "
                             f"preconditioner settings {sorted(precond_kw)} do not apply")
        return optimizer, None
    cls = _precond_class(method)
    params = inspect.signature(cls).parameters
    refused = sorted(k for k in precond_kw if k not in params or k in _PASSED_BY_BUILD)
    if refused:
        accepted = [k for k in params if k not in _PASSED_BY_BUILD]
        raise ValueError(f"{cls.__name__} does not take {refused} here; it takes "
                         f"{', '.join(accepted)}")
    pkw = dict(method.precond_kw, **precond_kw)
    for key, value in (("loss", loss), ("rng", rng), ("lr", optimizer)):
        if key in params and value is not None:
            pkw[key] = value  # lr: the optimizer, so schedules reach the step bounds
    with warnings.catch_warnings():  # uncovered layers are expected (BatchNorm, ...)
        warnings.simplefilter("ignore", CoverageWarning)
        precond = cls(model, **pkw)
    return optimizer, precond
