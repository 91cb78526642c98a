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
few draws that pass are unpacked and projected onto E. One pass over the draws serves several
training sets at once (:class:`Condition`), since drawing, not filtering, is the cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from volume.checks import training_indices
from volume.errors import VolumeError
from volume.keys import bits_per_label, key_bytes, pack_labels, unpack_keys
from volume.spec import ExperimentSpec


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


@dataclass
class PosteriorCounts:
    """Counts of the functions (labels on ``evaluate``) of the prior draws that fit one S."""

    condition: Condition
    n_draws: int = 0
    n_consistent: int = 0
    counts: dict[bytes, int] = field(default_factory=dict)

    def add(self, labels_e: np.ndarray) -> None:
        """Count fitting draws given by their labels on ``evaluate`` (B, |E|) uint8."""
        if not len(labels_e):
            return
        uniq, c = np.unique(np.ascontiguousarray(labels_e), axis=0, return_counts=True)
        for u, k in zip(uniq, c):
            kb = u.tobytes()
            self.counts[kb] = self.counts.get(kb, 0) + int(k)
        self.n_consistent += len(labels_e)

    def merge(self, other: "PosteriorCounts") -> "PosteriorCounts":
        """The counts of both (disjoint) sets of draws of the same condition."""
        out = PosteriorCounts(self.condition, self.n_draws + other.n_draws, self.n_consistent + other.n_consistent,
                              dict(self.counts))
        for k, v in other.counts.items():
            out.counts[k] = out.counts.get(k, 0) + v
        return out

    def log_p_u(self) -> tuple[float, float]:
        """(ln P_hat(U), its standard error); (nan, nan) when no draw fits S."""
        if self.n_consistent == 0:
            return math.nan, math.nan
        return (math.log(self.n_consistent / self.n_draws),
                math.sqrt(max(1 / self.n_consistent - 1 / self.n_draws, 0.0)))

    def log_p(self, labels_e: np.ndarray) -> tuple[float, float, int]:
        """(ln P_hat(f|S), its standard error, n_f) for f = labels on ``evaluate``; (nan, nan, 0) if never drawn."""
        n_f = self.counts.get(np.asarray(labels_e, dtype=np.uint8).tobytes(), 0)
        if n_f == 0:
            return math.nan, math.nan, 0
        return math.log(n_f / self.n_consistent), math.sqrt(max(1 / n_f - 1 / self.n_consistent, 0.0)), n_f


def count_posteriors(spec: ExperimentSpec, conditions: Sequence[Condition], blocks: int, *, start: int = 0, source=None,
                     log: Callable[[str], None] | None = None, log_every: float = 60.0) -> list[PosteriorCounts]:
    """One pass over the prior draws of blocks start..blocks-1 of ``spec``; for each condition the
    counts of the functions (on its ``evaluate`` inputs) of the draws that fit it (module
    docstring). ``source`` has ``keys(block)`` (default: the spec's sampler,
    :func:`volume.runner.block_source`, the compiled kernel where it applies)."""
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
    if source is None:
        from volume.runner import block_source

        source = block_source(spec)
    out = [PosteriorCounts(c) for c in conditions]
    t0 = last = time.perf_counter()
    kb = key_bytes(n, classes)
    for b in range(start, blocks):
        keys = np.asarray(source.keys(b), dtype=np.uint8)
        if keys.shape[1:] != (kb,):
            raise VolumeError(f"block {b} has keys of shape {keys.shape}: expected (draws, {kb})")
        for pc, (mask, key) in zip(out, masks):
            ok = fits(keys, mask, key)
            pc.n_draws += len(keys)
            if ok.any():
                pc.add(unpack_keys(keys[ok], n, classes)[:, pc.condition.evaluate])
        if log is not None and time.perf_counter() - last >= log_every:
            last = time.perf_counter()
            log(f"posterior by rejection: {(b + 1) * len(keys):,} of {blocks * len(keys):,} draws "
                f"({last - t0:.0f} s); fitting S: " + ", ".join(str(pc.n_consistent) for pc in out))
    return out
