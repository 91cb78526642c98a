"""Checks of user input shared by the library, the CLI and the service, each written once.

* :func:`positive_int`: an integer argument (``bool`` is refused: ``True`` is not a count);
* :func:`training_indices`: the inputs of a training set S (non-empty, in range, distinct);
* :func:`finite_params`: network parameters without NaN or infinities (flatness measures);
* :func:`output_path`: a file to write, in a directory that exists;
* :func:`json_safe`: plain JSON data from results (numpy scalars and arrays to Python, NaN and
  infinities to ``None``, which strict JSON lacks).

Each raises :class:`volume.errors.VolumeError` (or the class given) with a message that names
the argument and what to give instead.

>>> positive_int(3, "draws")
3
>>> training_indices([0, 2], 4).tolist()
[0, 2]
>>> json_safe({"p": float("nan"), "n": [1.5, float("inf")]})
{'p': None, 'n': [1.5, None]}
"""

from __future__ import annotations

import math
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from volume.errors import VolumeError


def positive_int(value: Any, name: str, minimum: int = 1, error: type[VolumeError] = VolumeError) -> int:
    """``int(value)`` if it is an integer >= ``minimum``, else ``error`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise error(f"{name} = {value!r} is invalid: give {want}")
    return int(value)


def training_indices(indices: Any, n_inputs: int, what: str = "training indices") -> np.ndarray:
    """The indices of a training set as a sorted-as-given int64 vector: non-empty, within
    0..n_inputs-1, no index twice."""
    idx = np.asarray(indices)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise VolumeError(f"{what} must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64).ravel()
    if idx.size == 0:
        raise VolumeError(f"the training set is empty: give at least one of the {n_inputs} inputs ({what})")
    if idx.min() < 0 or idx.max() >= n_inputs:
        raise VolumeError(f"{what} must lie in 0..{n_inputs - 1} (the input set has {n_inputs} inputs); "
                          f"got {int(idx.min())}..{int(idx.max())}")
    if len(np.unique(idx)) != idx.size:
        raise VolumeError(f"{what} must not repeat an index: each training input once")
    return idx


def finite_params(theta: Any, name: str = "theta") -> None:
    """Refuse parameters with NaN or infinite entries: every flatness measure of such a
    network is undefined (ARPACK fails, the error under noise is meaningless)."""
    arr = theta.detach().cpu().numpy() if hasattr(theta, "detach") else np.asarray(theta)
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise VolumeError(f"{name} has {bad} non-finite entries (NaN or inf) of {np.size(arr)}: flatness is undefined "
                          "there; check that the training converged (a diverged run leaves NaN parameters)")


def output_path(path: Any, what: str = "output file") -> Path:
    """``Path(path)`` if its directory exists (nothing is created for the caller: a typo in a
    directory name must not silently make a new tree), else a VolumeError naming it."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise VolumeError(f"{what} {str(p)!r}: the directory {str(parent)!r} does not exist; create it first "
                          "or choose another path")
    if p.is_dir():
        raise VolumeError(f"{what} {str(p)!r} is a directory: give a file name")
    return p


def json_safe(x: Any) -> Any:
    """Nested dicts/lists/tuples/arrays of results as plain JSON data: numpy to Python,
    paths to text, non-finite floats to None (the project's one NaN-to-JSON conversion).

    >>> json_safe({"a": float("nan"), "b": [1.5, float("inf")], "c": np.int64(3)})
    {'a': None, 'b': [1.5, None], 'c': 3}
    """
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, PurePath):
        return str(x)
    return x
