"""Parsers for what a user types, shared by the CLI and the service: index lists such as
'0-63,70' and targets (a rule or a function). Library level: neither side imports the other.

Every parser bounds its work by the size of the table it answers for *before* it allocates:
an index range is checked against the number of inputs M (0 <= a <= b < M) and the running
count of indices against M (a training set has at most M distinct inputs), so a short text
such as '0-100000000' costs nothing. Error messages name the field as the caller calls it
(``--train`` on the command line, ``train_indices`` in the service).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from volume.errors import VolumeError

_MAX_DIGITS = 19  # below 2**63: an index never needs more


def _index(text: str, field: str, part: str) -> int:
    s = text.strip()
    if not s.isdecimal() or not s.isascii() or len(s) > _MAX_DIGITS:
        raise VolumeError(f"{field}: {part[:40]!r} is not an index or a range: use e.g. '0-63' or '0,5,9'")
    return int(s)


def parse_indices(text: str, n_inputs: int, field: str = "training indices") -> np.ndarray:
    """'0-3,7,9-10' -> [0, 1, 2, 3, 7, 9, 10] (ranges inclusive), each range inside 0..M-1 and
    at most M indices in all, checked before anything is allocated."""
    if not isinstance(text, str):
        raise VolumeError(f"{field} must be a text such as '0-63,70', not {type(text).__name__}")
    ranges: list[tuple[int, int]] = []
    total = 0
    for part in text.split(","):
        if not part.strip():
            continue
        first, dash, last = part.partition("-")
        a = _index(first, field, part)
        b = _index(last, field, part) if dash else a
        if not 0 <= a <= b < n_inputs:
            raise VolumeError(f"{field}: {part.strip()[:40]!r} must lie in 0..{n_inputs - 1} "
                              "(the table's inputs) with the start of a range not after its end")
        total += b - a + 1
        if total > n_inputs:
            raise VolumeError(f"{field} name more than the {n_inputs} inputs of the table: an index repeats")
        ranges.append((a, b))
    if not ranges:
        raise VolumeError(f"{field} are empty: give at least one index, e.g. '0-63'")
    return np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in ranges])


def check_indices(values: Iterable, n_inputs: int, field: str = "training indices") -> np.ndarray:
    """A list of indices given as numbers, checked one by one (type and range) against M
    before it becomes an array; at most M of them."""
    values = list(values) if not isinstance(values, (list, tuple, np.ndarray)) else values
    if len(values) > n_inputs:
        raise VolumeError(f"{field}: {len(values)} indices given but the table has {n_inputs} inputs: an index repeats")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= v < n_inputs:
            raise VolumeError(f"{field}: {str(v)[:40]!r} is not an index in 0..{n_inputs - 1}")
    if not len(values):
        raise VolumeError(f"{field} are empty: give at least one index")
    return np.asarray(values, dtype=np.int64)


def resolve_target(table, target: str) -> np.ndarray:
    """Labels (M,) of a target of ``table``'s input set, a rule or a function: the project's one
    resolver, :func:`volume.inputs.resolve_labels` (no '@FILE': the caller reads files)."""
    from volume.inputs import resolve_labels

    return resolve_labels(target, table.spec, table.classes)
