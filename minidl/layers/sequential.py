"""Sequential: layers applied one after another.

forward runs f_L(...f_2(f_1(x))); backward runs the layers' backward passes in reverse,
each handing dL/d(its input) to the layer before. The R-operator passes chain the same
way (jvp forwards, backward_rop in reverse).

Nobody needs the gradient with respect to the data (PyTorch skips it too, ~10% of a CNN
step). Set ``model.needs_input_grad = False`` and backward stops at the first layer with
parameters, which fills its ``grads`` but does not compute its dx (Conv2d and Linear skip
the product); backward then returns None. The default (True) returns dL/dx as the Layer
protocol says.

Memory: with ``model.free_after_backward = True`` each layer's cache is cleared as soon as
its backward pass ran, so the activations are freed during backward instead of staying
until the next forward pass. For plain (first-order) training only: the preconditioners
and the curvature products read ``cache["x"]`` and ``cache["dout"]`` after backward.
"""
from .base import Layer

__all__ = ["Sequential"]


class Sequential(Layer):
    """A chain of layers; ``model.layers`` is the list, ``model[i]`` one of them."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential expects Layer objects, got {type(layer).__name__} "
                                f"at position {i}")
        self.layers = list(layers)

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout):
        first = 0
        if not self.needs_input_grad:
            # layers before the first one with parameters have no gradients to fill
            first = next((i for i, layer in enumerate(self.layers) if layer.parameters()),
                         len(self.layers))
        for i in range(len(self.layers) - 1, first, -1):
            dout = self._backward_one(self.layers[i], dout)
        if self.free_after_backward:
            for layer in self.layers[:first]:  # not run: their caches are not needed either
                layer.clear_cache()
        if first == len(self.layers):
            return None
        layer = self.layers[first]
        if self.needs_input_grad:
            return self._backward_one(layer, dout)
        asked = layer.needs_input_grad
        layer.needs_input_grad = False  # its parameter gradients only
        try:
            self._backward_one(layer, dout)
        finally:
            layer.needs_input_grad = asked
        return None

    def _backward_one(self, layer, dout):
        dx = layer.backward(dout)
        if self.free_after_backward:
            layer.clear_cache()  # nothing in this backward pass reads it again
        return dx

    def jvp(self, Rx):
        for layer in self.layers:
            Rx = layer.jvp(Rx)
        return Rx

    def backward_rop(self, Rdout):
        for layer in reversed(self.layers):
            Rdout = layer.backward_rop(Rdout)
        return Rdout
