"""Exact keys of functions, their text and hex forms, and Lempel-Ziv complexity.

A function on an input set of M inputs is its label vector (label of input j at
position j). Binary labels are packed 8 to a byte with ``numpy.packbits(bitorder="big")``;
k-class labels use b = ceil(log2 k) bits each, most significant bit first, packed the
same way. Keys are exact (no hashing): two functions have the same key iff they agree on
every input. Keys of one table all have ``key_bytes(M, k)`` bytes; byte-wise
lexicographic order of keys is the order tables are sorted in.

Text form: one character per input ('0'/'1' for binary; '0'..'9' then 'a'..'z' for up to
36 classes). Hex form: the packed bytes in hex, optionally prefixed '0x'.
"""

from __future__ import annotations

import math

import numpy as np

from volume.errors import FunctionError

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def bits_per_label(classes: int) -> int:
    """Fewest bits that hold a label in 0..classes-1."""
    return max(1, math.ceil(math.log2(classes)))


def key_bytes(n_inputs: int, classes: int = 2) -> int:
    return (n_inputs * bits_per_label(classes) + 7) // 8


def pack_labels(labels: np.ndarray, classes: int = 2) -> np.ndarray:
    """Labels (B, M) with values < classes -> keys (B, key_bytes) uint8."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[None, :]
    b = bits_per_label(classes)
    lab = labels.astype(np.uint8, copy=False)
    if b == 1:
        return np.packbits(lab, axis=1, bitorder="big")
    shifts = np.arange(b - 1, -1, -1, dtype=np.uint8)
    bits = (lab[:, :, None] >> shifts) & 1  # (B, M, b), MSB first
    return np.packbits(bits.reshape(lab.shape[0], -1), axis=1, bitorder="big")


def unpack_keys(keys: np.ndarray, n_inputs: int, classes: int = 2) -> np.ndarray:
    """Keys (B, key_bytes) -> labels (B, M) uint8; inverse of :func:`pack_labels`."""
    keys = np.asarray(keys, dtype=np.uint8)
    if keys.ndim == 1:
        keys = keys[None, :]
    b = bits_per_label(classes)
    bits = np.unpackbits(keys, axis=1, bitorder="big", count=n_inputs * b)
    if b == 1:
        return bits
    weights = (1 << np.arange(b - 1, -1, -1)).astype(np.uint16)
    return (bits.reshape(keys.shape[0], n_inputs, b).astype(np.uint16) @ weights).astype(np.uint8)


def labels_to_text(labels: np.ndarray) -> str:
    """One character per input: '0'/'1' for binary, base-36 digits for more classes."""
    labels = np.asarray(labels).ravel()
    return "".join(_ALPHABET[int(v)] for v in labels)


def key_to_hex(key: np.ndarray) -> str:
    return bytes(np.asarray(key, dtype=np.uint8)).hex()


def labels_to_hex(labels: np.ndarray, classes: int = 2) -> str:
    return key_to_hex(pack_labels(labels, classes)[0])


def parse_function(function: str | np.ndarray | list, n_inputs: int, classes: int = 2) -> np.ndarray:
    """Read a function given as a label vector, a text string of M characters, or a hex
    key ('0x' prefix, or exactly 2*key_bytes hex digits), and return its labels (M,) uint8.

    A string made only of label characters is read as text (and must have M of them);
    hex needs the '0x' prefix unless it has a character that is not a label (e.g. 'a'-'f'
    or '2'-'9' for binary labels). Raises FunctionError naming the problem.
    """
    if not isinstance(function, str):
        lab = np.asarray(function)
        if lab.ndim != 1 or lab.shape[0] != n_inputs:
            raise FunctionError(f"function has shape {lab.shape}; expected {n_inputs} labels, one per input")
        if lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() >= classes):
            raise FunctionError(f"function labels must be integers in 0..{classes - 1}")
        return lab.astype(np.uint8)
    s = function.strip()
    kb = key_bytes(n_inputs, classes)
    alphabet = _ALPHABET[:classes]
    is_hex_prefixed = s.lower().startswith("0x")
    only_labels = not (set(s) - set(alphabet))
    if not is_hex_prefixed and (len(s) == n_inputs or only_labels):
        bad = sorted(set(s) - set(alphabet))
        if only_labels and len(s) != n_inputs:
            raise FunctionError(f"function string has length {len(s)}: expected {n_inputs} label characters "
                                f"(one per input), or a hex key with a '0x' prefix")
        if bad:
            raise FunctionError(
                f"function string has characters {bad} that are not labels: use only '{alphabet}' "
                f"(one character per input), or give a hex key with a '0x' prefix"
            )
        return np.frombuffer(s.encode(), dtype=np.uint8) - ord("0") if classes <= 10 else np.array(
            [alphabet.index(c) for c in s], dtype=np.uint8
        )
    h = s[2:] if is_hex_prefixed else s
    if len(h) == 2 * kb and all(c in "0123456789abcdefABCDEF" for c in h):
        key = np.frombuffer(bytes.fromhex(h), dtype=np.uint8)
        labels = unpack_keys(key[None, :], n_inputs, classes)[0]
        if labels.max(initial=0) >= classes or not np.array_equal(pack_labels(labels, classes)[0], key):
            raise FunctionError(f"hex key {s!r} has bits set beyond the {n_inputs} labels or labels >= {classes}")
        return labels
    shown = f"{s[:40]!r}{'...' if len(s) > 40 else ''}"
    if is_hex_prefixed:
        bad = sorted(set(h) - set("0123456789abcdefABCDEF"))
        what = f"has characters {bad} that are not hex digits" if bad else f"has {len(h)} hex digits"
        raise FunctionError(f"hex key {shown} {what}: a function of {n_inputs} inputs is a hex key of exactly "
                            f"{2 * kb} hex digits (after the '0x'), or {n_inputs} label characters from '{alphabet}'")
    raise FunctionError(
        f"function {shown} has length {len(s)}: expected {n_inputs} label "
        f"characters from '{alphabet}' or a hex key of {2 * kb} hex digits"
    )


def _lz76_words(s: str) -> int:
    """Number of words in the Lempel-Ziv (1976) parse of s.

    Each word is the longest continuation s[i:i+k-1] that already occurs in the text before
    its last character (s[:i+k-2], overlaps allowed), plus one new character; a last word cut
    by the end of s counts too. This is the count of Kaspar & Schuster (1987), computed with
    C-level substring search (tests compare it with their algorithm).
    """
    n, i, words = len(s), 0, 0
    while i < n:
        k = 1
        while i + k <= n and s[i:i + k] in s[:i + k - 1]:
            k += 1
        words += 1
        i += k
    return words


def lz_complexity(function: str | np.ndarray) -> float:
    """Lempel-Ziv complexity of a label string as in Dingle et al. (2018), Valle-Perez et al. (2019):
    K(x) = log2(n) if x is constant, else log2(n) * (N_w(x) + N_w(reverse x)) / 2,
    N_w = number of words in the LZ76 parse."""
    s = function if isinstance(function, str) else labels_to_text(function)
    n = len(s)
    if n == 0:
        raise FunctionError("LZ complexity of an empty string is undefined")
    if n == 1:
        return 0.0
    if len(set(s)) == 1:
        return math.log2(n)
    return math.log2(n) * (_lz76_words(s) + _lz76_words(s[::-1])) / 2.0
