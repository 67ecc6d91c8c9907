"""SVHN, the Street View House Numbers in the cropped-digit format (Netzer et al., "Reading
Digits in Natural Images with Unsupervised Feature Learning", NIPS workshop 2011).

``train_32x32.mat`` (73,257 digits) and ``test_32x32.mat`` (26,032) are MATLAB v5 files
with ``X`` uint8 (32, 32, 3, N), indexed X(row, column, channel, image), and ``y`` (N, 1)
with labels 1..10, where 10 stands for the digit 0. ``svhn(split)`` returns x uint8
(N, 3, 32, 32) NCHW and y int64 (N,) in 0..9 with 10 mapped to 0, so the label is the
digit. The files are read by ``mat5.read_mat5`` (no SciPy needed) and found or
downloaded by ``download.fetch`` under ``<MINIDL_DATA or cache>/svhn/``. The dataset is
for non-commercial use only; cite the paper above.
"""
from .. import backend
from .download import RemoteFile, fetch
from .mat5 import read_mat5

__all__ = ["svhn", "SVHN_FILES"]

_MIRRORS = ("http://ufldl.stanford.edu/housenumbers/",)


def _remote(name, md5):
    return RemoteFile(name, "svhn", md5, tuple(m + name for m in _MIRRORS), "SVHN")


SVHN_FILES = {"train": _remote("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
              "test": _remote("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")}


def svhn(split="train", download=True, data_dir=None):
    """SVHN cropped digits.

    Args:
        split: ``"train"`` (73,257 images) or ``"test"`` (26,032).
        download: fetch the file when missing (182 MB / 64 MB, MD5-checked); False stays
            offline.
        data_dir: the folder holding ``svhn/`` (instead of ``MINIDL_DATA``), or None.

    Returns:
        (x, y): host arrays, x uint8 (N, 3, 32, 32) NCHW, y int64 (N,) in 0..9 (the digit).

    Raises:
        DataNotFoundError: the file is neither on disk nor downloadable.
        MatFileError: the file lacks ``X`` or ``y`` or is not MAT v5.
    """
    if split not in SVHN_FILES:
        raise ValueError(f"svhn: split must be 'train' or 'test', got {split!r}")
    np = backend.host()
    path = fetch(SVHN_FILES[split], download, data_dir)
    variables = read_mat5(path, names=("X", "y"))
    X, labels = variables["X"], variables["y"]  # (32, 32, 3, N), (N, 1)
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3) or labels.size != X.shape[3]:
        raise ValueError(f"{path}: expected X (32, 32, 3, N) and y (N, 1), got {X.shape} "
                         f"and {labels.shape}")
    x = np.ascontiguousarray(X.transpose(3, 2, 0, 1), dtype=np.uint8)  # (N, 3, 32, 32)
    y = labels.reshape(-1).astype(np.int64)  # (N,)
    y[y == 10] = 0
    return x, y
