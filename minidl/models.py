"""The seed papers' networks by name, each built from an explicit generator.

=================  =========================================================  ===========
builder            network                                                    parameters
=================  =========================================================  ===========
``mlp``            Linear-[BN]-act blocks, e.g. 784-100-100-100-10 (the BNP   e.g. 99,710
                   experiment on CIFAR-10 uses 3072-100-100-100-10)
``cnn5``           BNP's 5-layer CNN: three 3x3 convolutions with 32-64-32    (3,32,32):
                   filters, then two dense layers (the slides say no more;    104,810
                   our choices: same padding, ReLU and 2x2 max pooling after
                   each convolution, hidden width 128)
``simple_cnn``     conv 5x5/32 - pool - conv 5x5/64 - pool - dense 1024 -     (1,28,28):
                   dense (the TensorFlow "deep MNIST" network)                3,274,634
``autoencoder``    the deep autoencoders of Hinton and Salakhutdinov (2006)   MNIST
                   as used by MBF/KFAC: MNIST 784-1000-500-250-30-...-784,     2,837,314
                   CURVES 784-400-200-100-50-25-6-...-784, FACES
                   625-2000-1000-500-30-...-625; ReLU, a linear code layer
                   and linear outputs (logits for BCE, values for MSE)
``resnet``         He et al. (2016) CIFAR ResNet-(6n+2): 3x3 conv/16, three   ResNet-20
                   stages of n basic blocks with 16/32/64 filters (stride 2    269,722
                   where a stage starts), global average pooling, dense.
``vgg``            VGG-11/16 (Simonyan and Zisserman 2015) for 32x32 inputs:  VGG-16-BN
                   3x3 conv [BN] ReLU blocks with max pooling, then one dense  14,728,266
                   layer 512 -> classes (the usual CIFAR variant)
=================  =========================================================  ===========

ResNet shortcuts. Where a block changes the shape (stride 2, 16->32 or 32->64 channels)
the shortcut is either **option A** (the paper's choice for CIFAR, the default here): take
every second pixel and pad the new channels with zeros, no parameters; or **option B**: a
1x1 convolution with stride 2 followed by BatchNorm (adds 2,752 parameters to ResNet-20).
Other shortcuts are the identity. ReLU follows the addition.

``get_model(name, input_shape, num_classes, rng)`` builds any of them by name for the
command line (``MODELS`` lists the names). Every builder takes ``rng`` (a generator from
``minidl.default_rng(seed)``), so one seed gives the same initial weights on either
backend; layers draw from it in forward order.

References: Q. Ye et al., BNP slides (seed 000); A. Bahamou, D. Goldfarb, Y. Ren, MBF
(arXiv 2202.04124); G. Hinton, R. Salakhutdinov, Science 2006; K. He, X. Zhang, S. Ren,
J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016; K. Simonyan,
A. Zisserman, "Very Deep Convolutional Networks", ICLR 2015.
"""
import numbers

from . import backend
from .layers.base import Layer, expect_size
from .layers import (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Flatten, Sequential,
                     BatchNorm1d, BatchNorm2d, Dropout, Residual, Conv2d, MaxPool2d,
                     GlobalAvgPool2d)
from .losses import BCEWithLogits, MSELoss

__all__ = ["mlp", "cnn5", "simple_cnn", "autoencoder", "resnet", "vgg", "get_model",
           "MODELS", "ACTIVATIONS", "AUTOENCODERS", "autoencoder_loss", "ZeroPadShortcut"]

ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "leaky_relu": LeakyReLU}

# name -> (encoder widths from the input to the code, loss used in the MBF/KFAC papers)
AUTOENCODERS = {
    "mnist": ((784, 1000, 500, 250, 30), "bce"),
    "curves": ((784, 400, 200, 100, 50, 25, 6), "bce"),
    "faces": ((625, 2000, 1000, 500, 30), "mse"),
}

_VGG_CONFIGS = {  # filters per 3x3 conv; "M" is a 2x2 max pool
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"),
}


def _rng(rng, owner):
    """``rng``, checked to be a generator, or a fresh unseeded one when None."""
    if rng is None:
        return backend.default_rng()
    backend.check_rng(rng, owner)
    return rng


def _is_count(value):
    """True for a positive integer (Python or NumPy), False for bools, floats, strings."""
    return not isinstance(value, bool) and hasattr(value, "__index__") and value > 0


def _sizes(values, what, owner, example):
    """A list of positive integers from a sequence; a clear error otherwise."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{owner} expects {what} as a sequence of positive integers, "
                         f"e.g. {example}, got {values!r}")
    if not all(_is_count(v) for v in values):
        raise ValueError(f"{owner} expects {what} of positive integers, e.g. {example}, "
                         f"got {values!r}")
    return [int(v) for v in values]


def _input_shape(input_shape, owner):
    """The shape of one example, ``(D,)`` or ``(C, H, W)``: a tuple of positive ints."""
    shape = _sizes(input_shape, "input_shape", owner, "(1, 28, 28) or (784,)")
    if not shape:
        raise ValueError(f"{owner} expects input_shape with at least one size, e.g. "
                         f"(1, 28, 28) or (784,), got {tuple(input_shape)}")
    return tuple(shape)


def _activation_class(name, owner):
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"{owner} got an unknown activation {name!r}; choose one of "
                         f"{sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]


def _shape(input_shape, owner):
    """``(C, H, W)`` from an image shape; a clear error otherwise."""
    shape = _sizes(input_shape, "input_shape", owner, "(3, 32, 32)")
    if len(shape) != 3:
        raise ValueError(f"{owner} expects input_shape (C, H, W) of an image, e.g. (3, 32, 32), "
                         f"got {tuple(input_shape)}")
    return tuple(shape)


def mlp(sizes, activation="relu", batchnorm=False, dropout=0.0, rng=None, flatten=True):
    """A fully connected network ``sizes[0] - sizes[1] - ... - sizes[-1]``.

    Each hidden layer is Linear, then BatchNorm1d (``batchnorm=True``), then the
    activation, then Dropout (``dropout > 0``); the last Linear gives the outputs.

    Args:
        sizes: widths from the input to the output, e.g. ``(784, 100, 100, 100, 10)``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"leaky_relu"``.
        batchnorm: insert BatchNorm1d after each hidden Linear.
        dropout: drop probability after each hidden activation (0 for none).
        rng: generator for the weights (and the dropout masks).
        flatten: start with ``Flatten()`` so that images (N, C, H, W) are accepted.

    Returns:
        A ``Sequential``.
    """
    given = sizes
    sizes = _sizes(sizes, "sizes", "mlp", "(784, 100, 10)")
    if len(sizes) < 2:
        raise ValueError(f"mlp expects at least two sizes (input and output), e.g. "
                         f"(784, 100, 10), got {given!r}")
    if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
            or not 0.0 <= dropout < 1.0):
        raise ValueError(f"mlp expects dropout as a number in [0, 1), got {dropout!r}")
    act = _activation_class(activation, "mlp")
    rng = _rng(rng, "mlp")
    layers = [Flatten()] if flatten else []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(Linear(n_in, n_out, rng=rng))
        if batchnorm:
            layers.append(BatchNorm1d(n_out))
        layers.append(act())
        if dropout > 0:
            layers.append(Dropout(dropout, rng=rng))
    layers.append(Linear(sizes[-2], sizes[-1], rng=rng))
    return Sequential(*layers)


def _conv_block(c_in, c_out, kernel, batchnorm, rng, stride=1, init="uniform"):
    """Conv (same padding) [BN] ReLU; the conv has no bias when BN follows (BN's beta is one)."""
    return [Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                   bias=not batchnorm, rng=rng, init=init)] + \
        ([BatchNorm2d(c_out)] if batchnorm else []) + [ReLU()]


def cnn5(input_shape=(3, 32, 32), num_classes=10, hidden=128, batchnorm=False, rng=None):
    """BNP's 5-layer CNN: 3x3 convs with 32-64-32 filters, then two dense layers.

    The BNP slides give only the kernels, the filters and "two dense layers"; the rest is
    our choice: each convolution (padding 1) is followed by [BatchNorm2d], ReLU and 2x2
    max pooling, so a 32x32 image leaves the convolutions as 32 x 4 x 4 (28x28:
    32 x 3 x 3), and the hidden dense layer has ``hidden`` units.

    Args:
        input_shape: (C, H, W) of one image.
        num_classes: outputs of the last layer.
        hidden: width of the first dense layer.
        batchnorm: BatchNorm after every convolution and the hidden dense layer.
        rng: generator for the weights.
    """
    C, H, W = _shape(input_shape, "cnn5")
    num_classes = expect_size("cnn5", "num_classes", num_classes)
    hidden = expect_size("cnn5", "hidden", hidden)
    if H < 8 or W < 8:  # three 2x2 poolings
        raise ValueError(f"cnn5 needs images of at least 8x8 pixels, got input_shape "
                         f"{tuple(input_shape)}")
    rng = _rng(rng, "cnn5")
    layers = []
    c_in = C
    for c_out in (32, 64, 32):
        layers += _conv_block(c_in, c_out, 3, batchnorm, rng) + [MaxPool2d(2)]
        c_in, H, W = c_out, H // 2, W // 2
    layers += [Flatten(), Linear(32 * H * W, hidden, rng=rng)]
    layers += ([BatchNorm1d(hidden)] if batchnorm else []) + [ReLU()]
    layers.append(Linear(hidden, num_classes, rng=rng))
    return Sequential(*layers)


def simple_cnn(input_shape=(1, 28, 28), num_classes=10, batchnorm=False, rng=None):
    """Two 5x5 convolutions (32 and 64 filters) with 2x2 max pooling, dense 1024, dense out.

    MBF's "Simple CNN" (the base model of Shallue et al. 2019): stride 1, same padding,
    ReLU, no BatchNorm. Pooling floors odd sizes (TensorFlow's "same" pooling rounds up),
    so the two agree on sizes that are multiples of 4, such as 28x28.

    Args:
        input_shape: (C, H, W) of one image (28x28 leaves the convolutions as 64 x 7 x 7).
        num_classes: outputs of the last layer.
        batchnorm: BatchNorm after both convolutions and the dense 1024 layer.
        rng: generator for the weights.
    """
    C, H, W = _shape(input_shape, "simple_cnn")
    num_classes = expect_size("simple_cnn", "num_classes", num_classes)
    if H < 4 or W < 4:  # two 2x2 poolings
        raise ValueError(f"simple_cnn needs images of at least 4x4 pixels, got input_shape "
                         f"{tuple(input_shape)}")
    rng = _rng(rng, "simple_cnn")
    layers = []
    c_in = C
    for c_out in (32, 64):
        layers += _conv_block(c_in, c_out, 5, batchnorm, rng) + [MaxPool2d(2)]
        c_in, H, W = c_out, H // 2, W // 2
    layers += [Flatten(), Linear(64 * H * W, 1024, rng=rng)]
    layers += ([BatchNorm1d(1024)] if batchnorm else []) + [ReLU()]
    layers.append(Linear(1024, num_classes, rng=rng))
    return Sequential(*layers)


def autoencoder(name="mnist", activation="relu", batchnorm=False, rng=None):
    """A deep autoencoder from the second-order optimisation benchmarks.

    The encoder runs through ``AUTOENCODERS[name]`` widths down to the code, the decoder
    mirrors it. Hidden layers use the activation (and BatchNorm1d when asked); the code
    layer and the output layer are linear. Train it against the flattened input with
    ``autoencoder_loss(name)``: BCE on logits for MNIST and CURVES, squared error for FACES.

    Args:
        name: ``"mnist"``, ``"curves"`` or ``"faces"``.
        activation: activation of the hidden layers (ReLU in MBF; Hinton used sigmoids).
        batchnorm: BatchNorm1d after every hidden (not code, not output) Linear.
        rng: generator for the weights.
    """
    key = str(name).lower()
    if key not in AUTOENCODERS:
        raise ValueError(f"unknown autoencoder {name!r}; choose one of {sorted(AUTOENCODERS)}")
    encoder, _ = AUTOENCODERS[key]
    widths = list(encoder) + list(reversed(encoder[:-1]))  # input ... code ... input
    code_index = len(encoder) - 1
    act = _activation_class(activation, "autoencoder")
    rng = _rng(rng, "autoencoder")
    layers = [Flatten()]
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers.append(Linear(n_in, n_out, rng=rng))
        if i in (code_index, len(widths) - 1):
            continue  # the code layer and the output layer are linear
        if batchnorm:
            layers.append(BatchNorm1d(n_out))
        layers.append(act())
    return Sequential(*layers)


def autoencoder_loss(name):
    """The loss the papers use for autoencoder ``name``, with mean reduction.

    Mean reduction averages over the N examples and the D = 784 (FACES: 625) outputs.
    The per-example loss summed over the outputs, the scale that second-order papers
    usually report, is D times this value; its gradients, and so learning rates or
    damping tuned for it, differ by the same factor D.
    """
    key = str(name).lower()
    if key not in AUTOENCODERS:
        raise ValueError(f"unknown autoencoder {name!r}; choose one of {sorted(AUTOENCODERS)}")
    return BCEWithLogits() if AUTOENCODERS[key][1] == "bce" else MSELoss()


class ZeroPadShortcut(Layer):
    """ResNet option-A shortcut: subsample by ``stride`` and pad new channels with zeros.

    out[:, pad:pad + C] = x[:, :, ::stride, ::stride], zeros elsewhere, with
    pad = (out_channels - C) // 2 channels before and the rest after (as the usual CIFAR
    implementations do). The map is linear, so backward, jvp and backward_rop are the
    same slicing. No parameters.

    Shapes: x (N, C, H, W) -> out (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels, out_channels, stride=2):
        super().__init__()
        in_channels = expect_size("ZeroPadShortcut", "in_channels", in_channels)
        out_channels = expect_size("ZeroPadShortcut", "out_channels", out_channels)
        self.stride = expect_size("ZeroPadShortcut", "stride", stride)
        if out_channels < in_channels:
            raise ValueError(f"ZeroPadShortcut pads channels, so out_channels "
                             f"({out_channels}) must be >= in_channels ({in_channels})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.pad = (self.out_channels - self.in_channels) // 2

    def _forward(self, x):
        xp = backend.array_module(x)
        s, lo = self.stride, self.pad
        sub = x[:, :, ::s, ::s]  # (N, C, Ho, Wo)
        N, C, Ho, Wo = sub.shape
        out = xp.zeros((N, self.out_channels, Ho, Wo), dtype=x.dtype)  # (N, F, Ho, Wo)
        out[:, lo:lo + C] = sub
        return out

    def _backward(self, dout):
        xp = backend.array_module(dout)
        s, lo = self.stride, self.pad
        dx = xp.zeros(self.cache["shape"], dtype=dout.dtype)  # (N, C, H, W)
        dx[:, :, ::s, ::s] = dout[:, lo:lo + self.in_channels]
        return dx

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ZeroPadShortcut expects (N, {self.in_channels}, H, W), got "
                             f"shape {tuple(x.shape)}")
        self.cache["shape"] = x.shape
        return self._forward(x)

    def backward(self, dout):
        return self._backward(dout)

    def jvp(self, Rx):
        return self._forward(Rx)

    def backward_rop(self, Rdout):
        return self._backward(Rdout)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _basic_block(c_in, c_out, stride, shortcut, batchnorm, rng):
    """conv3x3 [BN] ReLU conv3x3 [BN], plus the shortcut, then ReLU."""
    block = _conv_block(c_in, c_out, 3, batchnorm, rng, stride=stride, init="he_normal")
    block.append(Conv2d(c_out, c_out, 3, padding=1, bias=not batchnorm, rng=rng,
                        init="he_normal"))
    if batchnorm:
        block.append(BatchNorm2d(c_out))
    skip = None
    if stride != 1 or c_in != c_out:
        if shortcut == "A":
            skip = ZeroPadShortcut(c_in, c_out, stride)
        else:
            skip = Sequential(Conv2d(c_in, c_out, 1, stride=stride, bias=not batchnorm, rng=rng,
                                     init="he_normal"),
                              *([BatchNorm2d(c_out)] if batchnorm else []))
    return [Residual(Sequential(*block), skip), ReLU()]


def resnet(depth=20, input_shape=(3, 32, 32), num_classes=10, shortcut="A", batchnorm=True,
           rng=None):
    """The CIFAR ResNet of He et al. (2016): depth = 6n + 2 (20, 32, 44, 56, 110).

    Args:
        depth: number of weighted layers; n = (depth - 2) / 6 blocks per stage.
        input_shape: (C, H, W), 32x32 in the paper (any size >= 4x4 works).
        num_classes: outputs.
        shortcut: ``"A"`` (zero padding, no parameters, the paper's CIFAR choice) or
            ``"B"`` (1x1 convolution and BatchNorm) where the shape changes.
        batchnorm: BatchNorm after every convolution (the paper's design); without it the
            convolutions get biases.
        rng: generator for the weights (He-normal convolutions, as in the paper).
    """
    if not _is_count(depth) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet expects an integer depth = 6n + 2 with n >= 1 (20, 32, 44, "
                         f"56, 110), got {depth!r}")
    if shortcut not in ("A", "B"):
        raise ValueError(f"resnet expects shortcut 'A' (zero padding) or 'B' (1x1 "
                         f"convolution), got {shortcut!r}")
    C, _, _ = _shape(input_shape, "resnet")
    num_classes = expect_size("resnet", "num_classes", num_classes)
    n = (int(depth) - 2) // 6
    rng = _rng(rng, "resnet")
    layers = _conv_block(C, 16, 3, batchnorm, rng, init="he_normal")
    c_in = 16
    for stage, c_out in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers += _basic_block(c_in, c_out, stride, shortcut, batchnorm, rng)
            c_in = c_out
    layers += [GlobalAvgPool2d(), Linear(64, num_classes, rng=rng)]
    return Sequential(*layers)


def vgg(depth=16, input_shape=(3, 32, 32), num_classes=10, batchnorm=True, rng=None):
    """VGG-11 or VGG-16 for small images: five pooled groups of 3x3 convolutions, one dense.

    Args:
        depth: 11 or 16.
        input_shape: (C, H, W); H and W must be multiples of 32 (a 32x32 image ends as
            512 x 1 x 1).
        num_classes: outputs.
        batchnorm: BatchNorm2d after every convolution (VGG-BN). The convolutions keep
            their biases even then, as the usual CIFAR VGG code does (VGG-16-BN's
            14,728,266 parameters count them).
        rng: generator for the weights (He-normal N(0, 2/fan_in) convolution weights,
            PyTorch's default uniform for their biases and the dense layer).
    """
    if not _is_count(depth) or int(depth) not in _VGG_CONFIGS:
        raise ValueError(f"vgg expects depth 11 or 16, got {depth!r}")
    C, H, W = _shape(input_shape, "vgg")
    num_classes = expect_size("vgg", "num_classes", num_classes)
    if H % 32 or W % 32:
        raise ValueError(f"vgg pools five times by 2, so it expects H and W that are "
                         f"multiples of 32 (e.g. (3, 32, 32)), got {tuple(input_shape)}")
    rng = _rng(rng, "vgg")
    layers = []
    c_in = C
    for item in _VGG_CONFIGS[int(depth)]:
        if item == "M":
            layers.append(MaxPool2d(2))
            continue
        conv = Conv2d(c_in, item, 3, padding=1, rng=rng, init="he_normal")
        layers += [conv] + ([BatchNorm2d(item)] if batchnorm else []) + [ReLU()]
        c_in = item
    layers += [Flatten(), Linear(512 * (H // 32) * (W // 32), num_classes, rng=rng)]
    return Sequential(*layers)


# -- the registry ------------------------------------------------------------------------
def _flat(input_shape):
    size = 1
    for s in input_shape:
        size *= s
    return size


def _mlp_entry(input_shape, num_classes, rng, hidden=(100, 100, 100), **kw):
    num_classes = expect_size("mlp", "num_classes", num_classes)
    hidden = _sizes(hidden, "hidden", "mlp", "(100, 100, 100)")
    return mlp([_flat(input_shape)] + hidden + [num_classes], rng=rng, **kw)


def _autoencoder_entry(key):
    def build(input_shape, num_classes, rng, **kw):
        size = AUTOENCODERS[key][0][0]
        if _flat(input_shape) != size:
            raise ValueError(f"autoencoder-{key} expects inputs of {size} values, got "
                             f"input_shape {tuple(input_shape)}")
        return autoencoder(key, rng=rng, **kw)
    return build


def _image_entry(builder, **fixed):
    def build(input_shape, num_classes, rng, **kw):
        return builder(input_shape=input_shape, num_classes=num_classes, rng=rng,
                       **fixed, **kw)
    return build


# name -> build(input_shape, num_classes, rng, **kw); the command line's --model choices
MODELS = {
    "mlp": _mlp_entry,
    "cnn5": _image_entry(cnn5),
    "simple_cnn": _image_entry(simple_cnn),
    "resnet20": _image_entry(resnet, depth=20),
    "resnet32": _image_entry(resnet, depth=32),
    "resnet110": _image_entry(resnet, depth=110),
    "vgg11": _image_entry(vgg, depth=11),
    "vgg16": _image_entry(vgg, depth=16),
    "autoencoder-mnist": _autoencoder_entry("mnist"),
    "autoencoder-curves": _autoencoder_entry("curves"),
    "autoencoder-faces": _autoencoder_entry("faces"),
}


def get_model(name, input_shape, num_classes, rng, **kw):
    """Build the network called ``name`` (a key of ``MODELS``).

    Args:
        name: e.g. ``"mlp"``, ``"cnn5"``, ``"resnet20"``, ``"vgg16"``,
            ``"autoencoder-mnist"``.
        input_shape: shape of one example without the batch axis, e.g. (1, 28, 28).
        num_classes: number of outputs (ignored by the autoencoders).
        rng: generator for the weights.
        **kw: passed to the builder (``hidden=(256, 128)`` for ``mlp``, ``batchnorm=True``).

    Returns:
        The model (a ``Sequential``).
    """
    key = str(name).lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key](_input_shape(input_shape, name), num_classes, rng, **kw)
