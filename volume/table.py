"""FrequencyTable: how often each function was drawn, for one spec.

A table holds sorted unique keys (U, key_bytes) uint8, their counts (U,) uint64, the
ids of the blocks counted, and the spec. Tables of the same spec and disjoint blocks
merge into exactly the table of the union of their blocks, whatever the grouping or
order (merging is a sorted multiset union: associative and commutative). Merging tables
of different specs or random streams, or counting a block twice, raises :class:`TableError`.

On disk (HDF5, readable with plain h5py; text attributes are fixed-length UTF-8 bytes, so
``f.attrs["spec"].decode()``): root attributes ``format="volume-table"``,
``format_version``, ``spec`` (JSON), ``spec_id``, ``random_stream`` (the version of the random
stream the draws came from; absent in tables of stream 1), ``n_samples``, ``library_version``,
``torch_version`` and ``numpy_version`` (of the process that wrote the file), ``content_sha256``,
and for tables of optimizer-found functions ``n_trainings`` and ``n_failed`` (trainings that did
not reach zero error; they follow from the blocks, len(blocks) * block_size - n_samples, and are
checked on load); datasets ``keys`` (uint8, U x key_bytes, sorted byte-wise), ``counts``
(uint64, U; byte-shuffled and gzip-compressed above 4,096 keys), ``blocks`` (int64, sorted), each with
the Fletcher-32 filter. Writes go to a
temporary file in the same directory that is renamed over the target, so a reader sees the
old table or the new one, never half.

Integrity (format version 2): ``content_sha256`` is ``volume.h5io.content_digest`` of
(format, spec JSON, spec_id, random_stream, n_samples, keys, counts, blocks); ``load``
recomputes it, so a corrupt file either fails to load, with an error that names it, or loads
as exactly the table that was saved. Version 1 files (no checksums) are still read, unverified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from volume import __version__
from volume.errors import TableError
from volume.h5io import atomic_h5, attr_text, check_format, checked_dataset, content_digest, set_text_attrs
from volume.keys import key_bytes, pack_labels, parse_function
from volume.spec import RANDOM_STREAM_VERSION, ExperimentSpec, SpecError

try:  # the optional compiled extension (setup.py); it also has the linear merge of counted keys
    from volume import _fused
except ImportError:
    _fused = None

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
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    new = np.zeros(keys.shape[0], dtype=bool)
    new[0] = True
    if keys.shape[1] <= WORD_SORT_MAX_BYTES:  # a few uint64 columns to compare; sorted by the extension's radix sort
        words = _words(keys)
        if _fused is not None and hasattr(_fused, "sort_rows"):  # ~0.15 ms for 4,096 16-byte keys
            order = np.empty(keys.shape[0], dtype=np.int64)
            _fused.sort_rows(order, keys, keys.shape[1])
        else:  # numeric lexsort of the words (~0.28 ms there)
            order = np.lexsort(words[::-1]) if len(words) > 1 else np.argsort(words[0], kind="stable")
        for w in words:
            ws = w[order]
            new[1:] |= ws[1:] != ws[:-1]
    else:  # wide keys (images): one byte-string sort beats a lexsort over many columns
        v = _void(keys)
        order = np.argsort(v, kind="stable")
        vs = v[order]
        new[1:] = vs[1:] != vs[:-1]
    starts = np.flatnonzero(new)
    c = np.asarray(counts, dtype=np.uint64)[order]
    return keys[order[starts]], np.add.reduceat(c, starts).astype(np.uint64)


WORD_SORT_MAX_BYTES = 32
"""Keys up to this many bytes are sorted as uint64 words (1.2-1.6x faster at 16 bytes); wider ones
as byte strings (a lexsort over ~940 columns of a 7,500-byte MNIST key was 5x slower)."""


def _words(keys: np.ndarray) -> list[np.ndarray]:
    """(U, kb) uint8 keys as ceil(kb / 8) uint64 columns whose lexicographic order is the keys'
    byte-wise order (big-endian words, the last one padded with zero bytes): numeric sorts of
    these are several times faster than sorting the keys as byte strings."""
    n, kb = keys.shape
    width = -(-kb // 8) * 8
    if width != kb:
        padded = np.zeros((n, width), dtype=np.uint8)
        padded[:, :kb] = keys
        keys = padded
    w = keys.view(">u8")
    return [w[:, i].astype(np.uint64) for i in range(width // 8)]


def _package_version(name: str) -> str:
    """Version of an installed distribution (read from its metadata: torch is not imported)."""
    import sys
    from importlib import metadata

    mod = sys.modules.get(name)
    if mod is not None and hasattr(mod, "__version__"):
        return str(mod.__version__)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def stream_mismatch(have: int, want: int, what: str = "table") -> str:
    """The one-line refusal to mix draws of two random-stream versions."""
    return (f"cannot mix draws of random stream {have} and {want}: the {what} was drawn with random stream "
            f"{have}, and the same blocks under stream {want} are other draws (this volume draws stream "
            f"{RANDOM_STREAM_VERSION}); start a new table (another -o path) for new draws")


def merge_counted(keys_a: np.ndarray, counts_a: np.ndarray, keys_b: np.ndarray,
                  counts_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sorted unique key sets with summed counts. With the compiled extension
    (``volume._fused.merge_counted``) one linear merge, O(|a| + |b|); without it, b's keys are
    looked up in a (binary search) and the new ones inserted, O(|a| + |b| log |a|). Both give
    the same arrays."""
    if keys_a.shape[0] == 0:
        return keys_b, counts_b
    if keys_b.shape[0] == 0:
        return keys_a, counts_a
    if _fused is not None:
        return _merge_compiled(keys_a, counts_a, keys_b, counts_b)
    va, vb = _void(keys_a), _void(keys_b)
    pos = np.searchsorted(va, vb)
    hit = pos < len(va)
    hit[hit] = va[pos[hit]] == vb[hit]
    counts = np.array(counts_a, dtype=np.uint64)
    counts[pos[hit]] += np.asarray(counts_b, dtype=np.uint64)[hit]  # b's keys are unique: no repeated index
    new = ~hit
    return (np.insert(keys_a, pos[new], keys_b[new], axis=0),
            np.insert(counts, pos[new], np.asarray(counts_b, dtype=np.uint64)[new]))


def lookup_counted(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Counts (F,) uint64 of the rows of ``query`` (F, kb) among sorted unique ``keys`` (U, kb)
    with ``counts`` (U,); 0 for a row not among them (binary search, O(F log U))."""
    kb = keys.shape[1]
    query = np.asarray(query, dtype=np.uint8).reshape(-1, kb)
    if keys.shape[0] == 0 or query.shape[0] == 0:
        return np.zeros(query.shape[0], dtype=np.uint64)
    v, q = _void(keys), _void(query)
    pos = np.minimum(np.searchsorted(v, q), len(v) - 1)
    return np.where(v[pos] == q, counts[pos], 0).astype(np.uint64)


def _merge_compiled(keys_a, counts_a, keys_b, counts_b) -> tuple[np.ndarray, np.ndarray]:
    kb = keys_a.shape[1]
    na, nb = keys_a.shape[0], keys_b.shape[0]
    keys = np.empty((na + nb, kb), dtype=np.uint8)
    counts = np.empty(na + nb, dtype=np.uint64)
    n = _fused.merge_counted(keys, counts, np.ascontiguousarray(keys_a, np.uint8),
                             np.ascontiguousarray(counts_a, np.uint64), np.ascontiguousarray(keys_b, np.uint8),
                             np.ascontiguousarray(counts_b, np.uint64), kb)
    if n < na + nb:  # keys in both: give back the unused rows (realloc, in place)
        keys.resize((n, kb), refcheck=False)
        counts.resize(n, refcheck=False)
    return keys, counts


def sorted_blocks(blocks: Iterable[int]) -> np.ndarray:
    """Block ids as a sorted int64 array. Integer arrays and lists are sorted by numpy (a
    table's blocks arrive as arrays on every merge and load: sorting 10^5 of them as Python
    ints took 25 ms); anything else goes through ``int`` one by one, as it always did."""
    arr = blocks if isinstance(blocks, np.ndarray) else np.asarray(
        blocks if isinstance(blocks, (list, tuple, range)) else list(blocks))
    if arr.ndim == 1 and (arr.dtype.kind == "i" or (arr.dtype.kind in "ub" and (
            arr.size == 0 or arr.dtype.kind == "b" or int(arr.max()) <= np.iinfo(np.int64).max))):
        return np.sort(arr.astype(np.int64))
    if arr.ndim == 1 and arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(sorted(int(b) for b in arr), dtype=np.int64)


class FrequencyTable:
    """Counts of functions for one spec; see the module docstring."""

    def __init__(self, spec: ExperimentSpec, keys: np.ndarray, counts: np.ndarray, blocks: Iterable[int],
                 random_stream: int = RANDOM_STREAM_VERSION):
        self.spec = spec
        self.random_stream = int(random_stream)
        self.n_inputs = spec.n_inputs
        self.classes = spec.output.classes
        self.key_bytes = key_bytes(self.n_inputs, self.classes)
        keys = np.asarray(keys, dtype=np.uint8).reshape(-1, self.key_bytes)
        self.keys = np.ascontiguousarray(keys)
        self.counts = np.asarray(counts, dtype=np.uint64)
        self.blocks = sorted_blocks(blocks)
        if self.counts.shape != (self.keys.shape[0],):
            raise TableError(f"table has {self.keys.shape[0]} keys but {self.counts.shape[0]} counts")
        if np.any(self.blocks[1:] == self.blocks[:-1]):
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
    def n_attempts(self) -> int:
        """Draws made for the blocks counted: len(blocks) * block_size. For a prior table this is
        n_samples; for an optimizer table (spec with ``training``) it counts every training."""
        return int(len(self.blocks)) * self.spec.block_size

    @property
    def n_failed(self) -> int:
        """Trainings that did not reach zero training error (optimizer tables; 0 for prior
        tables): they are not among the counted functions. A block always holds block_size
        trainings, so this follows from the blocks and merges and resumes exactly."""
        return self.n_attempts - self.n_samples if self.spec.training is not None else 0

    @property
    def n_distinct(self) -> int:
        return int(self.keys.shape[0])

    @property
    def spec_id(self) -> str:
        return self.spec.spec_id_under(self.random_stream)

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
        if self.random_stream != other.random_stream:
            raise TableError(stream_mismatch(self.random_stream, other.random_stream))
        if self.spec is not other.spec and self.spec_id != other.spec_id:  # (an id is a hash of the spec's JSON)
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
        big, small = (self, other) if self.n_distinct >= other.n_distinct else (other, self)
        keys, counts = merge_counted(big.keys, big.counts, small.keys, small.counts)
        return FrequencyTable(self.spec, keys, counts, np.concatenate([self.blocks, other.blocks]),
                              self.random_stream)

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
        tables.sort(key=lambda t: -t.n_distinct)  # the largest is merged with the rest, not sorted again
        big, rest = tables[0], tables[1:]
        keys, counts = big.keys, big.counts
        if rest:
            small_keys, small_counts = count_keys(np.concatenate([t.keys for t in rest]),
                                                  np.concatenate([t.counts for t in rest]))
            keys, counts = merge_counted(keys, counts, small_keys, small_counts)
        return FrequencyTable(first.spec, keys, counts, blocks, first.random_stream)

    # ---- queries -------------------------------------------------------------------
    def keys_of(self, functions: Iterable) -> np.ndarray:
        """Keys (F, key_bytes) of functions given as label vectors, text or hex strings."""
        labels = [parse_function(f, self.n_inputs, self.classes) for f in functions]
        if not labels:
            return np.zeros((0, self.key_bytes), np.uint8)
        return pack_labels(np.stack(labels), self.classes)

    def lookup_keys(self, keys: np.ndarray) -> np.ndarray:
        """Counts (F,) uint64 of keys (F, key_bytes); 0 for keys never drawn."""
        return lookup_counted(self.keys, self.counts, keys)

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
                           torch_version=_package_version("torch"), numpy_version=np.__version__,
                           content_sha256=self._digest(spec_json, self.spec_id, self.random_stream, self.n_samples,
                                                       self.keys, self.counts, self.blocks))
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["random_stream"] = np.int64(self.random_stream)
            f.attrs["n_samples"] = np.uint64(self.n_samples)
            if self.spec.training is not None:  # for plain-h5py readers; checked on load
                f.attrs["n_trainings"] = np.uint64(self.n_attempts)
                f.attrs["n_failed"] = np.uint64(self.n_failed)
            # keys are stored plain: gzip halves them at 20x the time of writing them (4.4 s against
            # 0.2 s for 7.5M keys), and a table is written at every checkpoint; counts shrink ~100x
            checked_dataset(f, "keys", self.keys, np.uint8)
            checked_dataset(f, "counts", self.counts, np.uint64, compress=self.n_distinct > 4096)
            checked_dataset(f, "blocks", self.blocks, np.int64)

    @staticmethod
    def _digest(spec_json: str, spec_id: str, stream: int, n_samples: int, keys, counts, blocks) -> str:
        return content_digest(FORMAT, spec_json, spec_id, stream, n_samples, np.asarray(keys, np.uint8),
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
            stream = int(f.attrs.get("random_stream", 1))
            n_samples = int(f.attrs["n_samples"])
            n_failed = int(f.attrs["n_failed"]) if "n_failed" in f.attrs else None
            digest = attr_text(f, "content_sha256")
            if spec_json is None or stored_id is None:
                raise TableError(f"{str(p)!r} lacks the spec attributes: the file is corrupt")
            keys = f["keys"][...]
            counts = f["counts"][...]
            blocks = f["blocks"][...]
        if version >= 2:
            if not isinstance(digest, str) or digest != cls._digest(spec_json, stored_id, stream, n_samples, keys, counts, blocks):
                raise TableError(f"table {str(p)!r}: its content does not match its checksum (content_sha256): "
                                 "the file is corrupt; sample it again or restore it from a copy")
        try:
            spec = ExperimentSpec.from_json(spec_json)
        except SpecError as e:
            raise TableError(f"table {str(p)!r} holds an invalid spec: {e}") from None
        if spec.spec_id_under(stream) != stored_id:
            raise TableError(f"table {str(p)!r}: stored spec_id {stored_id} does not match its spec "
                             f"({spec.spec_id_under(stream)})")
        kb = key_bytes(spec.n_inputs, spec.output.classes)
        if keys.ndim != 2 or keys.shape[1] != kb:
            raise TableError(f"table {str(p)!r}: keys have shape {keys.shape}, expected (U, {kb})")
        table = cls(spec, keys, counts, blocks, stream)
        if table.n_samples != n_samples:
            raise TableError(f"table {str(p)!r}: counts sum to {table.n_samples} but n_samples = {n_samples}")
        if table.n_failed < 0 or (n_failed is not None and n_failed != table.n_failed):
            raise TableError(f"table {str(p)!r}: {len(table.blocks)} blocks of {spec.block_size} trainings with "
                             f"{table.n_samples} converged leave {table.n_failed} failed, but n_failed = {n_failed}")
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
            **({"n_trainings": self.n_attempts, "n_failed": self.n_failed} if self.spec.training is not None else {}),
        }

