"""One vector for all parameters: the flat order the curvature tools use.

A model's parameters theta_1, ..., theta_J (arrays of any shape) are joined into one
vector of P = sum_j size(theta_j) entries::

    theta = [vec(theta_1); vec(theta_2); ...; vec(theta_J)]        (P,)

in the documented order (``Layer.parameters()``): leaf layers in forward order, then each
layer's ``params`` in insertion order (``W`` before ``b``, ``gamma`` before ``beta``), each
array raveled in C (row-major) order, as ``torch.nn.utils.parameters_to_vector`` does for
the equivalent PyTorch model. Gradients, R-operator tangents (``Rparams``) and their
results (``Rgrads``) use the same order, so a Hessian-vector product is

    H v = flatten_rgrads(model)   after   set_rparams(model, v), jvp, backward_rop.

Every function keeps arrays on the device of the model's parameters.
"""
from .. import backend

__all__ = ["num_params", "param_slices", "flatten_params", "flatten_grads",
           "flatten_rgrads", "unflatten", "set_params", "set_rparams", "clear_rparams",
           "param_module", "check_vector"]


def param_slices(model):
    """``[(name, layer, key, start, stop, shape), ...]`` locating each array in the vector.

    Args:
        model: a ``Layer`` (usually a ``Sequential``).

    Returns:
        One tuple per parameter array in the flat order; entries ``start:stop`` of the
        flat vector hold ``layer.params[key].ravel()``.
    """
    out = []
    start = 0
    for name, layer, key in model.parameters():
        p = layer.params[key]
        stop = start + int(p.size)
        out.append((name, layer, key, start, stop, tuple(p.shape)))
        start = stop
    return out


def num_params(model):
    """P, the length of the flat parameter vector."""
    return sum(int(layer.params[key].size) for _, layer, key in model.parameters())


def param_module(model):
    """The array module (numpy or cupy) the model's parameters live in.

    Raises:
        ValueError: when the model has no trainable parameters (nothing to differentiate).
    """
    arrays = [layer.params[key] for _, layer, key in model.parameters()]
    if not arrays:
        raise ValueError(f"{type(model).__name__} has no trainable parameters, so its "
                         "curvature with respect to the parameters is empty")
    return backend.array_module(*arrays)


def _concat(model, pick, what):
    """Ravel ``pick(layer, key)`` for every parameter and join them in the flat order."""
    xp = param_module(model)
    parts = []
    for name, layer, key in model.parameters():
        a = pick(layer, key)
        if a is None:
            raise RuntimeError(f"{what} of parameter '{name}' is missing; run the pass "
                               "that writes it first")
        parts.append(a.reshape(-1))  # (size,)
    return xp.concatenate(parts)  # (P,)


def flatten_params(model):
    """theta as one vector (a copy), shape (P,)."""
    return _concat(model, lambda layer, key: layer.params[key], "value")


def flatten_grads(model):
    """The gradient written by the last ``backward`` as one vector, shape (P,)."""
    return _concat(model, lambda layer, key: layer.grads.get(key), "grads")


def flatten_rgrads(model):
    """R{grads} written by the last ``backward_rop`` as one vector, shape (P,)."""
    return _concat(model, lambda layer, key: layer.Rgrads.get(key), "Rgrads")


def check_vector(model, v, fn):
    """Raise a ``ValueError`` unless ``v`` is a real flat vector (P,) on the model's device.

    Returns:
        The array module of ``v`` and the parameters.
    """
    P = num_params(model)
    if not backend.is_array(v) or v.ndim != 1 or int(v.shape[0]) != P:
        shape = getattr(v, "shape", type(v).__name__)
        raise ValueError(f"{fn} expects a flat vector of shape ({P},) (the model's "
                         f"parameter count), got {shape}")
    if v.dtype.kind not in "fiub":  # a complex v would lose its imaginary part in astype
        raise ValueError(f"{fn} expects a real vector (the parameters are real), got dtype "
                         f"{v.dtype}")
    return backend.check_same_device(fn, v, *[layer.params[key] for _, layer, key
                                              in model.parameters()])


def unflatten(model, v):
    """Split a flat vector into arrays shaped like the parameters.

    Args:
        model: the model that defines the order and shapes.
        v: vector of shape (P,).

    Returns:
        ``{qualified_name: array}`` in the flat order; each array is a view of ``v``.
    """
    check_vector(model, v, "unflatten(model, v)")
    return {name: v[start:stop].reshape(shape)
            for name, _, _, start, stop, shape in param_slices(model)}


def set_params(model, theta):
    """Overwrite every parameter with the matching slice of ``theta`` (copied, same dtype).

    Args:
        model: the model to change in place.
        theta: vector of shape (P,).
    """
    check_vector(model, theta, "set_params(model, theta)")
    for _, layer, key, start, stop, shape in param_slices(model):
        old = layer.params[key]
        layer.params[key] = theta[start:stop].reshape(shape).astype(old.dtype)  # copy


def set_rparams(model, v):
    """Set every leaf's ``Rparams`` (the tangent direction of the R-operator) from ``v``.

    Leaves without parameters get an empty ``Rparams`` (zero tangent).

    Args:
        model: the model whose leaves receive the tangents.
        v: vector of shape (P,); cast to each parameter's dtype.
    """
    check_vector(model, v, "set_rparams(model, v)")
    clear_rparams(model)
    for _, layer, key, start, stop, shape in param_slices(model):
        dtype = layer.params[key].dtype
        layer.Rparams[key] = v[start:stop].reshape(shape).astype(dtype, copy=False)


def clear_rparams(model):
    """Empty every leaf's ``Rparams`` and ``Rgrads`` (zero tangent, no stale results)."""
    for leaf in model.leaves():
        leaf.Rparams = {}
        leaf.Rgrads = {}
