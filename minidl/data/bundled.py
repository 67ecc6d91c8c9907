"""The offline default: a real, class-balanced subset of MNIST shipped inside the package.

``bundled/mnist_small.npz`` (about 2 MB) holds 10,000 training images (1,000 per digit)
and 2,000 test images (200 per digit) copied unchanged from the original MNIST files,
with their indices in those files. It lets lessons, tests and the command line train on
real digits with no download and no ``MINIDL_DATA``. ``make_bundled.py`` rebuilds it;
``bundled/LICENSE-MNIST.txt`` gives its licence (CC BY-SA 3.0) and citation.

The file is read with ``allow_pickle=False``, so loading it can never run code.
"""
import importlib.resources

from .. import backend

__all__ = ["bundled_mnist", "BUNDLED_MNIST"]

BUNDLED_MNIST = "mnist_small.npz"


def bundled_mnist(split="train"):
    """The bundled MNIST subset.

    Args:
        split: ``"train"`` (10,000 images, 1,000 per class) or ``"test"`` (2,000, 200 each).

    Returns:
        (x, y): host arrays, x uint8 (N, 1, 28, 28) with values 0..255, y int64 (N,) in 0..9.
    """
    if split not in ("train", "test"):
        raise ValueError(f"bundled_mnist: split must be 'train' or 'test', got {split!r}")
    np = backend.host()
    resource = importlib.resources.files(__package__) / "bundled" / BUNDLED_MNIST
    with importlib.resources.as_file(resource) as path:
        with np.load(path, allow_pickle=False) as arrays:
            x = arrays[f"x_{split}"]  # (N, 1, 28, 28) uint8
            y = arrays[f"y_{split}"].astype(np.int64)  # (N,)
    return x, y
