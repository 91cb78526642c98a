"""Pinned behaviour: the spec_id of every example spec and a digest of block 0's keys, for each
backend, so that a change of torch, numpy, the compiler or the code that changes the random
stream or the keys fails here; and tables of the previous stream are read but never mixed.

If a change of the stream is intended, bump RANDOM_STREAM_VERSION (volume/spec.py), document
it in DESIGN.md ("Random stream") and update the values below.
"""

from __future__ import annotations

import dataclasses
import hashlib

import h5py
import numpy as np
import pytest

from conftest import EXAMPLES
from volume import fused
from volume.errors import TableError
from volume.h5io import attr_text
from volume.runner import run_local
from volume.sampler import Sampler
from volume.spec import RANDOM_STREAM_VERSION, ExperimentSpec
from volume.table import FrequencyTable

SPEC_IDS = {  # file: (spec_id under the current stream, under stream 1)
    "boolean7.toml": ("cf179d23dcf904f9", "89e1e8ca406dc5b7"),
    "boolean7_adam.toml": ("c0f8373ac964abff", "682665e07a2aead0"),
    "digits.toml": ("238407f0f1fc589e", "cf128251aa917c25"),
    "mnist1000.toml": ("17bac89939fcd590", "a9c450a80281148d"),
}
BACKENDS = ["torch"] + (["compiled"] if fused.available() else [])


def _digest(keys: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(keys).tobytes()).hexdigest()[:16]


def test_every_example_spec_is_pinned():
    specs = []
    for path in sorted(EXAMPLES.glob("*.toml")):
        if "[architecture]" in path.read_text():  # specs, not experiment configurations
            specs.append(path.name)
            spec = ExperimentSpec.load(path)
            assert (spec.spec_id, spec.spec_id_under(1)) == SPEC_IDS[path.name], path.name
    assert sorted(specs) == sorted(SPEC_IDS)
    assert RANDOM_STREAM_VERSION == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_block0_keys_of_boolean7(backend):
    spec = ExperimentSpec.load(EXAMPLES / "boolean7.toml")
    assert _digest(Sampler(spec, backend=backend).keys(0)) == "b8a5a19a464477ac"


@pytest.mark.parametrize("backend", BACKENDS)
def test_block0_keys_of_mnist1000(backend, real_mnist_dir):
    """The first 4 draws of block 0 (a draw does not depend on the block size)."""
    spec = ExperimentSpec.load(EXAMPLES / "mnist1000.toml")
    spec = spec.replace(block_size=4, inputs=dataclasses.replace(spec.inputs, path=str(real_mnist_dir)))
    assert _digest(Sampler(spec, backend=backend).keys(0)) == "cbb1fda2d48abbda"


def test_tables_of_the_previous_stream_load_but_never_mix(tmp_path, boolean_spec):
    old = FrequencyTable.from_keys(boolean_spec, Sampler(boolean_spec).keys(0), [0])
    old = FrequencyTable(boolean_spec, old.keys, old.counts, [0], random_stream=1)
    path = tmp_path / "old.h5"
    old.save(path)
    with h5py.File(path, "r+") as f:  # files written before stream 2 have no such attribute
        del f.attrs["random_stream"]
        assert attr_text(f, "spec_id") == boolean_spec.spec_id_under(1)
    t = FrequencyTable.load(path)
    assert t.random_stream == 1 and t.n_samples == boolean_spec.block_size  # still readable
    new = FrequencyTable.from_keys(boolean_spec, Sampler(boolean_spec).keys(1), [1])
    with pytest.raises(TableError, match="random stream 1 and 2"):
        t.merge(new)
    with pytest.raises(TableError, match="random stream 1"):
        run_local(boolean_spec, 2 * boolean_spec.block_size, path)
    assert FrequencyTable.load(path).n_samples == boolean_spec.block_size  # left unchanged


def test_tables_record_the_stream_and_library_versions(tmp_path, boolean_spec):
    import torch

    path = tmp_path / "t.h5"
    run_local(boolean_spec, boolean_spec.block_size, path)
    with h5py.File(path, "r") as f:
        assert int(f.attrs["random_stream"]) == RANDOM_STREAM_VERSION
        assert attr_text(f, "torch_version") == torch.__version__ and attr_text(f, "numpy_version") == np.__version__
