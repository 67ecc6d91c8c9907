"""Datasets by name: ``load(name, split)`` and the offline default ``load_default(split)``.

=================  =======================  ===============================  =============
name               function                 x (uint8, NCHW)                  classes
=================  =======================  ===============================  =============
``mnist``          ``mnist``                (60000 | 10000, 1, 28, 28)       10
``fashion-mnist``  ``fashion_mnist``        (60000 | 10000, 1, 28, 28)       10
``cifar10``        ``cifar10``              (50000 | 10000, 3, 32, 32)       10
``cifar100``       ``cifar100``             (50000 | 10000, 3, 32, 32)       100 (or 20)
``svhn``           ``svhn``                 (73257 | 26032, 3, 32, 32)       10
``mnist-small``    ``bundled_mnist``        (10000 | 2000, 1, 28, 28)        10
=================  =======================  ===============================  =============

Every loader returns ``(x, y)`` as host arrays: x uint8 0..255 and y int64 labels; turn x
into floats with ``transforms.normalise`` and hand both to ``DataLoader``.

``load_default`` is what code uses when the user configured nothing: full MNIST when a
verified copy is already on disk (``MINIDL_DATA`` or the cache; it never downloads), else
the bundled subset, so it always works offline.
"""
from .bundled import bundled_mnist
from .cifar import cifar10, cifar100
from .download import find
from .mnist import MNIST_FILES, fashion_mnist, mnist
from .svhn import svhn

__all__ = ["load", "load_default", "default_dataset", "DATASETS"]

DATASETS = {"mnist": mnist, "fashion-mnist": fashion_mnist, "cifar10": cifar10,
            "cifar100": cifar100, "svhn": svhn, "mnist-small": bundled_mnist}


def load(name, split="train", **kwargs):
    """Load a dataset by name.

    Args:
        name: one of ``DATASETS`` (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
            ``"cifar100"``, ``"svhn"``, ``"mnist-small"``); case and ``_``/``-`` are ignored.
        split: ``"train"`` or ``"test"``.
        **kwargs: passed to the loader (``download=False``; ``label="coarse"`` for CIFAR-100).

    Returns:
        (x, y): host arrays, x uint8 (N, C, H, W), y int64 (N,).
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key](split, **kwargs)


def default_dataset():
    """``"mnist"`` when all four verified MNIST files are on disk, else ``"mnist-small"``."""
    files = [f for pair in MNIST_FILES.values() for f in pair]
    return "mnist" if all(find(f) is not None for f in files) else "mnist-small"


def load_default(split="train"):
    """The dataset used when nothing is configured; never touches the network.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        (x, y) of ``mnist`` or ``bundled_mnist``: uint8 (N, 1, 28, 28) and int64 (N,).
    """
    if default_dataset() == "mnist":
        return mnist(split, download=False)
    return bundled_mnist(split)
