"""Sequential: layers applied one after another.

forward runs f_L(...f_2(f_1(x))); backward runs the layers' backward passes in reverse,
each handing dL/d(its input) to the layer before. The R-operator passes chain the same
way (jvp forwards, backward_rop in reverse).
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
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def jvp(self, Rx):
        for layer in self.layers:
            Rx = layer.jvp(Rx)
        return Rx

    def backward_rop(self, Rdout):
        for layer in reversed(self.layers):
            Rdout = layer.backward_rop(Rdout)
        return Rdout
