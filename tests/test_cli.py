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
    (["compare", "--threads", "0", "--limit", "10"], "--threads must be an integer >= 1"),
])
def test_bad_arguments_give_one_line_and_status_2(capsys, argv, expected):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err


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
