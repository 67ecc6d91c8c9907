"""CIFAR-10 and CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny
Images", 2009): 32x32 colour images, 50,000 for training and 10,000 for testing.

The "python version" tarballs hold pickled dicts:

* ``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5``,
  ``test_batch`` (each ``{b"data": uint8 (10000, 3072), b"labels": [int] * 10000, ...}``)
  and ``batches.meta`` (``b"label_names"``);
* ``cifar-100-python.tar.gz`` -> ``cifar-100-python/train``, ``test`` (``b"data"``,
  ``b"fine_labels"``, ``b"coarse_labels"``) and ``meta`` (``b"fine_label_names"``,
  ``b"coarse_label_names"``).

Each row of ``data`` is 1024 red, then 1024 green, then 1024 blue values, each a 32x32
image in row-major order, so ``data.reshape(N, 3, 32, 32)`` is already NCHW.

Unpickling can run arbitrary code: a pickle may name any importable callable (such as
``os.system``) and ask for it to be called. ``SafeUnpickler`` refuses every global except
the few a CIFAR batch needs, so a tampered file fails with ``UnsafePickleError`` instead:

* ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in NumPy 2), ``numpy.ndarray``
  and ``numpy.dtype``: how a NumPy array pickles (make an empty array, then ``BUILD`` it
  from its state: shape, dtype, raw bytes). Object dtypes are refused, because their
  items would be arbitrary Python objects rather than raw bytes.
* ``_codecs.encode``, only with the ``latin1`` encoding: Python 3 writes ``bytes`` in a
  protocol-2 pickle as ``_codecs.encode(text, "latin1")``. The published files were written
  by Python 2 and do not need it; files written in the same format today do.
* ``numpy.core.numeric._frombuffer`` (``numpy._core`` in NumPy 2): how pickle protocol 5
  (Python 3.8's default for NumPy arrays) writes an array, as raw bytes with a dtype,
  shape and order. It is answered by a checked stand-in that accepts only a byte buffer,
  a plain dtype, a tuple of sizes and an order of ``C``, ``F`` or ``K``.

A batch written by current Python has ``str`` keys (``"data"``, ``"labels"``) where the
published files have ``bytes`` (``b"data"``); both are read.

A damaged file (truncated, bytes flipped, not a pickle at all) raises
``CifarFormatError`` naming the file, whatever the unpickler tripped over; so does a batch
whose labels are not integers in 0..K-1 (an extracted folder is read without an MD5
check, so this is the only guard on its labels).

Where to find the files: an extracted folder ``<folder>/cifar-10-batches-py/`` (as other
libraries leave it) is read directly; otherwise ``<folder>/cifar-10-python.tar.gz`` is
found or downloaded (``download.fetch``, MD5-checked) and its members are read straight
from the tarball, so nothing is extracted. ``<folder>`` is ``$MINIDL_DATA`` or the cache.
"""
import io
import os
import pickle
import tarfile
import zlib

from .. import backend
from .download import RemoteFile, fetch, search_folders

__all__ = ["cifar10", "cifar100", "CIFAR10_FILE", "CIFAR100_FILE", "SafeUnpickler",
           "UnsafePickleError", "CifarFormatError", "safe_load_pickle", "CIFAR10_CLASSES"]

_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

CIFAR10_FILE = RemoteFile("cifar-10-python.tar.gz", "", "c58f30108f718f92721af3b95e74349a",
                          tuple(m + "cifar-10-python.tar.gz" for m in _MIRRORS), "CIFAR-10")
CIFAR100_FILE = RemoteFile("cifar-100-python.tar.gz", "", "eb9058c3a382ffc7106e4002c42a8d85",
                           tuple(m + "cifar-100-python.tar.gz" for m in _MIRRORS), "CIFAR-100")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR batch never needs; it was not loaded."""


class CifarFormatError(ValueError):
    """A CIFAR batch file is damaged or is not a CIFAR batch (safe, but unreadable)."""


def _latin1_encode(text, encoding="utf-8"):
    """``_codecs.encode`` restricted to the one use protocol-2 pickles make of it."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode is allowed only as encode(str, 'latin1'), "
                                f"got encoding {encoding!r}")
    return text.encode("latin1")


def _plain_dtype(*args, **kwargs):
    """``numpy.dtype`` that refuses object dtypes (their items would be arbitrary objects)."""
    dtype = backend.host().dtype(*args, **kwargs)
    if dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy dtype {dtype!r}: it holds Python objects")
    return dtype


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    """NumPy's protocol-5 array constructor, checking every argument a pickle passes."""
    np = backend.host()
    if not isinstance(buf, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise UnsafePickleError(f"_frombuffer expects a byte buffer, got {type(buf).__name__}")
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"_frombuffer expects a plain numpy dtype, got {dtype!r}")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UnsafePickleError(f"_frombuffer expects a tuple of sizes, got {shape!r}")
    if order not in ("C", "F", "K"):
        raise UnsafePickleError(f"_frombuffer expects order 'C', 'F' or 'K', got {order!r}")
    array = np.frombuffer(bytes(buf), dtype=dtype)  # (size,) a read-only view of a copy
    if order == "K" and axis_order is not None:
        if sorted(axis_order) != list(range(len(shape))):
            raise UnsafePickleError(f"_frombuffer: bad axis order {axis_order!r}")
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order="C" if order == "K" else order)


def _allowed_globals():
    """{(module, name): object} for the globals a CIFAR batch may name."""
    np = backend.host()
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return {("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): _plain_dtype,
            ("_codecs", "encode"): _latin1_encode,
            ("numpy.core.numeric", "_frombuffer"): _frombuffer,
            ("numpy._core.numeric", "_frombuffer"): _frombuffer}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, bytes, numbers and NumPy arrays only.

    ``find_class`` is the one place a pickle can reach code; it answers only the globals
    listed in this module's docstring and raises ``UnsafePickleError`` for everything else.
    """

    def __init__(self, file, source="pickle"):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global '{module}.{name}'. A CIFAR batch "
                "holds only dicts, lists, bytes, numbers and NumPy arrays, so this file is "
                "not a genuine batch (it may try to run code); delete it and download again")
        return allowed[(module, name)]


def safe_load_pickle(data, source="pickle"):
    """Unpickle ``data`` (bytes) with ``SafeUnpickler``; ``source`` names it in errors.

    Raises:
        UnsafePickleError: the pickle names a global outside the allowed few.
        CifarFormatError: the bytes are not a readable pickle (damaged or another file).
    """
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # whatever a damaged stream makes the unpickler trip over
        raise CifarFormatError(
            f"{source}: not a readable CIFAR batch, the pickle is damaged "
            f"({type(err).__name__}: {err}); delete it and download it again") from None


def _str_keys(batch):
    """The batch dict with ``bytes`` keys (Python 2 files) decoded to ``str``."""
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _batch_arrays(batch, label_key, classes, source):
    """(x, y) from one unpickled batch dict: x uint8 (n, 3, 32, 32), y int64 (n,) in
    0..classes-1.

    Keys may be ``bytes`` (the published files) or ``str`` (written by Python 3).
    """
    np = backend.host()
    label = label_key.decode("latin1") if isinstance(label_key, bytes) else label_key
    if isinstance(batch, dict):
        batch = _str_keys(batch)
    if not isinstance(batch, dict) or "data" not in batch or label not in batch:
        raise CifarFormatError(f"{source}: expected a dict with 'data' and {label!r} (as str "
                               f"or bytes keys), got {type(batch).__name__}")
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[label])  # (n,) as stored
    except (TypeError, ValueError) as err:
        raise CifarFormatError(f"{source}: 'data' or {label!r} is not an array ({err})") \
            from None
    if labels.size and labels.dtype.kind not in "iu":
        raise CifarFormatError(f"{source}: {label!r} should be integers, got {labels.dtype}")
    y = labels.astype(np.int64)  # (n,)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CifarFormatError(f"{source}: 'data' should be uint8 (n, 3072), got "
                               f"{data.dtype} {data.shape}")
    x = data.reshape(-1, 3, 32, 32)  # (n, 3, 32, 32) NCHW: R, G, B planes, rows in order
    if y.shape != (x.shape[0],):
        raise CifarFormatError(f"{source}: {x.shape[0]} images but labels of shape {y.shape}")
    bad = np.flatnonzero((y < 0) | (y >= classes))  # indices of labels outside the classes
    if bad.size:
        raise CifarFormatError(f"{source}: label {y[bad[0]]} at index {bad[0]} ({bad.size} "
                               f"such); expected 0..{classes - 1} for {label!r}")
    return x, y


def _read_members(folder, tarball, members, download, data_dir=None):
    """{member: (bytes, where)} from the extracted ``folder`` if complete, else from the
    tarball; ``where`` names the file (or the tarball and member) in errors."""
    for base, _ in search_folders("", data_dir):
        paths = [os.path.join(base, folder, m) for m in members]
        if all(os.path.isfile(p) for p in paths):
            out = {}
            for m, p in zip(members, paths):
                with open(p, "rb") as f:
                    out[m] = (f.read(), p)
            return out
    path = fetch(tarball, download, data_dir)
    wanted = {f"{folder}/{m}": m for m in members}
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    out[wanted[info.name]] = (tar.extractfile(info).read(),
                                              f"{path} (member {info.name})")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise CifarFormatError(f"{path}: damaged tarball ({type(err).__name__}: {err}); "
                               "delete it and download it again") from None
    missing = [m for m in members if m not in out]
    if missing:
        names = ", ".join(f"{folder}/{m}" for m in missing)
        raise CifarFormatError(f"{path}: the tarball lacks {names}")
    return out


def _load(folder, tarball, members, label_key, classes, download, data_dir=None):
    """Concatenate the batches named by ``members`` into (x, y), labels in 0..classes-1."""
    np = backend.host()
    raw = _read_members(folder, tarball, members, download, data_dir)
    xs, ys = [], []
    for m in members:
        batch, source = raw[m]
        x, y = _batch_arrays(safe_load_pickle(batch, source), label_key, classes, source)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)  # (N, 3, 32, 32), (N,)


def cifar10(split="train", download=True, data_dir=None):
    """CIFAR-10: 10 classes of 32x32 colour images.

    Args:
        split: ``"train"`` (data_batch_1..5, 50,000 images) or ``"test"`` (10,000).
        download: fetch the tarball when missing (163 MB, MD5-checked); False stays offline.
        data_dir: the folder searched first (instead of ``MINIDL_DATA``), or None.

    Returns:
        (x, y): host arrays, x uint8 (N, 3, 32, 32) NCHW, y int64 (N,) in 0..9 (names in
        ``CIFAR10_CLASSES``).

    Raises:
        DataNotFoundError: the files are neither on disk nor downloadable.
        UnsafePickleError: a batch names a global that a genuine batch never needs.
        CifarFormatError: a batch is damaged, not a CIFAR batch, or has a label outside
            0..9 (the error names the file).
    """
    members = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in members:
        raise ValueError(f"cifar10: split must be 'train' or 'test', got {split!r}")
    return _load("cifar-10-batches-py", CIFAR10_FILE, members[split], b"labels", 10,
                 download, data_dir)


def cifar100(split="train", label="fine", download=True, data_dir=None):
    """CIFAR-100: 100 fine classes grouped into 20 coarse ones, 32x32 colour images.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        label: ``"fine"`` (0..99) or ``"coarse"`` (0..19).
        download: fetch the tarball when missing (161 MB, MD5-checked); False stays offline.
        data_dir: the folder searched first (instead of ``MINIDL_DATA``), or None.

    Returns:
        (x, y): host arrays, x uint8 (N, 3, 32, 32) NCHW, y int64 (N,).

    Raises:
        DataNotFoundError: the files are neither on disk nor downloadable.
        UnsafePickleError: the pickle names a global that a genuine file never needs.
        CifarFormatError: the file is damaged, not a CIFAR batch, or has a label outside
            0..99 (fine) or 0..19 (coarse); the error names the file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"cifar100: split must be 'train' or 'test', got {split!r}")
    if label not in ("fine", "coarse"):
        raise ValueError(f"cifar100: label must be 'fine' or 'coarse', got {label!r}")
    key, classes = (b"fine_labels", 100) if label == "fine" else (b"coarse_labels", 20)
    return _load("cifar-100-python", CIFAR100_FILE, [split], key, classes, download,
                 data_dir)
