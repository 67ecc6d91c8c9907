"""Curvature of the loss with respect to the parameters: products, dense matrices, spectra.

Everything works in one flat parameter order (``flat``): leaf layers in forward order,
each layer's ``params`` in insertion order, each array raveled in C order.

* ``products``: ``hvp`` (exact Hessian-vector product via the R-operator passes) and
  ``ggn_vp`` (generalised Gauss-Newton J^T H_L J v), never forming a matrix.
* ``dense``: ``hessian``, ``ggn``, ``empirical_fisher``, ``true_fisher`` as P x P
  matrices for tiny models.
* ``per_example``: per-example gradients (N, P).
* ``spectra``: power iteration, Lanczos, condition number, the optimal step
  g^T g / g^T H g.

All curvature is that of the loss object's reduced loss ("mean" by default); each module
says how "mean" and "sum" scale its matrices.
"""
from .flat import (num_params, param_slices, flatten_params, flatten_grads, flatten_rgrads,
                   unflatten, set_params, set_rparams, clear_rparams)
from .products import hvp, ggn_vp, loss_and_grad, hvp_fn, ggn_vp_fn, preserved_state
from .per_example import per_example_grads, batch_coupled_layers
from .dense import hessian, ggn, empirical_fisher, true_fisher
from .spectra import (power_iteration, lanczos, top_eigenvalues, extreme_eigenvalues,
                      condition_number, optimal_step, EigenPair, RitzValues,
                      NotConvergedWarning)

__all__ = [
    "num_params", "param_slices", "flatten_params", "flatten_grads", "flatten_rgrads",
    "unflatten", "set_params", "set_rparams", "clear_rparams",
    "hvp", "ggn_vp", "loss_and_grad", "hvp_fn", "ggn_vp_fn", "preserved_state",
    "per_example_grads", "batch_coupled_layers",
    "hessian", "ggn", "empirical_fisher", "true_fisher",
    "power_iteration", "lanczos", "top_eigenvalues", "extreme_eigenvalues",
    "condition_number", "optimal_step", "EigenPair", "RitzValues", "NotConvergedWarning",
]
