"""Every kind of damaged file reaches the reader's own clear error (never a raw zlib.error,
ValueError or UnpicklingError), and CIFAR batches written by current Python (pickle
protocol 5, str keys) are read, still without unpickling arbitrary objects."""
import gzip
import os
import pickle
import re
import struct

import numpy as np
import pytest

from minidl import data
from minidl.data import cifar


from test_data import _offline, data_dir  # noqa: F401  (the same offline fixtures)


def _damaged(raw, seed, flips=150):
    """Every 1/40th truncation of ``raw`` and ``flips`` copies with 1-3 bytes changed."""
    rng = np.random.default_rng(seed)
    out = [raw[:k] for k in range(0, len(raw), max(1, len(raw) // 40))]
    for _ in range(flips):
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        out.append(bytes(b))
    return out


# -- IDX -------------------------------------------------------------------------------------
GOOD_IDX = b"\0\0\x08\x03" + struct.pack(">III", 5, 2, 2) + bytes(range(20)) * 3


@pytest.mark.parametrize("kind,raw,message", [
    ("corrupted deflate", lambda g: g[:10] + bytes([g[10] ^ 0xFF]) + g[11:], "error"),
    ("truncated gzip", lambda g: g[:-12], "EOFError"),
    ("bad CRC", lambda g: g[:-8] + bytes([g[-8] ^ 0xFF]) + g[-7:], "BadGzipFile"),
])
def test_damaged_gzip_is_an_idx_error(kind, raw, message):
    with pytest.raises(data.IDXFormatError, match=rf"corrupted gzip stream \({message}.*"
                                                  r"delete it and download it again"):
        data.read_idx(raw(gzip.compress(GOOD_IDX, mtime=0)))


def test_wrong_magic_and_short_idx():
    with pytest.raises(data.IDXFormatError, match="not an IDX file"):
        data.read_idx(b"PK\x03\x04" + GOOD_IDX[4:])
    with pytest.raises(data.IDXFormatError, match="truncated or corrupted"):
        data.read_idx(gzip.compress(GOOD_IDX[:-5]))


def test_no_damaged_idx_escapes_raw(tmp_path):
    for i, raw in enumerate(_damaged(gzip.compress(GOOD_IDX, mtime=0), 0)
                            + _damaged(GOOD_IDX, 1)):
        path = tmp_path / "f.idx"
        path.write_bytes(raw)
        try:
            data.read_idx(path)
        except data.IDXFormatError:
            pass


# -- MAT v5 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_no_damaged_mat_file_escapes_raw(tmp_path, compress):
    sio = pytest.importorskip("scipy.io", reason="scipy writes the intact file to damage")
    path = tmp_path / "a.mat"
    rng = np.random.default_rng(2)
    sio.savemat(path, {"X": rng.integers(0, 255, (4, 4, 3, 2)).astype(np.uint8),
                       "y": np.arange(2.0)[:, None], "note": "text"}, do_compression=compress)
    raw = path.read_bytes()
    for damaged in _damaged(raw, 3, flips=300):
        path.write_bytes(damaged)
        try:
            data.read_mat5(path)
        except data.MatFileError:
            pass


def test_mat_small_element_claiming_too_many_bytes(tmp_path):
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100)
    body = struct.pack("<II", 14, 16) + struct.pack("<HH", 6, 200) + b"\0" * 12
    path = tmp_path / "s.mat"
    path.write_bytes(header + b"IM" + body)
    with pytest.raises(data.MatFileError, match="claims 200 bytes, at most 4 fit"):
        data.read_mat5(path)


# -- CIFAR -----------------------------------------------------------------------------------
def _batch(n, seed, keys_as=bytes):
    rng = np.random.default_rng(seed)
    batch = {"batch_label": "testing batch", "data": rng.integers(0, 256, (n, 3072),
                                                                  dtype=np.uint8),
             "labels": rng.integers(0, 10, n).tolist()}
    if keys_as is bytes:
        batch = {k.encode(): v for k, v in batch.items()}
    return batch


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("keys_as", [bytes, str])
def test_cifar_batches_written_by_current_python_are_read(data_dir, protocol, keys_as):
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir()
    batch = _batch(3, protocol, keys_as)
    if keys_as is str:  # labels as a NumPy array too, as a user's own script may write them
        batch["labels"] = np.asarray(batch["labels"], dtype=np.int64)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = data.cifar10("test", download=False)
    key = "data" if keys_as is str else b"data"
    np.testing.assert_array_equal(x, batch[key].reshape(3, 3, 32, 32))
    labels = batch["labels" if keys_as is str else b"labels"]
    assert y.dtype == np.int64 and y.tolist() == list(labels)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_protocol_5_pickles_still_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    batch = _batch(2, 0, str)
    batch["labels"] = _Evil(str(marker))
    with pytest.raises(data.UnsafePickleError, match=r"refusing to load global '(posix|os|nt)"
                                                     r"\.mkdir'"):
        cifar.safe_load_pickle(pickle.dumps(batch, protocol=5))
    assert not marker.exists()
    with pytest.raises(data.UnsafePickleError, match="Python objects"):
        cifar.safe_load_pickle(pickle.dumps(np.array([1, "a"], dtype=object), protocol=5))
    with pytest.raises(data.UnsafePickleError, match="_frombuffer expects a byte buffer"):
        cifar._frombuffer("not bytes", np.dtype("u1"), (3,), "C")
    arr = np.arange(12, dtype=">i4").reshape(3, 4).T  # F order, big-endian
    np.testing.assert_array_equal(cifar.safe_load_pickle(pickle.dumps(arr, protocol=5)), arr)


def test_damaged_cifar_batch_names_the_file(data_dir):
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir()
    raw = pickle.dumps(_batch(2, 0), protocol=2)
    (folder / "test_batch").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(data.CifarFormatError, match=r"cifar-10-batches-py/test_batch: not a "
                                                    r"readable CIFAR batch.*damaged"):
        data.cifar10("test", download=False)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": [1, 2]}, protocol=5))
    with pytest.raises(data.CifarFormatError, match="expected a dict with 'data' and 'labels'"):
        data.cifar10("test", download=False)


@pytest.mark.parametrize("labels, message", [
    ([0, 10, 3], r"label 10 at index 1.*expected 0\.\.9"),
    ([0, -1, 3], r"label -1 at index 1.*expected 0\.\.9"),
    ([255, 1, 2], r"label 255 at index 0.*expected 0\.\.9"),
    ([0.5, 1.0, 2.0], r"'labels' should be integers, got float64"),
])
def test_cifar10_labels_outside_the_classes_are_refused(data_dir, labels, message):
    """An extracted batch is read without an MD5 check; its labels were cast to int64 as
    they came: 10, -1 or 255 passed through to the loss (an index error there, or a wrong
    one-hot), and fractional labels were truncated without a word."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir()
    batch = _batch(3, 0)
    batch[b"labels"] = labels
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    where = os.path.join(str(folder), "test_batch")  # the file on disk, in full
    with pytest.raises(data.CifarFormatError, match=re.escape(where) + ": " + message):
        data.cifar10("test", download=False)


def test_cifar100_labels_are_checked_against_their_own_classes(data_dir):
    folder = data_dir / "cifar-100-python"
    folder.mkdir()
    batch = _batch(3, 0)
    del batch[b"labels"]
    batch[b"fine_labels"], batch[b"coarse_labels"] = [99, 50, 0], [19, 20, 0]
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=2))
    _, fine = data.cifar100("test", download=False)
    assert fine.tolist() == [99, 50, 0]
    with pytest.raises(data.CifarFormatError, match=r"label 20 at index 1.*0\.\.19"):
        data.cifar100("test", label="coarse", download=False)


def test_a_bad_batch_in_the_tarball_names_the_tarball_and_the_member(data_dir, monkeypatch):
    import dataclasses
    import hashlib
    import io
    import tarfile
    batch = _batch(2, 0)
    batch[b"labels"] = [3, 12]
    path = data_dir / "cifar-10-python.tar.gz"
    raw = pickle.dumps(batch, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "CIFAR10_FILE", dataclasses.replace(cifar.CIFAR10_FILE, md5=md5))
    with pytest.raises(data.CifarFormatError, match=re.escape(f"{path} (member cifar-10-"
                                                              "batches-py/test_batch): label 12")):
        data.cifar10("test", download=False)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_no_damaged_cifar_batch_escapes_raw(protocol):
    raw = pickle.dumps(_batch(2, 1), protocol=protocol)
    for damaged in _damaged(raw, protocol, flips=200):
        try:
            cifar._batch_arrays(cifar.safe_load_pickle(damaged, "b"), b"labels", 10, "b")
        except (data.CifarFormatError, data.UnsafePickleError):
            pass
