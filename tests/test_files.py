"""Files the project writes: readable by others (the umask decides, as for any file), no
lock files left behind, no directories created for a mistyped path."""

import os
import stat

import numpy as np
import pytest

from volume.errors import TableError, VolumeError
from volume.gp.store import save_kernel
from volume.runner import run_local, table_lock


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_tables_and_kernels_get_the_umask_mode(tmp_path, boolean_spec, umask_022):
    table = tmp_path / "t.h5"
    run_local(boolean_spec, 512, table)
    assert mode(table) == 0o644
    save_kernel(tmp_path / "k.h5", boolean_spec, np.eye(8), {"kernel": "given"})
    assert mode(tmp_path / "k.h5") == 0o644
    os.umask(0o077)
    run_local(boolean_spec, 1024, table)  # a checkpoint rewrites the file under the new umask
    assert mode(table) == 0o600


def test_lock_files_do_not_stay_and_still_exclude(tmp_path, boolean_spec):
    out = tmp_path / "t.h5"
    with table_lock(out):
        assert (tmp_path / "t.h5.lock").exists()
        with pytest.raises(TableError, match="another job is writing"):
            with table_lock(out):
                pass
    assert not (tmp_path / "t.h5.lock").exists()
    with table_lock(out):  # free again
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_directories_are_created(tmp_path, boolean_spec):
    with pytest.raises(VolumeError, match="does not exist"):
        run_local(boolean_spec, 512, tmp_path / "typo" / "t.h5")
    with pytest.raises(VolumeError, match="does not exist"):
        save_kernel(tmp_path / "typo" / "k.h5", boolean_spec, np.eye(8), {})
    assert list(tmp_path.iterdir()) == []
