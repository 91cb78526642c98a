"""The same spec and seed give byte-identical tables whatever the sub-batch size, the
order in which blocks are processed, or the grouping in which partial tables are merged."""

import hashlib

import pytest

from volume.runner import run_local
from volume.sampler import Sampler
from volume.spec import ExperimentSpec
from volume.table import FrequencyTable

pytestmark = pytest.mark.usefixtures("both_backends")  # compiled kernel and torch path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("example", [True, False])
def test_sub_batch_and_order_and_grouping(tmp_path, boolean_spec, example):
    if example:
        from conftest import EXAMPLES

        spec = ExperimentSpec.load(EXAMPLES / "boolean7.toml").replace(block_size=1024)
    else:
        spec = boolean_spec
    n = 4 * spec.block_size
    paths = []
    for sub in (spec.block_size, 100, 7 if not example else 333):
        p = tmp_path / f"sub{sub}.h5"
        run_local(spec, n, p, sub_batch=sub)
        paths.append(p)
    # blocks in another order, each its own table, merged in two groupings
    sampler = Sampler(spec, sub_batch=50)
    per_block = {b: FrequencyTable.from_keys(spec, sampler.keys(b), [b]) for b in (3, 1, 0, 2)}
    left = per_block[3].merge(per_block[1]).merge(per_block[0].merge(per_block[2]))
    right = FrequencyTable.merge_all([per_block[2], per_block[0], per_block[3], per_block[1]])
    for t, name in ((left, "left.h5"), (right, "right.h5")):
        t.save(tmp_path / name)
        paths.append(tmp_path / name)
    # resumed: two draws of half the job into the same file
    run_local(spec, n // 2, tmp_path / "resumed.h5")
    run_local(spec, n, tmp_path / "resumed.h5")
    paths.append(tmp_path / "resumed.h5")
    assert len({digest(p) for p in paths}) == 1
    assert FrequencyTable.load(paths[0]).n_samples == n
