"""The Bayesian posterior over functions counted by rejection (Mingard et al. 2021, JMLR 22,
"Is SGD a Bayesian sampler? Well, almost", section on direct sampling).

With the zero-error likelihood, P(f|S) = P(f) / P(U) for every f that fits the training set S
(U = the functions that fit S), and 0 otherwise. Drawing theta from the prior and keeping the
draws whose function fits S samples P(f|S) exactly, so

    P_hat(f|S) = n_f / n_U,      P_hat(U) = n_U / N,

over N prior draws, n_U of which fit S and n_f of which compute f on the evaluated inputs E
(S and a test set T: the functions compared are the labels on E, a marginal over the other
inputs). Standard errors (multinomial, delta method): sqrt(1/n_f - 1/n_U) for ln P_hat(f|S),
sqrt(1/n_U - 1/N) for ln P_hat(U).

The draws are the spec's blocks 0..B-1 (the same draws as its prior table of B blocks, so the
counts equal the table's projected onto E over its functions that fit S; tests check this). The
filtering is on packed keys: a draw fits S iff ((key XOR key_S) AND mask_S) == 0 byte-wise,
where mask_S has the bits of S's labels set and key_S holds the target's labels there; only the
few draws that pass are unpacked, projected onto E and packed again, and their keys on E are
counted as a table counts its keys (:func:`volume.table.count_keys`, merged with
:func:`volume.table.merge_counted`): sorted unique keys and uint64 counts, no per-function Python
object. Before the first draw the pass's worst-case memory (:func:`memory_bound`: up to
min(draws, classes^(|E| - |S|)) functions per training set) is checked against
``Limits.max_table_bytes``. One pass over the draws serves several
training sets at once (:class:`Condition`), since drawing, not filtering, is the cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from volume.checks import training_indices
from volume.errors import VolumeError
from volume.keys import bits_per_label, key_bytes, pack_labels, unpack_keys
from volume.spec import ExperimentSpec
from volume.table import count_keys, lookup_counted, merge_counted


@dataclass(frozen=True)
class Condition:
    """One training set: inputs ``train`` with labels ``labels`` (same order), and the inputs
    ``evaluate`` (sorted; S and T) onto which the functions that fit it are projected."""

    train: np.ndarray
    labels: np.ndarray
    evaluate: np.ndarray


def fit_masks(n_inputs: int, classes: int, train: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, key) packed like :func:`volume.keys.pack_labels`: ``mask`` has every bit of the
    labels at ``train`` set, ``key`` holds ``labels`` there (zeros elsewhere)."""
    b = bits_per_label(classes)
    train = np.asarray(train, dtype=np.int64)
    bits = np.zeros((n_inputs, b), dtype=np.uint8)
    bits[train] = 1
    mask = np.packbits(bits.reshape(1, -1), axis=1, bitorder="big")[0]
    full = np.zeros(n_inputs, dtype=np.uint8)
    full[train] = np.asarray(labels, dtype=np.uint8)
    return mask, pack_labels(full, classes)[0]


def fits(keys: np.ndarray, mask: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Rows of ``keys`` (B, key_bytes) whose labels equal ``key``'s wherever ``mask`` is set: (B,) bool."""
    return ~np.any(np.bitwise_and(np.bitwise_xor(keys, key), mask), axis=1)


FOLD_ROWS = 1 << 16
"""Packed rows of fitting draws that wait before they are counted into the sorted keys (at least)."""


class _Counter:
    """The packed keys on E of one condition's fitting draws: rows wait in a list until they are
    as many as the counted keys (and at least :data:`FOLD_ROWS`), then are counted
    (:func:`volume.table.count_keys`) and merged into the sorted unique keys
    (:func:`volume.table.merge_counted`): each fold costs about its rows' sort, so the pass stays
    linear in the fitting draws, and at most max(U, FOLD_ROWS) + one block of rows wait."""

    def __init__(self, kb: int):
        self.keys = np.zeros((0, kb), dtype=np.uint8)
        self.counts = np.zeros(0, dtype=np.uint64)
        self.pending: list[np.ndarray] = []
        self.rows = 0

    def add(self, packed: np.ndarray) -> None:
        self.pending.append(packed)
        self.rows += len(packed)
        if self.rows >= max(len(self.keys), FOLD_ROWS):
            self.fold()

    def fold(self) -> None:
        if self.pending:
            rows = np.concatenate(self.pending)
            self.pending, self.rows = [], 0
            keys, counts = count_keys(rows)
            del rows
            self.keys, self.counts = merge_counted(self.keys, self.counts, keys, counts)


@dataclass(eq=False)  # array fields: compare keys and key_counts explicitly
class PosteriorCounts:
    """Counts of the functions (labels on ``evaluate``) of the prior draws that fit one S, as
    a table holds them: ``keys`` (U, key_bytes(|E|)) uint8, the functions' labels on E packed
    (:func:`volume.keys.pack_labels`), sorted and unique, with their ``key_counts`` (U,) uint64.
    ``counts`` is a dict of unpacked labels -> count built on each access (a copy: writes to it
    are not kept)."""

    condition: Condition
    classes: int = 2
    n_draws: int = 0
    n_consistent: int = 0
    keys: np.ndarray | None = None
    key_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = np.zeros((0, key_bytes(len(self.condition.evaluate), self.classes)), dtype=np.uint8)
            self.key_counts = np.zeros(0, dtype=np.uint64)

    @property
    def n_distinct(self) -> int:
        """U, the distinct functions on E among the fitting draws."""
        return int(self.keys.shape[0])

    def functions(self, chunk: int = 1 << 16):
        """(labels on E (u, |E|) uint8, counts (u,) uint64) of the counted functions, in key
        order, ``chunk`` functions at a time (unpacked a chunk at a time)."""
        for start in range(0, self.n_distinct, chunk):
            yield (unpack_keys(self.keys[start:start + chunk], len(self.condition.evaluate), self.classes),
                   self.key_counts[start:start + chunk])

    @property
    def counts(self) -> dict[bytes, int]:
        """{labels on E as bytes: n_f}, built on each call from the packed keys (for small
        results and checks; :meth:`lookup` and :meth:`functions` do not build it)."""
        return {lab.tobytes(): int(c) for labs, cs in self.functions() for lab, c in zip(labs, cs)}

    def lookup(self, labels_e: np.ndarray) -> np.ndarray:
        """n_f (F,) uint64 of functions given by their labels on E (F, |E|) (or one (|E|,)); 0 if never drawn."""
        lab = np.asarray(labels_e)
        lab = lab[None] if lab.ndim == 1 else lab
        m, classes = len(self.condition.evaluate), max(self.classes, 2)
        if lab.ndim != 2 or lab.shape[1] != m or (lab.size and (lab.min() < 0 or lab.max() >= classes)):
            raise VolumeError(f"labels of shape {np.shape(labels_e)}: give one label in 0..{classes - 1} "
                              f"per evaluated input ({m}) for each function")
        return lookup_counted(self.keys, self.key_counts, pack_labels(lab, self.classes))

    def merge(self, other: "PosteriorCounts") -> "PosteriorCounts":
        """The counts of both (disjoint) sets of draws of the same condition."""
        keys, counts = merge_counted(self.keys, self.key_counts, other.keys, other.key_counts)
        return PosteriorCounts(self.condition, self.classes, self.n_draws + other.n_draws,
                               self.n_consistent + other.n_consistent, keys, counts)

    def log_p_u(self) -> tuple[float, float]:
        """(ln P_hat(U), its standard error); (nan, nan) when no draw fits S."""
        if self.n_consistent == 0:
            return math.nan, math.nan
        return (math.log(self.n_consistent / self.n_draws),
                math.sqrt(max(1 / self.n_consistent - 1 / self.n_draws, 0.0)))

    def log_p(self, labels_e: np.ndarray) -> tuple[float, float, int]:
        """(ln P_hat(f|S), its standard error, n_f) for f = labels on ``evaluate``; (nan, nan, 0) if never drawn."""
        n_f = int(self.lookup(np.asarray(labels_e).reshape(1, -1))[0])
        if n_f == 0:
            return math.nan, math.nan, 0
        return math.log(n_f / self.n_consistent), math.sqrt(max(1 / n_f - 1 / self.n_consistent, 0.0)), n_f


def memory_bound(spec: ExperimentSpec, sizes: Sequence[tuple[int, int]], draws: int) -> int:
    """Bytes that :func:`count_posteriors` may hold at once for ``draws`` prior draws and
    conditions of ``sizes`` = (|S|, |E|) each, from the spec alone (before any draw).

    A condition's functions on E that fit S differ only on E \\ S: at most
    D = min(draws, c^(|E| - |S|)) of them (c = max(classes, 2)), held as D keys of
    k = key_bytes(|E|) bytes and D 8-byte counts, with P = min(draws, max(D, FOLD_ROWS) + B)
    packed rows waiting (B = block_size). A fold holds at most P (3 k + 72) + 2 D (k + 8)
    bytes more (count_keys' words, order and counts over its P rows; merge_counted's output
    before it shrinks). A block holds its keys (K bytes each), the
    fit test and the unpacked labels of the draws that fit: B (3 K + (3 b + 4) M + 8) bytes
    (b bits per label, M inputs). The bound is the conditions' held bytes, plus the largest fold,
    plus one block."""
    classes, m, bsz = max(spec.output.classes, 2), spec.n_inputs, spec.block_size
    b = bits_per_label(spec.output.classes)
    held, fold = 0, 0
    for n_s, n_e in sizes:
        free = (n_e - n_s) * math.log2(classes)
        d = draws if free >= 62 else min(draws, classes ** (n_e - n_s))
        k = key_bytes(n_e, spec.output.classes)
        p = min(draws, max(d, FOLD_ROWS) + bsz)
        held += d * (k + 8) + p * k
        fold = max(fold, p * (3 * k + 72) + 2 * d * (k + 8))
    return held + fold + bsz * (3 * key_bytes(m, spec.output.classes) + (3 * b + 4) * m + 8)


def check_memory(spec: ExperimentSpec, sizes: Sequence[tuple[int, int]], blocks: int, max_bytes: int | None = None,
                 *, blocks_field: str = "blocks", evaluate_field: str = "evaluated inputs",
                 cap_field: str = "max_bytes") -> int:
    """Refuse (:class:`volume.limits.LimitExceeded`, before any draw) a pass over ``blocks``
    blocks whose :func:`memory_bound` is above ``max_bytes`` (default
    ``Limits.max_table_bytes``, the largest table a job may produce); returns the bound."""
    from volume.limits import LimitExceeded, Limits

    cap = Limits().max_table_bytes if max_bytes is None else max_bytes
    need = memory_bound(spec, sizes, blocks * spec.block_size)
    if need > cap:
        raise LimitExceeded(
            f"{blocks_field} = {blocks}: counting the functions that fit S among {blocks * spec.block_size:,} prior "
            f"draws may hold {need:,} bytes (up to min(draws, classes^(|E| - |S|)) distinct functions on E per "
            f"training set), above the limit of {cap:,} ({cap_field}): use fewer {blocks_field}, or fewer "
            f"{evaluate_field} (E = S and the test inputs), or raise {cap_field} (the bound assumes every draw fits S "
            f"and is distinct; few do where P(S) is small)")
    return need


def count_posteriors(spec: ExperimentSpec, conditions: Sequence[Condition], blocks: int, *, start: int = 0, source=None,
                     log: Callable[[str], None] | None = None, log_every: float = 60.0,
                     max_bytes: int | None = None) -> list[PosteriorCounts]:
    """One pass over the prior draws of blocks start..blocks-1 of ``spec``; for each condition the
    counts of the functions (on its ``evaluate`` inputs) of the draws that fit it (module
    docstring). ``source`` has ``keys(block)`` (default: the spec's sampler,
    :func:`volume.runner.block_source`, the compiled kernel where it applies). Before the first
    draw, the pass's :func:`memory_bound` is checked against ``max_bytes`` (:func:`check_memory`)."""
    if spec.training is not None:
        raise VolumeError("count_posteriors draws from the prior: give a spec without a [training] section")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise VolumeError(f"blocks = {blocks!r}: give the number of prior blocks to draw (an integer >= 1)")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= blocks:
        raise VolumeError(f"start = {start!r}: give the first block, an integer in 0..blocks")
    n, classes = spec.n_inputs, spec.output.classes
    masks = []
    for c in conditions:
        train = training_indices(c.train, n, "a condition's training inputs")
        if len(c.labels) != train.size or np.any(np.asarray(c.labels) >= max(classes, 2)):
            raise VolumeError(f"a condition needs one label < {max(classes, 2)} per training input")
        masks.append(fit_masks(n, classes, train, np.asarray(c.labels)))
    check_memory(spec, [(len(c.train), len(c.evaluate)) for c in conditions], blocks - start, max_bytes)
    if source is None:
        from volume.runner import block_source

        source = block_source(spec)
    counters = [_Counter(key_bytes(len(c.evaluate), classes)) for c in conditions]
    fitting = [0] * len(conditions)
    draws = 0
    t0 = last = time.perf_counter()
    kb = key_bytes(n, classes)
    for b in range(start, blocks):
        keys = np.asarray(source.keys(b), dtype=np.uint8)
        if keys.shape[1:] != (kb,):
            raise VolumeError(f"block {b} has keys of shape {keys.shape}: expected (draws, {kb})")
        draws += len(keys)
        for i, (c, (mask, key)) in enumerate(zip(conditions, masks)):
            ok = fits(keys, mask, key)
            if ok.any():
                counters[i].add(pack_labels(unpack_keys(keys[ok], n, classes)[:, c.evaluate], classes))
                fitting[i] += int(np.count_nonzero(ok))
        if log is not None and time.perf_counter() - last >= log_every:
            last = time.perf_counter()
            log(f"posterior by rejection: {(b + 1) * len(keys):,} of {blocks * len(keys):,} draws "
                f"({last - t0:.0f} s); fitting S: " + ", ".join(str(f) for f in fitting))
    out = []
    for c, counter, f in zip(conditions, counters, fitting):
        counter.fold()
        out.append(PosteriorCounts(c, classes, draws, f, counter.keys, counter.counts))
    return out
