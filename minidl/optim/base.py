"""The ``Optimizer`` protocol shared by SGD, AdaGrad, RMSProp, Adam, AdamW and Rprop.

A first-order method turns the gradient g_k of the loss at theta_k into a step::

    theta_{k+1} = theta_k - lr * d_k,     d_k = a function of g_1 .. g_k (the method's state)

Each method writes one function, ``update(theta, g, s)``, for one parameter array: ``theta``
is the array in ``layer.params`` (changed in place, so NumPy and CuPy arrays both work), ``g``
its gradient in ``layer.grads`` (never changed) and ``s`` the method's state for that
parameter (a dict of arrays on the parameter's device, plus ``s["step"]``, the number of
updates this parameter has had, counted from 1 as the lecture's k and PyTorch's ``step``).

The training loop is the same for every method (and for a preconditioner, which rewrites
``layer.grads`` between the backward pass and ``opt.step()``)::

    out = model.forward(x)
    loss_value = crit.forward(out, y)
    model.backward(crit.backward())
    opt.step()

Checkpoints: ``state_dict()`` is a flat dict of host NumPy arrays and plain numbers with
string keys, ``"t"``, ``"lr"``, ``"hyper.<setting>"`` (``hyperparameters()``) and
``"state.<qualified parameter name>.<slot>"``, so it can go into an ``.npz`` file without
pickle; ``load_state_dict`` puts the arrays back on the device of each parameter, after
checking that the settings match.
"""
import math
import numbers

from .. import backend, parallel

__all__ = ["Optimizer", "check_number", "settings_entries", "check_saved_settings",
           "THREADED_UPDATE_VALUES"]

# the fewest parameter values for which ``step`` hands the parameters to threads (where
# more than one is allowed). Measured at two threads with SGD momentum: the MNIST
# autoencoder's 2.8M values 6.2 -> 3.9 ms per step, while the 5-layer CNN's 105K took
# 0.31 -> 0.63 ms (handing out pieces costs more than the pieces save).
THREADED_UPDATE_VALUES = 2**20


def check_number(owner, name, value, low=None, high=None, low_open=False, high_open=False,
                 allowed=None):
    """Return ``float(value)`` or raise ``ValueError`` saying what is allowed.

    Args:
        owner: the class name that goes into the message (``"Adam"``).
        name: the hyperparameter's name (``"lr"``, ``"betas[0]"``).
        value: what the caller passed.
        low, high: bounds (None for none).
        low_open, high_open: exclude the bound itself.
        allowed: the allowed range in words for the message, e.g. ``"[0, 1)"``.

    Returns:
        The value as a Python float.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a real number, got {value!r} "
                         f"({type(value).__name__})")
    x = float(value)
    bad = not math.isfinite(x)
    if low is not None:
        bad = bad or (x <= low if low_open else x < low)
    if high is not None:
        bad = bad or (x >= high if high_open else x > high)
    if bad:
        if allowed is None:
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            allowed = ("(" if low_open or low is None else "[") + f"{lo}, {hi}" + (
                ")" if high_open or high is None else "]")
        raise ValueError(f"{owner}: {name} must lie in {allowed}, got {value!r}")
    return x


def settings_entries(settings):
    """``{"hyper.<name>": value}`` for a ``state_dict``: the settings that define a method.

    Values are numbers, bools and strings (None is written as the string ``"None"``), so
    they go into an ``.npz`` file without pickle.
    """
    return {f"hyper.{name}": "None" if value is None else value
            for name, value in settings.items()}


def _setting(value):
    """A saved or current setting as a comparable plain value: str, bool or float."""
    if backend.is_array(value) or hasattr(value, "item"):
        value = backend.to_numpy(value).item()  # a 0-d array from an .npz file
    if value is None or isinstance(value, str):
        return str(value)
    return value if isinstance(value, bool) else float(value)


def _show(value):
    if isinstance(value, (str, bool)):
        return repr(value)
    return f"{value:g}"


def check_saved_settings(owner, settings, state):
    """Refuse a state saved with other settings than ``settings`` (the object's own).

    Args:
        owner: ``"<Class>.load_state_dict"`` for the messages.
        settings: the object's ``hyperparameters()``.
        state: the dict being loaded; its ``"hyper.<name>"`` entries are compared (state
            saved before settings were saved has none, and passes).

    Raises:
        ValueError: a setting the object does not have, or one saved with another value;
            the message names every one that differs, saved and current.
    """
    cls = owner.split(".")[0]
    differ = []
    for entry, value in state.items():
        if not entry.startswith("hyper."):
            continue
        name = entry[len("hyper."):]
        if name not in settings:
            raise ValueError(f"{owner}: entry {entry!r} is a setting {cls} does not have "
                             f"(it has {sorted(settings) or 'none'})")
        saved, own = _setting(value), _setting(settings[name])
        if saved != own:
            differ.append(f"{name} {_show(saved)} (this one: {_show(own)})")
    if differ:
        raise ValueError(f"{owner}: the state was saved with other settings: "
                         f"{'; '.join(differ)}. Make the {cls} with the saved settings to "
                         "continue that run")


def _saved_count(owner, entry, value, low):
    """A saved count (a step number) as an int, refusing anything but an integer >= low."""
    host = backend.to_numpy(value)
    count = host.item() if host.ndim == 0 else host
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < low:
        raise ValueError(f"{owner}: entry {entry!r} must be an integer >= {low} (a count of "
                         f"updates), got {value!r}")
    return int(count)


class Optimizer:
    """Base class: parameter bookkeeping, the step loop, zero_grad and checkpoints.

    Subclasses set their hyperparameters in ``__init__`` (validated with
    ``check_number``), and write ``init_state(theta)`` and ``update(theta, g, s)``.

    Args:
        model: the network (a ``Layer``); every entry of ``model.parameters()`` is optimised.
        lr: the learning rate (step size) lr >= 0. It is a plain settable attribute, so a
            schedule can set ``opt.lr = schedule(k)`` between steps.

    Attributes:
        t: the number of ``step()`` calls so far.
        state: ``{qualified parameter name: {slot: array or number}}``, made on the first
            step in which the parameter has a gradient (as PyTorch does).
    """

    def __init__(self, model, lr):
        if not hasattr(model, "parameters"):
            raise TypeError(f"{type(self).__name__} expects a model (a minidl Layer with "
                            f".parameters()), got {type(model).__name__}")
        self.model = model
        self.param_list = model.parameters()  # [(qualified_name, layer, key), ...]
        if not self.param_list:
            raise ValueError(f"{type(self).__name__}: the model has no trainable parameters "
                             "(model.parameters() is empty), so there is nothing to optimise")
        self.lr = lr
        self.t = 0
        self.state = {}

    # -- the learning rate ---------------------------------------------------------------
    @property
    def lr(self):
        """The learning rate used by the next ``step()``; set it to follow a schedule."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = check_number(type(self).__name__, "lr", value, low=0.0, allowed="[0, inf)")

    # -- what subclasses write -----------------------------------------------------------
    def init_state(self, theta):
        """The state of one parameter before its first update: ``{slot: array}``."""
        raise NotImplementedError

    def update(self, theta, g, s):
        """Change ``theta`` in place by one step of the method; update the state ``s``."""
        raise NotImplementedError

    # -- the step ------------------------------------------------------------------------
    def step(self):
        """Update every parameter that has a gradient; parameters without one are skipped.

        Raises:
            RuntimeError: no parameter has a gradient at all (``backward`` has not run, or
                ``zero_grad(set_to_none=True)`` removed them): a step would silently do
                nothing. Nothing is changed, not even the step count ``t``.
        """
        if not any(key in layer.grads for _, layer, key in self.param_list):
            name = self.param_list[0][0]
            raise RuntimeError(
                f"{type(self).__name__}.step(): no parameter has a gradient (the first, "
                f"'{name}', has none in its layer's grads), so this step would change "
                "nothing. Run the backward pass first: out = model.forward(x); "
                "loss.forward(out, y); model.backward(loss.backward()); then opt.step()")
        todo = []  # [(name, theta, g)] of the parameters that have a gradient
        for name, layer, key in self.param_list:  # every check before anything changes
            if key not in layer.grads:
                continue
            theta, g = layer.params[key], layer.grads[key]
            if tuple(g.shape) != tuple(theta.shape):
                raise ValueError(f"{type(self).__name__}.step(): gradient of {name} has shape "
                                 f"{tuple(g.shape)}, the parameter {tuple(theta.shape)}")
            backend.check_same_device(f"{type(self).__name__}.step() on {name}", theta, g)
            todo.append((name, theta, g))
        self.t += 1
        for name, theta, _ in todo:
            if name not in self.state:
                self.state[name] = dict(self.init_state(theta), step=0)
            self.state[name]["step"] += 1

        def update_one(item):
            name, theta, g = item
            self.update(theta, g, self.state[name])

        values = sum(int(theta.size) for _, theta, _ in todo)
        if values >= THREADED_UPDATE_VALUES and self._updates_in_threads():
            # each parameter's update touches only its own theta and state, so the
            # parameters can go to threads (largest first, to share the work evenly); the
            # numbers are the same as in the loop, to the last bit
            by_size = sorted(todo, key=lambda item: -item[1].size)
            parallel.map_pieces(update_one, by_size, like=todo[0][1])
        else:
            for item in todo:
                update_one(item)

    def _updates_in_threads(self):
        """True for minidl's own optimizer classes: their ``update`` reads and writes only
        the parameter, its gradient and its state, so parameters may be updated side by
        side. A class of your own (a subclass too) runs the plain loop, one parameter
        after the other, whatever its ``update`` does."""
        return self._own_class()

    def _own_class(self):
        """True when this is one of minidl's optimizer classes, not a class of your own."""
        return type(self).__module__.startswith(__name__.rpartition(".")[0] + ".")

    def zero_grad(self, set_to_none=False):
        """Reset the gradients before the next backward pass.

        Args:
            set_to_none: remove the gradients instead of writing zeros, so that a parameter
                whose backward pass does not run is skipped by ``step()`` (PyTorch's default)
                rather than updated with a zero gradient (which still moves it under
                momentum or Adam).
        """
        if set_to_none:
            for _, layer, key in self.param_list:
                layer.grads.pop(key, None)
        else:
            self.model.zero_grad()

    # -- checkpoints ---------------------------------------------------------------------
    def hyperparameters(self):
        """The settings other than lr that define the method: ``{name: number or bool}``.

        ``state_dict`` saves them (as ``"hyper.<name>"``) and ``load_state_dict`` refuses
        state saved with other values: a momentum buffer built with momentum 0.9 does not
        continue the same run in an SGD made with momentum 0. lr is not among them (a
        schedule changes it, and a checkpoint restores it). The base class has none;
        minidl's methods list theirs.
        """
        return {}

    def state_dict(self):
        """``{"t": int, "lr": float, "hyper.<name>": number, "state.<name>.<slot>": host
        array or int}``."""
        out = {"t": int(self.t), "lr": float(self.lr)}
        out.update(settings_entries(self.hyperparameters()))
        for name, s in self.state.items():
            for slot, value in s.items():
                if backend.is_array(value):
                    out[f"state.{name}.{slot}"] = backend.to_numpy(value).copy()
                else:
                    out[f"state.{name}.{slot}"] = value
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` wrote (also after a round trip through ``.npz``).

        Arrays go to the device of their parameter.

        Raises:
            ValueError: an unknown parameter name, a shape that does not match, a
                hyperparameter saved with another value than this optimizer's (see
                ``hyperparameters``), or, for minidl's own methods, a state slot the method
                does not keep (state of another method). The optimizer is left unchanged.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        check_saved_settings(owner, self.hyperparameters(), state)
        params = {name: layer.params[key] for name, layer, key in self.param_list}
        slots = self._slot_names()
        new = {}
        for entry, value in state.items():
            if entry in ("t", "lr") or entry.startswith("hyper."):
                continue
            head, _, rest = entry.partition(".")
            name, _, slot = rest.rpartition(".")
            if head != "state" or not name or not slot:
                raise ValueError(f"{owner}: entry {entry!r} is not 't', 'lr', "
                                 "'hyper.<setting>' or 'state.<parameter name>.<slot>'")
            if name not in params:
                raise ValueError(f"{owner}: entry {entry!r} names parameter {name!r}, which the "
                                 f"model does not have; it has {sorted(params)}")
            if slots is not None and slot not in slots:
                raise ValueError(f"{owner}: entry {entry!r} is state {slot!r}, which "
                                 f"{type(self).__name__} does not keep (it keeps "
                                 f"{sorted(slots)}); is this another method's state?")
            theta = params[name]
            host = backend.to_numpy(value)
            if slot == "step":  # the updates this parameter has had, from 1
                new.setdefault(name, {})[slot] = _saved_count(owner, entry, host, low=1)
                continue
            if tuple(host.shape) != tuple(theta.shape):
                raise ValueError(f"{owner}: entry {entry!r} has shape {tuple(host.shape)}, "
                                 f"parameter {name} has shape {tuple(theta.shape)}")
            xp = backend.array_module(theta)
            # a copy: optimizers update their state in place, the caller keeps its dict
            new.setdefault(name, {})[slot] = xp.array(host, dtype=host.dtype, copy=True)
        for name, s in new.items():
            if "step" not in s:
                raise ValueError(f"{owner}: parameter {name} has state but no "
                                 f"'state.{name}.step' entry")
        t = _saved_count(owner, "t", state["t"], low=0) if "t" in state else 0
        if "lr" in state:  # the setter checks it, before the state is replaced
            self.lr = float(backend.to_numpy(state["lr"]))
        self.state, self.t = new, t
        return self

    def _slot_names(self):
        """The state slots of minidl's own methods (``init_state``'s keys and ``"step"``);
        None for a class of your own, whose ``update`` may add slots of its own."""
        if not self._own_class():
            return None
        _, layer, key = self.param_list[0]
        return set(self.init_state(layer.params[key])) | {"step"}

    def extra_repr(self):
        """The hyperparameters shown by ``repr``; subclasses extend it."""
        return f"lr={self.lr:g}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"
