"""Tests for minidl.checkpoint: round trips, exact resumption, atomic saves, and refusal of
damaged, foreign or pickled files without touching the objects."""
import json
import os

import numpy as np
import pytest

import minidl
from minidl import checkpoint, models, optim
from minidl.checkpoint import CheckpointError
from minidl.data import DataLoader
from minidl.losses import SoftmaxCrossEntropy

from conftest import backends

UNPICKLED = []


def _mark_unpickled():
    """Called if an object array were ever unpickled (it must not be)."""
    UNPICKLED.append(True)
    return 0


class Evil:
    def __reduce__(self):
        return (_mark_unpickled, ())


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)  # (n, 5)
    y = (x[:, 0] > 0).astype(np.int64)  # (n,)
    return x, y


def objects(seed=0):
    """A fresh model (with dropout), momentum optimizer and shuffling loader."""
    model = models.mlp((5, 16, 2), dropout=0.25, rng=minidl.default_rng(seed))
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    x, y = data()
    loader = DataLoader(x, y, 16, rng=minidl.default_rng(seed + 1))
    return model, opt, loader


def rngs(model, loader):
    return {"loader": loader.rng, "dropout": model[3].rng}


def run_epoch(model, opt, loader, crit):
    model.train()
    for xb, yb in loader:
        crit.forward(model.forward(xb), yb)
        model.backward(crit.backward())
        opt.step()


def snapshot(model, opt):
    return model.state_dict(), opt.state_dict()


def assert_same(before, after):
    (m0, o0), (m1, o1) = before, after
    assert sorted(m0) == sorted(m1)
    for k in m0:
        assert np.array_equal(m0[k], m1[k]), k
    assert sorted(o0) == sorted(o1)
    for k in o0:
        assert np.array_equal(np.asarray(o0[k]), np.asarray(o1[k])), k


@pytest.fixture
def saved(tmp_path):
    """A checkpoint after one epoch, and the objects that wrote it."""
    model, opt, loader = objects()
    run_epoch(model, opt, loader, SoftmaxCrossEntropy())
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model, opt, epoch=1, rng=rngs(model, loader),
                    extra={"note": "hello", "values": [1, 2.5]})
    return path, model, opt, loader


def test_round_trip_restores_everything(saved):
    path, model, opt, loader = saved
    fresh, fresh_opt, fresh_loader = objects(seed=7)  # different weights and generators
    ck = checkpoint.load(path, fresh, fresh_opt, rng=rngs(fresh, fresh_loader))
    assert ck.epoch == 1 and ck.extra == {"note": "hello", "values": [1, 2.5]}
    assert_same(snapshot(model, opt), snapshot(fresh, fresh_opt))
    assert isinstance(fresh_opt.t, int) and fresh_opt.t == opt.t
    assert fresh_loader.rng.bit_generator.state == loader.rng.bit_generator.state
    assert fresh[3].rng.bit_generator.state == model[3].rng.bit_generator.state


def test_resume_is_bit_for_bit(tmp_path):
    crit = SoftmaxCrossEntropy()
    model, opt, loader = objects()
    for _ in range(2):
        run_epoch(model, opt, loader, crit)

    m1, o1, l1 = objects()
    run_epoch(m1, o1, l1, crit)
    checkpoint.save(tmp_path / "ck.npz", m1, o1, epoch=1, rng=rngs(m1, l1))
    m2, o2, l2 = objects(seed=3)  # fresh objects (even a different seed)
    checkpoint.load(tmp_path / "ck.npz", m2, o2, rng=rngs(m2, l2))
    run_epoch(m2, o2, l2, crit)
    assert_same(snapshot(model, opt), snapshot(m2, o2))


def test_file_is_plain_npz_without_pickle(saved):
    path = saved[0]
    with np.load(path, allow_pickle=False) as f:
        names = set(f.files)
        meta = json.loads(f["__meta__"].tobytes().decode())
        assert f["rng/loader"].dtype == np.uint64 and f["rng/loader"].shape == (6,)
    assert {"model/1.W", "optimizer/t", "rng/loader", "rng/dropout"} <= names
    assert meta["format"] == "minidl-checkpoint" and meta["epoch"] == 1
    assert meta["classes"] == {"model": "Sequential", "optimizer": "SGD"}


def _damaged(saved, tmp_path, how):
    path = saved[0]
    raw = path.read_bytes()
    bad = tmp_path / f"{how}.npz"
    if how == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        bad.write_bytes(b"")
    elif how == "garbage":
        bad.write_bytes(b"this is not a checkpoint at all" * 10)
    elif how == "flipped":
        with np.load(path) as f:
            target = f["model/1.W"].tobytes()
        at = raw.index(target) + len(target) // 2  # inside the array's bytes
        bad.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    elif how in ("compression", "encrypted"):
        # damage in the zip's central directory: the first entry's compression method
        # (2 bytes at offset 10) becomes unknown, or its "encrypted" flag (bit 0 of the
        # flags at offset 8) is set; zipfile then raises NotImplementedError/RuntimeError
        at = raw.index(b"PK\x01\x02") + (10 if how == "compression" else 8)
        patch = b"\x63\x00" if how == "compression" else bytes([raw[at] | 1, raw[at + 1]])
        bad.write_bytes(raw[:at] + patch + raw[at + 2:])
    return bad


@pytest.mark.parametrize("how, message", [
    ("truncated", "truncated or corrupted"),
    ("empty", "empty"),
    ("garbage", "not an .npz"),
    ("flipped", "corrupted"),
    ("compression", "truncated or corrupted"),
    ("encrypted", "truncated or corrupted"),
])
def test_damaged_checkpoint_is_refused_and_changes_nothing(saved, tmp_path, how, message):
    bad = _damaged(saved, tmp_path, how)
    model, opt, loader = objects(seed=5)
    run_epoch(model, opt, loader, SoftmaxCrossEntropy())
    before = snapshot(model, opt)
    rng_before = loader.rng.bit_generator.state
    with pytest.raises(CheckpointError, match=message) as info:
        checkpoint.load(bad, model, opt, rng=rngs(model, loader))
    assert str(bad) in str(info.value)  # the message names the file
    assert_same(before, snapshot(model, opt))
    assert loader.rng.bit_generator.state == rng_before


def test_missing_file(tmp_path):
    model, opt, _ = objects()
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load(tmp_path / "nope.npz", model, opt)
    with pytest.raises(CheckpointError, match="is a folder; give the checkpoint file"):
        checkpoint.load(tmp_path, model, opt)  # said "no such file" for a folder


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    meta = np.frombuffer(json.dumps({"format": "minidl-checkpoint"}).encode(), np.uint8)
    np.savez(path, __meta__=meta, **{"model/1.W": np.array([Evil()], dtype=object)})
    model, opt, _ = objects()
    before = snapshot(model, opt)
    with pytest.raises(CheckpointError, match="object array"):
        checkpoint.load(path, model, opt)
    assert UNPICKLED == []
    assert_same(before, snapshot(model, opt))


def test_other_model_is_refused_and_changes_nothing(saved):
    path = saved[0]
    other = models.mlp((5, 8, 2), dropout=0.25, rng=minidl.default_rng(0))
    opt = optim.SGD(other, lr=0.1, momentum=0.9)
    before = snapshot(other, opt)
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.load(path, other, opt)
    assert_same(before, snapshot(other, opt))


def test_other_optimizer_is_refused_and_changes_nothing(saved):
    path = saved[0]
    model, _, _ = objects(seed=4)
    adam = optim.Adam(model, lr=1e-3)
    before = snapshot(model, adam)
    with pytest.raises(CheckpointError, match="SGD"):
        checkpoint.load(path, model, adam)
    assert_same(before, snapshot(model, adam))


def test_failing_optimizer_load_rolls_back_the_model(saved, monkeypatch):
    path = saved[0]
    model, opt, _ = objects(seed=4)
    before = snapshot(model, opt)

    def refuse(state):
        raise ValueError("refused on purpose")
    monkeypatch.setattr(opt, "load_state_dict", refuse)
    with pytest.raises(CheckpointError, match="nothing was changed"):
        checkpoint.load(path, model, opt)
    monkeypatch.undo()
    assert_same(before, snapshot(model, opt))


def test_strict_section_checks(saved, tmp_path):
    path = saved[0]
    model, opt, loader = objects()
    only_model = tmp_path / "model_only.npz"
    checkpoint.save(only_model, model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        checkpoint.load(only_model, model, opt)
    checkpoint.load(only_model, model, opt, strict=False)  # leaves the optimizer alone
    with pytest.raises(CheckpointError, match="no state for generator"):
        checkpoint.load(path, model, opt, rng={"elsewhere": loader.rng})


def test_crash_during_save_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, model, opt, loader = saved
    good = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model, opt, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    assert checkpoint.read(path).epoch == 1


def test_unsavable_entries_are_clear(tmp_path):
    model, opt, _ = objects()
    with pytest.raises(CheckpointError, match="JSON"):
        checkpoint.save(tmp_path / "a.npz", model, extra={"f": object()})
    with pytest.raises(CheckpointError, match="epoch"):
        checkpoint.save(tmp_path / "a.npz", model, epoch=-1)
    with pytest.raises(CheckpointError, match="PCG64"):
        checkpoint.save(tmp_path / "a.npz", model,
                        rng=np.random.Generator(np.random.MT19937(0)))
    assert not (tmp_path / "a.npz").exists()


@pytest.mark.parametrize("target", backends())
def test_loads_on_either_backend(saved, target):
    path, model, opt, _ = saved
    minidl.set_backend(target)
    fresh = models.mlp((5, 16, 2), dropout=0.25, rng=minidl.default_rng(9))
    fresh_opt = optim.SGD(fresh, lr=0.1, momentum=0.9)
    checkpoint.load(path, fresh, fresh_opt)
    xp = minidl.xp()
    assert minidl.array_module(fresh[1].params["W"]) is xp
    assert_same(snapshot(model, opt), snapshot(fresh, fresh_opt))


def test_rewritten_array_with_stale_digest_is_refused(saved, tmp_path):
    """A valid zip whose array no longer matches the SHA-256 recorded at save time."""
    path = saved[0]
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["model/1.W"] = arrays["model/1.W"] + 1
    bad = tmp_path / "tampered.npz"
    np.savez(bad, **arrays)
    model, opt, _ = objects(seed=2)
    before = snapshot(model, opt)
    with pytest.raises(CheckpointError, match="SHA-256"):
        checkpoint.load(bad, model, opt)
    assert_same(before, snapshot(model, opt))


def test_best_weights_travel_with_the_checkpoint_and_are_checked(tmp_path):
    model = models.mlp((6, 8, 3), rng=minidl.default_rng(0))
    best = {k: v + 1.0 for k, v in model.state_dict().items()}
    path = checkpoint.save(tmp_path / "b.npz", model, epoch=2, best=best)
    ck = checkpoint.read(path)
    assert sorted(ck.best) == sorted(best)
    assert all(np.array_equal(ck.best[k], best[k]) for k in best)
    with np.load(path, allow_pickle=False) as f:  # still a plain, pickle-free archive
        assert any(name.startswith("best/") for name in f.files)
    other = models.mlp((6, 9, 3), rng=minidl.default_rng(0))
    bad = checkpoint.save(tmp_path / "c.npz", model, epoch=2,
                          best=other.state_dict())  # best weights of another shape
    with pytest.raises(CheckpointError, match="best entry"):
        checkpoint.load(bad, models.mlp((6, 8, 3), rng=minidl.default_rng(1)))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_checkpoint_gets_the_permissions_of_any_new_file(tmp_path, umask, mode):
    """The atomic save wrote through mkstemp, whose file is 0600 whatever the umask: a
    checkpoint was readable by its owner only, unlike every other file of a run."""
    model, opt, _ = objects()
    old = os.umask(umask)
    try:
        path = checkpoint.save(tmp_path / "ck.npz", model, opt, epoch=1)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode


def test_check_writable(tmp_path):
    assert checkpoint.check_writable(tmp_path / "new" / "run.npz")
    assert not list((tmp_path / "new").iterdir())  # the probe file is gone
    with pytest.raises(CheckpointError, match="is a folder"):
        checkpoint.check_writable(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write"):
        checkpoint.check_writable(tmp_path / "f" / "run.npz")


def test_check_writable_never_overwrites_a_file_that_is_not_a_checkpoint(saved, tmp_path):
    """A checkpoint path naming someone's notes (or a data file) is refused before any
    training; a checkpoint (the run's own, written before) and an empty file may go."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes")
    with pytest.raises(CheckpointError, match="exists and is not a minidl checkpoint"):
        checkpoint.check_writable(notes)
    assert notes.read_text() == "my precious notes"
    assert checkpoint.check_writable(saved[0])   # an existing checkpoint: overwritten later
    (tmp_path / "empty.npz").write_bytes(b"")
    assert checkpoint.check_writable(tmp_path / "empty.npz")
