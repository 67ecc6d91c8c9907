"""``DataLoader``: mini-batches (xb, yb) of an in-memory dataset, reshuffled every epoch.

Stochastic gradient methods visit the training set in random order, one mini-batch at a
time; each epoch draws a fresh permutation of the N examples and cuts it into
ceil(N / B) batches (floor with ``drop_last``), so every example is used once per epoch::

    loader = DataLoader(x, y, batch_size=128, rng=backend.default_rng(0))
    for epoch in range(10):
        for xb, yb in loader:          # xb: (B, ...), yb: (B, ...), on the active device
            ...

The whole dataset is moved to the active device once, on the first iteration (and
again only if the backend is switched), so a GPU epoch does no host-to-device copies of
data; only the permutation (N integers) travels. The permutation is drawn on the host from
the explicit generator, so a seed gives the same batches on NumPy and CuPy. Data keeps its
dtype (uint8 images stay uint8, four times smaller than float32): convert per batch with
``transform``, e.g. ``transform=lambda xb, rng: normalise(xb)``.
"""
import operator

from .. import backend

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate (xb, yb) mini-batches over arrays x and y that share their first axis.

    Args:
        x: inputs (N, ...), a host or device array (or anything ``asarray`` accepts).
        y: targets (N, ...), e.g. int labels (N,) or one-hot (N, K); pass x again for an
            autoencoder.
        batch_size: examples per batch, an int >= 1.
        shuffle: draw a new permutation each epoch; False keeps the stored order.
        rng: host ``Generator`` (``backend.default_rng(seed)``) or an int seed >= 0; None
            means seed 0, so runs are reproducible unless you pass your own generator.
        drop_last: skip the final batch when it is smaller than ``batch_size``.
        transform: optional callable ``transform(xb, rng) -> xb`` applied to every input
            batch on the device (augmentation, normalisation), sharing the loader's rng.
    """

    def __init__(self, x, y, batch_size, shuffle=True, rng=None, drop_last=False,
                 transform=None):
        try:  # Python and NumPy integers (a batch size from a NumPy grid), not floats
            size = None if isinstance(batch_size, bool) else operator.index(batch_size)
        except TypeError:
            size = None
        if size is None or size < 1:
            raise ValueError(f"DataLoader: batch_size must be an int >= 1, got {batch_size!r}")
        batch_size = size
        x = x if backend.is_array(x) else backend.host().asarray(x)
        y = y if backend.is_array(y) else backend.host().asarray(y)
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(f"DataLoader: x and y need a first (example) axis, got shapes "
                             f"{x.shape} and {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"DataLoader: x has {x.shape[0]} examples but y has {y.shape[0]} "
                             f"(shapes {x.shape} and {y.shape}); they must pair up")
        if x.shape[0] == 0:
            raise ValueError("DataLoader: the dataset is empty")
        if drop_last and batch_size > x.shape[0]:
            raise ValueError(f"DataLoader: batch_size {batch_size} > {x.shape[0]} examples "
                             "with drop_last=True would give no batches")
        if transform is not None and not callable(transform):
            raise ValueError(f"DataLoader: transform must be callable(xb, rng), got "
                             f"{type(transform).__name__}")
        rng = self._generator(rng)
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = rng
        self.drop_last = drop_last
        self.transform = transform
        self._device = None  # (backend name, x, y) once moved

    @staticmethod
    def _generator(rng):
        """The host generator for ``rng``: itself, or one seeded by an int >= 0 (NumPy's
        too, not bool), or by 0 for None."""
        np = backend.host()
        if isinstance(rng, np.random.Generator):
            return rng
        if rng is None:
            return backend.default_rng(0)
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
            return backend.default_rng(int(rng))
        raise ValueError(f"DataLoader: rng must be a Generator from backend.default_rng or an "
                         f"int seed >= 0, got {rng!r} ({type(rng).__name__})")

    @property
    def num_examples(self):
        """N, the number of examples."""
        return self.x.shape[0]

    def __len__(self):
        """Number of batches per epoch."""
        N, B = self.num_examples, self.batch_size
        return N // B if self.drop_last else -(-N // B)

    def _on_device(self):
        """x and y on the active backend, moved once (again only after a backend switch)."""
        name = backend.get_backend()
        if self._device is None or self._device[0] != name:
            self._device = (name, backend.asarray(self.x), backend.asarray(self.y))
            # keep the moved copies only, so host memory can be freed
            self.x, self.y = self._device[1], self._device[2]
        return self._device[1], self._device[2]

    def __iter__(self):
        """Yield (xb, yb) for one epoch: (B, ...) slices of x and y on the active device."""
        x, y = self._on_device()
        xp = backend.xp()
        N, B = self.num_examples, self.batch_size
        order = None
        if self.shuffle:
            order = xp.asarray(self.rng.permutation(N))  # (N,) indices, drawn on the host
        for i in range(len(self)):
            lo, hi = i * B, min((i + 1) * B, N)
            if order is None:
                xb, yb = x[lo:hi], y[lo:hi]  # (b, ...) views
            else:
                idx = order[lo:hi]  # (b,)
                xb, yb = x[idx], y[idx]  # (b, ...) copies
            if self.transform is not None:
                xb = self.transform(xb, self.rng)
            yield xb, yb

    def __repr__(self):
        return (f"DataLoader(N={self.num_examples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, batches={len(self)})")
