"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al., "The MNIST database").

An IDX file is a big-endian header followed by the raw array in C order::

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4 * d bytes each dimension as a big-endian uint32
    the data    prod(dims) items of the type, big-endian

so MNIST images are magic 0x00000803 (uint8, 3 dims: N, 28, 28) and labels 0x00000801
(uint8, 1 dim: N). The published files are gzip-compressed; ``read_idx`` decompresses
them when the first two bytes are gzip's magic 0x1f 0x8b. Parsing runs on the host
(``backend.host()``); the result is a host NumPy array.
"""
import gzip
import os
import zlib

from .. import backend

__all__ = ["read_idx", "IDXFormatError"]

_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXFormatError(ValueError):
    """The bytes are not a well-formed IDX file."""


def _parse(raw, where):
    """Parse the bytes of an (uncompressed) IDX file into a host array."""
    np = backend.host()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{where}: not an IDX file (the first two bytes must be 0x00 0x00, "
                             f"got {raw[:2].hex() or 'nothing'})")
    code, ndim = raw[2], raw[3]
    if code not in _TYPES:
        raise IDXFormatError(f"{where}: unknown IDX type code 0x{code:02x}; expected one of "
                             + ", ".join(f"0x{c:02x}" for c in _TYPES))
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"{where}: header says {ndim} dimensions but the file has only "
                             f"{len(raw)} bytes")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)  # (ndim,)
    shape = tuple(int(d) for d in dims)
    dtype = np.dtype(_TYPES[code])
    count = 1
    for d in shape:
        count *= d
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        raise IDXFormatError(f"{where}: shape {shape} of {dtype.name} needs {expected} bytes, "
                             f"the file has {len(raw)} (truncated or corrupted)")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)  # (prod(shape),)
    return data.reshape(shape).astype(dtype.newbyteorder("="))  # native byte order, a copy


def read_idx(source):
    """Read an IDX file, gzip-compressed or not, into a host NumPy array.

    Args:
        source: a path, or bytes holding the file's contents.

    Returns:
        host array of the shape in the header (e.g. (60000, 28, 28) uint8 for MNIST
        training images, (60000,) uint8 for its labels), in native byte order.

    Raises:
        IDXFormatError: bad magic, unknown type, a size that does not match the header, or
            a damaged gzip stream (truncated, bad CRC, corrupted deflate data).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw, where = bytes(source), "IDX bytes"
    else:
        where = os.fspath(source)
        with open(where, "rb") as f:
            raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # bad CRC, truncated, bad deflate
            raise IDXFormatError(f"{where}: corrupted gzip stream ({type(err).__name__}: "
                                 f"{err}); the file is damaged, delete it and download "
                                 "it again") from None
    return _parse(raw, where)
