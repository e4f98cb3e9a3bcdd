"""Reading IDX files (the MNIST format), gzip-compressed or not, with clear errors."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np
import torch

from ..errors import UserError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> torch.Tensor:
    """Return the array stored in the IDX file at ``path`` as a tensor.

    A truncated or corrupted file is a :class:`UserError` naming the file.
    """
    if not os.path.exists(path):
        raise UserError(f"data file {path} is missing", key_path="data")
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: damaged deflate data
        raise UserError(f"data file {path} is corrupted or truncated ({exc}); reinstall it",
                        key_path="data") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UserError(f"data file {path} is not an IDX file (bad header); reinstall it",
                        key_path="data")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"data file {path} is truncated (incomplete header); reinstall it",
                        key_path="data")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # exact; np.prod wraps around on a bad header
    if len(raw) - header != expected:
        raise UserError(f"data file {path} has {len(raw) - header} data bytes, expected {expected} "
                        f"for shape {shape}: truncated or corrupted; reinstall it", key_path="data")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")).copy())
