"""minidl: a from-scratch deep-learning framework for teaching.

Every layer writes its forward and backward pass out by hand; everything runs on NumPy
(CPU) or CuPy (GPU) behind one switch (``minidl.set_backend``).

Subpackages: ``layers``, ``losses``, ``init``, ``gradcheck``, ``optim``, ``data``,
``precond`` (second-order preconditioners), ``curvature`` (exact Hessian, GGN, Fisher and
their products), ``train``, ``checkpoint``, ``models``, ``methods``; ``plots`` and ``cli``
are imported on first use (they pull in matplotlib and argparse).
"""
from .backend import (set_backend, get_backend, xp, array_module, asarray, to_numpy,
                      set_default_dtype, get_default_dtype, default_rng, BackendError)
from . import backend, init, layers, losses, gradcheck
from . import optim, data, curvature, precond, train, checkpoint, models, methods

__version__ = "0.1.0"
