"""Tables are checksummed: every dataset carries HDF5's Fletcher-32 filter and the file a
SHA-256 of its content that load verifies. A single flipped bit anywhere in a small table
either makes load fail with an error naming the file, or (a flip in unused bytes) loads
exactly the saved table. benchmarks/corruption.py flips every bit (benchmarks/RESULTS.md);
this test flips one bit of every byte (bit i mod 8 of byte i), to stay fast."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from volume.errors import TableError
from volume.h5io import attr_text
from volume.table import FrequencyTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from corruption import flip_and_load, small_table  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("integrity")
    table = small_table(d / "t.h5")
    return table, (d / "t.h5").read_bytes(), d


def test_every_dataset_is_checksummed(saved):
    _, _, d = saved
    with h5py.File(d / "t.h5", "r") as f:
        assert set(f) == {"keys", "counts", "blocks"}
        assert all(f[name].fletcher32 for name in f)
        assert len(attr_text(f, "content_sha256")) == 64 and int(f.attrs["format_version"]) == 2


def test_one_flipped_bit_in_every_byte_fails_naming_the_file_or_changes_nothing(saved):
    table, original, d = saved
    n = len(original)
    bits = [8 * i + i % 8 for i in range(n)]
    tally = flip_and_load(original, table, bits, d / "flipped.h5")
    assert set(tally) <= {"error naming the file", "loaded, identical"}, tally
    assert tally["error naming the file"] > 0.5 * len(bits), tally  # most bytes of a small table matter


def test_a_changed_value_with_intact_checksums_is_still_caught(saved):
    """Rewriting a count through h5py (the filter's checksum recomputed) leaves the content
    digest stale: load refuses it."""
    table, original, d = saved
    p = d / "edited.h5"
    p.write_bytes(original)
    with h5py.File(p, "r+") as f:
        f["counts"][0] = f["counts"][0] + 1
        f.attrs["n_samples"] = np.uint64(table.n_samples + 1)
    with pytest.raises(TableError, match=f"{p.name}.*checksum"):
        FrequencyTable.load(p)


def test_every_load_error_names_the_file(saved, tmp_path):
    table, _, _ = saved
    dup = tmp_path / "dup.h5"
    with h5py.File(dup, "w") as f:  # a hand-made table whose block list repeats a block
        f.attrs.update(format="volume-table", format_version=1, spec=table.spec.to_json(indent=None),
                       spec_id=table.spec_id, random_stream=np.int64(table.random_stream),
                       n_samples=np.uint64(table.n_samples))
        f["keys"], f["counts"], f["blocks"] = table.keys, table.counts, np.array([0, 0])
    with pytest.raises(TableError, match="dup.h5.*block appears twice"):
        FrequencyTable.load(dup)


def test_version_1_tables_still_load(saved, tmp_path):
    table, _, _ = saved
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:  # the layout of format version 1: no filters, no digest
        f.attrs.update(format="volume-table", format_version=1, spec=table.spec.to_json(indent=None),
                       spec_id=table.spec_id, random_stream=np.int64(table.random_stream),
                       n_samples=np.uint64(table.n_samples))
        f["keys"], f["counts"], f["blocks"] = table.keys, table.counts, table.blocks
    assert FrequencyTable.load(old) == table


def test_empty_table_round_trips(saved, tmp_path):
    table, _, _ = saved
    empty = FrequencyTable.empty(table.spec)
    empty.save(tmp_path / "e.h5")
    assert FrequencyTable.load(tmp_path / "e.h5") == empty


def test_the_flip_check_can_fail(saved, tmp_path):
    """Without checksums (format version 1) flipped bits load silently as another table, and
    the tally says so: the check above is not vacuous."""
    table, _, _ = saved
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:
        f.attrs.update(format="volume-table", format_version=1, spec=table.spec.to_json(indent=None),
                       spec_id=table.spec_id, random_stream=np.int64(table.random_stream),
                       n_samples=np.uint64(table.n_samples))
        f["keys"], f["counts"], f["blocks"] = table.keys, table.counts, table.blocks
        offset = f["keys"].id.get_offset()
    tally = flip_and_load(old.read_bytes(), table, range(8 * offset, 8 * offset + 64), tmp_path / "f.h5")
    assert tally["LOADED A DIFFERENT TABLE"] > 0, tally
