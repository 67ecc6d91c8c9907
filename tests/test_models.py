"""Tests for minidl.models: parameter counts against published/independent counts, output
shapes, forward/backward smoke runs on tiny inputs, seeds, and the registry."""
import numpy as np
import pytest

import minidl
from minidl import gradcheck, models
from minidl.layers import BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Linear

from conftest import torch_or_skip

# Counts worked out from the layer shapes and checked against PyTorch builds of the same
# networks (ResNet-20 with option A is the "0.27M" of He et al.'s Table 6; VGG-16-BN for
# CIFAR-10 is the usual 14.7M; simple_cnn is TensorFlow's deep-MNIST network, 3,274,634).
COUNTS = [
    ("mlp 784-100-100-100-10", lambda r: models.mlp((784, 100, 100, 100, 10), rng=r), 99_710),
    ("mlp 3072-100x3-10", lambda r: models.mlp((3072, 100, 100, 100, 10), rng=r), 328_510),
    ("cnn5 cifar", lambda r: models.cnn5((3, 32, 32), rng=r), 104_810),
    ("simple_cnn mnist", lambda r: models.simple_cnn((1, 28, 28), rng=r), 3_274_634),
    ("autoencoder mnist", lambda r: models.autoencoder("mnist", rng=r), 2_837_314),
    ("autoencoder curves", lambda r: models.autoencoder("curves", rng=r), 842_340),
    ("autoencoder faces", lambda r: models.autoencoder("faces", rng=r), 7_537_655),
    ("resnet20 A", lambda r: models.resnet(20, rng=r), 269_722),
    ("resnet20 B", lambda r: models.resnet(20, shortcut="B", rng=r), 272_474),
    ("resnet32 A", lambda r: models.resnet(32, rng=r), 464_154),
    ("resnet110 A", lambda r: models.resnet(110, rng=r), 1_727_962),
    ("vgg11 bn", lambda r: models.vgg(11, rng=r), 9_231_114),
    ("vgg16 bn", lambda r: models.vgg(16, rng=r), 14_728_266),
    ("vgg16", lambda r: models.vgg(16, batchnorm=False, rng=r), 14_719_818),
]


@pytest.mark.parametrize("name, build, count", COUNTS, ids=[c[0] for c in COUNTS])
def test_parameter_counts(name, build, count):
    assert build(minidl.default_rng(0)).num_params() == count


def test_autoencoder_widths_and_linear_code_layer():
    model = models.autoencoder("curves", rng=minidl.default_rng(0))
    linears = [layer for layer in model.leaves() if isinstance(layer, Linear)]
    widths = [linears[0].in_features] + [layer.out_features for layer in linears]
    assert widths == [784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784]
    kinds = [type(layer).__name__ for layer in model.leaves()]
    code = kinds.index("Linear", 1 + 2 * 5)  # the 6th Linear maps 25 -> 6
    assert kinds[code + 1] == "Linear"  # no activation after the code layer
    assert kinds[-1] == "Linear"        # linear outputs (logits)
    assert isinstance(models.autoencoder_loss("faces"), minidl.losses.MSELoss)
    assert isinstance(models.autoencoder_loss("mnist"), minidl.losses.BCEWithLogits)


def _forward_backward(model, x):
    out = model.forward(x)
    dx = model.backward(np.ones_like(out))
    assert dx.shape == x.shape
    for _, layer, key in model.parameters():
        assert layer.grads[key].shape == layer.params[key].shape
        assert np.isfinite(layer.grads[key]).all()
    return out


SMOKE = [
    ("mlp", lambda r: models.mlp((12, 7, 5, 3), batchnorm=True, dropout=0.1, rng=r),
     (4, 3, 2, 2), (4, 3)),
    ("cnn5", lambda r: models.cnn5((3, 16, 16), num_classes=4, hidden=8, rng=r),
     (2, 3, 16, 16), (2, 4)),
    ("cnn5 bn", lambda r: models.cnn5((1, 8, 8), hidden=8, batchnorm=True, rng=r),
     (3, 1, 8, 8), (3, 10)),
    ("simple_cnn", lambda r: models.simple_cnn((1, 12, 12), num_classes=3, rng=r),
     (2, 1, 12, 12), (2, 3)),
    ("autoencoder", lambda r: models.autoencoder("curves", batchnorm=True, rng=r),
     (3, 784), (3, 784)),
    ("resnet20 A", lambda r: models.resnet(20, (3, 8, 8), num_classes=5, rng=r),
     (2, 3, 8, 8), (2, 5)),
    ("resnet8 B no bn", lambda r: models.resnet(8, (1, 8, 8), shortcut="B", batchnorm=False,
                                                rng=r), (2, 1, 8, 8), (2, 10)),
    ("vgg11", lambda r: models.vgg(11, (3, 32, 32), num_classes=2, rng=r),
     (2, 3, 32, 32), (2, 2)),
]


@pytest.mark.parametrize("name, build, x_shape, out_shape", SMOKE, ids=[s[0] for s in SMOKE])
def test_forward_backward_shapes(name, build, x_shape, out_shape):
    model = build(minidl.default_rng(0))
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    out = _forward_backward(model, x)
    assert out.shape == out_shape and out.dtype == np.float32
    model.eval()
    assert model.forward(x[:1]).shape == (1,) + out_shape[1:]  # eval: a batch of one works


def test_batchnorm_option_adds_normalisation():
    r = minidl.default_rng(0)
    plain = models.cnn5((3, 32, 32), rng=r)
    with_bn = models.cnn5((3, 32, 32), batchnorm=True, rng=r)
    assert not any(isinstance(m, (BatchNorm1d, BatchNorm2d)) for m in plain.leaves())
    assert sum(isinstance(m, BatchNorm2d) for m in with_bn.leaves()) == 3
    assert sum(isinstance(m, BatchNorm1d) for m in with_bn.leaves()) == 1
    convs = [m for m in with_bn.leaves() if isinstance(m, Conv2d)]
    assert all("b" not in c.params for c in convs)  # BN's beta replaces the conv bias
    mlp = models.mlp((8, 4, 2), batchnorm=True, dropout=0.5, rng=r)
    kinds = [type(m).__name__ for m in mlp.leaves()]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert isinstance(mlp[4], Dropout)


def test_resnet_structure():
    model = models.resnet(20, rng=minidl.default_rng(0))
    convs = [m for m in model.leaves() if isinstance(m, Conv2d)]
    assert len(convs) == 19  # 1 + 3 stages x 3 blocks x 2; plus the dense layer = 20
    assert [c.out_channels for c in convs[::6]] == [16, 16, 32, 64]
    pads = [m for m in model.leaves() if isinstance(m, models.ZeroPadShortcut)]
    assert len(pads) == 2
    with pytest.raises(ValueError, match="6n"):
        models.resnet(21)


def test_zero_pad_shortcut_gradients():
    layer = models.ZeroPadShortcut(2, 6, stride=2)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))  # odd size: ceil(5/2) = 3
    out = layer.forward(x)
    assert out.shape == (2, 6, 3, 3)
    assert np.array_equal(out[:, 2:4], x[:, :, ::2, ::2]) and not out[:, :2].any()
    report = gradcheck.check_layer(layer, x)
    assert report.ok, str(report)


def test_same_seed_same_weights_different_seed_different():
    def weights(seed):
        return models.resnet(8, (3, 8, 8), rng=minidl.default_rng(seed)).state_dict()
    a, b, c = weights(0), weights(0), weights(1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a if k.endswith("W"))


def test_get_model_registry():
    r = minidl.default_rng(0)
    model = models.get_model("mlp", (1, 28, 28), 10, r, hidden=(32,))
    assert model.num_params() == 784 * 32 + 32 + 32 * 10 + 10
    assert models.get_model("resnet20", (3, 32, 32), 100, r).num_params() == 269_722 + 64 * 90 + 90
    assert models.get_model("cnn5", (1, 28, 28), 10, r).num_params() == 75_562
    with pytest.raises(ValueError, match="unknown model 'resnet7'"):
        models.get_model("resnet7", (3, 32, 32), 10, r)
    with pytest.raises(ValueError, match="784"):
        models.get_model("autoencoder-mnist", (3, 32, 32), 10, r)
    with pytest.raises(ValueError, match="multiples of 32"):
        models.get_model("vgg11", (1, 28, 28), 10, r)
    assert set(models.MODELS) >= {"mlp", "cnn5", "simple_cnn", "resnet20", "resnet32",
                                  "resnet110", "vgg11", "vgg16", "autoencoder-mnist"}


# -- bad arguments: a clear error before any weight is drawn -----------------------------
def _gm(name, input_shape, num_classes, **kw):
    return lambda r: models.get_model(name, input_shape, num_classes, r, **kw)


BAD_ARGUMENTS = [  # (case, build(rng), what the message must name)
    ("num_classes 0", _gm("resnet20", (3, 32, 32), 0), "num_classes, got 0"),
    ("num_classes -3", _gm("cnn5", (3, 32, 32), -3), "num_classes, got -3"),
    ("num_classes 2.5", _gm("cnn5", (3, 32, 32), 2.5), "num_classes, got 2.5"),
    ("num_classes True", _gm("vgg11", (3, 32, 32), True), "num_classes, got True"),
    ("num_classes '10'", _gm("simple_cnn", (1, 28, 28), "10"), "num_classes, got '10'"),
    ("num_classes None", _gm("resnet20", (3, 32, 32), None), "num_classes, got None"),
    ("mlp num_classes 0", _gm("mlp", (784,), 0), "num_classes, got 0"),
    ("vgg num_classes -1", lambda r: models.vgg(11, num_classes=-1, rng=r), "num_classes"),
    ("resnet num_classes 2.5", lambda r: models.resnet(8, (3, 8, 8), num_classes=2.5, rng=r),
     "num_classes, got 2.5"),
    ("input_shape 32", _gm("cnn5", 32, 10), r"input_shape.*got 32"),
    ("input_shape 'abc'", _gm("resnet20", "abc", 10), "input_shape"),
    ("input_shape (3, 32.5, 32)", _gm("cnn5", (3, 32.5, 32), 10), r"\(3, 32.5, 32\)"),
    ("input_shape (True, 32, 32)", _gm("resnet20", (True, 32, 32), 10), "input_shape"),
    ("mlp input_shape ()", _gm("mlp", (), 10), r"input_shape.*got \(\)"),
    ("mlp input_shape (2.5, 4)", _gm("mlp", (2.5, 4), 10), r"\(2.5, 4\)"),
    ("mlp hidden 50", _gm("mlp", (784,), 10, hidden=50), "hidden"),
    ("mlp hidden (50, 0)", _gm("mlp", (784,), 10, hidden=(50, 0)), r"hidden.*\(50, 0\)"),
    ("mlp sizes 784", lambda r: models.mlp(784, rng=r), "sizes"),
    ("mlp sizes (784, 2.5)", lambda r: models.mlp((784, 2.5), rng=r), r"\(784, 2.5\)"),
    ("mlp sizes (784, True, 10)", lambda r: models.mlp((784, True, 10), rng=r), "True"),
    ("mlp dropout '0.5'", lambda r: models.mlp((4, 3, 2), dropout="0.5", rng=r), "dropout"),
    ("mlp activation with no hidden layer", lambda r: models.mlp((4, 2), activation="foo",
                                                                 rng=r), "activation 'foo'"),
    ("cnn5 hidden 0", lambda r: models.cnn5(hidden=0, rng=r), "hidden, got 0"),
    ("cnn5 hidden 2.5", lambda r: models.cnn5(hidden=2.5, rng=r), "hidden, got 2.5"),
    ("cnn5 image 7x7", lambda r: models.cnn5((3, 7, 7), rng=r), "8x8"),
    ("simple_cnn image 3x3", lambda r: models.simple_cnn((1, 3, 3), rng=r), "4x4"),
    ("resnet depth 20.0", lambda r: models.resnet(20.0, rng=r), "6n"),
    ("resnet depth None", lambda r: models.resnet(None, rng=r), "6n"),
    ("resnet depth 15", lambda r: models.resnet(15, rng=r), "6n"),
    ("vgg depth [16]", lambda r: models.vgg([16], rng=r), r"11 or 16, got \[16\]"),
    ("vgg depth 16.0", lambda r: models.vgg(16.0, rng=r), "11 or 16, got 16.0"),
    ("autoencoder activation", lambda r: models.autoencoder("curves", activation="foo",
                                                            rng=r), "activation 'foo'"),
]


@pytest.mark.parametrize("case, build, match", BAD_ARGUMENTS, ids=[b[0] for b in BAD_ARGUMENTS])
def test_bad_arguments_refused_before_any_weight_is_drawn(case, build, match):
    rng = minidl.default_rng(0)
    before = rng.bit_generator.state
    with pytest.raises(ValueError, match=match):
        build(rng)
    assert rng.bit_generator.state == before, "weights were drawn before the refusal"


@pytest.mark.parametrize("build", [
    lambda: models.get_model("mlp", (784,), 10, 0),
    lambda: models.resnet(8, (3, 8, 8), rng=0),
    lambda: models.autoencoder("curves", rng=42),
], ids=["get_model", "resnet", "autoencoder"])
def test_a_seed_instead_of_a_generator_names_the_builder(build):
    with pytest.raises(TypeError, match=r"^(mlp|resnet|autoencoder) needs an explicit generator"):
        build()



def test_zero_pad_shortcut_refuses_bad_sizes():
    for args, match in [((0, 32), "in_channels"), ((16, 32, 0), "stride"),
                        ((16, 32, 1.5), "stride"), ((16, 8), "must be >= in_channels")]:
        with pytest.raises(ValueError, match=match):
            models.ZeroPadShortcut(*args)


# -- parity with PyTorch builds written from the papers ----------------------------------
def _torch_references(torch):
    """Independent PyTorch builds of the seed papers' networks: (name -> builder)."""
    nn, F = torch.nn, torch.nn.functional

    def mlp(sizes, act=nn.ReLU, bn=False):
        layers = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(n_in, n_out)] + ([nn.BatchNorm1d(n_out)] if bn else [])
            layers.append(act())
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))

    def cnn(C, size, classes, filters, kernel, hidden, bn):
        """conv (same padding) [BN] ReLU 2x2-maxpool per filter count, dense hidden, dense."""
        layers = []
        for f in filters:
            layers += [nn.Conv2d(C, f, kernel, padding=kernel // 2, bias=not bn)]
            layers += ([nn.BatchNorm2d(f)] if bn else []) + [nn.ReLU(), nn.MaxPool2d(2)]
            C, size = f, size // 2
        layers += [nn.Flatten(), nn.Linear(C * size * size, hidden)]
        layers += ([nn.BatchNorm1d(hidden)] if bn else []) + [nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(hidden, classes))

    def autoencoder(encoder, act=nn.ReLU):
        """MBF Table 6: act after every Linear but the code (middle) and output layers."""
        widths = list(encoder) + list(encoder[-2::-1])
        layers = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers.append(nn.Linear(n_in, n_out))
            if i not in (len(encoder) - 1, len(widths) - 1):
                layers.append(act())
        return nn.Sequential(*layers)

    class OptionA(nn.Module):  # He et al. (2016) CIFAR: subsample, zero-pad the channels
        def __init__(self, planes):
            super().__init__()
            self.pad = planes // 4

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    class BasicBlock(nn.Module):
        def __init__(self, c_in, c_out, stride, option, bn):
            super().__init__()
            norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not bn)
            self.bn1 = norm(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not bn)
            self.bn2 = norm(c_out)
            self.shortcut = nn.Identity()
            if stride != 1 or c_in != c_out:
                self.shortcut = OptionA(c_out) if option == "A" else nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=not bn), norm(c_out))

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self, depth, C, classes, option, bn=True):
            super().__init__()
            n = (depth - 2) // 6
            self.conv = nn.Conv2d(C, 16, 3, 1, 1, bias=not bn)
            self.bn = nn.BatchNorm2d(16) if bn else nn.Identity()
            blocks, c_in = [], 16
            for stage, c_out in enumerate((16, 32, 64)):
                for i in range(n):
                    stride = 2 if stage > 0 and i == 0 else 1
                    blocks.append(BasicBlock(c_in, c_out, stride, option, bn))
                    c_in = c_out
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            out = self.blocks(F.relu(self.bn(self.conv(x))))
            return self.fc(out.mean(dim=(2, 3)))  # global average pooling

    def vgg(config, classes, bn):
        """The CIFAR VGG: conv3x3 (with bias) [BN] ReLU, 2x2 max pools, Linear(512, classes)."""
        layers, C = [], 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(C, item, 3, padding=1)] + ([nn.BatchNorm2d(item)] if bn else [])
            layers.append(nn.ReLU())
            C = item
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, classes))

    VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
    VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")
    MNIST, CURVES = (784, 1000, 500, 250, 30), (784, 400, 200, 100, 50, 25, 6)
    FACES = (625, 2000, 1000, 500, 30)
    return {
        "mlp bn": lambda: mlp((12, 7, 5, 3), bn=True),
        "mlp tanh": lambda: mlp((12, 7, 3), act=nn.Tanh),
        "cnn5": lambda: cnn(3, 16, 4, (32, 64, 32), 3, 8, False),
        "cnn5 bn": lambda: cnn(3, 16, 4, (32, 64, 32), 3, 8, True),
        "simple_cnn mnist": lambda: cnn(1, 28, 10, (32, 64), 5, 1024, False),
        "autoencoder mnist sigmoid": lambda: autoencoder(MNIST, act=nn.Sigmoid),
        "autoencoder curves": lambda: autoencoder(CURVES),
        "autoencoder faces": lambda: autoencoder(FACES),
        "resnet20 A": lambda: ResNet(20, 3, 10, "A"),
        "resnet20 B": lambda: ResNet(20, 3, 10, "B"),
        "resnet32 A": lambda: ResNet(32, 3, 10, "A"),
        "resnet110 A": lambda: ResNet(110, 3, 10, "A"),
        "resnet8 B no bn": lambda: ResNet(8, 1, 10, "B", bn=False),
        "resnet8 A odd 7x7": lambda: ResNet(8, 3, 10, "A"),
        "vgg11 bn": lambda: vgg(VGG11, 100, True),
        "vgg16 bn": lambda: vgg(VGG16, 10, True),
        "vgg16": lambda: vgg(VGG16, 10, False),
    }


PARITY = [  # (name, our build(rng), input shape): the torch twin has the same name
    ("mlp bn", lambda r: models.mlp((12, 7, 5, 3), batchnorm=True, rng=r), (4, 3, 2, 2)),
    ("mlp tanh", lambda r: models.mlp((12, 7, 3), activation="tanh", rng=r), (4, 12)),
    ("cnn5", lambda r: models.cnn5((3, 16, 16), 4, hidden=8, rng=r), (2, 3, 16, 16)),
    ("cnn5 bn", lambda r: models.cnn5((3, 16, 16), 4, hidden=8, batchnorm=True, rng=r),
     (3, 3, 16, 16)),
    ("simple_cnn mnist", lambda r: models.simple_cnn(rng=r), (2, 1, 28, 28)),
    ("autoencoder mnist sigmoid", lambda r: models.autoencoder("mnist", "sigmoid", rng=r),
     (2, 1, 28, 28)),
    ("autoencoder curves", lambda r: models.autoencoder("curves", rng=r), (2, 784)),
    ("autoencoder faces", lambda r: models.autoencoder("faces", rng=r), (2, 625)),
    ("resnet20 A", lambda r: models.resnet(20, (3, 8, 8), rng=r), (2, 3, 8, 8)),
    ("resnet20 B", lambda r: models.resnet(20, (3, 8, 8), shortcut="B", rng=r), (2, 3, 8, 8)),
    ("resnet32 A", lambda r: models.resnet(32, (3, 8, 8), rng=r), (2, 3, 8, 8)),
    ("resnet110 A", lambda r: models.resnet(110, (3, 8, 8), rng=r), (2, 3, 8, 8)),
    ("resnet8 B no bn", lambda r: models.resnet(8, (1, 8, 8), shortcut="B", batchnorm=False,
                                                rng=r), (2, 1, 8, 8)),
    ("resnet8 A odd 7x7", lambda r: models.resnet(8, (3, 7, 7), rng=r), (2, 3, 7, 7)),
    ("vgg11 bn", lambda r: models.vgg(11, num_classes=100, rng=r), (2, 3, 32, 32)),
    ("vgg16 bn", lambda r: models.vgg(16, rng=r), (2, 3, 32, 32)),
    ("vgg16", lambda r: models.vgg(16, batchnorm=False, rng=r), (2, 3, 32, 32)),
]


def _close(ours, theirs, what):
    theirs = theirs.detach().numpy()
    scale = max(1.0, float(np.abs(theirs).max()))
    assert ours.shape == theirs.shape, what
    assert np.abs(ours - theirs).max() <= 1e-10 * scale, what


PARITY_SLOW = {"vgg16 bn", "vgg16"}  # 14.7M weights each: a few seconds


@pytest.mark.torch
@pytest.mark.parametrize("name, build, x_shape", [
    pytest.param(*case, id=case[0], marks=[pytest.mark.slow] if case[0] in PARITY_SLOW else [])
    for case in PARITY])
def test_models_match_independent_torch_builds(name, build, x_shape):
    """Same weights in, same outputs, input gradient and weight gradients out (float64):
    the layer sizes, their order and the shortcuts are those of the papers."""
    torch = torch_or_skip()
    minidl.set_default_dtype("float64")
    ours = build(minidl.default_rng(0))
    theirs = _torch_references(torch)[name]().double()
    ours_params, their_params = ours.parameters(), list(theirs.parameters())
    assert [tuple(layer.params[key].shape) for _, layer, key in ours_params] == \
        [tuple(p.shape) for p in their_params]
    with torch.no_grad():
        for (_, layer, key), p in zip(ours_params, their_params):
            p.copy_(torch.from_numpy(layer.params[key]))
    g = np.random.default_rng(1)
    x = g.standard_normal(x_shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out, out_t = ours.forward(x), theirs(xt)
    _close(out, out_t, "forward (train mode)")
    dout = g.standard_normal(out.shape)
    dx = ours.backward(dout)
    out_t.backward(torch.from_numpy(dout))
    _close(dx, xt.grad, "input gradient")
    for (pname, layer, key), p in zip(ours_params, their_params):
        _close(layer.grads[key], p.grad, f"gradient of {pname}")
    ours.eval()
    theirs.eval()
    _close(ours.forward(x[:1]), theirs(torch.from_numpy(x[:1])), "forward (eval mode)")


def test_default_initialisation():
    """PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every weight and bias of
    mlp, cnn5, simple_cnn, the autoencoders and the dense heads; He-normal N(0, 2/fan_in)
    for the convolutions of ResNet (He et al. 2016 take the init of He et al. 2015) and
    VGG; BatchNorm starts as gamma = 1, beta = 0."""
    r = minidl.default_rng(0)
    uniform = [models.mlp((784, 100, 10), rng=r), models.cnn5(rng=r), models.simple_cnn(rng=r),
               models.autoencoder("curves", rng=r)]
    he = [models.resnet(20, shortcut="B", rng=r), models.vgg(11, rng=r)]
    for model in uniform + he:
        for name, layer in model.named_leaves():
            if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
                assert (layer.params["gamma"] == 1).all() and not layer.params["beta"].any()
            if not isinstance(layer, (Linear, Conv2d)):
                continue
            W = layer.params["W"]
            fan_in = W[0].size
            if model in he and isinstance(layer, Conv2d):
                assert abs(W.std() * np.sqrt(fan_in / 2) - 1) < 0.1, name
            else:
                assert np.abs(W).max() <= 1 / np.sqrt(fan_in), name
                if W.size >= 1000:  # the std of U(-a, a) is a / sqrt(3)
                    assert abs(W.std() * np.sqrt(3 * fan_in) - 1) < 0.1, name
            if "b" in layer.params:
                assert np.abs(layer.params["b"]).max() <= 1 / np.sqrt(fan_in), name
