"""Inputs that used to go silently wrong or crash raw get the same clear answer in every
layer and loss: integer arrays, mixed precision, empty batches, backward before forward,
an optimizer step without gradients, NaN reaching the loss."""
import re

import numpy as np
import pytest

import minidl
from minidl.errors import NonFiniteWarning
from minidl.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                           GlobalAvgPool2d, GroupNorm, LayerNorm, LeakyReLU, Linear, MaxPool2d,
                           ReLU, Residual, Sequential, Sigmoid, Tanh)
from minidl.losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy
from minidl.optim import SGD, Adam


def _rng():
    return minidl.default_rng(0)


# (factory, input shape) of every layer; containers wrap a Linear
LAYERS = {
    "Linear": (lambda: Linear(4, 3, rng=_rng()), (2, 4)),
    "Conv2d": (lambda: Conv2d(2, 3, 3, padding=1, rng=_rng()), (2, 2, 5, 5)),
    "MaxPool2d": (lambda: MaxPool2d(2), (2, 2, 4, 4)),
    "AvgPool2d": (lambda: AvgPool2d(2), (2, 2, 4, 4)),
    "GlobalAvgPool2d": (lambda: GlobalAvgPool2d(), (2, 2, 4, 4)),
    "Flatten": (lambda: Flatten(), (2, 2, 3)),
    "Dropout": (lambda: Dropout(0.3, rng=_rng()), (2, 4)),
    "ReLU": (lambda: ReLU(), (2, 4)),
    "LeakyReLU": (lambda: LeakyReLU(0.1), (2, 4)),
    "Sigmoid": (lambda: Sigmoid(), (2, 4)),
    "Tanh": (lambda: Tanh(), (2, 4)),
    "BatchNorm1d": (lambda: BatchNorm1d(4), (2, 4)),
    "BatchNorm2d": (lambda: BatchNorm2d(2), (2, 2, 4, 4)),
    "LayerNorm": (lambda: LayerNorm(4), (2, 4)),
    "GroupNorm": (lambda: GroupNorm(2, 4), (2, 4, 3)),
    "Residual": (lambda: Residual(Linear(4, 4, rng=_rng())), (2, 4)),
    "Sequential": (lambda: Sequential(Linear(4, 3, rng=_rng()), ReLU()), (2, 4)),
}
PARAMETRISED = [name for name in LAYERS if LAYERS[name][0]().parameters()]
LOSSES = {
    "SoftmaxCrossEntropy": (SoftmaxCrossEntropy, lambda n: np.arange(n) % 3),
    "MSELoss": (MSELoss, lambda n: np.zeros((n, 3), dtype="float32")),
    "BCEWithLogits": (BCEWithLogits, lambda n: np.ones((n, 3), dtype="float32")),
}


# -- integer arrays ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool"])
def test_every_layer_refuses_integer_input(name, dtype):
    make, shape = LAYERS[name]
    x = np.ones(shape, dtype=dtype)
    with pytest.raises(TypeError, match=rf"expects a floating-point input, got dtype {dtype}"):
        make().forward(x)


@pytest.mark.parametrize("name", list(LAYERS))
def test_the_uint8_message_says_how_to_get_floats_in_0_1(name):
    make, shape = LAYERS[name]
    with pytest.raises(TypeError) as err:
        make().forward(np.full(shape, 255, dtype="uint8"))
    text = str(err.value)
    assert "floats in [0, 1]" in text and "minidl.data.transforms.to_float(x)" in text
    assert "(or x.astype(minidl.get_default_dtype()) / 255)" in text


def test_the_uint8_message_advice_works_where_plain_x_over_255_does_not():
    """NumPy turns uint8 / 255 into float64, which a float32 layer refuses; the advice
    of the message gives the layer's own precision."""
    pixels = np.full((2, 4), 255, dtype="uint8")
    layer = Linear(4, 3, rng=_rng())
    with pytest.raises(TypeError, match="float32 parameters but got a float64 input"):
        layer.forward(pixels / 255)
    assert layer.forward(pixels.astype(minidl.get_default_dtype()) / 255).dtype == "float32"


def test_what_integer_input_used_to_break():
    """Sigmoid of int64 was all zeros, Dropout's 1/(1-p) rounded away: now both refuse."""
    for layer in (Sigmoid(), Dropout(0.3, rng=_rng())):
        with pytest.raises(TypeError, match="int64"):
            layer.forward(np.array([[3, -2, 5]]))


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_refuses_integer_logits(name):
    loss, target = LOSSES[name]
    with pytest.raises(TypeError, match=r"expects a floating-point input, got dtype int64"):
        loss().forward(np.ones((4, 3), dtype="int64"), target(4))
    advice = r"to_float\(x\) \(or x.astype\(minidl.get_default_dtype\(\)\) / 255\)"
    with pytest.raises(TypeError, match=advice):
        loss().forward(np.ones((4, 3), dtype="uint8"), target(4))


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_refuses_logits_that_are_not_an_array_with_a_type_error(name):
    """A list of logits: SoftmaxCrossEntropy raised ValueError (it looked at the shape
    first), MSE and BCE TypeError; now every loss says TypeError, as losses/base.py
    documents."""
    loss, target = LOSSES[name]
    with pytest.raises(TypeError):
        loss().forward([[1.0, 2.0, 3.0]] * 4, target(4))


# -- mixed precision -----------------------------------------------------------------------
@pytest.mark.parametrize("name", PARAMETRISED)
@pytest.mark.parametrize("model_dtype,data_dtype", [("float32", "float64"),
                                                    ("float64", "float32")])
def test_every_parametrised_layer_refuses_mixed_precision(name, model_dtype, data_dtype):
    make, shape = LAYERS[name]
    layer = make().astype(model_dtype)
    x = _rng().standard_normal(shape).astype(data_dtype)
    with pytest.raises(TypeError, match=rf"has {model_dtype} parameters but got a "
                                        rf"{data_dtype} input.*x.astype\('{model_dtype}'\).*"
                                        rf"model.astype\('{data_dtype}'\)"):
        layer.forward(x)
    assert layer.forward(x.astype(model_dtype)).dtype == model_dtype  # matching: fine


# -- empty batches -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_an_empty_batch_passes_through_every_layer(name):
    make, shape = LAYERS[name]
    layer = make()
    if name.startswith("BatchNorm"):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            layer.forward(np.zeros((0,) + shape[1:], dtype="float32"))
        layer.eval()  # running statistics need no batch
    full = layer.forward(_rng().standard_normal(shape).astype("float32"))
    x = np.zeros((0,) + shape[1:], dtype="float32")
    out = layer.forward(x)
    assert out.shape == (0,) + full.shape[1:] and out.dtype == np.float32
    dx = layer.backward(np.zeros(out.shape, dtype="float32"))
    assert dx.shape == x.shape
    for _, leaf, key in layer.parameters():
        g = leaf.grads[key]
        assert g.shape == leaf.params[key].shape and not g.any()  # a sum over no examples


@pytest.mark.parametrize("name", list(LOSSES))
def test_an_empty_batch_in_a_loss(name):
    loss, target = LOSSES[name]
    z = np.zeros((0, 3), dtype="float32")
    with pytest.raises(ValueError, match=r"reduction='mean'\) got an empty batch.*0/0.*"
                                         r"reduction='sum'"):
        loss().forward(z, target(0))
    crit = loss("sum")
    assert crit.forward(z, target(0)) == 0.0
    assert crit.backward().shape == (0, 3)


# -- backward before forward ---------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_backward_before_forward_says_what_to_call(name):
    make, shape = LAYERS[name]
    with pytest.raises(RuntimeError, match=r"\.backward found self\.cache empty: call "
                                           r"\w+\.forward\(x\) first"):
        make().backward(np.zeros(shape, dtype="float32"))


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("wrong", ["one row", "one more row", "ones"])
def test_backward_refuses_dout_of_another_shape_than_the_output(name, wrong):
    """A dout that broadcasts against the output used to give every example the gradient
    of row 0 (the elementwise layers, Dropout, the pools, Residual) and Conv2d ignored
    extra rows; PyTorch refuses both ("Mismatch in shape")."""
    make, shape = LAYERS[name]
    layer = make()
    out = layer.forward(_rng().standard_normal(shape).astype("float32"))
    bad = {"one row": (1,) + out.shape[1:], "one more row": (out.shape[0] + 1,) + out.shape[1:],
           "ones": (1,) * out.ndim}[wrong]
    with pytest.raises(ValueError, match=re.escape(f"expects dout of the output's shape "
                                                   f"{tuple(out.shape)}, got {bad}")):
        layer.backward(np.ones(bad, dtype="float32"))
    assert layer.backward(np.ones(out.shape, dtype="float32")).shape == shape


class ForgetsItsCache(minidl.layers.Layer):
    """A student's ELU whose forward saves nothing for backward."""

    def forward(self, x):
        minidl.layers.base.expect_input(self, x)
        return minidl.array_module(x).where(x > 0, x, minidl.array_module(x).expm1(x))

    def backward(self, dout):
        minidl.layers.base.expect_forward_done(self, dout)
        return dout * self.cache["x"]


def test_backward_after_a_forward_that_cached_nothing_says_to_cache():
    """The forward did run: the error must not only say 'call forward first'."""
    layer = ForgetsItsCache()
    x = np.zeros((2, 3), dtype="float32")
    layer.forward(x)
    with pytest.raises(RuntimeError, match=r"ForgetsItsCache\.backward found self\.cache "
                                           r"empty.*if forward ran, it must save what backward "
                                           r"needs: self\.cache\['x'\] = x"):
        layer.backward(x)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_backward_before_forward(name):
    with pytest.raises(RuntimeError, match=r"call forward\(logits, target\) before"):
        LOSSES[name][0]().backward()


# -- an optimizer step without gradients ---------------------------------------------------
@pytest.mark.parametrize("opt_class", [SGD, Adam])
def test_step_without_gradients_names_the_parameter_and_what_to_call(opt_class):
    model = Sequential(Linear(4, 3, rng=_rng()), ReLU(), Linear(3, 2, rng=_rng()))
    before = model.state_dict()
    opt = opt_class(model, lr=0.1)
    with pytest.raises(RuntimeError, match=r"step\(\): no parameter has a gradient.*'0.W'.*"
                                           r"model.backward\(loss.backward\(\)\)"):
        opt.step()
    assert opt.t == 0 and opt.state == {}
    x = _rng().standard_normal((5, 4)).astype("float32")
    crit = SoftmaxCrossEntropy()
    crit.forward(model.forward(x), np.arange(5) % 2)
    model.backward(crit.backward())
    opt.step()  # now it moves
    assert opt.t == 1 and not np.array_equal(model.state_dict()["0.W"], before["0.W"])
    opt.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        opt.step()
    # a model part without a gradient is skipped (frozen layers), as before
    model.backward(crit.backward())
    model[0].grads.clear()
    w0 = model[0].params["W"].copy()
    opt.step()
    np.testing.assert_array_equal(model[0].params["W"], w0)


# -- NaN reaching the loss -----------------------------------------------------------------
def test_nan_in_the_data_is_announced_with_the_rows():
    model = Sequential(Linear(4, 3, rng=_rng()))
    x = _rng().standard_normal((6, 4)).astype("float32")
    x[3, 1] = np.nan
    crit = SoftmaxCrossEntropy()
    with pytest.warns(NonFiniteWarning, match=r"the loss is nan; logits non-finite in 1 "
                                              r"row\(s\) \[3\]; target all finite.*input "
                                              r"batch.*expect_finite"):
        value = crit.forward(model.forward(x), np.arange(6) % 3)
    assert np.isnan(value)  # still returned, so a training loop stops as "diverged"


def test_nan_in_the_target_and_an_overflow_are_told_apart():
    z = np.zeros((3, 2), dtype="float64")
    t = np.zeros((3, 2))
    t[2, 0] = np.nan
    with pytest.warns(NonFiniteWarning, match=r"logits all finite; target non-finite in 1 "
                                              r"row\(s\) \[2\]. the targets hold NaN"):
        MSELoss().forward(z, t)
    with pytest.warns(NonFiniteWarning, match="overflowed: a diverging run"):
        MSELoss().forward(np.full((2, 2), 1e200), np.zeros((2, 2)))
    with pytest.warns(NonFiniteWarning, match=r"BCEWithLogits.*logits non-finite in 2 row"):
        BCEWithLogits().forward(np.full((2, 2), np.nan), np.zeros((2, 2)))


# sizes given as a float, a bool or a string used to be truncated or parsed by int():
# Linear(2.5, 3) became Linear(2, 3), BatchNorm1d(True) became BatchNorm1d(1)
SIZED = {
    "Linear in_features": lambda v: Linear(v, 3, rng=_rng()),
    "Linear out_features": lambda v: Linear(4, v, rng=_rng()),
    "BatchNorm1d": lambda v: BatchNorm1d(v),
    "BatchNorm2d": lambda v: BatchNorm2d(v),
    "GroupNorm num_groups": lambda v: GroupNorm(v, 4),
    "GroupNorm num_channels": lambda v: GroupNorm(2, v),
    "LayerNorm": lambda v: LayerNorm(v),
    "LayerNorm shape": lambda v: LayerNorm((3, v)),
}


@pytest.mark.parametrize("name", list(SIZED))
@pytest.mark.parametrize("value", [2.5, 4.0, True, "4", 0, -2, None])
def test_every_size_must_be_a_positive_integer(name, value):
    with pytest.raises(ValueError, match=f"positive integer.*got .*{re.escape(repr(value))}"):
        SIZED[name](value)


@pytest.mark.parametrize("name", list(SIZED))
def test_numpy_integer_sizes_are_accepted(name):
    SIZED[name](np.int64(4))


# the real-valued hyperparameters: each factory takes the value under test
REALS = {
    "BatchNorm1d momentum": lambda v: BatchNorm1d(3, momentum=v),
    "BatchNorm2d momentum": lambda v: BatchNorm2d(3, momentum=v),
    "BatchNorm1d eps": lambda v: BatchNorm1d(3, eps=v),
    "LayerNorm eps": lambda v: LayerNorm(3, eps=v),
    "GroupNorm eps": lambda v: GroupNorm(1, 3, eps=v),
    "Dropout p": lambda v: Dropout(v),
    "LeakyReLU negative_slope": lambda v: LeakyReLU(v),
}


@pytest.mark.parametrize("name", list(REALS))
@pytest.mark.parametrize("value", [None, "0.1", True, float("nan"), float("inf")])
def test_every_real_hyperparameter_must_be_a_finite_number(name, value):
    """None used to fail inside float() ("float() argument must be a string or a real
    number, not 'NoneType'"), a string was parsed, True read as 1 and a NaN slope made
    every output NaN."""
    what = name.split()[1]
    with pytest.raises(ValueError, match=rf"expects {what} as a finite real number, got "
                                         + re.escape(repr(value))):
        REALS[name](value)


def test_momentum_none_says_the_cumulative_average_is_not_supported():
    with pytest.raises(ValueError, match=r"momentum=None \(PyTorch's cumulative average\) "
                                         r"is not supported"):
        BatchNorm2d(3, momentum=None)


@pytest.mark.parametrize("name", list(REALS))
def test_numpy_real_hyperparameters_are_accepted(name):
    REALS[name](np.float32(0.25))
    REALS[name](np.float64(0.25))
