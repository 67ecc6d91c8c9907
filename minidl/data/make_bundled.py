"""Rebuild ``bundled/mnist_small.npz``, the offline MNIST subset shipped with minidl.

Run ``python -m minidl.data.make_bundled`` with ``MINIDL_DATA`` pointing at a folder that
holds the original ``mnist/*.gz`` files (or with network access to download them).

The subset is class-balanced and deterministic: from each digit class it draws, without
replacement and with ``default_rng(SEED)``, ``TRAIN_PER_CLASS`` training images and
``TEST_PER_CLASS`` test images, then keeps the chosen images in their original order. The
indices into the original files are stored beside the images (``train_index``,
``test_index``), so anyone can check the subset against the real files.
"""
import argparse
import os

from .. import backend
from .mnist import mnist

__all__ = ["build", "main", "SEED", "TRAIN_PER_CLASS", "TEST_PER_CLASS"]

SEED = 20231
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200


def _balanced_indices(y, per_class, rng):
    """Sorted indices of ``per_class`` random examples of each label in y (N,)."""
    np = backend.host()
    chosen = [rng.choice(np.flatnonzero(y == k), size=per_class, replace=False)
              for k in range(10)]  # 10 arrays of (per_class,)
    return np.sort(np.concatenate(chosen)).astype(np.int32)  # (10 * per_class,)


def build(download=False):
    """The arrays of the bundle, from the real MNIST files.

    Args:
        download: allow downloading the originals when no local copy is found.

    Returns:
        dict of host arrays: x_train uint8 (10000, 1, 28, 28), y_train uint8 (10000,),
        train_index int32 (10000,), and x_test, y_test, test_index with 2000 rows.
    """
    np = backend.host()
    rng = backend.default_rng(SEED)
    out = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        x, y = mnist(split, download=download)  # (N, 1, 28, 28) uint8, (N,) int64
        index = _balanced_indices(y, per_class, rng)  # (10 * per_class,)
        out[f"x_{split}"] = x[index]  # (10 * per_class, 1, 28, 28)
        out[f"y_{split}"] = y[index].astype(np.uint8)  # (10 * per_class,)
        out[f"{split}_index"] = index
    return out


def main(argv=None):
    """Write the bundle (default: this package's ``bundled/mnist_small.npz``)."""
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled",
                           "mnist_small.npz")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=default, help="output .npz path")
    parser.add_argument("--download", action="store_true", help="allow downloading MNIST")
    args = parser.parse_args(argv)
    arrays = build(download=args.download)
    backend.host().savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
