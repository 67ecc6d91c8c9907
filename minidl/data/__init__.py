"""Datasets, mini-batches and input transforms.

Loaders return ``(x, y)`` as host arrays, x uint8 NCHW (0..255) and y int64 labels::

    from minidl import data
    x, y = data.mnist("train")                 # (60000, 1, 28, 28) uint8, (60000,) int64
    x = data.normalise(x)                      # float32 in [0, 1]
    for xb, yb in data.DataLoader(x, y, 128, rng=minidl.default_rng(0)):
        ...                                    # batches on the active device

Files are looked up in ``$MINIDL_DATA/<dataset>/`` (a folder of the original files, laid
out like ``mnist/train-images-idx3-ubyte.gz``), then in ``$XDG_CACHE_HOME/minidl`` or
``~/.cache/minidl``, then downloaded from the authors' mirrors; every file is checked
against its published MD5. ``load_default()`` always works offline: it falls back to a
10,000-image MNIST subset shipped with the package (``bundled_mnist``).
"""
from .loader import DataLoader
from .download import DataNotFoundError, RemoteFile, fetch, data_home, cache_home
from .idx import read_idx, IDXFormatError
from .mnist import mnist, fashion_mnist, MNIST_CLASSES, FASHION_MNIST_CLASSES
from .cifar import cifar10, cifar100, UnsafePickleError, CifarFormatError, CIFAR10_CLASSES
from .mat5 import read_mat5, MatFileError
from .svhn import svhn
from .bundled import bundled_mnist
from .registry import load, load_default, default_dataset, DATASETS
from .transforms import (to_float, normalise, Standardise, PCAWhiten, ZCAWhiten, random_crop,
                         random_hflip)
from . import transforms

__all__ = ["DataLoader", "DataNotFoundError", "RemoteFile", "fetch", "data_home", "cache_home",
           "read_idx", "IDXFormatError", "mnist", "fashion_mnist", "MNIST_CLASSES",
           "FASHION_MNIST_CLASSES", "cifar10", "cifar100", "UnsafePickleError", "CifarFormatError",
           "CIFAR10_CLASSES", "read_mat5", "MatFileError", "svhn", "bundled_mnist", "load",
           "load_default", "default_dataset", "DATASETS", "to_float", "normalise",
           "Standardise", "PCAWhiten", "ZCAWhiten", "random_crop", "random_hflip",
           "transforms"]
