"""Opening a user's ``.npy`` file: memory-mapped (nothing read yet), never unpickled, one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.errors import FramecastError


def map_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """The array in ``path``, memory-mapped read-only; ``what`` names it in the errors."""
    file = Path(path)
    if not file.is_file():
        raise FramecastError(f"{file}: {what} not found")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FramecastError(f"{file}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise FramecastError(f"{file}: holds {type(array).__name__}, not one array")
    return array
