"""A small reader for numeric arrays in MATLAB level-5 MAT-files (the ``-v5``/``-v7`` format).

Layout (MathWorks, "MAT-File Format", the Level 5 chapter)::

    128-byte header   116 bytes text, 8 bytes subsystem offset, uint16 version 0x0100,
                      2 bytes endian indicator: b"IM" little-endian, b"MI" big-endian
    data elements     each an 8-byte tag (uint32 type, uint32 byte count) and its data,
                      padded to a multiple of 8 bytes. In the "small element" form the
                      tag's upper 16 bits hold the byte count (1..4) and the data sits in
                      the tag's second word.

A variable is an ``miMATRIX`` element (type 14), possibly wrapped in an ``miCOMPRESSED``
element (type 15, a zlib stream holding the ``miMATRIX`` element, not padded). Inside a
numeric ``miMATRIX`` come four sub-elements: array flags (class in the low byte, 0x08
complex, 0x02 logical), dimensions (int32), the name (int8 text) and the real part, whose
stored type may be narrower than the class (a double matrix of small integers is stored
as uint8). The data is in column-major (Fortran) order.

Only numeric, real, full (non-sparse) matrices are supported: enough for SVHN's
``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1). Cells, structs, sparse, char and complex
variables are skipped unless asked for by name, in which case a ``MatFileError`` says so.
MAT v7.3 files are HDF5 and are refused with a clear message. Parsing runs on the host.
"""
import os
import zlib

from .. import backend

__all__ = ["read_mat5", "MatFileError"]

_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8",
             12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4",
               14: "i8", 15: "u8"}
_MX_NAMES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse"}


class MatFileError(ValueError):
    """The file is not a MAT v5 file, or holds a variable this reader does not support."""


class _Reader:
    """Walks the data elements of one buffer with a fixed byte order."""

    def __init__(self, raw, order, where):
        self.raw, self.order, self.where = raw, order, where

    def tag(self, pos):
        """(type, nbytes, data_start, next_pos) of the element starting at ``pos``."""
        np = backend.host()
        if pos + 8 > len(self.raw):
            raise MatFileError(f"{self.where}: truncated element tag at byte {pos}")
        first, second = np.frombuffer(self.raw, self.order + "u4", 2, pos)  # (2,)
        first, second = int(first), int(second)
        if first >> 16:  # small data element: up to 4 bytes packed into the tag
            if first >> 16 > 4:
                raise MatFileError(f"{self.where}: corrupted small element at byte {pos} "
                                   f"(claims {first >> 16} bytes, at most 4 fit)")
            return first & 0xFFFF, first >> 16, pos + 4, pos + 8
        end = pos + 8 + second
        if end > len(self.raw):
            raise MatFileError(f"{self.where}: element at byte {pos} claims {second} bytes, "
                               f"past the end of the data ({len(self.raw)} bytes)")
        padded = end if first == _MI_COMPRESSED else end + (-end) % 8
        return first, second, pos + 8, min(padded, len(self.raw))

    def numbers(self, pos):
        """(host array, next_pos) of a numeric element at ``pos``."""
        np = backend.host()
        mi, nbytes, start, nxt = self.tag(pos)
        if mi not in _MI_TYPES:
            raise MatFileError(f"{self.where}: unsupported data type {mi} at byte {pos}")
        dtype = np.dtype(self.order + _MI_TYPES[mi])
        count = nbytes // dtype.itemsize
        return np.frombuffer(self.raw, dtype, count, start), nxt  # (count,)

    def matrix(self, start, end, wanted):
        """(name, array or None) of the miMATRIX whose contents span [start, end)."""
        np = backend.host()
        if start == end:  # an empty matrix has no sub-elements at all
            return "", None
        flags, pos = self.numbers(start)  # (2,) uint32: class and flags, nzmax
        mx = int(flags[0]) & 0xFF
        bits = (int(flags[0]) >> 8) & 0xFF
        dims, pos = self.numbers(pos)  # (ndim,) int32
        name_codes, pos = self.numbers(pos)  # (len,) int8
        name = bytes(name_codes.astype(np.uint8)).decode("ascii", "replace")
        if wanted is not None and name not in wanted:
            return name, None
        kind = _MX_NAMES.get(mx, f"class {mx}")
        if mx not in _MX_CLASSES or bits & 0x08:
            if wanted is None:
                return name, None
            what = "complex" if bits & 0x08 else kind
            raise MatFileError(f"{self.where}: variable {name!r} is {what}; this reader "
                               "supports real numeric matrices only")
        real, pos = self.numbers(pos)  # (prod(dims),) in the stored type
        shape = tuple(int(d) for d in dims)
        count = 1
        for d in shape:
            count *= d
        if real.size != count:
            raise MatFileError(f"{self.where}: variable {name!r} has dims {shape} but "
                               f"{real.size} values")
        dtype = np.dtype(_MX_CLASSES[mx])
        if bits & 0x02:
            dtype = np.dtype(bool)
        return name, real.astype(dtype).reshape(shape, order="F")  # MATLAB's dims, a copy


def read_mat5(path, names=None):
    """Read the real numeric matrices of a MAT v5 file.

    Args:
        path: the ``.mat`` file.
        names: optional iterable of variable names to read; others are skipped. When
            given, each must exist and be supported.

    Returns:
        dict {name: host array} with MATLAB's shape (column-major order preserved,
        e.g. SVHN's ``X`` is (32, 32, 3, N)) and the class's dtype.

    Raises:
        MatFileError: not a MAT v5 file, corrupted (truncated, bad compressed data, sizes
            that do not add up), or a wanted variable unsupported or absent.
    """
    where = os.fspath(path)
    try:
        return _read(where, names)
    except MatFileError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError) as err:
        # sizes and counts read from a damaged file that do not fit together
        raise MatFileError(f"{where}: corrupted MAT-file ({type(err).__name__}: {err}); "
                           "delete it and download it again") from None


def _read(where, names):
    """``read_mat5`` without the wrapper that turns every parse failure into MatFileError."""
    np = backend.host()
    with open(where, "rb") as f:
        raw = f.read()
    if len(raw) < 128:
        raise MatFileError(f"{where}: too short for a MAT-file header ({len(raw)} bytes)")
    if raw[:4] == b"\x89HDF" or raw[512:516] == b"\x89HDF" or b"MATLAB 7.3" in raw[:116]:
        raise MatFileError(f"{where}: a MAT v7.3 (HDF5) file; this reader handles v5 only")
    if raw[126:128] == b"IM":
        order = "<"
    elif raw[126:128] == b"MI":
        order = ">"
    else:
        raise MatFileError(f"{where}: not a MAT v5 file (no endian indicator at byte 126)")
    version = int(np.frombuffer(raw, order + "u2", 1, 124)[0])
    if version != 0x0100:
        raise MatFileError(f"{where}: MAT version 0x{version:04x}, expected 0x0100")
    wanted = None if names is None else set(names)
    out = {}
    top = _Reader(raw, order, where)
    pos = 128
    while pos < len(raw):
        mi, nbytes, start, nxt = top.tag(pos)
        reader, lo, hi = top, start, start + nbytes
        if mi == _MI_COMPRESSED:
            try:
                inner = zlib.decompress(raw[start:start + nbytes])
            except zlib.error as err:
                raise MatFileError(f"{where}: corrupted compressed element at byte {pos} "
                                   f"({err})") from None
            reader = _Reader(inner, order, where)
            mi, nbytes, lo, _ = reader.tag(0)
            hi = lo + nbytes
        if mi == _MI_MATRIX:
            name, array = reader.matrix(lo, hi, wanted)
            if array is not None:
                out[name] = array
        pos = nxt
    if wanted is not None and wanted - set(out):
        raise MatFileError(f"{where}: no numeric variable(s) named "
                           f"{sorted(wanted - set(out))} in the file")
    return out
