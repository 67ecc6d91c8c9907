"""The promises of the training loop (issue 8): the best weights come back whatever ends a
run and across a resume, frozen layers stay frozen, and a non-finite value or a failed
factorisation stops the run cleanly before it changes the weights or the preconditioner."""
import numpy as np
import pytest

import minidl
from minidl import checkpoint, data, methods, models, optim, train
from minidl.data import DataLoader
from minidl.errors import NonFiniteError
from minidl.losses import SoftmaxCrossEntropy


def blobs(n=240, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)  # (n, d)
    y = (x @ rng.standard_normal((d, k))).argmax(axis=1).astype(np.int64)  # (n,)
    return x, y


def overfitting_problem(seed=0, batchnorm=False, hidden=(32,)):
    """Training labels from a teacher, validation labels shuffled: validation loss is best
    early and then rises, so the best epoch is not the last one."""
    x, y = blobs(seed=seed)
    y_val = np.random.default_rng(99).permutation(y)  # (n,) unrelated to x
    model = models.mlp((6, *hidden, 3), batchnorm=batchnorm, rng=minidl.default_rng(seed))
    opt = optim.SGD(model, lr=0.2, momentum=0.9)
    loader = DataLoader(x, y, 32, rng=minidl.default_rng(seed + 1))
    val = DataLoader(x, y_val, 120, shuffle=False)
    return model, SoftmaxCrossEntropy(), opt, loader, val


def val_loss(model, loss, val):
    return train.evaluate(model, loss, val)["loss"]


# -- restore_best --------------------------------------------------------------------------
def test_restore_best_when_the_last_epoch_is_reached():
    model, loss, opt, loader, val = overfitting_problem()
    h = train.fit(model, loss, opt, loader, epochs=6, val_loader=val, restore_best=True,
                  log_every=0)
    best = h.best("val_loss")
    assert h.stop_reason is None and best["epoch"] < 6  # the run ended on its last epoch
    assert h.last["val_loss"] > best["val_loss"]
    assert val_loss(model, loss, val) == pytest.approx(best["val_loss"], rel=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that makes it diverge
def test_restore_best_after_divergence():
    model, loss, opt, loader, val = overfitting_problem()
    per_epoch = len(loader)

    def blow_up_in_epoch_4(k):  # a learning rate that throws the weights to infinity
        return 0.2 if k < 3 * per_epoch else 1e38

    h = train.fit(model, loss, opt, loader, epochs=8, val_loader=val, restore_best=True,
                  schedule=blow_up_in_epoch_4, log_every=0)
    assert h.stop_reason.startswith("diverged") and h.divergence["epoch"] >= 4
    best = h.best("val_loss")
    assert val_loss(model, loss, val) == pytest.approx(best["val_loss"], rel=1e-6)


def test_restore_best_across_a_resume(tmp_path):
    model, loss, opt, loader, val = overfitting_problem()
    straight = train.fit(model, loss, opt, loader, epochs=5, val_loader=val,
                         restore_best=True, log_every=0)
    best = straight.best("val_loss")
    assert best["epoch"] < 3  # the best epoch is in the first part of the run
    ck = tmp_path / "run.npz"
    m1, l1, o1, tl1, v1 = overfitting_problem()
    train.fit(m1, l1, o1, tl1, epochs=3, val_loader=v1, checkpoint=ck, log_every=0)
    stored = checkpoint.read(ck)
    assert stored.best and stored.extra["best"]["epoch"] == best["epoch"]
    m2, l2, o2, tl2, v2 = overfitting_problem()  # fresh objects, as in a new process
    resumed = train.fit(m2, l2, o2, tl2, epochs=5, val_loader=v2, resume=ck,
                        restore_best=True, log_every=0)
    assert resumed["val_loss"] == straight["val_loss"]
    for (name, a), (_, b) in zip(sorted(model.state_dict().items()),
                                 sorted(m2.state_dict().items())):
        assert np.array_equal(a, b), name
    assert val_loss(m2, l2, v2) == pytest.approx(best["val_loss"], rel=1e-6)


def test_resume_without_the_best_weights_is_refused(tmp_path):
    model, loss, opt, loader, val = overfitting_problem()
    h = train.fit(model, loss, opt, loader, epochs=3, val_loader=val, log_every=0)
    assert h.best("val_loss")["epoch"] < 3
    ck = tmp_path / "old.npz"  # a checkpoint as older code wrote it: no best weights
    checkpoint.save(ck, model, opt, epoch=3, extra={"history": h.to_dict()},
                    rng={"train_loader": loader.rng, "val_loader": val.rng})
    m2, l2, o2, tl2, v2 = overfitting_problem()
    before = {k: np.array(v) for k, v in m2.state_dict().items()}
    rng_before = tl2.rng.bit_generator.state
    with pytest.raises(ValueError, match="does not hold that epoch's weights"):
        train.fit(m2, l2, o2, tl2, epochs=5, val_loader=v2, resume=ck, restore_best=True,
                  log_every=0)
    # refused before anything was loaded (the weights and generators used to be replaced)
    assert all(np.array_equal(before[k], v) for k, v in m2.state_dict().items())
    assert o2.t == 0 and tl2.rng.bit_generator.state == rng_before


# -- modes ---------------------------------------------------------------------------------
def batchnorm_of(model):
    return [layer for layer in model.leaves() if "BatchNorm" in type(layer).__name__]


def test_fit_and_evaluate_leave_a_frozen_layer_frozen():
    model, loss, opt, loader, val = overfitting_problem(batchnorm=True, hidden=(16, 16))
    bn = batchnorm_of(model)[0]
    bn.eval()  # the user freezes the first BatchNorm: its running statistics must stay
    before = {k: v.copy() for k, v in bn.buffers.items()}
    other = batchnorm_of(model)[1]
    train.fit(model, loss, opt, loader, epochs=2, val_loader=val, log_every=0)
    assert not bn.training and model.training and other.training
    for k, v in before.items():
        assert np.array_equal(bn.buffers[k], v), k
    assert not np.array_equal(other.buffers["running_mean"], 0.0)  # the other one learned
    train.evaluate(model, loss, val)
    assert not bn.training and model.training and other.training


# -- divergence ----------------------------------------------------------------------------
class RaisingPrecond:
    """A stand-in preconditioner that refuses on its n-th step, as a real one does."""

    def __init__(self, error, at_step=2):
        self.error, self.at_step, self.calls = error, at_step, 0

    def step(self):
        self.calls += 1
        if self.calls == self.at_step:
            raise self.error

    def state_dict(self):
        return {"calls": self.calls}


@pytest.mark.parametrize("error, cause", [
    (NonFiniteError("KFAC: the input statistic A of layer 0 has 3 NaN entries"),
     "non-finite values in the preconditioner"),
    (np.linalg.LinAlgError("Eigenvalues did not converge"), "linear-algebra failure"),
])
def test_a_refusing_preconditioner_stops_the_run_as_diverged(error, cause):
    x, y = blobs()
    model = models.mlp((6, 32, 3), rng=minidl.default_rng(0))
    opt = optim.SGD(model, lr=0.1)
    pre = RaisingPrecond(error, at_step=3)
    loader = DataLoader(x, y, 32, shuffle=False)
    weights = []
    h = train.fit(model, SoftmaxCrossEntropy(), opt, loader, epochs=2, precond=pre,
                  log_every=0)
    assert h.stop_reason.startswith("diverged") and cause in h.stop_reason
    assert h.divergence == {"epoch": 1, "step": 3, "cause": cause, "detail": h.divergence[
        "detail"]} and str(error) in h.divergence["detail"]
    assert opt.t == 2  # the optimizer took steps 1 and 2 only
    weights.append(model.state_dict())
    # the same two steps without the failure give the same weights
    model2 = models.mlp((6, 32, 3), rng=minidl.default_rng(0))
    opt2 = optim.SGD(model2, lr=0.1)
    train.fit(model2, SoftmaxCrossEntropy(), opt2, DataLoader(x[:64], y[:64], 32,
                                                                shuffle=False), log_every=0)
    for name, a in model2.state_dict().items():
        assert np.array_equal(a, weights[0][name]), name


def mnist_with_a_nan_pixel(n=384, at=300):
    """Real digits (the bundled MNIST subset), one pixel of image ``at`` set to NaN."""
    x, y = data.bundled_mnist("train")
    x = data.normalise(x[:n])  # (n, 1, 28, 28) floats in [0, 1]
    x[at, 0, 14, 14] = np.nan
    return x, y[:n]


def mnist_run(method, x, y, batchnorm=False, epochs=2):
    model = models.mlp((784, 32, 10), batchnorm=batchnorm, rng=minidl.default_rng(0))
    loss = SoftmaxCrossEntropy()
    if method == "sgd":
        opt, pre = optim.SGD(model, lr=0.1), None
    else:
        opt, pre = methods.build(method, model, loss)
    h = train.fit(model, loss, opt, DataLoader(x, y, 128, shuffle=False), epochs=epochs,
                  precond=pre, log_every=0)
    return h, model, opt, pre


@pytest.mark.parametrize("method", ["sgd", "kfac", "shampoo"])
def test_one_nan_pixel_stops_cleanly_before_anything_changes(method):
    if not methods.is_available(method):
        pytest.skip(f"minidl.precond has no {method}")
    x, y = mnist_with_a_nan_pixel()
    h, model, opt, pre = mnist_run(method, x, y)  # batch 3 holds the NaN pixel
    assert h.stop_reason.startswith("diverged")
    # weights, optimizer and preconditioner are exactly those after the two good steps
    _, model2, opt2, pre2 = mnist_run(method, x[:256], y[:256], epochs=1)
    for name, a in model2.state_dict().items():
        assert np.array_equal(a, model.state_dict()[name]), name
    for name, a in opt2.state_dict().items():
        assert np.array_equal(a, opt.state_dict()[name]), name
    if pre is not None:
        for name, a in pre2.state_dict().items():
            assert np.array_equal(a, pre.state_dict()[name]), name
    assert h.stop_reason.startswith("diverged: NaN loss in epoch 1, step 3")
    assert h.divergence["cause"] == "NaN loss" and h.divergence["step"] == 3
    # the loss's own warning (the row of the batch to blame) is in the report, not printed
    assert "row(s) [44]" in h.divergence["detail"]


def test_a_nan_step_leaves_batchnorm_statistics_alone():
    x, y = mnist_with_a_nan_pixel()
    h, model, _, _ = mnist_run("sgd", x, y, batchnorm=True)
    assert h.stop_reason.startswith("diverged")
    for bn in batchnorm_of(model):
        for k, v in bn.buffers.items():
            assert np.isfinite(v).all(), k


def test_a_non_finite_gradient_is_found_before_the_preconditioner():
    x, y = blobs()
    model = models.mlp((6, 32, 3), rng=minidl.default_rng(0))
    real_backward = model.backward

    def backward(dout):  # a finite loss whose gradient overflows in one parameter
        dx = real_backward(dout)
        model[-1].grads["b"][0] = np.inf
        return dx

    model.backward = backward
    pre = RaisingPrecond(RuntimeError("must not be called"), at_step=1)
    opt = optim.SGD(model, lr=0.1)
    h = train.fit(model, SoftmaxCrossEntropy(), opt, DataLoader(x, y, 32), precond=pre,
                  log_every=0)
    assert h.divergence["cause"] == "non-finite gradient" and h.divergence["step"] == 1
    assert "b" in h.divergence["detail"] and pre.calls == 0 and opt.t == 0


def test_divergence_survives_the_history_file(tmp_path):
    x, y = mnist_with_a_nan_pixel()
    h, _, _, _ = mnist_run("sgd", x, y)
    back = train.History.from_json(h.to_json(tmp_path / "h.json"))
    assert back.divergence == h.divergence and back.stop_reason == h.stop_reason


def test_an_unwritable_checkpoint_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model, loss, opt, loader, val = overfitting_problem()
    before = model.state_dict()
    with pytest.raises(checkpoint.CheckpointError, match="cannot write the checkpoint"):
        train.fit(model, loss, opt, loader, epochs=2, checkpoint=blocker / "run.npz",
                  log_every=0)  # (an OSError after epoch 1 before)
    for name, a in model.state_dict().items():
        assert np.array_equal(a, before[name]), name


# -- the plot of a diverged run -------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that makes it diverge
def test_a_diverged_run_stays_visible_in_the_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install matplotlib)")
    from minidl import plots
    x, y = mnist_with_a_nan_pixel()  # diverges in epoch 1, before any finite epoch record
    early, _, _, _ = mnist_run("sgd", x, y)
    x_clean = x.copy()
    x_clean[300] = 0.0
    model = models.mlp((784, 32, 10), rng=minidl.default_rng(0))
    late = train.fit(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1),
                     DataLoader(x_clean, y, 128, shuffle=False), epochs=5, log_every=0,
                     schedule=lambda k: 0.1 if k < 6 else 1e38)  # blows up in epoch 3
    assert late.divergence["epoch"] == 3 and len(late) == 3
    runs = {"ok": mnist_run("sgd", x_clean, y, epochs=4)[0], "early": early, "late": late}
    fig = plots.plot_histories(runs, tmp_path / "curves.png", keys=("train_loss",
                                                                     "step_loss"))
    for ax in fig.axes:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[0] == "ok"
        assert any(t.startswith("early: diverged (NaN loss, epoch 1, step 3)") for t in legend)
        assert any(t.startswith("late: diverged (") and "epoch 3" in t for t in legend)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_loss_warning_about_a_nan_goes_into_the_report():
    import warnings

    class WarningLoss(SoftmaxCrossEntropy):  # as the losses warn about a non-finite value
        def forward(self, logits, target):
            value = super().forward(logits, target)
            if value != value:
                warnings.warn("the loss is nan; logits non-finite in 1 row(s) [44]",
                              RuntimeWarning)  # NumPy's kind; the losses' own is tested above
            return value

    x, y = mnist_with_a_nan_pixel()
    model = models.mlp((784, 32, 10), rng=minidl.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes to the terminal
        h = train.fit(model, WarningLoss(), optim.SGD(model, lr=0.1),
                      DataLoader(x, y, 128, shuffle=False), log_every=0)
    assert "row(s) [44]" in h.divergence["detail"] and "row(s) [44]" in h.stop_reason


def test_numpy_warnings_of_the_forward_pass_that_diverges_go_into_the_report():
    """The overflow in the network's own forward pass (before the loss) is part of the
    divergence's story: it goes into the report, not to the terminal."""
    import warnings
    x, y = blobs()
    model = models.mlp((6, 32, 3), rng=minidl.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes to the terminal
        h = train.fit(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=1e36),
                      DataLoader(x, y, 32, shuffle=False), epochs=2, log_every=0)
    assert h.divergence is not None and h.divergence["epoch"] == 1
    assert "overflow" in h.divergence["detail"], h.divergence


# -- resuming --------------------------------------------------------------------------------
def test_resuming_a_run_that_stopped_early_trains_no_further(tmp_path):
    """An uninterrupted run stops once the patience runs out; resuming its checkpoint with
    the same patience must not train another epoch (a larger patience may)."""
    ck = tmp_path / "run.npz"
    model, loss, opt, loader, val = overfitting_problem()
    first = train.fit(model, loss, opt, loader, epochs=30, val_loader=val, early_stopping=2,
                      checkpoint=ck, log_every=0)
    assert first.stop_reason is not None and len(first) < 30
    weights = model.state_dict()
    m2, l2, o2, tl2, v2 = overfitting_problem()
    again = train.fit(m2, l2, o2, tl2, epochs=30, val_loader=v2, early_stopping=2,
                      resume=ck, log_every=0)
    assert len(again) == len(first)
    assert again.stop_reason == first.stop_reason
    for name, a in m2.state_dict().items():
        assert np.array_equal(a, weights[name]), name
    m3, l3, o3, tl3, v3 = overfitting_problem()
    longer = train.fit(m3, l3, o3, tl3, epochs=len(first) + 1, val_loader=v3,
                       early_stopping=30, resume=ck, log_every=0)
    assert len(longer) == len(first) + 1


def test_resuming_a_preconditioned_run_without_its_preconditioner_is_refused(tmp_path):
    """The checkpoint holds the preconditioner's state; continuing without it would be a
    different run, so the resume is refused before anything is loaded."""
    ck = tmp_path / "run.npz"
    model, loss, opt, loader, val = overfitting_problem()
    opt, pre = methods.build("kfac", model, loss)
    train.fit(model, loss, opt, loader, epochs=1, precond=pre, checkpoint=ck, log_every=0)
    m2, l2, o2, tl2, _ = overfitting_problem()
    o2, _ = methods.build("kfac", m2, l2)
    before = m2.state_dict()
    with pytest.raises(checkpoint.CheckpointError, match="KFAC.*precond"):
        train.fit(m2, l2, o2, tl2, epochs=2, resume=ck, log_every=0)
    for name, a in m2.state_dict().items():
        assert np.array_equal(a, before[name]), name
