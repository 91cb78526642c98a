"""FrequencyTable: how often each function was drawn, for one spec.

A table holds sorted unique keys (U, key_bytes) uint8, their counts (U,) uint64, the
ids of the blocks counted, and the spec. Tables of the same spec and disjoint blocks
merge into exactly the table of the union of their blocks, whatever the grouping or
order (merging is a sorted multiset union: associative and commutative). Merging tables
of different specs, or counting a block twice, raises :class:`TableError`.

On disk (HDF5, readable with plain h5py; text attributes are fixed-length UTF-8 bytes, so
``f.attrs["spec"].decode()``): root attributes ``format="volume-table"``,
``format_version``, ``spec`` (JSON), ``spec_id``, ``n_samples``, ``library_version``,
``content_sha256``; datasets ``keys`` (uint8, U x key_bytes, sorted byte-wise), ``counts``
(uint64, U), ``blocks`` (int64, sorted), each with the Fletcher-32 filter. Writes go to a
temporary file in the same directory that is renamed over the target, so a reader sees the
old table or the new one, never half.

Integrity (format version 2): ``content_sha256`` is ``volume.h5io.content_digest`` of
(format, spec JSON, spec_id, n_samples, keys, counts, blocks); ``load`` recomputes it, so a
corrupt file either fails to load, with an error that names it, or loads as exactly the
table that was saved. Version 1 files (no checksums) are still read, unverified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from volume import __version__
from volume.errors import TableError
from volume.h5io import atomic_h5, attr_text, check_format, checked_dataset, content_digest, set_text_attrs
from volume.keys import key_bytes, pack_labels, parse_function
from volume.spec import ExperimentSpec, SpecError

FORMAT = "volume-table"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no checksums


def _void(keys: np.ndarray) -> np.ndarray:
    """View (U, kb) uint8 keys as a 1-D array of kb-byte void scalars (compared byte-wise)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    return keys.view(f"V{keys.shape[1]}").ravel()


def count_keys(keys: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and their total counts (counts default to one per row)."""
    if counts is None:
        counts = np.ones(keys.shape[0], dtype=np.uint64)
    if keys.shape[0] == 0:
        return keys.reshape(0, keys.shape[1]).astype(np.uint8), np.zeros(0, dtype=np.uint64)
    v = _void(keys)
    order = np.argsort(v, kind="stable")
    v = v[order]
    c = np.asarray(counts, dtype=np.uint64)[order]
    starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
    uniq = np.ascontiguousarray(keys, dtype=np.uint8)[order][starts]
    return uniq, np.add.reduceat(c, starts).astype(np.uint64)


class FrequencyTable:
    """Counts of functions for one spec; see the module docstring."""

    def __init__(self, spec: ExperimentSpec, keys: np.ndarray, counts: np.ndarray, blocks: Iterable[int]):
        self.spec = spec
        self.n_inputs = spec.n_inputs
        self.classes = spec.output.classes
        self.key_bytes = key_bytes(self.n_inputs, self.classes)
        keys = np.asarray(keys, dtype=np.uint8).reshape(-1, self.key_bytes)
        self.keys = np.ascontiguousarray(keys)
        self.counts = np.asarray(counts, dtype=np.uint64)
        self.blocks = np.asarray(sorted(int(b) for b in blocks), dtype=np.int64)
        if self.counts.shape != (self.keys.shape[0],):
            raise TableError(f"table has {self.keys.shape[0]} keys but {self.counts.shape[0]} counts")
        if len(np.unique(self.blocks)) != len(self.blocks):
            raise TableError("a block appears twice in the table's block list")
        self._void = _void(self.keys)

    # ---- construction --------------------------------------------------------------
    @classmethod
    def empty(cls, spec: ExperimentSpec) -> "FrequencyTable":
        kb = key_bytes(spec.n_inputs, spec.output.classes)
        return cls(spec, np.zeros((0, kb), np.uint8), np.zeros(0, np.uint64), [])

    @classmethod
    def from_keys(cls, spec: ExperimentSpec, keys: np.ndarray, blocks: Iterable[int]) -> "FrequencyTable":
        """Table of raw (unsorted, repeated) keys drawn in ``blocks``."""
        uniq, counts = count_keys(np.asarray(keys, dtype=np.uint8))
        return cls(spec, uniq, counts, blocks)

    @classmethod
    def from_labels(cls, spec: ExperimentSpec, labels: np.ndarray, blocks: Iterable[int]) -> "FrequencyTable":
        return cls.from_keys(spec, pack_labels(labels, spec.output.classes), blocks)

    # ---- basic facts ---------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.counts.sum(dtype=np.uint64))

    @property
    def n_distinct(self) -> int:
        return int(self.keys.shape[0])

    @property
    def spec_id(self) -> str:
        return self.spec.spec_id

    def __len__(self) -> int:
        return self.n_distinct

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, FrequencyTable) and self.spec_id == other.spec_id
                and np.array_equal(self.keys, other.keys) and np.array_equal(self.counts, other.counts)
                and np.array_equal(self.blocks, other.blocks))

    def __repr__(self) -> str:
        return (f"FrequencyTable(spec_id={self.spec_id}, n_samples={self.n_samples}, "
                f"distinct={self.n_distinct}, blocks={len(self.blocks)})")

    # ---- combining -----------------------------------------------------------------
    def check_compatible(self, other: "FrequencyTable") -> None:
        if self.spec_id != other.spec_id:
            raise TableError(
                f"cannot merge tables of different specs ({self.spec_id} vs {other.spec_id}): "
                "only tables of the same spec (architecture, prior, inputs, output, seed, block size, training) combine"
            )
        twice = np.intersect1d(self.blocks, other.blocks)
        if twice.size:
            raise TableError(f"cannot merge: block(s) {twice[:10].tolist()} are counted in both tables; "
                             "a block is counted once")

    def merge(self, other: "FrequencyTable") -> "FrequencyTable":
        """Table of the union of both tables' blocks (same spec, disjoint blocks)."""
        self.check_compatible(other)
        keys, counts = count_keys(np.concatenate([self.keys, other.keys]),
                                  np.concatenate([self.counts, other.counts]))
        return FrequencyTable(self.spec, keys, counts, np.concatenate([self.blocks, other.blocks]))

    @staticmethod
    def merge_all(tables: Iterable["FrequencyTable"]) -> "FrequencyTable":
        tables = list(tables)
        if not tables:
            raise TableError("merge_all needs at least one table")
        first = tables[0]
        for t in tables[1:]:
            first.check_compatible(t)
        blocks = np.concatenate([t.blocks for t in tables])
        if len(np.unique(blocks)) != len(blocks):
            raise TableError("cannot merge: some block is counted in more than one table")
        keys, counts = count_keys(np.concatenate([t.keys for t in tables]),
                                  np.concatenate([t.counts for t in tables]))
        return FrequencyTable(first.spec, keys, counts, blocks)

    # ---- queries -------------------------------------------------------------------
    def keys_of(self, functions: Iterable) -> np.ndarray:
        """Keys (F, key_bytes) of functions given as label vectors, text or hex strings."""
        labels = [parse_function(f, self.n_inputs, self.classes) for f in functions]
        if not labels:
            return np.zeros((0, self.key_bytes), np.uint8)
        return pack_labels(np.stack(labels), self.classes)

    def lookup_keys(self, keys: np.ndarray) -> np.ndarray:
        """Counts (F,) uint64 of keys (F, key_bytes); 0 for keys never drawn."""
        keys = np.asarray(keys, dtype=np.uint8).reshape(-1, self.key_bytes)
        if self.n_distinct == 0 or keys.shape[0] == 0:
            return np.zeros(keys.shape[0], dtype=np.uint64)
        q = _void(keys)
        pos = np.searchsorted(self._void, q)
        pos_c = np.minimum(pos, self.n_distinct - 1)
        hit = self._void[pos_c] == q
        return np.where(hit, self.counts[pos_c], 0).astype(np.uint64)

    def lookup(self, functions: Iterable) -> np.ndarray:
        """Counts of functions given as label vectors, '0'/'1' strings or hex keys."""
        return self.lookup_keys(self.keys_of(functions))

    def top(self, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k most frequent keys and their counts, most frequent first (ties by key)."""
        order = np.argsort(-self.counts.astype(np.float64), kind="stable")[: max(0, k)]
        return self.keys[order], self.counts[order]

    def rank_frequency(self) -> tuple[np.ndarray, np.ndarray]:
        """Ranks 1..U and the empirical probabilities n_f/N in decreasing order."""
        freq = np.sort(self.counts)[::-1].astype(np.float64) / max(self.n_samples, 1)
        return np.arange(1, self.n_distinct + 1), freq

    def count_of_counts(self) -> dict[int, int]:
        """{r: number of functions seen exactly r times}."""
        r, n = np.unique(self.counts, return_counts=True)
        return {int(a): int(b) for a, b in zip(r, n)}

    # ---- files ---------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write atomically: temporary file in the same directory, fsync, rename."""
        with atomic_h5(path) as f:
            spec_json = self.spec.to_json(indent=None)
            set_text_attrs(f, format=FORMAT, spec=spec_json, spec_id=self.spec_id, library_version=__version__,
                           content_sha256=self._digest(spec_json, self.spec_id, self.n_samples, self.keys,
                                                       self.counts, self.blocks))
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["n_samples"] = np.uint64(self.n_samples)
            checked_dataset(f, "keys", self.keys, np.uint8, compress=self.n_distinct > 4096)
            checked_dataset(f, "counts", self.counts, np.uint64)
            checked_dataset(f, "blocks", self.blocks, np.int64)

    @staticmethod
    def _digest(spec_json: str, spec_id: str, n_samples: int, keys, counts, blocks) -> str:
        return content_digest(FORMAT, spec_json, spec_id, n_samples, np.asarray(keys, np.uint8),
                              np.asarray(counts, "<u8"), np.asarray(blocks, "<i8"))

    @classmethod
    def load(cls, path: str | Path) -> "FrequencyTable":
        """Read and validate a table; any defect is a TableError naming the file."""
        p = Path(path)
        if not p.is_file():
            raise TableError(f"table file {str(p)!r} does not exist")
        try:
            return cls._load(p)
        except TableError as e:
            text = str(e)
            raise TableError(text if str(p) in text else f"table {str(p)!r}: {text}") from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError,
                OverflowError, UnicodeError) as e:
            raise TableError(f"cannot read table {str(p)!r}: the file is corrupt or truncated "
                             f"({type(e).__name__}: {str(e)[:200]})") from None

    @classmethod
    def _load(cls, p: Path) -> "FrequencyTable":
        import h5py

        with h5py.File(p, "r") as f:
            check_format(f, p, FORMAT, READABLE_VERSIONS, "volume table", TableError)
            version = int(f.attrs["format_version"])
            for name in ("keys", "counts", "blocks"):
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise TableError(f"{str(p)!r} lacks the dataset {name!r}: the file is corrupt")
            spec_json = attr_text(f, "spec")
            stored_id = attr_text(f, "spec_id")
            n_samples = int(f.attrs["n_samples"])
            digest = attr_text(f, "content_sha256")
            if spec_json is None or stored_id is None:
                raise TableError(f"{str(p)!r} lacks the spec attributes: the file is corrupt")
            keys = f["keys"][...]
            counts = f["counts"][...]
            blocks = f["blocks"][...]
        if version >= 2:
            if not isinstance(digest, str) or digest != cls._digest(spec_json, stored_id, n_samples, keys, counts, blocks):
                raise TableError(f"table {str(p)!r}: its content does not match its checksum (content_sha256): "
                                 "the file is corrupt; sample it again or restore it from a copy")
        try:
            spec = ExperimentSpec.from_json(spec_json)
        except SpecError as e:
            raise TableError(f"table {str(p)!r} holds an invalid spec: {e}") from None
        if spec.spec_id != stored_id:
            raise TableError(f"table {str(p)!r}: stored spec_id {stored_id} does not match its spec ({spec.spec_id})")
        kb = key_bytes(spec.n_inputs, spec.output.classes)
        if keys.ndim != 2 or keys.shape[1] != kb:
            raise TableError(f"table {str(p)!r}: keys have shape {keys.shape}, expected (U, {kb})")
        table = cls(spec, keys, counts, blocks)
        if table.n_samples != n_samples:
            raise TableError(f"table {str(p)!r}: counts sum to {table.n_samples} but n_samples = {n_samples}")
        v = table._void
        if table.n_distinct > 1 and (np.any(v[1:] == v[:-1])
                                     or np.any(np.argsort(v, kind="stable") != np.arange(len(v)))):
            raise TableError(f"table {str(p)!r}: keys are not sorted and unique; the file is corrupt")
        return table

    def info(self) -> dict:
        """Summary for `volume info` and the service."""
        return {
            "spec_id": self.spec_id,
            "name": self.spec.name,
            "spec": self.spec.to_dict(),
            "n_samples": self.n_samples,
            "n_distinct": self.n_distinct,
            "n_blocks": int(len(self.blocks)),
            "n_inputs": self.n_inputs,
            "classes": self.classes,
            "key_bytes": self.key_bytes,
            "singletons": int(np.count_nonzero(self.counts == 1)),
        }

