"""Training and evaluation mode, with the layers a user froze left frozen.

``model.train()`` and ``model.eval()`` switch every layer of a model. A user who froze one
layer (``model[1].eval()``: a BatchNorm that should keep its running statistics, a Dropout
turned off) expects training and evaluation to leave that choice alone, so ``fit`` and
``evaluate`` switch modes through these two context managers, which remember every layer's
own ``training`` flag and put each back on the way out::

    with training_mode(model):      # every layer trains, except the frozen ones
        ...
    with evaluation_mode(model):    # every layer evaluates
        ...

A layer counts as frozen when it is in evaluation mode while the container holding it is
in training mode. (When the whole model is in evaluation mode nothing marks one layer as
special, so ``training_mode`` trains all of them, and afterwards puts the model back in
evaluation mode.)
"""
import contextlib

__all__ = ["training_mode", "evaluation_mode", "frozen_layers", "lean_backward"]


def _all_layers(model):
    """Every layer of the tree, containers included, parents before children."""
    out = [model]
    for _, child in model.children():
        out.extend(_all_layers(child))
    return out


def frozen_layers(model):
    """The layers in evaluation mode inside a container in training mode (outermost ones)."""
    frozen = []

    def visit(layer):
        for _, child in layer.children():
            if layer.training and not child.training:
                frozen.append(child)
            else:
                visit(child)
    visit(model)
    return frozen


@contextlib.contextmanager
def _restoring_modes(model):
    saved = [(layer, layer.training) for layer in _all_layers(model)]
    try:
        yield
    finally:
        for layer, training in saved:
            layer.training = training


@contextlib.contextmanager
def training_mode(model):
    """Train every layer except the frozen ones; restore every layer's mode afterwards."""
    frozen = frozen_layers(model)
    with _restoring_modes(model):
        model.train()
        for layer in frozen:
            layer.eval()
        yield model


@contextlib.contextmanager
def evaluation_mode(model):
    """Evaluate with every layer; restore every layer's mode afterwards."""
    with _restoring_modes(model):
        model.eval()
        yield model


@contextlib.contextmanager
def lean_backward(model, keep_caches):
    """Backward as PyTorch's training step does it; restores the model's flags afterwards.

    ``fit`` never uses the gradient with respect to the data, so the first layer skips it
    (``model.needs_input_grad = False``, about a tenth of a CNN step), and unless something
    reads the caches after backward (a preconditioner does: ``keep_caches=True``) each
    layer's cache is freed as soon as its backward has run (``free_after_backward``),
    which roughly halves a ResNet's peak memory.
    """
    saved = (model.needs_input_grad, model.free_after_backward)
    model.needs_input_grad = False
    model.free_after_backward = not keep_caches
    try:
        yield model
    finally:
        model.needs_input_grad, model.free_after_backward = saved
