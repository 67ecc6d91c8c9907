"""MNIST and Fashion-MNIST: 28x28 grey-scale images in 10 classes, read from the IDX files.

* MNIST (LeCun, Cortes and Burges, "The MNIST database of handwritten digits"): 60,000
  training and 10,000 test digits, derived from NIST SD-3 and SD-1; CC BY-SA 3.0.
* Fashion-MNIST (Xiao, Rasul and Vollgraf, arXiv:1708.07747, 2017): the same format with
  10 kinds of clothing, 6,000 training and 1,000 test images per class; MIT licence,
  Copyright 2017 Zalando SE.

``mnist(split)`` and ``fashion_mnist(split)`` return ``(x, y)`` as host NumPy arrays:
``x`` uint8 (N, 1, 28, 28) in NCHW with values 0..255 and ``y`` int64 (N,) in 0..9.
``transforms.normalise`` turns ``x`` into floats; ``DataLoader`` moves both to the device.
The files are found or downloaded by ``download.fetch`` (``MINIDL_DATA/mnist/...``,
``MINIDL_DATA/fashion-mnist/...``, then the user cache, then the mirrors below), each
checked against its published MD5.
"""
from .. import backend
from .download import RemoteFile, fetch
from .idx import read_idx

__all__ = ["mnist", "fashion_mnist", "MNIST_FILES", "FASHION_MNIST_FILES",
           "MNIST_CLASSES", "FASHION_MNIST_CLASSES"]

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


def _files(dataset, folder, mirrors, md5s):
    """{split: (images RemoteFile, labels RemoteFile)} from {file name: md5}."""
    def remote(name):
        return RemoteFile(name, folder, md5s[name], tuple(m + name for m in mirrors), dataset)
    return {"train": (remote("train-images-idx3-ubyte.gz"), remote("train-labels-idx1-ubyte.gz")),
            "test": (remote("t10k-images-idx3-ubyte.gz"), remote("t10k-labels-idx1-ubyte.gz"))}


MNIST_FILES = _files("MNIST", "mnist", _MNIST_MIRRORS, {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
})
FASHION_MNIST_FILES = _files("Fashion-MNIST", "fashion-mnist", _FASHION_MIRRORS, {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
})


def _load(files, name, split, download, data_dir=None):
    """Fetch, verify and parse one split of an IDX dataset."""
    if split not in files:
        raise ValueError(f"{name}: split must be 'train' or 'test', got {split!r}")
    images_file, labels_file = files[split]
    images = read_idx(fetch(images_file, download, data_dir))  # (N, 28, 28) uint8
    labels = read_idx(fetch(labels_file, download, data_dir))  # (N,) uint8
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name} {split}: images {images.shape} and labels {labels.shape} "
                         "do not pair up; the files are not the published ones")
    np = backend.host()
    x = images[:, None, :, :]  # (N, 1, 28, 28) NCHW
    y = labels.astype(np.int64)  # (N,)
    return x, y


def mnist(split="train", download=True, data_dir=None):
    """The MNIST handwritten digits.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        download: fetch missing files from the mirrors (checked by MD5); False stays offline.
        data_dir: the folder holding ``mnist/`` (instead of ``MINIDL_DATA``), or None.

    Returns:
        (x, y): host arrays, x uint8 (N, 1, 28, 28) with values 0..255, y int64 (N,) in 0..9.

    Raises:
        DataNotFoundError: a file is neither on disk nor downloadable (says where to put it).
    """
    return _load(MNIST_FILES, "mnist", split, download, data_dir)


def fashion_mnist(split="train", download=True, data_dir=None):
    """Fashion-MNIST: Zalando's article images, a drop-in replacement for MNIST.

    Args:
        split: ``"train"`` (60,000 images, 6,000 per class) or ``"test"`` (10,000, 1,000 each).
        download: fetch missing files from the mirror (checked by MD5); False stays offline.
        data_dir: the folder holding ``fashion-mnist/`` (instead of ``MINIDL_DATA``), or None.

    Returns:
        (x, y): host arrays, x uint8 (N, 1, 28, 28) with values 0..255, y int64 (N,) in 0..9;
        class names in ``FASHION_MNIST_CLASSES``.

    Raises:
        DataNotFoundError: a file is neither on disk nor downloadable (says where to put it).
    """
    return _load(FASHION_MNIST_FILES, "fashion_mnist", split, download, data_dir)
