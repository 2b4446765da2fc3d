"""The NORB binary matrix format (LeCun, Huang & Bottou 2004; the smallNORB page,
cs.nyu.edu/~ylclab/data/norb-v1.0-small): reading and writing, shared by smallNORB's loader
(:mod:`capsprobe.data.viewpoints`) and synthNORB's generator (:mod:`capsprobe.data.synthnorb`)."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

__all__ = ["NORB_FILES", "NORB_MAGIC", "NorbFormatError", "read_norb", "write_norb"]

NORB_MAGIC: dict[int, np.dtype] = {0x1E3D4C55: np.dtype("<u1"), 0x1E3D4C54: np.dtype("<i4")}  # uint8 matrix, int32 matrix
NORB_FILES = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}


class NorbFormatError(InvalidInputError):
    """A file that is not in the NORB binary matrix format (or not what the data set needs)."""


def read_norb(path: str | Path) -> np.ndarray:
    """Read one NORB binary matrix file (``.mat``, or gzipped ``.mat.gz``).

    Format (the smallNORB page, cs.nyu.edu/~ylclab/data/norb-v1.0-small): little-endian int32 magic
    (0x1E3D4C55: uint8 entries, 0x1E3D4C54: int32), int32 ``ndim``, then ``max(3, ndim)`` int32 dimensions (those
    past ``ndim`` are padding, 1), then the entries in C order.

    Raises:
        NorbFormatError: an unknown magic, a negative or absurd header, or a size that does not match it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # EOFError: click would print "Aborted!" alone
        raise NorbFormatError(f"{path}: {'truncated' if isinstance(exc, EOFError) else 'not'} gzip data "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if len(raw) < 8:
        raise NorbFormatError(f"{path}: {len(raw)} bytes, too short for a NORB header")
    magic, ndim = (int(v) for v in np.frombuffer(raw[:8], "<i4"))
    if magic not in NORB_MAGIC:
        raise NorbFormatError(f"{path}: magic {magic & 0xFFFFFFFF:#x} is not a NORB uint8 (0x1e3d4c55) or int32 "
                              "(0x1e3d4c54) matrix")
    if not 1 <= ndim <= 16:
        raise NorbFormatError(f"{path}: ndim {ndim} out of range")
    head = 8 + 4 * max(3, ndim)
    if len(raw) < head:
        raise NorbFormatError(f"{path}: truncated header")
    dims = [int(v) for v in np.frombuffer(raw[8:head], "<i4")[:ndim]]
    if any(d < 0 for d in dims):
        raise NorbFormatError(f"{path}: negative dimension in {dims}")
    dtype = NORB_MAGIC[magic]
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - head != expected:
        raise NorbFormatError(f"{path}: {len(raw) - head} bytes of data, the header {dims} ({dtype}) says {expected}")
    return np.frombuffer(raw, dtype, offset=head).reshape(dims).copy()


def write_norb(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8 or int32) in the NORB format, atomically (tests build tiny files byte for byte)."""
    array = np.asarray(array)
    kinds = {np.dtype("uint8"): 0x1E3D4C55, np.dtype("int32"): 0x1E3D4C54}
    if array.dtype not in kinds:
        raise NorbFormatError(f"NORB matrices are uint8 or int32, got {array.dtype}")
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    data = np.array([kinds[array.dtype], array.ndim, *dims], "<i4").tobytes() + array.astype(array.dtype.newbyteorder("<")).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
