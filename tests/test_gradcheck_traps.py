"""The gradient checker cannot be fooled: classic wrong backward passes fail for data drawn
with minidl.default_rng(s) for every s in 0..9, right layers (Dropout in train mode
included) pass, and the report says which generator drew its random directions."""
import numpy as np
import pytest

import minidl
from minidl.gradcheck import (check_backward_rop, check_jvp, check_layer, check_loss,
                             check_model, check_rng)
from minidl.layers import (BatchNorm1d, Dropout, Layer, LeakyReLU, Linear, ReLU, Sequential,
                           Sigmoid, Tanh)
from minidl.losses import MSELoss, SoftmaxCrossEntropy

SEEDS = range(10)


# -- the classic wrong backward passes --------------------------------------------------------
class TransposedLinear(Linear):
    """dW = x^T dout instead of dout^T x: the same shape when the layer is square."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"] = self.cache["x"].T @ dout
        return dx


class BiasNotSummed(Linear):
    """db = dout: the sum over the batch forgotten (shape (N, out) instead of (out,))."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["b"] = dout
        return dx


class BiasMeaned(Linear):
    """db = mean over the batch instead of the sum."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["b"] = dout.mean(axis=0)
        return dx


class BatchNormWithoutMeanTerm(BatchNorm1d):
    """dx = (dx_hat - x_hat mean(dx_hat x_hat)) / sigma: the - mean(dx_hat) term dropped."""

    def backward(self, dout):
        super().backward(dout)
        x_hat, sigma = self.cache["x_hat"], self.cache["sigma"]
        dx_hat = self.params["gamma"] * dout
        return (dx_hat - x_hat * (dx_hat * x_hat).mean(axis=0, keepdims=True)) / sigma


class ReLUMaskFromOutput(ReLU):
    """The mask read from the output with >=: every negative input (output 0) passes."""

    def df(self):
        out = self.cache["out"]
        return (out >= 0).astype(out.dtype)


class LeakyReLUWithReLUMask(LeakyReLU):
    """The backward copied from ReLU: the negative side's slope a becomes 0."""

    def df(self):
        x = self.cache["x"]
        return (x > 0).astype(x.dtype)


class SigmoidDerivativeOfInput(Sigmoid):
    """s'(x) = x (1 - x): the formula applied to the input instead of the output s."""

    def df(self):
        x = self.cache["x"]
        return x * (1 - x)


class TanhDerivativeOfInput(Tanh):
    """tanh'(x) = 1 - x^2 instead of 1 - tanh(x)^2."""

    def df(self):
        x = self.cache["x"]
        return 1 - x * x


class MSEWithoutOneOverN(MSELoss):
    """The mean's 1/(N D) missing from the gradient."""

    def backward(self):
        return 2 * self.cache["diff"]


class CrossEntropyWithoutOneOverN(SoftmaxCrossEntropy):
    """The mean's 1/N missing from the gradient."""

    def backward(self):
        return self.cache["p"] - self.cache["Y"]


def _x(seed, shape=(5, 4)):
    """The input as the README and lesson 1 draw it: the first draw of default_rng(seed)."""
    return minidl.default_rng(seed).standard_normal(shape)


def _layer_cases():
    rng = minidl.default_rng
    return {
        "transposed dW (square Linear)": (lambda s: TransposedLinear(4, 4, rng=rng(s)),
                                          lambda s: Linear(4, 4, rng=rng(s))),
        "bias mean instead of sum": (lambda s: BiasMeaned(4, 3, rng=rng(s)),
                                     lambda s: Linear(4, 3, rng=rng(s))),
        "bias not summed": (lambda s: BiasNotSummed(4, 3, rng=rng(s)),
                            lambda s: Linear(4, 3, rng=rng(s))),
        "BatchNorm without the mean term": (lambda s: BatchNormWithoutMeanTerm(4),
                                            lambda s: BatchNorm1d(4)),
        "ReLU mask from the output": (lambda s: ReLUMaskFromOutput(), lambda s: ReLU()),
        "LeakyReLU backward copied from ReLU": (lambda s: LeakyReLUWithReLUMask(0.1),
                                                lambda s: LeakyReLU(0.1)),
        "Sigmoid derivative of the input": (lambda s: SigmoidDerivativeOfInput(),
                                            lambda s: Sigmoid()),
        "Tanh derivative of the input": (lambda s: TanhDerivativeOfInput(), lambda s: Tanh()),
    }


@pytest.mark.parametrize("case", list(_layer_cases()))
def test_classic_wrong_backward_fails_and_the_right_one_passes(case):
    wrong, right = _layer_cases()[case]
    for s in SEEDS:
        x = _x(s)
        report = check_layer(wrong(s), x)
        assert not report.ok, f"{case} passed for default_rng({s}):\n{report}"
        # even with the user's own generator (so that one direction equals x), the
        # second direction catches it
        assert not check_layer(wrong(s), x, rng=minidl.default_rng(s)).ok, (case, s)
        good = check_layer(right(s), x)
        assert good.ok, f"the right layer failed for default_rng({s}):\n{good}"


def test_transposed_dW_is_the_issue_example():
    """The exact example of the issue: rng = default_rng(0), x = rng.standard_normal((5, 4))."""
    rng = minidl.default_rng(0)
    x = rng.standard_normal((5, 4))
    report = check_layer(TransposedLinear(4, 4, rng=minidl.default_rng(1)), x)
    assert not report.ok and not report["W"].ok and report["x"].ok and report["b"].ok


def test_a_missing_batch_sum_is_caught_even_for_one_example():
    """With N = 1, db = dout has shape (1, out): broadcasting would make it look right."""
    layer = BiasNotSummed(4, 3, rng=minidl.default_rng(0))
    report = check_layer(layer, _x(0, (1, 4)))
    assert not report.ok
    assert "has shape (1, 3), expected (3,)" in str(report["b"])


@pytest.mark.parametrize("wrong,right", [(MSEWithoutOneOverN, MSELoss),
                                         (CrossEntropyWithoutOneOverN, SoftmaxCrossEntropy)])
def test_missing_one_over_n_in_a_mean_loss_fails(wrong, right):
    for s in SEEDS:
        rng = minidl.default_rng(s)
        z = rng.standard_normal((5, 3))
        t = rng.standard_normal((5, 3)) if right is MSELoss else rng.integers(0, 3, 5)
        assert not check_loss(wrong(), z, t).ok, s
        assert check_loss(right(), z, t).ok, s
        model = Sequential(Linear(3, 3, rng=minidl.default_rng(s)))
        assert not check_model(model, wrong(), z, t).ok, s
        assert check_model(model, right(), z, t).ok, s


def test_right_layers_and_models_pass_for_every_seed():
    for s in SEEDS:
        x = _x(s)
        rng = minidl.default_rng(100 + s)
        for layer in (LeakyReLU(0.1), Sequential(Linear(4, 6, rng=rng), BatchNorm1d(6), Tanh(),
                                                 Linear(6, 4, rng=rng))):
            assert check_layer(layer, x).ok, (type(layer).__name__, s)
            assert check_jvp(layer, x).ok, (type(layer).__name__, s)


# -- random layers ---------------------------------------------------------------------------
def test_dropout_in_train_mode_passes_and_is_left_as_found():
    for s in SEEDS:
        x = _x(s)
        drop = Dropout(0.5, rng=minidl.default_rng(50 + s))
        twin = Dropout(0.5, rng=minidl.default_rng(50 + s))  # the same stream, never checked
        report = check_layer(drop, x)
        assert report.ok, f"a right Dropout failed for seed {s}:\n{report}"
        model = Sequential(Linear(4, 5, rng=minidl.default_rng(s)), drop, ReLU(),
                           Linear(5, 3, rng=minidl.default_rng(s + 1)))
        assert check_model(model, SoftmaxCrossEntropy(), x, np.arange(5) % 3).ok, s
        # the checks held the mask fixed and then put the generator back: the next mask is
        # the one the layer would have drawn without them
        assert drop.training and not drop.freeze_mask and drop.mask is None
        np.testing.assert_array_equal(drop.forward(x), twin.forward(x))


class NoisyLayer(Layer):
    """A random layer without fixed_randomness: the checks must refuse, not report it wrong."""

    def __init__(self):
        super().__init__()
        self.rng = minidl.default_rng(0)

    def forward(self, x):
        self.cache["x"] = x
        self.noise = self.rng.standard_normal(x.shape)
        return x + self.noise

    def backward(self, dout):
        return dout


def test_a_random_layer_that_cannot_be_held_fixed_is_refused():
    with pytest.raises(RuntimeError, match=r"different results.*\.eval\(\).*fixed_randomness"):
        check_layer(NoisyLayer(), _x(0))
    with pytest.raises(RuntimeError, match="different results"):
        check_model(Sequential(NoisyLayer()), MSELoss(), _x(0), _x(1))


# -- the report says where its random directions came from ------------------------------------
def test_report_names_the_generator_and_reproduces():
    x = _x(0)
    layer = TransposedLinear(4, 4, rng=minidl.default_rng(1))
    a = check_layer(layer, x, seed=7)
    assert a.directions_from == "2 upstream gradient(s) drawn from minidl.gradcheck.check_rng(7)"
    assert "random directions: 2 upstream gradient(s) drawn from " \
           "minidl.gradcheck.check_rng(7)" in str(a)
    assert str(check_layer(layer, x, seed=7)) == str(a)  # the same seed, the same report
    assert "check_rng(0)" in str(check_layer(layer, x))  # the default seed is named too
    given = str(check_layer(layer, x, dout=_x(2)))
    assert "  directions: the dout passed in (one direction, chosen by the caller, can hide " \
           "an error: leave dout out to check random ones)" in given
    assert "random directions" not in given  # the caller's dout is not random
    assert check_layer(layer, x, directions=1).directions_from.startswith("1 upstream")


def test_check_rng_never_repeats_default_rng():
    for seed in range(4):
        ours = check_rng(seed).standard_normal(20)
        assert type(check_rng(seed).bit_generator).__name__ == "Philox"
        for s in range(200):
            theirs = minidl.default_rng(s).standard_normal(20)
            assert abs(np.corrcoef(ours, theirs)[0, 1]) < 0.9
    np.testing.assert_array_equal(check_rng(3).standard_normal(5), check_rng(3).standard_normal(5))
    with pytest.raises(ValueError, match="non-negative integer seed"):
        check_rng(-1)


# -- parameters and inputs stored in Fortran order (np.linalg.qr's output, a transpose) ----------
class ZeroWeightGradient(Linear):
    """dW = 0: the weight gradient never computed."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"] = np.zeros_like(self.params["W"])
        return dx


def _fortran_weight(layer):
    layer.params["W"] = np.asfortranarray(layer.params["W"])
    assert not layer.params["W"].flags.c_contiguous
    return layer


def test_a_fortran_ordered_weight_is_checked_like_any_other():
    x = minidl.default_rng(0).standard_normal((5, 4))
    right = _fortran_weight(Linear(4, 3, rng=minidl.default_rng(1)))
    assert check_layer(right, x).ok
    assert not check_layer(_fortran_weight(ZeroWeightGradient(4, 3, rng=minidl.default_rng(1))),
                           x).ok
    assert check_model(Sequential(_fortran_weight(Linear(4, 3, rng=minidl.default_rng(1)))),
                       SoftmaxCrossEntropy(), x, np.array([0, 1, 2, 0, 1])).ok
    # an orthogonal initialiser goes through QR, whose factors are Fortran-ordered
    assert check_layer(Linear(4, 3, rng=minidl.default_rng(1), init="orthogonal"), x).ok


def test_numerical_gradient_of_an_array_it_cannot_perturb_in_place_is_refused():
    from minidl.gradcheck import numerical_gradient
    W = np.asfortranarray(minidl.default_rng(0).standard_normal((3, 3)))
    with pytest.raises(ValueError, match="C-contiguous"):
        numerical_gradient(lambda: float((W ** 2).sum()), W)
    V = minidl.default_rng(0).standard_normal((3, 4))[:, :2]
    with pytest.raises(ValueError, match="C-contiguous"):
        numerical_gradient(lambda: float((V ** 2).sum()), V)
    C = minidl.default_rng(0).standard_normal((3, 3))  # the ordinary case: 2 W exactly
    np.testing.assert_allclose(numerical_gradient(lambda: float((C ** 2).sum()), C), 2 * C,
                               rtol=1e-7, atol=1e-8)


# -- a backward that writes into the dout it is given ------------------------------------------
class Triple(Layer):
    """out = 3 x, with a backward that scales dout in place."""

    def forward(self, x):
        self.cache["x"] = x
        return 3 * x

    def backward(self, dout):
        dout *= 3  # in place: the caller's array changes
        return dout


class TripleTwice(Triple):
    """The factor 3 applied twice: dx = 9 dout, once of it in place."""

    def backward(self, dout):
        return super().backward(dout) * 3


def test_a_backward_that_scales_dout_in_place_fails_on_dout_and_is_judged_on_its_return():
    x = minidl.default_rng(0).standard_normal((4, 3))
    # dx = 3 dout is the right value, but the caller's dout changed: inside a Residual the
    # shortcut then adds 3 dout instead of dout, so the report fails on "dout" (only there)
    report = check_layer(Triple(), x)
    assert not report.ok and report["x"].ok and not report["dout"].ok
    assert "wrote into its dout" in str(report) and "new array" in str(report)
    wrong = check_layer(TripleTwice(), x)
    assert not wrong.ok and not wrong["x"].ok
    # the numeric side saw the dout that was drawn: 3 times it, where 9 times came back
    assert abs(wrong["x"].worst_analytic - 3 * wrong["x"].worst_numeric) < 1e-6
    dout = minidl.default_rng(1).standard_normal((4, 3))
    kept = dout.copy()
    assert not check_layer(TripleTwice(), x, dout=dout).ok
    np.testing.assert_array_equal(dout, kept)  # the caller's dout is left as it was


def test_the_in_place_dout_bug_is_the_one_that_breaks_a_residual():
    """Why check_layer fails it: Residual(Triple()) computes 3 x + x, but its backward
    adds the shortcut's dout after the block scaled it: 3 dout + 3 dout."""
    from minidl.layers import Residual
    x = minidl.default_rng(0).standard_normal((4, 3))
    assert not check_layer(Residual(Triple()), x)["x"].ok


class TripleKeepingDout(Triple):
    """Right: dx = 3 dout in a new array (the layer returns no view of dout)."""

    def backward(self, dout):
        return 3 * dout


class PassThrough(Layer):
    """Right: out = x, and backward hands dout itself back (as Flatten or Dropout(0))."""

    def forward(self, x):
        self.cache["x"] = x
        return x

    def backward(self, dout):
        return dout


def test_a_backward_that_returns_dout_or_a_new_array_passes():
    x = minidl.default_rng(0).standard_normal((4, 3))
    for layer in (TripleKeepingDout(), PassThrough()):
        report = check_layer(layer, x)
        assert report.ok and [c.name for c in report.checks] == ["x"], report


class ClampInPlace(Layer):
    """out = max(x, 0) computed by writing into x: the caller's array changes."""

    def forward(self, x):
        x[x < 0] = 0  # in place
        self.cache["x"] = x
        return x

    def backward(self, dout):
        return dout * (self.cache["x"] > 0)


@pytest.mark.parametrize("check", ["layer", "model"])
def test_a_forward_that_writes_into_its_input_fails_on_input(check):
    x = minidl.default_rng(0).standard_normal((4, 3))
    x[0, 0] = -1.0  # at least one negative entry
    kept = x.copy()
    if check == "layer":
        report = check_layer(ClampInPlace(), x)
    else:
        report = check_model(Sequential(ClampInPlace(), Linear(3, 2, rng=minidl.default_rng(1))),
                             MSELoss(), x, np.zeros((4, 2)))
    assert not report.ok and not report["input"].ok, report
    assert "wrote into its input x" in str(report)
    np.testing.assert_array_equal(x, kept)  # the caller's x is left as it was
    # the derivatives themselves are taken on untouched copies of x, and are right
    assert report["x"].ok, report


class SoftmaxCrossEntropyShiftingLogits(SoftmaxCrossEntropy):
    """Subtracts the row maximum from the logits in place before the loss."""

    def forward(self, logits, target):
        logits -= logits.max(axis=1, keepdims=True)
        return super().forward(logits, target)


def test_a_loss_that_writes_into_its_logits_fails_on_input():
    h = minidl.default_rng(0).standard_normal((4, 3))
    report = check_loss(SoftmaxCrossEntropyShiftingLogits(), h, np.array([0, 1, 2, 0]))
    assert not report.ok and not report["input"].ok and report["logits"].ok, report
    assert "wrote into its input logits" in str(report)


# -- R-operator passes that write into the tangent they are given ------------------------------
class TripleR(TripleKeepingDout):
    """out = 3 x with right R-operator passes: Rout = 3 Rx, R{dx} = 3 Rdout (no params)."""

    def jvp(self, Rx):
        return 3 * Rx

    def backward_rop(self, Rdout):
        return 3 * Rdout


class TripleRScalingRx(TripleR):
    """jvp scales Rx in place: the value is right, the caller's Rx is not."""

    def jvp(self, Rx):
        Rx *= 3
        return Rx


class TripleRScalingRdout(TripleR):
    def backward_rop(self, Rdout):
        Rdout *= 3
        return Rdout


class TripleRScalingDout(TripleR):
    def backward(self, dout):
        dout *= 3
        return dout


def test_r_operator_checks_pass_right_passes():
    x = minidl.default_rng(0).standard_normal((4, 3))
    assert check_jvp(TripleR(), x).ok and check_backward_rop(TripleR(), x).ok


def test_a_jvp_that_writes_into_rx_fails_on_tangent():
    """check_jvp judged only jvp's return value, so Rx *= 3 passed; inside a Residual the
    shortcut then adds 3 Rx instead of Rx (a wrong Gauss-Newton-vector product)."""
    x = minidl.default_rng(0).standard_normal((4, 3))
    for check in (check_jvp, check_backward_rop):
        report = check(TripleRScalingRx(), x)
        assert not report.ok and not report["tangent"].ok, report
        assert "TripleRScalingRx.jvp wrote into its tangent Rx" in str(report)


def test_a_backward_rop_that_writes_into_rdout_fails_on_tangent():
    x = minidl.default_rng(0).standard_normal((4, 3))
    report = check_backward_rop(TripleRScalingRdout(), x)
    assert not report.ok and report["Rdx"].ok and not report["tangent"].ok, report
    assert "backward_rop wrote into its tangent Rdout" in str(report)


def test_check_backward_rop_fails_a_backward_that_writes_into_dout():
    x = minidl.default_rng(0).standard_normal((4, 3))
    report = check_backward_rop(TripleRScalingDout(), x)
    assert not report.ok and not report["dout"].ok, report


def test_check_jvp_fails_a_forward_that_writes_into_its_input():
    class ClampR(ClampInPlace):
        def jvp(self, Rx):
            return Rx * (self.cache["x"] > 0)

    x = minidl.default_rng(0).standard_normal((4, 3))
    x[0, 0] = -1.0
    report = check_jvp(ClampR(), x)
    assert not report.ok and not report["input"].ok, report


# -- the report's relative error is the one the pass rule uses ---------------------------------
class SlightlyOffW(Linear):
    """dW off by a factor 1 + 1.5e-5: just outside rtol = 1e-5."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"] = self.grads["W"] * (1 + 1.5e-5)
        return dx


def test_a_failed_array_reports_a_relative_error_above_rtol():
    """The report divided by |a| + |n| (CS231n) while the rule divides by max(|a|, |n|):
    this FAIL read "max rel error 7.50e-06" under a header saying rtol 1e-05."""
    rng = minidl.default_rng(0)
    report = check_layer(SlightlyOffW(4, 3, rng=rng), rng.standard_normal((5, 4)))
    assert not report["W"].ok and report["x"].ok
    assert report["W"].max_rel_error == pytest.approx(1.5e-5, rel=0.01)
    assert report["W"].max_rel_error > report["W"].rtol


def test_a_passing_array_with_a_large_relative_error_says_why():
    from minidl.gradcheck import ArrayCheck
    analytic = np.array([[1e-9, 1.0]])  # (K = 1, 2): a near-zero entry off by 10%
    numeric = np.array([[1.1e-9, 1.0]])
    check = ArrayCheck("x", analytic, numeric, rtol=1e-5, atol=1e-7)
    assert check.ok and check.max_rel_error > 1e-5
    assert "pass on the absolute error" in str(check)
