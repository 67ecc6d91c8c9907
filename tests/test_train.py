"""Tests for minidl.train (fit, evaluate, History) and minidl.progress."""
import io
import math

import numpy as np
import pytest

import minidl
from minidl import models, optim, train
from minidl.data import DataLoader
from minidl.losses import MSELoss, SoftmaxCrossEntropy
from minidl.progress import ProgressBar, format_seconds


def blobs(n=240, d=6, k=3, seed=0):
    """A separable classification problem: labels from a random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)  # (n, d)
    teacher = rng.standard_normal((d, k))  # (d, k)
    y = (x @ teacher).argmax(axis=1).astype(np.int64)  # (n,)
    return x, y


def setup(seed=0, lr=0.1, momentum=0.9, n=240, batch=32, dropout=0.0):
    x, y = blobs(n=n, seed=seed)
    model = models.mlp((6, 32, 3), dropout=dropout, rng=minidl.default_rng(seed))
    opt = optim.SGD(model, lr=lr, momentum=momentum)
    loader = DataLoader(x, y, batch, rng=minidl.default_rng(seed + 1))
    val = DataLoader(x, y, 100, shuffle=False)
    return model, SoftmaxCrossEntropy(), opt, loader, val


def test_fit_reduces_loss_and_learns():
    model, loss, opt, loader, val = setup()
    before = train.evaluate(model, loss, val)
    h = train.fit(model, loss, opt, loader, epochs=15, val_loader=val, log_every=0)
    assert len(h) == 15 and h.stop_reason is None
    assert h["train_loss"][-1] < 0.3 * before["loss"]
    assert h["val_accuracy"][-1] > 0.9
    assert h.last["val_loss"] == pytest.approx(train.evaluate(model, loss, val)["loss"])
    # per-step records: one per batch, training time increasing
    steps = h.steps
    assert len(steps["loss"]) == 15 * len(loader)
    assert all(b >= a for a, b in zip(steps["time"], steps["time"][1:]))
    assert h.last["time"] == pytest.approx(sum(h["epoch_time"]))
    assert h.last["throughput"] > 0 and h.last["examples"] == 240
    assert model.training  # fit leaves the model in training mode


def test_fit_prints_one_line_per_epoch():
    model, loss, opt, loader, val = setup()
    lines = []
    train.fit(model, loss, opt, loader, epochs=2, val_loader=val, log=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2") and "val_acc" in lines[0] and "ex/s" in lines[0]


def test_evaluate_weights_batches_by_size():
    model, loss, _, _, _ = setup()
    x, y = blobs()
    whole = train.evaluate(model, loss, DataLoader(x, y, 240, shuffle=False))
    ragged = train.evaluate(model, loss, DataLoader(x, y, 70, shuffle=False))  # 70,70,70,30
    assert ragged["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert ragged["accuracy"] == whole["accuracy"] and ragged["examples"] == 240


def test_evaluate_uses_eval_mode_and_restores_it():
    model, loss, _, _, val = setup(dropout=0.5)
    a = train.evaluate(model, loss, val)["loss"]
    b = train.evaluate(model, loss, val)["loss"]
    assert a == b  # dropout off in eval mode, so deterministic
    assert model.training
    model.eval()
    train.evaluate(model, loss, val)
    assert not model.training


def test_early_stopping_stops_after_patience():
    model, loss, opt, loader, val = setup(lr=0.0, momentum=0.0)  # nothing can improve
    h = train.fit(model, loss, opt, loader, epochs=20, val_loader=val, early_stopping=3,
                  log_every=0)
    assert len(h) == 4  # best at epoch 1, then 3 epochs without improvement
    assert h.stop_reason.startswith("early stopping")


def test_early_stopping_restore_best_puts_back_best_weights():
    model, loss, opt, loader, val = setup(lr=0.5, momentum=0.9)
    h = train.fit(model, loss, opt, loader, epochs=30, val_loader=val, early_stopping=2,
                  restore_best=True, log_every=0)
    best = h.best("val_loss")
    final = train.evaluate(model, loss, val)["loss"]
    if h.stop_reason and h.stop_reason.startswith("early"):
        assert final == pytest.approx(best["val_loss"], rel=1e-5)
    else:
        assert final == pytest.approx(h.last["val_loss"], rel=1e-5)


def test_schedule_sets_the_learning_rate_before_each_update():
    model, loss, opt, loader, _ = setup()
    seen = []

    def schedule(k):
        seen.append(k)
        return 0.1 / (1 + k)

    h = train.fit(model, loss, opt, loader, epochs=2, schedule=schedule, log_every=0)
    assert seen == list(range(2 * len(loader)))
    assert h.last["lr"] == pytest.approx(0.1 / (2 * len(loader)))
    h2 = train.fit(model, loss, opt, loader, epochs=1, schedule=optim.Cosine(0.1, 10),
                   log_every=0)
    assert h2.last["lr"] == pytest.approx(optim.Cosine(0.1, 10)(opt.t - 1))


@pytest.mark.parametrize("schedule", ["cosine", [0.1, 0.01]])
def test_a_schedule_that_is_not_callable_is_refused_before_training(schedule, tmp_path):
    model, loss, opt, loader, _ = setup()
    before = {n: layer.params[k].copy() for n, layer, k in model.parameters()}
    with pytest.raises(ValueError, match=r"fit: schedule must be .*callable k -> lr.*got"):
        train.fit(model, loss, opt, loader, epochs=1, schedule=schedule, log_every=0)
    assert opt.t == 0
    for n, layer, k in model.parameters():
        np.testing.assert_array_equal(layer.params[k], before[n])


def test_a_number_as_the_schedule_is_a_constant_rate():
    model, loss, opt, loader, _ = setup(lr=0.5)
    h = train.fit(model, loss, opt, loader, epochs=1, schedule=0.02, log_every=0)
    assert opt.lr == 0.02 and h.last["lr"] == 0.02


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_stops_cleanly():
    x, y = blobs()
    model = models.mlp((6, 32, 3), rng=minidl.default_rng(0))
    model[-1].params["W"][...] = np.inf  # the first loss is already not finite
    opt = optim.SGD(model, lr=0.1)
    h = train.fit(model, SoftmaxCrossEntropy(), opt, DataLoader(x, y, 32), epochs=5,
                  log_every=0)
    assert len(h) == 1 and h.stop_reason.startswith("diverged")
    assert math.isnan(h["train_loss"][0])


def test_regression_without_accuracy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 4)).astype(np.float32)  # (128, 4)
    y = (x @ rng.standard_normal((4, 2))).astype(np.float32)  # (128, 2)
    model = models.mlp((4, 16, 2), rng=minidl.default_rng(0))
    h = train.fit(model, MSELoss(), optim.Adam(model, lr=1e-2), DataLoader(x, y, 32),
                  epochs=10, val_loader=DataLoader(x, y, 64, shuffle=False), log_every=0)
    assert "train_accuracy" not in h.keys() and "val_accuracy" not in h.keys()
    assert h["train_loss"][-1] < 0.5 * h["train_loss"][0]


def test_bad_arguments_are_clear():
    model, loss, opt, loader, _ = setup()
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, loss, opt, loader, epochs=-1)
    with pytest.raises(ValueError, match="early_stopping"):
        train.fit(model, loss, opt, loader, early_stopping=0)
    with pytest.raises(ValueError, match="metrics"):
        train.fit(model, loss, opt, loader, metrics=("f1",))


def test_a_one_shot_iterator_is_refused_before_training_when_epochs_need_it_again():
    # a generator of batches trained epoch 1, then epoch 2 stopped with "the training
    # loader gave no batches (is the data set smaller than one batch ...?)"
    model, loss, opt, loader, val = setup()
    before = {k: np.array(v) for k, v in model.state_dict().items()}

    def batches():
        return ((x, y) for x, y in loader)
    with pytest.raises(ValueError, match="train_loader is a one-shot iterator"):
        train.fit(model, loss, opt, batches(), epochs=2, log_every=0)
    with pytest.raises(ValueError, match="val_loader is a one-shot iterator"):
        train.fit(model, loss, opt, loader, epochs=2, val_loader=iter(list(val)), log_every=0)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # refused, not trained
    h = train.fit(model, loss, opt, batches(), epochs=1, log_every=0)  # one pass is fine
    assert len(h) == 1
    h = train.fit(model, loss, opt, list(batches()), epochs=2, log_every=0)  # a list re-iterates
    assert len(h) == 2


def test_history_json_round_trip(tmp_path):
    model, loss, opt, loader, val = setup()
    h = train.fit(model, loss, opt, loader, epochs=2, val_loader=val, log_every=0,
                  meta={"label": "sgd", "lr": 0.1})
    h.epochs[0]["val_loss"] = float("nan")  # NaN must survive (as null in strict JSON)
    path = h.to_json(tmp_path / "sub" / "h.json")
    text = open(path).read()
    assert "NaN" not in text
    back = train.History.from_json(path)
    assert back.meta == h.meta and back.stop_reason == h.stop_reason
    assert back.steps == h.steps
    assert len(back) == 2 and math.isnan(back["val_loss"][0])
    assert back["val_loss"][1] == h["val_loss"][1]
    assert back["train_loss"] == h["train_loss"]
    with pytest.raises(KeyError, match="no metric"):
        back["f1"]


def test_history_from_json_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a history"):
        train.History.from_json(path)


@pytest.mark.parametrize("method", [None] + sorted(__import__("minidl.methods").methods.METHODS))
def test_fit_resume_equals_uninterrupted(tmp_path, method):
    """2 epochs straight == 1 epoch + checkpoint + fresh objects + resume, bit for bit, for
    every method of the command line: each optimizer's and preconditioner's state goes
    through the checkpoint."""
    from minidl import methods
    if method is not None and not methods.is_available(method):
        pytest.skip(f"minidl.precond has no {method} yet")

    def objects():
        # dropout: its generator matters (KFRA's recursion refuses Dropout layers)
        model, loss, _, loader, val = setup(dropout=0.0 if method == "kfra" else 0.2)
        if method is None:
            opt, pre = optim.SGD(model, lr=0.1, momentum=0.9), None
        else:
            opt, pre = methods.build(method, model, loss)
        return model, loss, opt, pre, loader, val

    model, loss, opt, pre, loader, val = objects()
    straight = train.fit(model, loss, opt, loader, epochs=2, precond=pre, val_loader=val,
                         log_every=0)
    ckpt = tmp_path / "run.npz"
    m1, loss1, o1, p1, l1, v1 = objects()
    train.fit(m1, loss1, o1, l1, epochs=1, precond=p1, val_loader=v1, checkpoint=ckpt,
              log_every=0)
    m2, loss2, o2, p2, l2, v2 = objects()  # fresh objects, as in a new process
    resumed = train.fit(m2, loss2, o2, l2, epochs=2, precond=p2, val_loader=v2, resume=ckpt,
                        log_every=0)
    for (name, a), (_, b) in zip(sorted(model.state_dict().items()),
                                 sorted(m2.state_dict().items())):
        assert np.array_equal(a, b), name
    assert len(resumed) == 2
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed.steps["loss"] == straight.steps["loss"]


# -- progress bar ----------------------------------------------------------------------------
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_off_when_not_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar(total=3, stream=stream)
    assert not bar.enabled and bar.bar is None
    for _ in range(3):
        bar.update(10, loss=1.0)
    bar.close()
    assert stream.getvalue() == ""


def test_progress_bar_is_tqdm_and_draws_on_a_terminal():
    from tqdm.std import tqdm
    stream = FakeTTY()
    bar = ProgressBar(total=4, desc="epoch 1/1", stream=stream)
    assert bar.enabled and isinstance(bar.bar, tqdm)  # tqdm draws it, not our own code
    for loss in (4.0, 2.0, 3.0, 3.0):
        bar.update(50, loss=loss)
    bar.close("done")
    out = stream.getvalue()
    assert "epoch 1/1" in out and "4/4" in out and "batch/s" in out
    assert "loss=3.0000" in out and "done" in out and out.endswith("\n")


def test_progress_bar_in_a_notebook_uses_tqdm_auto(monkeypatch):
    from minidl import progress
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress, "is_terminal", lambda stream: False)
    bar = ProgressBar(total=2, desc="epoch 1/1")
    assert bar.enabled
    bar.close()


def test_fit_progress_default_is_silent_when_stderr_is_captured(capsys):
    model, loss, opt, loader, _ = setup()
    train.fit(model, loss, opt, loader, epochs=1, log_every=0)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_format_seconds():
    assert format_seconds(5) == "0:05" and format_seconds(3725) == "1:02:05"


# -- plots -----------------------------------------------------------------------------------
def test_plots_write_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install matplotlib)")
    from minidl import plots
    runs = {}
    for lr in (0.05, 0.2):
        model, loss, opt, loader, val = setup(lr=lr)
        runs[f"lr {lr}"] = train.fit(model, loss, opt, loader, epochs=2, val_loader=val,
                                     log_every=0)
    runs["lr 0.2"].epochs[1]["train_loss"] = float("nan")  # a diverged point is skipped
    path = tmp_path / "figs" / "curves.png"
    fig = plots.plot_histories(runs, path, keys=("train_loss", "val_accuracy", "step_loss"),
                               title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 6
    assert len(fig.axes[0].lines) == 2  # one line per run
    fig.canvas.draw()  # ticks are placed when drawn: whole epochs only (not 1.2, 1.4, ...)
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    single = runs["lr 0.05"].plot(tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 1000 and single is not None


def test_fit_reads_in_one_screen():
    """fit's body (docstring aside) fits in one screen; each concern is its own piece."""
    import ast
    import inspect
    import textwrap
    source = textwrap.dedent(inspect.getsource(train.fit))
    func = ast.parse(source).body[0]
    body = func.body[1:] if isinstance(func.body[0], ast.Expr) else func.body
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= 40, f"fit's body is {lines} lines"
    for module in ("evaluate", "best", "checkpointing", "divergence", "modes", "history"):
        assert hasattr(train, module), module


def test_a_notebook_without_ipywidgets_gets_the_text_bar_and_no_warning(monkeypatch):
    """tqdm.auto in a notebook without ipywidgets warns ("IProgress not found") and falls
    back to text; the bar picks the text class itself so nothing is printed."""
    import importlib.util

    from minidl import progress
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real_find_spec(name, *a))
    from tqdm.std import tqdm as text_bar
    assert progress._tqdm_class(None) is text_bar


def test_fit_skips_the_data_gradient_and_frees_caches_only_without_a_preconditioner():
    """fit never uses dL/dx of the data: the first layer does not compute it, and each
    cache is freed right after its backward unless a preconditioner reads it; the
    model's own flags are back afterwards."""
    import numpy as np

    import minidl
    from minidl import optim, train
    from minidl.data import DataLoader
    from minidl.layers import Linear, ReLU, Sequential
    from minidl.losses import SoftmaxCrossEntropy

    seen = {"dx": [], "cache_after": []}

    class Spy(Linear):
        def backward(self, dout):
            dx = super().backward(dout)
            seen["dx"].append(dx)
            return dx

    class Pre:  # a stand-in preconditioner that looks at what the layers cached
        def step(self):
            seen["cache_after"].append(bool(model.layers[2].cache))

    rng = minidl.default_rng(0)
    model = Sequential(Spy(6, 8, rng=rng), ReLU(), Linear(8, 3, rng=rng))
    x = np.random.default_rng(1).standard_normal((64, 6)).astype(minidl.get_default_dtype())
    y = np.random.default_rng(2).integers(0, 3, 64)
    loader = DataLoader(x, y, 32, shuffle=False)
    loss = SoftmaxCrossEntropy()
    train.fit(model, loss, optim.SGD(model, lr=0.1), loader, epochs=1, log_every=0)
    assert seen["dx"] == [None, None]
    assert model.needs_input_grad is True and model.free_after_backward is False
    train.fit(model, loss, optim.SGD(model, lr=0.1), loader, epochs=1, precond=Pre(),
              log_every=0)
    assert seen["cache_after"] == [True, True]  # kept for the preconditioner
    model.forward(minidl.asarray(x[:4]))
    model.backward(minidl.xp().ones((4, 3), dtype=x.dtype))
    assert seen["dx"][-1] is not None  # outside fit the input gradient is there again


def test_train_loss_with_sum_reduction_is_the_mean_over_examples_like_val_loss():
    """With reduction="sum" a batch's loss is already a sum over its examples; the epoch's
    train_loss is the mean over examples (as evaluate's val_loss is), not B times it."""
    x, y = blobs(n=60)
    model = models.mlp((6, 8, 3), rng=minidl.default_rng(0))
    logits = model.forward(x).astype(np.float64)  # (60, 3)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (60, 3)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (60, 3)
    expected = float(-log_p[np.arange(60), y].mean())
    h = train.fit(model, SoftmaxCrossEntropy(reduction="sum"), optim.SGD(model, lr=0.0),
                  DataLoader(x, y, 20, shuffle=False), epochs=1,
                  val_loader=DataLoader(x, y, 20, shuffle=False), log_every=0)
    assert h["train_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert h["val_loss"][0] == pytest.approx(expected, rel=1e-5)


def test_a_monitor_the_run_never_records_is_refused_before_training():
    """A misspelt monitor, or a validation metric without a validation loader, would make
    early stopping and restore_best silently do nothing."""
    model, loss, opt, loader, val = setup()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"monitor 'val_los'.*'val_loss'"):
        train.fit(model, loss, opt, loader, val_loader=val, monitor="val_los",
                  restore_best=True, log_every=0)
    with pytest.raises(ValueError, match=r"monitor 'val_loss'.*val_loader"):
        train.fit(model, loss, opt, loader, monitor="val_loss", early_stopping=2,
                  log_every=0)
    with pytest.raises(ValueError, match=r"monitor 'train_accuracy'"):
        train.fit(model, loss, opt, loader, monitor="train_accuracy", metrics=(),
                  log_every=0)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # the metrics a run records are accepted
    h = train.fit(model, loss, opt, loader, val_loader=val, monitor="val_accuracy",
                  epochs=1, log_every=0)
    assert len(h) == 1


def test_a_log_axis_of_less_than_a_decade_has_plain_labels():
    """A loss from 2.3 to 2.0 on a log axis was labelled '2.25 x 10^0'; now '2.25'."""
    pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install matplotlib)")
    from minidl import plots
    from minidl.train import History
    h = History()
    h.epochs = [{"epoch": e, "train_loss": v, "time": 0.1 * e}
                for e, v in ((1, 2.3), (2, 2.2), (3, 2.0))]
    fig = plots.plot_histories({"run": h}, None, keys=("train_loss",))
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
    assert ax.get_yscale() == "log" and any(labels), labels
    assert not any("10^" in text or "times" in text for text in labels), labels


def test_a_refused_resume_leaves_every_object_as_it_was(tmp_path):
    """fit(resume=...) loaded the checkpoint into the model and optimizer before it refused
    a one-shot iterator, so a refused resume left the model holding the checkpoint's
    weights; every refusal now comes before anything is loaded."""
    model, loss, opt, loader, val = setup()
    ck = tmp_path / "run.npz"
    train.fit(model, loss, opt, loader, epochs=1, checkpoint=ck, log_every=0)
    m2, l2, o2, loader2, _ = setup()
    before = {k: np.array(v) for k, v in m2.state_dict().items()}
    assert not all(np.array_equal(before[k], model.state_dict()[k]) for k in before)

    def batches():
        return ((x, y) for x, y in loader2)
    with pytest.raises(ValueError, match="train_loader is a one-shot iterator"):
        train.fit(m2, l2, o2, batches(), epochs=3, resume=ck, log_every=0)
    after = m2.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing loaded
    assert o2.t == 0 and o2.state == {}
    # one epoch left to run: a one-shot iterator is fine, and the resume loads
    h = train.fit(m2, l2, o2, batches(), epochs=2, resume=ck, log_every=0)
    assert len(h) == 2 and o2.t > 0
