"""The IDX file reader (the format of MNIST and Fashion-MNIST), plain or ``.gz``."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth.errors import GradHealthError

__all__ = ["IDXFormatError", "read_idx"]


class IDXFormatError(GradHealthError, ValueError):
    """An IDX file exists but is not a valid IDX file of the expected kind (bad magic
    number, wrong dimensions, truncated, corrupt compression). The message names the file."""


# IDX type codes (third byte of the magic number) -> numpy dtype, big-endian.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise IDXFormatError(
                f"{path}: cannot decompress ({type(exc).__name__}: {exc}). The file is "
                "truncated or corrupt; replace it with a fresh copy."
            ) from exc
    return path.read_bytes()


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``) into a numpy array.

    Checks the magic number (two zero bytes, a known type code, the number of
    dimensions), that ``ndim`` matches when given, and that the payload holds exactly as
    many items as the header announces. Any mismatch raises :class:`IDXFormatError`
    naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(
            f"{path}: {len(data)} bytes, too short for an IDX header; the file is truncated."
        )
    zero, type_code, dims = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise IDXFormatError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000TTNN with a "
            f"type code TT in {sorted(f'{c:02x}' for c in _IDX_DTYPES)}. This is not an IDX "
            "file (or it is compressed without a .gz suffix)."
        )
    if ndim is not None and dims != ndim:
        raise IDXFormatError(
            f"{path}: IDX file has {dims} dimension(s); expected {ndim} "
            f"(magic 0x{data[:4].hex()})."
        )
    header_len = 4 + 4 * dims
    if len(data) < header_len:
        raise IDXFormatError(
            f"{path}: header announces {dims} dimensions but the file ends after "
            f"{len(data)} bytes; the file is truncated."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header_len
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says (corrupt)"
        raise IDXFormatError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {got}; the file is {what}."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)
