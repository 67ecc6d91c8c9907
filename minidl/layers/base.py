"""The ``Layer`` protocol every layer follows, and the checks that guard its inputs.

A layer is a small object with an explicit forward and backward pass (no autodiff)::

    out = layer.forward(x)        # also layer(x); remembers x in layer.cache["x"]
    dx = layer.backward(dout)     # fills layer.grads[k] for every k in layer.params,
                                  # remembers dout in layer.cache["dout"], returns dL/dx

State is explicit, never hidden in hooks:

* ``params``  -- trainable arrays by name (``W``, ``b``, ``gamma``, ``beta``),
* ``grads``   -- the same keys and shapes, written by ``backward``,
* ``buffers`` -- non-trainable state (BatchNorm running statistics),
* ``cache``   -- what the forward pass saved for the backward pass. Leaf layers keep the
  input ``x`` and the gradient arriving at the output ``dout``; the preconditioners of
  ``minidl.precond`` read exactly these two (KFAC's A and G factors, BNP's statistics).

Curvature (``minidl.curvature``) needs two more passes, both written by hand per layer,
following Pearlmutter's R-operator (R{f} = d/dr f(theta + r v) at r = 0):

* ``jvp(Rx)``: forward-mode derivative. Given the tangent ``Rx`` of the input and the
  tangents ``layer.Rparams`` of the parameters (missing keys mean zero), return the
  tangent of the output. Run after ``forward`` on the same input.
* ``backward_rop(Rdout)``: the R-operator applied to the backward pass. Given R{dout},
  return R{dx} and fill ``layer.Rgrads`` (R{grads}), using the x, Rx and dout cached by
  ``forward``, ``jvp`` and ``backward``. With ``Rdout = H_loss @ Rlogits`` at the top,
  the Rgrads are the Hessian-vector product H v.

The flat parameter order used by the curvature tools is: leaf layers in forward order,
then each layer's ``params`` in insertion order, each array raveled in C order.

Randomness. A layer that draws random numbers in train mode (Dropout) says so with
``is_random()`` and offers ``fixed_randomness()``, a context manager inside which every
forward pass reuses one draw and after which its mask and generator are as before. The
gradient checks use it; the curvature tools refuse a model with a random layer (their
products would change from call to call).

What every layer does with its input (the same in every layer, through the helpers at
the end of this module, called on the first line of ``forward`` and ``backward``):

* Not an array, or not floating point (integers, booleans, uint8 pixels): ``TypeError``.
  Pixels 0..255 become floats in [0, 1] with ``minidl.data.transforms.to_float(x)`` (or
  ``x.astype(minidl.get_default_dtype()) / 255``; plain ``x / 255`` is float64 in NumPy);
  a silent integer pass would truncate (Sigmoid's output cast back to int is all zeros,
  Dropout's 1/(1-p) scale rounds away).
* Mixed precision: an input whose floating dtype differs from the layer's parameters
  (float64 data into a float32 model) raises ``TypeError``, as PyTorch does; nothing is
  converted behind your back. Convert the data (``x.astype("float32")``, or
  ``minidl.asarray(x, dtype=...)``) or the model (``model.astype("float64")``). Layers
  without parameters compute in the dtype of their input.
* An empty batch (N = 0) passes through every layer: the output is empty, the input
  gradient empty, the parameter gradients zero (a sum over no examples). BatchNorm in
  train mode refuses it (no batch statistics exist). The losses give 0 for
  ``reduction="sum"`` and refuse ``"mean"`` with a ``ValueError`` (the mean of nothing is
  0/0; PyTorch returns NaN).
* ``backward`` before ``forward`` (or after a ``forward`` that cached nothing) raises
  ``RuntimeError`` naming the layer and saying to call ``forward`` first, or to cache x.
* ``backward`` with a ``dout`` of another shape than the last output raises
  ``ValueError`` (``expect_output_grad``), as PyTorch does: a (1, D) dout against an (N, D)
  output would otherwise broadcast and give every example the same gradient.
* NaN and infinity are not searched for in every activation (that would cost a pass over
  each array per step); the losses check their one value and warn (``NonFiniteWarning``)
  naming the rows of the batch whose logits or targets are not finite.
  ``expect_finite(name, x)`` (this module) checks a batch explicitly.
"""
import contextlib
import math
import numbers

from .. import backend

__all__ = ["Layer", "expect_ndim", "expect_dim", "expect_finite", "expect_input",
           "expect_forward_done", "expect_output_grad"]


class Layer:
    """Base class: parameters, gradients, buffers, cache, train/eval, state dicts."""

    # False: backward need not compute dL/dx (it may return None). Set by a container on
    # its first layer when the container's own input gradient is not wanted (Sequential).
    needs_input_grad = True
    # True (containers: Sequential, Residual): clear each child's cache once its backward
    # pass ran. Frees the activations as backward goes, as PyTorch does; use it for plain
    # training only, since preconditioners and curvature products read the caches after
    # backward.
    free_after_backward = False

    def __init__(self):
        self.params = {}    # name -> array, trainable
        self.grads = {}     # name -> array, same keys and shapes as params
        self.buffers = {}   # name -> array, non-trainable state
        self.cache = {}     # what forward/jvp/backward saved for later passes
        self.Rparams = {}   # name -> tangent array, set by the curvature tools
        self.Rgrads = {}    # name -> R{grads}, written by backward_rop
        self.training = True

    # -- the passes ------------------------------------------------------------------
    def forward(self, x):
        """Compute the output for input ``x`` and cache what backward needs."""
        raise NotImplementedError(f"{type(self).__name__}.forward is not written yet")

    def backward(self, dout):
        """Given dL/dout, fill ``self.grads`` and return dL/dx."""
        raise NotImplementedError(f"{type(self).__name__}.backward is not written yet")

    def jvp(self, Rx):
        """Forward-mode derivative (R-operator) at the cached input; see the module doc."""
        raise NotImplementedError(
            f"{type(self).__name__} has no jvp (R-operator forward pass), so Hessian- and "
            "GGN-vector products cannot pass through it")

    def backward_rop(self, Rdout):
        """R-operator of the backward pass; returns R{dx}, fills ``self.Rgrads``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no backward_rop, so exact Hessian-vector products "
            "cannot pass through it (GGN-vector products still can)")

    def __call__(self, x):
        return self.forward(x)

    # -- tree structure ---------------------------------------------------------------
    def children(self):
        """``[(name, layer), ...]`` of sub-layers in forward order (empty for a leaf)."""
        return []

    def leaves(self):
        """All leaf layers under this one, in forward order (a leaf returns ``[self]``)."""
        kids = self.children()
        if not kids:
            return [self]
        out = []
        for _, child in kids:
            out.extend(child.leaves())
        return out

    def named_leaves(self, prefix=""):
        """``[(qualified_name, leaf), ...]`` in forward order, e.g. ``("2.block.0", conv)``."""
        kids = self.children()
        if not kids:
            return [(prefix, self)]
        out = []
        for name, child in kids:
            out.extend(child.named_leaves(f"{prefix}.{name}" if prefix else str(name)))
        return out

    def parameters(self):
        """``[(qualified_name, layer, key), ...]`` in the documented flat order."""
        out = []
        for lname, leaf in self.named_leaves():
            for key in leaf.params:
                out.append((f"{lname}.{key}" if lname else key, leaf, key))
        return out

    def num_params(self):
        """Total number of trainable scalars."""
        return sum(int(layer.params[k].size) for _, layer, k in self.parameters())

    # -- randomness -----------------------------------------------------------------
    def is_random(self):
        """True when the next forward pass draws random numbers (Dropout in train mode).

        Deterministic layers return False; a random layer overrides this and
        ``fixed_randomness``.
        """
        return False

    @contextlib.contextmanager
    def fixed_randomness(self):
        """Context manager: inside it every forward pass reuses one random draw.

        On exit the layer's random state (mask, generator) is what it was on entry. For a
        deterministic layer (this default) it does nothing.
        """
        yield self

    # -- modes and state --------------------------------------------------------------
    def train(self):
        """Switch this layer and all sub-layers to training mode; returns self."""
        self.training = True
        for _, child in self.children():
            child.train()
        return self

    def eval(self):
        """Switch this layer and all sub-layers to evaluation mode; returns self."""
        self.training = False
        for _, child in self.children():
            child.eval()
        return self

    def zero_grad(self):
        """Set every gradient to zero (allocating them if backward never ran)."""
        for _, layer, key in self.parameters():
            p = layer.params[key]
            layer.grads[key] = backend.array_module(p).zeros_like(p)

    def clear_cache(self):
        """Drop what the passes cached (frees the activations of a big batch)."""
        for leaf in self.leaves():
            leaf.cache = {}

    def state_dict(self):
        """``{qualified_name: host NumPy array}`` of every parameter and buffer."""
        out = {}
        for lname, leaf in self.named_leaves():
            for group in (leaf.params, leaf.buffers):
                for key, value in group.items():
                    out[f"{lname}.{key}" if lname else key] = backend.to_numpy(value).copy()
        return out

    def load_state_dict(self, state):
        """Copy arrays from ``state`` (as made by ``state_dict``) into this layer, in place.

        Every key must be present with the right shape; a mismatch raises ``ValueError``
        and leaves the layer unchanged.
        """
        targets = {}
        for lname, leaf in self.named_leaves():
            for group in (leaf.params, leaf.buffers):
                for key, value in group.items():
                    targets[f"{lname}.{key}" if lname else key] = (group, key, value)
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: keys do not match; "
                f"missing {missing}, unexpected {unexpected}")
        for name, (group, key, value) in targets.items():
            shape = tuple(state[name].shape)
            if shape != tuple(value.shape):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: '{name}' expects shape "
                    f"{tuple(value.shape)}, got {shape}")
        for name, (group, key, value) in targets.items():
            xp = backend.array_module(value)
            if xp is backend.xp():
                group[key] = backend.asarray(state[name], dtype=value.dtype)
            else:
                group[key] = xp.asarray(backend.to_numpy(state[name]), dtype=value.dtype)
        return self

    def to_backend(self, dtype=None):
        """Move every parameter and buffer to the active backend (optionally recast)."""
        for leaf in self.leaves():
            for group in (leaf.params, leaf.buffers):
                for key, value in group.items():
                    is_float = value.dtype.kind == "f"
                    group[key] = backend.asarray(value, dtype=dtype if is_float else None)
            leaf.grads = {}
            leaf.cache = {}
        return self

    def astype(self, dtype):
        """Recast every floating parameter and buffer to ``dtype`` (on its device)."""
        for leaf in self.leaves():
            for group in (leaf.params, leaf.buffers):
                for key, value in group.items():
                    if value.dtype.kind == "f":
                        group[key] = value.astype(dtype)
            leaf.grads = {}
            leaf.cache = {}
        return self

    def extra_repr(self):
        """The arguments shown by ``repr``; layers override it."""
        return ""

    def __repr__(self):
        kids = self.children()
        if not kids:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in kids:
            for i, line in enumerate(repr(child).splitlines()):
                lines.append(f"  ({name}): {line}" if i == 0 else f"  {line}")
        lines.append(")")
        return "\n".join(lines)


def _float_hint(dtype):
    """How to turn an array of ``dtype`` into the floats a layer expects."""
    if dtype.name == "uint8":
        # not plain x / 255: NumPy makes that float64, which a float32 layer refuses next
        return ("for pixels 0..255, get floats in [0, 1] with "
                "minidl.data.transforms.to_float(x) (or "
                "x.astype(minidl.get_default_dtype()) / 255)")
    return "convert with x.astype(minidl.get_default_dtype())"


def expect_input(layer, x):
    """Raise ``TypeError`` unless ``x`` is a floating array of the layer's precision.

    The first line of every layer's ``forward`` (directly or through ``expect_ndim``);
    it reads only the dtype, never the values, so it costs nothing per step.

    Args:
        layer: the layer (or loss) doing the check; its class name goes into the message.
        x: what arrived.
    """
    name = type(layer).__name__
    if not backend.is_array(x):
        raise TypeError(f"{name} expects an array, got {type(x).__name__}; convert with "
                        "minidl.asarray(x)")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} expects a floating-point input, got dtype {x.dtype}; "
                        + _float_hint(x.dtype))
    params = getattr(layer, "params", None) or {}
    for p in params.values():
        if p.dtype.kind == "f" and p.dtype != x.dtype:
            raise TypeError(
                f"{name} has {p.dtype} parameters but got a {x.dtype} input; minidl does not "
                f"mix precisions (as PyTorch): convert the data with x.astype('{p.dtype}') or "
                f"the model with model.astype('{x.dtype}')")
        break


def expect_forward_done(layer, dout, what="backward"):
    """Raise a clear error when ``backward`` runs before ``forward`` or gets a non-array.

    The first line of every layer's ``backward``. Leaf layers cache what backward needs in
    ``forward`` (the input x, or for ReLU and BatchNorm what stands for it: the output,
    x_hat); with an empty cache there is nothing to differentiate, either because forward
    has not run or because it saved nothing (the message says both).
    """
    name = type(layer).__name__
    if not layer.cache:
        # either forward never ran, or it ran and saved nothing (a forgotten cache line)
        raise RuntimeError(f"{name}.{what} found self.cache empty: call {name}.forward(x) "
                           f"first ({what} uses what forward cached); if forward ran, it "
                           f"must save what {what} needs: self.cache['x'] = x")
    if not backend.is_array(dout):
        raise TypeError(f"{name}.{what} expects dout as an array of the output's shape, got "
                        f"{type(dout).__name__}")


def expect_output_grad(layer, dout, shape):
    """Raise a ``ValueError`` unless ``dout`` has the shape of the output, ``shape``.

    Called by the built-in layers' ``backward`` right after ``expect_forward_done``. A
    dout of another shape that broadcasts against the cached arrays ((1, D) against
    (N, D)) would give every example the gradient of one row, and one with extra rows
    could be read only in part; PyTorch refuses both ("Mismatch in shape").

    Args:
        layer: the layer doing the check (its class name goes into the message).
        dout: the gradient that arrived at the output.
        shape: the shape of the output of the last ``forward``.
    """
    if tuple(dout.shape) != tuple(shape):
        raise ValueError(f"{type(layer).__name__}.backward expects dout of the output's shape "
                         f"{tuple(shape)}, got {tuple(dout.shape)}; pass the gradient of the "
                         "loss with respect to this layer's output")


def expect_ndim(layer, x, ndims, what):
    """Raise unless ``x`` is a floating array (``expect_input``) with ``x.ndim`` in ``ndims``.

    Args:
        layer: the layer doing the check (its class name goes into the message).
        x: the array that arrived.
        ndims: allowed numbers of dimensions, e.g. ``(4,)``.
        what: the expected layout in words, e.g. ``"(N, C, H, W)"``.
    """
    if not backend.is_array(x):
        raise TypeError(f"{type(layer).__name__} expects an array of shape {what}, "
                        f"got {type(x).__name__}; convert with minidl.asarray(x)")
    if x.ndim not in ndims:
        raise ValueError(f"{type(layer).__name__} expects input of shape {what}, "
                         f"got shape {tuple(x.shape)} ({x.ndim}-D)")
    expect_input(layer, x)


def expect_dim(layer, x, axis, size, what):
    """Raise a ``ValueError`` unless ``x.shape[axis] == size``."""
    if x.shape[axis] != size:
        raise ValueError(f"{type(layer).__name__} expects {what} = {size} "
                         f"(axis {axis} of the input), got input of shape {tuple(x.shape)}")


def expect_size(owner, what, value):
    """``value`` as an int when it is a positive integer (Python or NumPy); a ``ValueError``
    naming ``what`` otherwise. Bools, floats (even 4.0) and strings are refused rather
    than truncated or parsed."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or value <= 0:
        raise ValueError(f"{owner} expects a positive integer {what}, got {value!r}")
    return int(value)


def expect_real(owner, what, value, hint=""):
    """``value`` as a float when it is a finite real number (Python or NumPy); a
    ``ValueError`` naming ``what`` otherwise. None, bools, strings and NaN or infinity are
    refused rather than parsed, read as 0 or 1, or let through to make every output NaN.

    Args:
        owner: the class name, for the message.
        what: the argument's name, for the message.
        value: what arrived.
        hint: a sentence appended to the message (e.g. what a PyTorch value means here).
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        raise ValueError(f"{owner} expects {what} as a finite real number, got {value!r}"
                         + (f"; {hint}" if hint else ""))
    return float(value)


def expect_finite(name, x):
    """Raise a ``ValueError`` when ``x`` holds NaN or infinity."""
    xp = backend.array_module(x)
    if not bool(xp.isfinite(x).all()):
        bad = int((~xp.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf) in an array "
                         f"of shape {tuple(x.shape)}")
