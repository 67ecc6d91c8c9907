"""Tests for minidl.data: file lookup and downloads, IDX/MNIST/Fashion-MNIST, CIFAR, SVHN,
the bundled subset, the registry and the DataLoader.

The real-data tests read the original MNIST and Fashion-MNIST files from the folder named
by MINIDL_DATA (laid out as mnist/*.gz and fashion-mnist/*.gz) and skip with a reason
where it is unset. No test touches the network: every test runs with a URL opener that
fails, a private cache folder, and (for the download tests) a fake opener serving bytes.
"""
import dataclasses
import gzip
import importlib
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import zlib

import numpy as np
import pytest

import minidl
from minidl import backend, data
from minidl.data import cifar, download

# the functions mnist() and svhn() shadow their modules' names inside minidl.data
mnist_module = importlib.import_module("minidl.data.mnist")
svhn_module = importlib.import_module("minidl.data.svhn")

REAL_ROOT = os.environ.get("MINIDL_DATA", "")  # read before any test changes it
REAL_REASON = ("real-data test: set MINIDL_DATA to a folder holding the original "
               "mnist/*.gz and fashion-mnist/*.gz files (see the data README)")


def _real(folder):
    """Skip unless MINIDL_DATA holds the four original files of ``folder``."""
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if not REAL_ROOT or not all(os.path.isfile(os.path.join(REAL_ROOT, folder, n))
                                for n in names):
        pytest.skip(REAL_REASON)
    return os.path.join(REAL_ROOT, folder)


def _md5(raw):
    return hashlib.md5(raw).hexdigest()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """A private cache, and an opener that fails: no test may reach the network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(url, timeout=None):
        raise urllib.error.URLError("network disabled in the tests")
    monkeypatch.setattr(download, "urlopen", no_network)


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    """MINIDL_DATA pointing at an empty folder of the test's own."""
    root = tmp_path / "minidl-data"
    root.mkdir()
    monkeypatch.setenv("MINIDL_DATA", str(root))
    return root


class FakeResponse:
    """What urlopen returns: a readable context manager, failing after ``fail_after`` bytes."""

    def __init__(self, payload, fail_after=None):
        self.stream = io.BytesIO(payload)
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.stream.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer (fake)")
        if self.fail_after is not None:
            n = min(n, self.fail_after - self.stream.tell())
        return self.stream.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _serve(monkeypatch, table):
    """Install an opener answering each URL from ``table`` (bytes, FakeResponse or error)."""
    calls = []

    def opener(url, timeout=None):
        calls.append(url)
        answer = table[url]
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, FakeResponse) else FakeResponse(answer)
    monkeypatch.setattr(download, "urlopen", opener)
    return calls


PAYLOAD = bytes(range(256)) * 4000  # 1 MB: more than one download chunk
REMOTE = download.RemoteFile("blob.bin", "toy", _md5(PAYLOAD),
                             ("https://mirror-a.example/blob.bin",
                              "https://mirror-b.example/blob.bin"), "Toy")


def _leftovers(folder):
    return [p for p in os.listdir(folder) if p != REMOTE.name] if os.path.isdir(folder) else []


# ---------------------------------------------------------------- lookup and download

def test_search_order_and_cache_folder(monkeypatch, data_dir, tmp_path):
    folders = download.search_folders("mnist")
    assert [p for p, _ in folders] == [str(data_dir / "mnist"),
                                       str(tmp_path / "xdg-cache" / "minidl" / "mnist")]
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert download.cache_home() == os.path.join(os.path.expanduser("~"), ".cache", "minidl")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_download_gets_the_permissions_of_any_new_file(monkeypatch, data_dir, umask, mode):
    """Downloads were written through mkstemp, so a shared data folder held files only their
    downloader could read (0600 whatever the umask)."""
    _serve(monkeypatch, {REMOTE.urls[0]: PAYLOAD})
    old = os.umask(umask)
    try:
        path = download.fetch(REMOTE)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode


def test_download_is_verified_and_moved_into_place(monkeypatch, data_dir):
    calls = _serve(monkeypatch, {REMOTE.urls[0]: PAYLOAD})
    path = download.fetch(REMOTE)
    assert path == str(data_dir / "toy" / "blob.bin")
    assert open(path, "rb").read() == PAYLOAD
    assert _leftovers(data_dir / "toy") == []
    assert download.fetch(REMOTE) == path and len(calls) == 1  # found, not fetched again


def test_download_failing_midway_leaves_no_file(monkeypatch, data_dir):
    _serve(monkeypatch, {u: FakeResponse(PAYLOAD, fail_after=300_000) for u in REMOTE.urls})
    with pytest.raises(data.DataNotFoundError) as err:
        download.fetch(REMOTE)
    folder = data_dir / "toy"
    assert not (folder / "blob.bin").exists()
    assert _leftovers(folder) == []  # the temporary file is gone too
    assert "ConnectionResetError" in str(err.value)


def test_download_with_wrong_checksum_is_not_kept(monkeypatch, data_dir):
    bad = PAYLOAD[:-1] + b"\x00"
    _serve(monkeypatch, {u: bad for u in REMOTE.urls})
    with pytest.raises(data.DataNotFoundError, match="does not match the published"):
        download.fetch(REMOTE)
    assert not (data_dir / "toy" / "blob.bin").exists()
    assert _leftovers(data_dir / "toy") == []


def test_download_falls_back_to_the_next_mirror(monkeypatch, data_dir):
    calls = _serve(monkeypatch, {REMOTE.urls[0]: urllib.error.URLError("mirror down"),
                                 REMOTE.urls[1]: PAYLOAD})
    path = download.fetch(REMOTE)
    assert calls == list(REMOTE.urls)
    assert open(path, "rb").read() == PAYLOAD


def test_download_goes_to_the_cache_when_minidl_data_is_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    _serve(monkeypatch, {REMOTE.urls[0]: PAYLOAD})
    path = download.fetch(REMOTE)
    assert path == str(tmp_path / "xdg-cache" / "minidl" / "toy" / "blob.bin")


def test_corrupted_copy_is_rejected_and_replaced(monkeypatch, data_dir):
    (data_dir / "toy").mkdir()
    target = data_dir / "toy" / "blob.bin"
    target.write_bytes(PAYLOAD[:1000])  # a truncated copy
    with pytest.raises(data.DataNotFoundError) as err:
        download.fetch(REMOTE, download_if_missing=False)
    assert "rejected" in str(err.value) and str(target) in str(err.value)
    _serve(monkeypatch, {REMOTE.urls[0]: PAYLOAD})
    assert open(download.fetch(REMOTE), "rb").read() == PAYLOAD


def test_offline_error_names_the_file_and_the_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    with pytest.raises(data.DataNotFoundError) as err:
        download.fetch(REMOTE)
    message = str(err.value)
    cache = str(tmp_path / "xdg-cache" / "minidl" / "toy")
    assert "'blob.bin'" in message and f"in {cache}" in message
    assert "MINIDL_DATA is not set" in message and "network disabled" in message
    assert REMOTE.md5 in message
    assert isinstance(err.value, FileNotFoundError)


def test_a_minidl_data_that_does_not_exist_is_named_and_never_created(monkeypatch, tmp_path):
    """MINIDL_DATA with a typo used to be created (with <it>/toy/ inside) to download into,
    and the error did not say the folder had not existed."""
    typo = tmp_path / "minidl-dtaa"
    monkeypatch.setenv("MINIDL_DATA", str(typo))
    with pytest.raises(data.DataNotFoundError, match=f"MINIDL_DATA {typo} does not exist"):
        download.fetch(REMOTE)
    assert not typo.exists()
    _serve(monkeypatch, {REMOTE.urls[0]: PAYLOAD})  # a download goes to the cache instead
    assert download.fetch(REMOTE) == str(tmp_path / "xdg-cache" / "minidl" / "toy" / "blob.bin")
    assert not typo.exists()


def test_a_minidl_data_naming_a_file_is_called_a_file(monkeypatch, tmp_path):
    """MINIDL_DATA set to a file was reported as a folder that 'does not exist (a typo?)'."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    monkeypatch.setenv("MINIDL_DATA", str(notes))
    with pytest.raises(data.DataNotFoundError) as err:
        download.fetch(REMOTE, download_if_missing=False)
    assert f"MINIDL_DATA {notes} is a file, not a folder" in str(err.value)
    assert "does not exist" not in str(err.value)
    assert notes.read_text() == "mine"


def test_download_false_never_opens_a_url(monkeypatch, data_dir):
    calls = _serve(monkeypatch, {})
    with pytest.raises(data.DataNotFoundError, match="not attempted"):
        download.fetch(REMOTE, download_if_missing=False)
    assert calls == [] and not (data_dir / "toy").exists()


# ---------------------------------------------------------------- IDX

def _idx_bytes(array, code):
    """An IDX file written by hand: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_idx_reads_tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    ints = rng.integers(-1000, 1000, size=(2, 6)).astype(np.int32)
    floats = rng.standard_normal(7)
    for array, code in ((images, 0x08), (ints, 0x0C), (floats, 0x0E)):
        raw = _idx_bytes(array, code)
        path = tmp_path / "a.idx.gz"
        path.write_bytes(gzip.compress(raw))
        for source in (path, raw):
            out = data.read_idx(source)
            np.testing.assert_array_equal(out, array)
            assert out.dtype == array.dtype and out.dtype.isnative


def test_idx_rejects_malformed_files():
    good = _idx_bytes(np.zeros((2, 3), np.uint8), 0x08)
    with pytest.raises(data.IDXFormatError, match="not an IDX file"):
        data.read_idx(b"\x01" + good[1:])
    with pytest.raises(data.IDXFormatError, match="unknown IDX type"):
        data.read_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(data.IDXFormatError, match="truncated"):
        data.read_idx(good[:-1])
    with pytest.raises(data.IDXFormatError, match="gzip"):
        data.read_idx(gzip.compress(good)[:-6])


# ---------------------------------------------------------------- real MNIST / Fashion

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def real_mnist():
    """{split: (x, y)} of the real MNIST files."""
    _real("mnist")
    return {s: data.mnist(s, download=False) for s in ("train", "test")}


@pytest.fixture(scope="module")
def real_fashion():
    """{split: (x, y)} of the real Fashion-MNIST files."""
    _real("fashion-mnist")
    return {s: data.fashion_mnist(s, download=False) for s in ("train", "test")}


@pytest.mark.data
def test_real_mnist(real_mnist):
    for split, n, counts in (("train", 60000, MNIST_TRAIN_COUNTS),
                             ("test", 10000, MNIST_TEST_COUNTS)):
        x, y = real_mnist[split]
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert x.min() == 0 and x.max() == 255
        assert np.bincount(y, minlength=10).tolist() == counts
    assert real_mnist["train"][1][:3].tolist() == [5, 0, 4]  # the well-known first digits
    assert real_mnist["test"][1][:3].tolist() == [7, 2, 1]


@pytest.mark.data
def test_real_fashion_mnist(real_fashion):
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = real_fashion[split]
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.uint8
        assert y.dtype == np.int64 and y.min() == 0 and y.max() == 9
        assert (np.bincount(y, minlength=10) == n // 10).all()
    assert len(data.FASHION_MNIST_CLASSES) == 10


@pytest.mark.data
def test_corrupted_mnist_copy_is_not_used(monkeypatch, data_dir, tmp_path):
    real = _real("mnist")
    raw = open(os.path.join(real, "t10k-labels-idx1-ubyte.gz"), "rb").read()
    (data_dir / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (data_dir / "mnist" / name).write_bytes(open(os.path.join(real, name), "rb").read())
    corrupted = bytearray(raw)
    corrupted[-20] ^= 0xFF  # one flipped byte in the compressed labels
    (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(corrupted))
    with pytest.raises(data.DataNotFoundError, match="rejected"):
        data.mnist("test", download=False)
    cache = tmp_path / "xdg-cache" / "minidl" / "mnist"
    cache.mkdir(parents=True)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(raw)  # a good copy in the cache wins
    x, y = data.mnist("test", download=False)
    assert y[:3].tolist() == [7, 2, 1] and x.shape == (10000, 1, 28, 28)


# ---------------------------------------------------------------- CIFAR

def _cifar_batch(n, seed, label_keys=(b"labels",), classes=10):
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"testing batch", b"filenames": [b"img_%d.png" % i for i in range(n)],
             b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
    for key in label_keys:
        batch[key] = rng.integers(0, classes, size=n).tolist()
    return batch


def _write_tar(path, members):
    """A .tar.gz of {member name: bytes}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return open(path, "rb").read()


@pytest.fixture
def tiny_cifar10(monkeypatch, data_dir):
    """A CIFAR-10 tarball in the original layout, with its MD5 registered in place of the real."""
    batches = {f"data_batch_{i}": _cifar_batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(3, 9)
    members = {f"cifar-10-batches-py/{k}": pickle.dumps(v, protocol=2)
               for k, v in batches.items()}
    meta = {b"label_names": [c.encode() for c in data.CIFAR10_CLASSES],
            b"num_cases_per_batch": 4, b"num_vis": 3072}
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(meta, protocol=2)
    raw = _write_tar(data_dir / "cifar-10-python.tar.gz", members)
    monkeypatch.setattr(cifar, "CIFAR10_FILE",
                        dataclasses.replace(cifar.CIFAR10_FILE, md5=_md5(raw)))
    return batches


def test_cifar10_from_the_tarball(tiny_cifar10):
    x, y = data.cifar10("train", download=False)
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    expect = np.concatenate([tiny_cifar10[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((tiny_cifar10[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert y.tolist() == labels
    # row layout: 1024 red values (32 rows of 32), then green, then blue
    np.testing.assert_array_equal(x[5, 0], expect[5, :1024].reshape(32, 32))
    np.testing.assert_array_equal(x[5, 2, 3, 7], expect[5, 2048 + 3 * 32 + 7])
    xt, yt = data.cifar10("test", download=False)
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == tiny_cifar10["test_batch"][b"labels"]


def test_cifar10_extracted_folder(data_dir):
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir()
    batch = _cifar_batch(2, 0)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = data.cifar10("test", download=False)
    np.testing.assert_array_equal(x.reshape(2, -1), batch[b"data"])


def test_cifar10_tarball_with_wrong_md5_is_rejected(tiny_cifar10, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR10_FILE",
                        dataclasses.replace(cifar.CIFAR10_FILE, md5="0" * 32))
    with pytest.raises(data.DataNotFoundError, match="cifar-10-python.tar.gz"):
        data.cifar10("test", download=False)


def test_cifar100_fine_and_coarse(monkeypatch, data_dir):
    keys = (b"fine_labels", b"coarse_labels")
    train, test = _cifar_batch(5, 1, keys, 100), _cifar_batch(2, 2, keys, 100)
    for batch in (train, test):  # 20 coarse classes (superclasses), 5 fine ones in each
        batch[b"coarse_labels"] = [fine // 5 for fine in batch[b"fine_labels"]]
    meta = {b"fine_label_names": [b"c%d" % i for i in range(100)],
            b"coarse_label_names": [b"s%d" % i for i in range(20)]}
    raw = _write_tar(data_dir / "cifar-100-python.tar.gz",
                     {f"cifar-100-python/{k}": pickle.dumps(v, protocol=2)
                      for k, v in (("train", train), ("test", test), ("meta", meta))})
    monkeypatch.setattr(cifar, "CIFAR100_FILE",
                        dataclasses.replace(cifar.CIFAR100_FILE, md5=_md5(raw)))
    x, y = data.cifar100("train", download=False)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == train[b"fine_labels"]
    _, yc = data.cifar100("test", label="coarse", download=False)
    assert yc.tolist() == test[b"coarse_labels"]


class _Evil:
    """Unpickling this calls os.mkdir(path): the kind of payload a tampered file carries."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_malicious_pickle_is_refused(data_dir, tmp_path):
    marker = tmp_path / "pwned"
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir()
    batch = _cifar_batch(2, 0)
    batch[b"labels"] = _Evil(str(marker))
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    refused = "refusing to load global '(posix|os|nt).mkdir'"
    with pytest.raises(data.UnsafePickleError, match=refused):
        data.cifar10("test", download=False)
    assert not marker.exists()


def test_safe_unpickler_allows_exactly_the_array_globals():
    system = pickle.dumps(os.system, protocol=2)
    with pytest.raises(data.UnsafePickleError, match="system"):
        cifar.safe_load_pickle(system)
    objects = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(data.UnsafePickleError, match="Python objects"):
        cifar.safe_load_pickle(objects)
    # _codecs.encode with an encoding other than latin1, written by hand
    rot13 = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00rot_13\x86R."
    with pytest.raises(data.UnsafePickleError, match="latin1"):
        cifar.safe_load_pickle(rot13)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(cifar.safe_load_pickle(pickle.dumps(arr, protocol=2)), arr)
    # the name the original (Python 2 era) batches use resolves too
    unpickler = cifar.SafeUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is not None
    # a Python 2 style pickle: keys as SHORT_BINSTRING come back as bytes
    py2 = b"\x80\x02}q\x00(U\x06labelsq\x01]q\x02(K\x01K\x02eU\x01aK\x03u."
    assert cifar.safe_load_pickle(py2) == {b"labels": [1, 2], b"a": 3}


# ---------------------------------------------------------------- MAT v5 and SVHN

def _element(mi, payload):
    """A data element: tag plus payload padded to 8 bytes (small form for <= 4 bytes)."""
    if 0 < len(payload) <= 4:
        return struct.pack("<HH", mi, len(payload)) + payload.ljust(4, b"\0")
    return struct.pack("<II", mi, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _mat_matrix(name, array, mx, mi, compress):
    """One variable as an miMATRIX element, optionally wrapped in miCOMPRESSED."""
    body = _element(6, struct.pack("<II", mx, 0))  # array flags: class, no flags
    body += _element(5, np.asarray(array.shape, "<i4").tobytes())
    body += _element(1, name.encode())
    body += _element(mi, array.ravel(order="F").tobytes())
    matrix = struct.pack("<II", 14, len(body)) + body
    if compress:
        packed = zlib.compress(matrix)
        return struct.pack("<II", 15, len(packed)) + packed
    return matrix


def _mat_file(path, variables, compress):
    """A MAT v5 file written by hand: {name: (array, mx class, mi storage type)}."""
    header = b"MATLAB 5.0 MAT-file, written by minidl's tests".ljust(116, b" ")
    header += b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    body = b"".join(_mat_matrix(n, a, mx, mi, compress) for n, (a, mx, mi) in variables.items())
    path.write_bytes(header + body)


def _svhn_arrays(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    y[0, 0] = 10
    return X, y


@pytest.mark.parametrize("compress", [False, True])
def test_mat5_reads_hand_written_files(tmp_path, compress):
    X, y = _svhn_arrays(3, 0)
    scores = np.array([[1.5, -2.0, 3.25]])  # a double matrix stored as double
    small = np.array([[1.0, 2.0], [3.0, 250.0]])  # a double matrix stored as uint8
    path = tmp_path / "a.mat"
    _mat_file(path, {"X": (X, 9, 2), "y": (y, 9, 2), "scores": (scores, 6, 9),
                     "small": (small.astype(np.uint8), 6, 2)}, compress)
    out = data.read_mat5(path)
    np.testing.assert_array_equal(out["X"], X)
    np.testing.assert_array_equal(out["y"], y)
    np.testing.assert_array_equal(out["scores"], scores)
    assert out["small"].dtype == np.float64 and (out["small"] == small).all()
    with pytest.raises(data.MatFileError, match="no numeric variable"):
        data.read_mat5(path, names=("X", "missing"))


def test_mat5_agrees_with_scipy(tmp_path):
    sio = pytest.importorskip("scipy.io", reason="scipy is optional: cross-check only")
    X, y = _svhn_arrays(4, 1)
    for compress in (False, True):
        path = tmp_path / f"s{compress}.mat"
        sio.savemat(path, {"X": X, "y": y, "note": "text is skipped",
                           "f": np.eye(3, dtype=np.float32)}, do_compression=compress)
        out = data.read_mat5(path)
        assert set(out) == {"X", "y", "f"}
        np.testing.assert_array_equal(out["X"], X)
        np.testing.assert_array_equal(out["y"], y)
        assert out["f"].dtype == np.float32
        with pytest.raises(data.MatFileError, match="char"):
            data.read_mat5(path, names=("note",))


def test_mat5_rejects_other_files(tmp_path):
    path = tmp_path / "x.mat"
    path.write_bytes(b"\0" * 200)
    with pytest.raises(data.MatFileError, match="not a MAT v5"):
        data.read_mat5(path)


def test_svhn(monkeypatch, data_dir):
    X, y = _svhn_arrays(5, 2)
    (data_dir / "svhn").mkdir()
    path = data_dir / "svhn" / "test_32x32.mat"
    _mat_file(path, {"X": (X, 9, 2), "y": (y, 9, 2)}, compress=True)
    files = dict(svhn_module.SVHN_FILES)
    files["test"] = dataclasses.replace(files["test"], md5=_md5(path.read_bytes()))
    monkeypatch.setattr(svhn_module, "SVHN_FILES", files)
    x, labels = data.svhn("test", download=False)
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.uint8 and x.flags.c_contiguous
    np.testing.assert_array_equal(x[4, 1, 7, 20], X[7, 20, 1, 4])  # (n, c, row, col)
    assert labels[0] == 0 and labels.tolist() == (y.ravel() % 10).tolist()
    with pytest.raises(data.DataNotFoundError, match="train_32x32.mat"):
        data.svhn("train", download=False)


# ---------------------------------------------------------------- bundled subset, registry

def test_bundled_mnist():
    path = os.path.join(os.path.dirname(data.bundled.__file__), "bundled",
                        data.bundled.BUNDLED_MNIST)
    assert os.path.getsize(path) < 5 * 2**20
    assert os.path.isfile(os.path.join(os.path.dirname(path), "LICENSE-MNIST.txt"))
    for split, n in (("train", 10000), ("test", 2000)):
        x, y = data.bundled_mnist(split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
        assert (np.bincount(y, minlength=10) == n // 10).all()
        assert x.max() == 255


@pytest.mark.data
def test_bundled_mnist_is_the_real_subset(real_mnist):
    from minidl.data import make_bundled
    rebuilt = make_bundled.build()
    with np.load(os.path.join(os.path.dirname(make_bundled.__file__), "bundled",
                              "mnist_small.npz"), allow_pickle=False) as shipped:
        for key in shipped.files:
            np.testing.assert_array_equal(shipped[key], rebuilt[key])
        for split in ("train", "test"):
            x, y = real_mnist[split]
            index = shipped[f"{split}_index"]
            np.testing.assert_array_equal(shipped[f"x_{split}"], x[index])
            np.testing.assert_array_equal(shipped[f"y_{split}"], y[index])


def test_load_default_offline_is_the_bundle(monkeypatch):
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    assert data.default_dataset() == "mnist-small"
    x, y = data.load_default("test")
    assert x.shape == (2000, 1, 28, 28)
    x2, _ = data.load("MNIST_small", "test")
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split"):
        data.bundled_mnist("validation")


@pytest.mark.data
def test_load_default_uses_full_mnist_when_present(real_mnist):
    _real("mnist")
    assert data.default_dataset() == "mnist"
    x, y = data.load_default("test")
    np.testing.assert_array_equal(y, real_mnist["test"][1])


def test_mnist_missing_split_and_file(data_dir):
    with pytest.raises(ValueError, match="split"):
        data.mnist("valid")
    with pytest.raises(data.DataNotFoundError) as err:
        data.fashion_mnist("test")
    assert "fashion-mnist" in str(err.value) and "t10k-images-idx3-ubyte.gz" in str(err.value)
    assert mnist_module.MNIST_FILES["train"][0].urls[0].startswith("https://")


# ---------------------------------------------------------------- DataLoader

def _toy(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)  # row i is [3i, 3i+1, 3i+2]
    y = np.arange(n)
    return x, y


def test_loader_len_and_batch_sizes():
    x, y = _toy(10)
    assert len(data.DataLoader(x, y, 3)) == 4
    assert [len(yb) for _, yb in data.DataLoader(x, y, 3)] == [3, 3, 3, 1]
    loader = data.DataLoader(x, y, 3, drop_last=True)
    assert len(loader) == 3 and [len(yb) for _, yb in loader] == [3, 3, 3]
    assert len(data.DataLoader(x, y, 10)) == 1 and len(data.DataLoader(x, y, 64)) == 1


def test_loader_covers_every_example_once_per_epoch_and_pairs_x_with_y():
    x, y = _toy(23)
    loader = data.DataLoader(x, y, 5, rng=minidl.default_rng(3))
    for _ in range(3):
        seen = []
        for xb, yb in loader:
            np.testing.assert_array_equal(xb[:, 0], 3 * yb)  # rows stay paired
            seen.extend(yb.tolist())
        assert sorted(seen) == list(range(23))


def test_loader_shuffles_each_epoch_reproducibly():
    x, y = _toy(50)

    def epochs(loader, k):
        return [np.concatenate([yb for _, yb in loader]).tolist() for _ in range(k)]
    first = epochs(data.DataLoader(x, y, 8, rng=minidl.default_rng(7)), 3)
    again = epochs(data.DataLoader(x, y, 8, rng=minidl.default_rng(7)), 3)
    other = epochs(data.DataLoader(x, y, 8, rng=minidl.default_rng(8)), 3)
    assert first == again
    assert first[0] != first[1] != first[2]
    assert first != other
    assert first[0] != list(range(50))
    assert epochs(data.DataLoader(x, y, 8, shuffle=False), 2) == [list(range(50))] * 2
    assert epochs(data.DataLoader(x, y, 8, rng=7), 1) == first[:1]  # an int seed works too


def test_loader_rejects_bad_arguments():
    x, y = _toy(10)
    with pytest.raises(ValueError, match="10 examples but y has 9"):
        data.DataLoader(x, y[:9], 4)
    for bad in (0, -2, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            data.DataLoader(x, y, bad)
    with pytest.raises(ValueError, match="no batches"):
        data.DataLoader(x, y, 11, drop_last=True)
    with pytest.raises(ValueError, match="rng must be"):
        data.DataLoader(x, y, 4, rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="empty"):
        data.DataLoader(x[:0], y[:0], 4)


def test_loader_moves_data_to_the_device_once(on_backend, monkeypatch):
    x, y = _toy(12)
    moves = []
    real_asarray = backend.asarray

    def counting(a, dtype=None):
        moves.append(a.shape)
        return real_asarray(a, dtype)
    monkeypatch.setattr(backend, "asarray", counting)
    loader = data.DataLoader(x, y, 5, rng=minidl.default_rng(0))
    xp = minidl.xp()
    for _ in range(3):
        for xb, yb in loader:
            assert minidl.array_module(xb, yb) is xp
    assert sorted(moves) == [(12,), (12, 3)]


def test_loader_same_batches_on_every_backend(on_backend):
    x, y = _toy(17)
    loader = data.DataLoader(x, y, 4, rng=minidl.default_rng(5))
    got = [minidl.to_numpy(yb).tolist() for _ in range(2) for _, yb in loader]
    minidl.set_backend("numpy")
    ref = data.DataLoader(x, y, 4, rng=minidl.default_rng(5))
    assert got == [yb.tolist() for _ in range(2) for _, yb in ref]


def test_loader_transform_gets_the_batch_and_the_rng():
    x = np.zeros((6, 1, 4, 4), np.uint8)
    seen = []

    def transform(xb, rng):
        seen.append(rng)
        return data.normalise(xb) + 1
    loader = data.DataLoader(x, np.zeros(6), 4, shuffle=False, rng=minidl.default_rng(1),
                             transform=transform)
    batches = list(loader)
    assert batches[0][0].dtype == np.float32 and (batches[0][0] == 1).all()
    assert all(r is loader.rng for r in seen) and len(seen) == 2


def test_dataloader_seed_from_a_numpy_grid_and_no_bool_seed():
    """rng took a Python int as a seed but refused a NumPy one (a seed from np.arange),
    while rng=True was taken as seed 1 without a word."""
    x, y = _toy(10)
    for seed in np.arange(2, 4):
        got = [yb.tolist() for _, yb in data.DataLoader(x, y, 4, rng=seed)]
        ref = [yb.tolist() for _, yb in data.DataLoader(x, y, 4, rng=int(seed))]
        assert got == ref
    for bad in (True, np.bool_(False), 1.0, -1):
        with pytest.raises(ValueError, match="rng must be a Generator .* or an int seed >= 0"):
            data.DataLoader(x, y, 4, rng=bad)


def test_dataloader_takes_a_numpy_integer_batch_size():
    """A batch size from a NumPy grid (np.int64) is an int >= 1 like any other; floats and
    bools are still refused."""
    import numpy as np
    from minidl.data import DataLoader
    x, y = np.arange(10).reshape(10, 1), np.arange(10)
    for batch_size in np.array([4, 3]):
        loader = DataLoader(x, y, batch_size, shuffle=False)
        assert len(loader) == -(-10 // int(batch_size))
        assert type(loader.batch_size) is int
        assert [len(yb) for _, yb in loader][0] == int(batch_size)
    for bad in (4.0, True, np.float64(4)):
        with pytest.raises(ValueError, match="batch_size must be an int"):
            DataLoader(x, y, bad)
