"""Tests for the command line: help, one-line errors with exit status 2, a tiny compare run,
train with checkpoint and resume, and headless plotting in a fresh process."""
import json
import os
import subprocess
import sys

import pytest

from minidl import cli, methods
from minidl.train import History

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args, env=None):
    """``python -m minidl ARGS`` in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "minidl", *args], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_help_explains_every_option():
    top = run_module("--help")
    assert top.returncode == 0 and "compare" in top.stdout and "train" in top.stdout
    compare = run_module("compare", "--help")
    assert compare.returncode == 0
    text = compare.stdout
    for option in ("--methods", "--lr", "--model", "--data", "--data-dir", "--limit",
                   "--epochs", "--batch-size", "--seed", "--backend", "--dtype", "--out"):
        assert option in text, option
    assert "(default: 128)" in text and "mnist-small" in text and "kfac" in text


def test_train_help_lists_its_options(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--method", "--checkpoint", "--resume", "--early-stopping", "--schedule"):
        assert option in text, option


@pytest.mark.parametrize("argv, expected", [
    (["compare", "--methods", "adamx"], "unknown method 'adamx' (did you mean 'adam'?)"),
    # a swap of two letters is as close to kfac as one changed letter is to kfra: both named
    (["compare", "--methods", "kfca"], "(did you mean 'kfra' or 'kfac'?)"),
    (["compare", "--lr", "-0.1"], "--lr must be a positive number"),
    (["compare", "--lr", "fast"], "--lr expects a number"),
    (["compare", "--methods", "sgd", "--lr", "adam=0.1"], "not among --methods"),
    (["train", "--lr", "-1"], "--lr must be a positive number"),
    (["train", "--method", "sgdd"], "unknown method 'sgdd'"),
    (["compare", "--data-dir", "/no/such/folder/anywhere"], "is not a folder"),
    (["compare", "--model", "resnet7"], "unknown model 'resnet7'"),
    (["compare", "--data", "imagenet"], "unknown data set 'imagenet'"),
    (["compare", "--epochs", "0"], "--epochs must be an integer >= 1"),
    (["compare", "--model", "vgg11"], "multiples of 32"),
    (["compare", "--epochs", "two"], "invalid int value"),        # argparse's own error
    (["compare", "--frobnicate"], "unrecognized arguments"),       # argparse's own error
    (["train", "--resume", "/no/such/checkpoint.npz"], "no such file"),
    # a folder was called "no such file"
    (["train", "--resume", os.path.dirname(os.path.abspath(__file__))],
     "is a folder, not a checkpoint file"),
    (["compare", "--threads", "0", "--limit", "10"], "--threads must be an integer >= 1"),
    # settings an optimizer does not take: named with the ones it does, as for --precond-opt
    (["train", "--optim-opt", "foo=1", "--limit", "10"],
     "adam (Adam) does not take ['foo']; it takes lr, betas, eps, weight_decay"),
    (["train", "--method", "rprop", "--weight-decay", "0.1", "--limit", "10"],
     "Rprop) does not take ['weight_decay']; it takes lr, etas, step_sizes"),
    (["train", "--optim-opt", "lr=0.5", "--limit", "10"], "(the command line's --lr)"),
    (["compare", "--methods", "sgd", "adam", "--precond-opt", "damping=0.1"],
     "--precond-opt ['damping']: none of the methods of this run (sgd, adam) has a "
     "preconditioner"),
    # a negative seed named as the seed, before any data is read (not "--model mlp: ...",
    # nor numpy's traceback once --limit draws the subset)
    (["compare", "--methods", "sgd", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["compare", "--methods", "sgd", "--seed", "-1", "--limit", "10"],
     "--seed must be an integer >= 0, got -1"),
    (["train", "--seed", "-3", "--limit", "10"], "--seed must be an integer >= 0, got -3"),
    # --hidden shapes the MLP only; for another model it used to be ignored without a word
    (["train", "--model", "cnn5", "--hidden", "10", "--limit", "10"],
     "--hidden sets the hidden widths of --model mlp only; --model cnn5 has its own"),
])
def test_bad_arguments_give_one_line_and_status_2(capsys, argv, expected):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, expected", [
    (["compare", "--methods", "sgd", "--early-stopping", "2"],
     "minidl compare: error: unrecognized arguments: --early-stopping 2 (--early-stopping is "
     "an option of 'minidl train'; see 'minidl compare --help')"),
    (["train", "--methods", "sgd", "adam"],
     "minidl train: error: unrecognized arguments: --methods sgd adam (--methods is an "
     "option of 'minidl compare'; see 'minidl train --help')"),
    (["train", "--frobnicate"],
     "minidl train: error: unrecognized arguments: --frobnicate (see 'minidl train --help')"),
])
def test_an_unknown_option_is_named_by_its_command(capsys, argv, expected):
    """An option the command lacks was reported as 'minidl: error: ... (see 'minidl
    --help')', whose help does not list the options, and an option of the other command
    was not said to be one."""
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_console_exit_status_is_2():
    bad = run_module("compare", "--methods", "nope")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "unknown method 'nope'" in bad.stderr


def test_tiny_compare_writes_table_figure_and_histories(tmp_path, capsys):
    out = tmp_path / "cmp"
    status = cli.main(["compare", "--epochs", "1", "--limit", "500", "--methods", "sgd,adam",
                       "--lr", "adam=3e-3", "--hidden", "32", "--out", str(out), "--quiet"])
    assert status == 0
    text = capsys.readouterr().out
    assert "method" in text and "test acc" in text and "s/epoch" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line[:4] in ("sgd ", "adam")}
    assert set(rows) == {"sgd", "adam"} and "0.003" in rows["adam"]
    assert f"results in {out}" in text
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["results"]] == ["sgd", "adam"]
    assert all(r["status"] == "ok" and 0 <= r["test_accuracy"] <= 1
               for r in summary["results"])
    hs = {name: History.from_json(out / "histories" / f"{name}.json") for name in ("sgd", "adam")}
    assert all(len(h) == 1 and h.last["examples"] == 500 for h in hs.values())
    # the same initial weights and batches: the first mini-batch loss is identical
    assert hs["sgd"].steps["loss"][0] == hs["adam"].steps["loss"][0]
    assert (out / "summary.txt").read_text().startswith("method")


def test_train_checkpoint_and_resume(tmp_path, capsys):
    ck = tmp_path / "run.npz"
    common = ["train", "--limit", "300", "--hidden", "16", "--method", "momentum", "--quiet"]
    assert cli.main(common + ["--epochs", "1", "--checkpoint", str(ck),
                              "--out", str(tmp_path / "a")]) == 0
    assert ck.exists()
    assert cli.main(common + ["--epochs", "2", "--resume", str(ck), "--checkpoint", str(ck),
                              "--out", str(tmp_path / "b")]) == 0
    resumed = History.from_json(tmp_path / "b" / "history.json")
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]
    assert cli.main(common + ["--epochs", "2", "--out", str(tmp_path / "c")]) == 0
    straight = History.from_json(tmp_path / "c" / "history.json")
    assert straight["train_loss"] == resumed["train_loss"]
    capsys.readouterr()


def test_resume_from_a_damaged_checkpoint_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really")
    status = cli.main(["train", "--limit", "100", "--resume", str(bad),
                       "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted" in err and str(bad) in err


def test_plots_are_headless_in_a_fresh_process(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install matplotlib)")
    code = ("import sys, minidl.plots as p, minidl.train as t\n"
            "h = t.History({'label': 'x'}); h.epochs = [{'epoch': 1, 'train_loss': 1.0, "
            "'time': 0.5}, {'epoch': 2, 'train_loss': 0.5, 'time': 1.0}]\n"
            f"p.plot_histories([h], {str(tmp_path / 'h.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND",
                                                            "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_method_table_is_consistent():
    from minidl.optim import OPTIMIZERS
    for m in methods.METHODS.values():
        assert m.optimizer in OPTIMIZERS and m.lr > 0
    assert set(methods.DEFAULT_COMPARE) <= set(methods.METHODS)
    assert {"sgd", "momentum", "adam"} <= set(methods.available_methods())


# -- refusals before training (issue 8) -----------------------------------------------------
TINY = ["--limit", "200", "--hidden", "16", "--quiet"]


def one_line_refusal(capsys, argv, *expected):
    """``argv`` exits with 2 and one line on standard error holding every ``expected``."""
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    err = captured.err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    assert "epoch 1" not in captured.out  # nothing was trained
    return err


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_refusal(capsys, ["compare", "--methods", "sgd", "--epochs", "1", *TINY,
                              "--out", str(blocker / "sub")], "cannot be written")


def test_a_checkpoint_that_cannot_be_written_is_refused_before_epoch_1(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_refusal(capsys, ["train", "--method", "sgd", "--epochs", "1", *TINY,
                              "--out", str(tmp_path / "o"),
                              "--checkpoint", str(blocker / "run.npz")],
                     "--checkpoint", "cannot write the checkpoint",
                     f"{str(blocker)!r} is a file, not a folder")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("methods", [",", "", " , "])
def test_methods_naming_no_method_are_refused(tmp_path, capsys, methods):
    """'--methods ,' used to train nothing, then write an empty table into a new folder,
    name a curves.png it never drew and exit 1."""
    out = tmp_path / "o"
    one_line_refusal(capsys, ["compare", "--methods", methods, *TINY, "--out", str(out)],
                     f"--methods {methods!r} names no method", "e.g. --methods sgd adam")
    assert not out.exists()


def test_a_checkpoint_path_naming_another_file_is_refused_and_the_file_kept(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes")
    one_line_refusal(capsys, ["train", "--method", "sgd", "--epochs", "1", *TINY,
                              "--out", str(tmp_path / "o"), "--checkpoint", str(notes)],
                     "--checkpoint", "exists and is not a minidl checkpoint")
    assert notes.read_text() == "my precious notes"


@pytest.fixture(scope="module")
def kfac_checkpoint(tmp_path_factory):
    """A 1-epoch checkpoint written by 'minidl train --method kfac --hidden 16'."""
    if not methods.is_available("kfac"):
        pytest.skip("minidl.precond has no KFAC")
    folder = tmp_path_factory.mktemp("kfac")
    ck = folder / "run.npz"
    assert cli.main(["train", "--method", "kfac", "--epochs", "1", *TINY, "--checkpoint",
                     str(ck), "--out", str(folder / "out")]) == 0
    return ck


@pytest.mark.parametrize("change, expected", [
    (["--method", "momentum"], "method 'kfac' (now 'momentum')"),
    (["--method", "kfac", "--hidden", "32"], "hidden [16] (now [32])"),
    (["--method", "kfac", "--batchnorm"], "batchnorm False (now True)"),
    # data options: another subset of the data would be trained on without a word
    (["--method", "kfac", "--limit", "100"], "limit 200 (now 100)"),
    (["--method", "kfac", "--seed", "3"], "seed 0 (now 3)"),
    # method settings: the checkpoint's optimizer state would silently win over them
    (["--method", "kfac", "--lr", "0.5"], "lr 0.01 (now 0.5)"),
    (["--method", "kfac", "--weight-decay", "0.1"], "optimizer_kw {} (now {'weight_decay': 0.1})"),
    (["--method", "kfac", "--precond-opt", "damping=0.1"], "precond_kw {} (now {'damping': 0.1})"),
    # the batches and the schedule: another batch order, or the last scheduled lr kept
    (["--method", "kfac", "--batch-size", "16"], "batch_size 128 (now 16)"),
    (["--method", "kfac", "--schedule", "cosine"], "schedule 'constant' (now 'cosine')"),
])
def test_resume_with_another_method_or_model_is_refused(kfac_checkpoint, tmp_path, capsys,
                                                        change, expected):
    argv = ["train", "--epochs", "2", *TINY, "--resume", str(kfac_checkpoint), "--out",
            str(tmp_path / "o")] + change
    one_line_refusal(capsys, argv, "written with other settings", expected)


def test_resume_of_a_cosine_schedule_with_more_epochs_is_refused(tmp_path, capsys):
    """A cosine laid out over 1 epoch, resumed with --epochs 3, went on along a cosine over
    3 epochs: its learning rate jumped from ~0 back to 0.75 lr without a word."""
    ck = tmp_path / "cos.npz"
    assert cli.main(["train", "--epochs", "1", "--schedule", "cosine", *TINY, "--checkpoint",
                     str(ck), "--out", str(tmp_path / "a")]) == 0
    one_line_refusal(capsys, ["train", "--epochs", "3", "--schedule", "cosine", *TINY,
                              "--resume", str(ck), "--out", str(tmp_path / "b")],
                     "written with other settings", "cosine_epochs 1 (now 3)")


def test_resume_with_no_epochs_left_is_refused(kfac_checkpoint, tmp_path, capsys):
    one_line_refusal(capsys, ["train", "--method", "kfac", "--epochs", "1", *TINY, "--resume",
                              str(kfac_checkpoint), "--out", str(tmp_path / "o")],
                     "has already done 1 epochs", "--epochs")


def test_a_damaged_data_file_is_reported_with_its_checksum(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(b"\x1f\x8b\x08\x00 truncated")
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    err = one_line_refusal(capsys, ["compare", "--data", "mnist", "--data-dir",
                                    str(tmp_path / "data"), "--methods", "sgd", *TINY],
                           "rejected", "md5", str(folder / "train-images-idx3-ubyte.gz"))
    assert "not found" not in err
    assert "MINIDL_DATA" not in os.environ  # the folder was passed, not put in the environment


def test_an_existing_run_folder_is_not_mixed(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--methods", "sgd", "--epochs", "1", *TINY, "--out", str(out)]
    assert cli.main(argv) == 0
    before = sorted(p.name for p in out.iterdir())
    one_line_refusal(capsys, argv, "already holds files", "new or empty folder")
    assert sorted(p.name for p in out.iterdir()) == before


# -- divergence in the table and the figure -------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that makes sgd diverge
def test_a_diverged_method_is_reported_with_epoch_step_and_cause(tmp_path, capsys,
                                                                 monkeypatch):
    import numpy as np
    from minidl import precond
    if not methods.is_available("kfac"):
        pytest.skip("minidl.precond has no KFAC")

    def failing_step(self):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(precond.KFAC, "step", failing_step)
    out = tmp_path / "cmp"
    status = cli.main(["compare", "--methods", "sgd,kfac,adam", "--lr", "sgd=1e30",
                       "--epochs", "2", *TINY, "--out", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    assert rows["adam"]["status"] == "ok"
    assert rows["kfac"]["status"] == "diverged at epoch 1, step 1: linear-algebra failure"
    assert rows["sgd"]["status"].startswith("diverged at epoch 1, step ")
    assert rows["sgd"]["status"].endswith(("NaN loss", "infinite loss", "non-finite gradient"))
    assert "linear-algebra failure" in text
    history = History.from_json(out / "histories" / "kfac.json")
    assert "Eigenvalues did not converge" in history.divergence["detail"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that makes sgd diverge
def test_train_names_a_checkpoint_only_when_it_wrote_one(tmp_path, capsys):
    """A run that diverged in its first epoch writes no checkpoint; its closing line used to
    say 'checkpoint run.npz' all the same (a missing file, or an older run's)."""
    ck = tmp_path / "run.npz"
    argv = ["train", "--method", "sgd", "--epochs", "2", *TINY, "--checkpoint", str(ck)]
    assert cli.main(argv + ["--lr", "1e30", "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert not ck.exists()
    assert f"checkpoint {ck}" not in text
    assert "no checkpoint written" in text
    assert cli.main(argv + ["--out", str(tmp_path / "b")]) == 0  # a good run writes one
    assert f"; checkpoint {ck}" in capsys.readouterr().out and ck.exists()
    before = ck.read_bytes()
    assert cli.main(argv + ["--lr", "1e30", "--out", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert ck.read_bytes() == before  # the good run's checkpoint is kept ...
    assert f"checkpoint {ck}" not in text and "no checkpoint written" in text  # ... not named


# -- method settings ------------------------------------------------------------------------
def test_method_settings_reach_methods_build(tmp_path, capsys, monkeypatch):
    if not methods.is_available("kfac"):
        pytest.skip("minidl.precond has no KFAC")
    calls = []
    real = methods.build

    def spy(name, model, loss, **kw):
        calls.append((name, kw.get("optimizer_kw"), kw.get("precond_kw")))
        return real(name, model, loss, **kw)

    monkeypatch.setattr(methods, "build", spy)
    assert cli.main(["compare", "--methods", "kfac", "momentum", "--epochs", "1", *TINY,
                     "--precond-opt", "damping=0.5", "--precond-opt", "kfac:T2=7",
                     "--optim-opt", "momentum=0.5", "--optim-opt", "nesterov=true",
                     "--out", str(tmp_path / "o")]) == 0
    assert ("kfac", {"momentum": 0.5, "nesterov": True}, {"damping": 0.5, "T2": 7}) in calls
    assert ("momentum", {"momentum": 0.5, "nesterov": True}, {}) in calls


@pytest.mark.parametrize("argv, expected", [
    (["train", "--method", "kfac", "--precond-opt", "dampin=0.1"], "does not take ['dampin']"),
    (["train", "--method", "sgd", "--precond-opt", "damping=0.1"], "has no preconditioner"),
    (["train", "--method", "adam", "--optim-opt", "momentom=0.9"], "momentom"),
    (["train", "--method", "adam", "--optim-opt", "0.9"], "expects KEY=VALUE"),
    (["compare", "--methods", "sgd", "--precond-opt", "adam:damping=1"], "not among"),
])
def test_bad_method_settings_are_one_line(tmp_path, capsys, argv, expected):
    if "kfac" in argv and not methods.is_available("kfac"):
        pytest.skip("minidl.precond has no KFAC")
    one_line_refusal(capsys, argv + [*TINY, "--out", str(tmp_path / "o")], expected)
    assert not (tmp_path / "o").exists()


# -- assign, threads ------------------------------------------------------------------------
def test_assign_forwards_the_rest_of_the_command_line(monkeypatch):
    import types
    seen = []
    fake = types.ModuleType("minidl.assign")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "minidl.assign", fake)
    assert cli.main(["assign", "grade", "a.zip", "s.ipynb", "-o", "r.json"]) == 7
    assert seen == [["grade", "a.zip", "s.ipynb", "-o", "r.json"]]


def test_assign_without_the_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "minidl.assign", None)  # import fails
    assert cli.main(["assign", "release", "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "minidl.assign" in err


def test_training_uses_one_blas_thread_by_default(tmp_path, capsys, monkeypatch):
    from threadpoolctl import threadpool_info
    from minidl import train
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    if not blas:
        pytest.skip("no BLAS library that threadpoolctl can see")
    before = blas[0]["num_threads"]
    seen = []
    real_fit = train.fit

    def fit(*args, **kw):
        seen.append({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        return real_fit(*args, **kw)

    monkeypatch.setattr(train, "fit", fit)
    assert cli.main(["compare", "--methods", "sgd", "--epochs", "1", *TINY,
                     "--out", str(tmp_path / "o")]) == 0
    assert seen == [{1}]
    after = [p for p in threadpool_info() if p["user_api"] == "blas"][0]["num_threads"]
    assert after == before  # the limit ends with the command


@pytest.fixture
def broken_kfac(monkeypatch):
    """KFAC whose step raises, as a bug in a preconditioner would."""
    from minidl import precond
    if not methods.is_available("kfac"):
        pytest.skip("minidl.precond has no KFAC")

    def broken_step(self):
        raise RuntimeError("a bug in a preconditioner")

    monkeypatch.setattr(precond.KFAC, "step", broken_step)


def test_a_method_that_crashes_does_not_lose_the_others(tmp_path, capsys, broken_kfac):
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--methods", "kfac,sgd", "--epochs", "1", *TINY,
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "method kfac failed: RuntimeError: a bug in a preconditioner" in err
    rows = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    assert rows["kfac"]["status"] == "failed (RuntimeError)" and rows["sgd"]["status"] == "ok"


def test_compare_names_only_the_files_it_wrote(tmp_path, capsys, broken_kfac):
    """When every method failed there is no curve to draw; the closing line used to name
    curves.png and histories/*.json all the same."""
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--methods", "kfac", "--epochs", "1", *TINY,
                     "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "summary.txt"]
    assert f"results in {out}/: summary.txt, summary.json\n" in text


def _run_with_stdout(stdout, out, close_reader=False):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "minidl", "compare", "--methods", "sgd",
                             "adam", "--epochs", "2", "--limit", "200", "--hidden", "16",
                             "--out", str(out)], stdout=stdout, stderr=subprocess.PIPE,
                            text=True, env=env)
    if close_reader:  # as `minidl compare | head -1` does once it has its line
        proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("where", ["closed pipe", "full device"])
def test_a_failing_standard_output_stops_neither_the_run_nor_its_files(tmp_path, where):
    """`minidl compare | head -1` and `> /dev/full` ended in a BrokenPipeError / OSError
    traceback at the first print, and the run's files were never written."""
    out = tmp_path / "cmp"
    if where == "closed pipe":
        status, err = _run_with_stdout(subprocess.PIPE, out, close_reader=True)
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full on this system")
        with open("/dev/full", "w") as full:
            status, err = _run_with_stdout(full, out)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert status == 1, err
    assert "standard output failed" in err and "the run went on" in err
    assert len(err.strip().splitlines()) == 1, err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["ok", "ok"]
    assert (out / "curves.png").exists()


def test_an_interrupted_compare_keeps_the_methods_that_finished(tmp_path, capsys,
                                                                monkeypatch):
    """Ctrl-C during the second method used to leave an empty --out folder: the first
    method's finished run was lost."""
    compare_cmd = sys.modules["minidl.cli.compare_cmd"]
    real_run_fit = compare_cmd.run_fit

    def run_fit(model, loss, optimizer, precond, loaders, args, meta, **kw):
        if meta["method"] == "adam":
            raise KeyboardInterrupt  # Ctrl-C in adam's first epoch
        return real_run_fit(model, loss, optimizer, precond, loaders, args, meta=meta, **kw)

    monkeypatch.setattr(compare_cmd, "run_fit", run_fit)
    out = tmp_path / "cmp"
    status = cli.main(["compare", "--methods", "sgd", "adam", "momentum", "--epochs", "1",
                       *TINY, "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 130
    assert f"minidl compare: interrupted; the methods that finished are in {out}/" \
        in captured.err
    rows = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    assert rows["sgd"]["status"] == "ok" and rows["sgd"]["epochs"] == 1
    assert rows["adam"]["status"] == "interrupted"
    assert rows["momentum"]["status"] == "not run (interrupted)"
    assert sorted(p.name for p in (out / "histories").iterdir()) == ["sgd.json"]
    assert (out / "curves.png").exists() and "interrupted" in captured.out


def test_readme_and_help_quote_the_same_measured_time(capsys):
    import re
    assert cli.main(["compare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    took = re.search(r"took (\d+)-(\d+) s from start to finish", text)
    assert took, "compare --help says how long the default run took"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    assert f"{took[1]} to {took[2]} s from start to finish" in readme
    cpu = re.search(r"using (\d+) s of CPU time", text)
    assert cpu and f"the command had {cpu[1]} s of CPU time" in readme
    assert "--threads" in readme and "threadpoolctl" in readme


def test_assign_with_a_missing_dependency_says_which(monkeypatch, capsys):
    import importlib

    def failing_import(name, *args):
        raise ModuleNotFoundError("No module named 'otter'", name="otter")

    monkeypatch.setattr(importlib, "import_module", failing_import)
    assert cli.main(["assign", "grade", "x.zip", "y.ipynb"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'otter'" in err and "[assign]" in err


def test_a_run_whose_loss_ended_above_its_start_is_not_ok():
    """BNP at its default rate on the 5-layer CNN (before its variance floor eps2 was
    raised) took the loss from 2.31 to 110 (test loss 2023) without a NaN, and the table
    said "ok". A finite loss that ends above the first step's is now named in the status."""
    from minidl.cli.output import row

    def history(step_losses, epoch_losses):
        h = History()
        for i, value in enumerate(step_losses, start=1):
            h.record_step(value, seconds=0.1 * i, epoch=1)
        h.epochs = [{"epoch": e, "train_loss": value, "time": 1.0 * e}
                    for e, value in enumerate(epoch_losses, start=1)]
        return h

    rose = row("bnp", 2e-3, history([2.31, 0.5, 4.45, 2.2e3], [1.2, 109.9]))
    assert rose["status"] == "loss rose: 2.31 at the first step, 110 in the last epoch"
    assert row("adam", 1e-3, history([2.31, 1.0], [1.5, 0.82]))["status"] == "ok"


@pytest.mark.slow
def test_bnp_at_its_defaults_trains_the_5_layer_cnn(tmp_path, capsys):
    """The run of the test above, for real (about 8 s): with its variance floor eps2 at
    1e-5, BNP's defaults took the 5-layer CNN's loss from 2.31 to 110 ("loss rose",
    9% test accuracy); with 1e-3 the same command ends near 90%."""
    out = tmp_path / "run"
    assert cli.main(["compare", "--model", "cnn5", "--limit", "3000", "--epochs", "2",
                     "--methods", "bnp", "--quiet", "--out", str(out)]) == 0
    (result,) = json.loads((out / "summary.json").read_text())["results"]
    assert result["status"] == "ok", result["status"]
    assert result["train_loss"] < 1.0 and result["test_accuracy"] > 0.85, result


def test_an_interrupted_train_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C used to print only 'interrupted'; with a checkpoint on disk it now says that
    the checkpoint holds the last finished epoch and how to continue."""
    ck = tmp_path / "run.npz"
    ck.write_bytes(b"stand-in: only its existence is read")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "train", interrupted)
    assert cli.main(["train", "--checkpoint", str(ck)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; {ck} holds the last finished epoch" in err
    assert f"--resume {ck}" in err
    assert cli.main(["train"]) == 130  # no checkpoint: just the word
    assert capsys.readouterr().err.strip() == "minidl train: interrupted"
